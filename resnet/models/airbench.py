"""Keller Jordan's airbench94 network (2024), the fast recipe's model (configs/airbench94.cfg).

"94% on CIFAR-10 in 3.29 seconds on a single GPU" (arXiv:2404.00498) trains
this network for ~10 epochs. It descends from Page's ResNet-9 (resnet9.py):

  whitening: a frozen 2x2 convolution (24 filters, no padding: 32x32 -> 31x31)
      initialised from the training images (`whitening_kernel`), a trained
      bias, GELU;
  three groups of conv3x3 -> 2x2 max pool -> BatchNorm -> GELU -> conv3x3 ->
      BatchNorm -> GELU, widths 64, 256, 256 (31 -> 15 -> 7 -> 3 pixels);
  3x3 max pooling, a dense classifier without bias, logits scaled by 1/9.

Its residual connections are in the initial weights rather than the graph:
each convolution's first C_in filters start as the identity (Dirac), so every
group starts as a shortcut plus a random branch and training moves away from
it. BatchNorm learns only offsets (no scale) and keeps a short memory
(momentum 0.6). Parameters: 1,971,352 trained (tests pin the count).
"""

import keras
import numpy as np
from keras import layers

from resnet import batch_norm
from resnet.models import common

WIDTHS = (64, 256, 256)
WHITENING_PATCH = 2  # Pixels: the whitening convolution sees 2x2 patches.
WHITENING_EPSILON = 5e-4  # Added to each eigenvalue: bounds the gain of the faint directions.
WHITENING_IMAGES = 5000  # Training images whose patches estimate the covariance (airbench's).
BATCH_NORM_MOMENTUM = 0.6  # PyTorch's 0.4: statistics of the last few batches.
LOGIT_SCALE = 1 / 9
# Image sizes whose last group leaves 3 to 5 pixels, which the final 3x3 max pooling turns into
# one: the 2x2 whitening takes one pixel (H - 1), then three 2x2 poolings (floor((H - 1) / 8)).
# Other sizes would leave no pixel, or more than one and a classifier of another shape.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 25, 48


def whitening_kernel(images, epsilon=WHITENING_EPSILON):
  """The whitening convolution's kernel, from normalised training images.

  Args:
    images: float [N, H, W, C], normalised as the model sees them
      (augment.normalize); airbench uses 5,000.

  Returns:
    float32 [2, 2, C, 8C]: the eigenvectors of the (uncentred) covariance of
    all 2x2 patches, largest eigenvalue first, each divided by
    sqrt(eigenvalue + epsilon) so that its output has unit variance, then the
    same filters negated (after GELU the pair passes both signs).
  """
  images = np.asarray(images)
  channels, size = images.shape[-1], WHITENING_PATCH**2 * images.shape[-1]
  covariance, count = np.zeros([size, size]), 0
  for chunk in np.array_split(images, max(1, len(images) // 500)):  # ~60 MB of patches at a time.
    chunk = chunk.astype(np.float64)
    rows, cols = chunk.shape[1] - 1, chunk.shape[2] - 1
    # [n, 31, 31, 2, 2, C] -> [patches, 2 * 2 * C]: the kernel's (row, column, channel) order.
    patches = np.stack(
      [chunk[:, i : i + rows, j : j + cols] for i in range(2) for j in range(2)], axis=3
    ).reshape(-1, size)
    covariance += patches.T @ patches
    count += len(patches)
  eigenvalues, eigenvectors = np.linalg.eigh(covariance / count)  # Ascending.
  eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
  # eigh fixes eigenvectors only up to sign. Make each one's largest component
  # positive, so that every worker builds the same kernel whatever its LAPACK.
  largest = np.argmax(np.abs(eigenvectors), axis=0)
  eigenvectors = eigenvectors * np.sign(eigenvectors[largest, np.arange(size)])
  scaled = eigenvectors / np.sqrt(eigenvalues + epsilon)
  kernel = np.concatenate([scaled, -scaled], axis=1)
  return kernel.reshape(WHITENING_PATCH, WHITENING_PATCH, channels, 2 * size).astype(np.float32)


def _torch_default_initializer():
  """Uniform in +-1/sqrt(fan_in): PyTorch's default for convolutions and dense layers."""
  return keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")


@keras.saving.register_keras_serializable(package="resnet")
class PartialIdentity(keras.initializers.Initializer):
  """A 3x3 kernel [3, 3, C_in, C_out] whose first C_in filters are the identity (Dirac)
  and the rest uniform in +-1/sqrt(fan_in) (PyTorch's default, as airbench)."""

  def __call__(self, shape, dtype=None):
    rows, cols, inputs, outputs = shape
    random = _torch_default_initializer()(shape, dtype)
    identity = np.zeros(shape, np.float32)
    kept = min(inputs, outputs)
    identity[rows // 2, cols // 2, np.arange(kept), np.arange(kept)] = 1.0
    is_identity = (np.arange(outputs) < kept).astype(np.float32)  # [C_out]
    return random * (1.0 - is_identity) + keras.ops.cast(identity, random.dtype)


class Whitening(layers.Layer):
  """A 2x2 convolution with a frozen kernel (set by `Airbench.set_whitening`) and a
  trained bias, then GELU."""  # A layer of its own: Conv2D freezes kernel and bias together.

  def __init__(self, filters, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters

  def build(self, input_shape):
    shape = (WHITENING_PATCH, WHITENING_PATCH, input_shape[-1], self.filters)
    self.kernel = self.add_weight(
      shape=shape, initializer=_torch_default_initializer(), trainable=False, name="kernel"
    )
    self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

  def call(self, images):
    x = keras.ops.conv(images, self.kernel, padding="valid") + self.bias
    return keras.ops.gelu(x, approximate=False)


class ConvGroup(layers.Layer):
  """conv3x3 -> 2x2 max pool -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU."""

  def __init__(self, filters, sync_batch_norm=False, fused_batch_norm=True, **kwargs):
    super().__init__(**kwargs)
    policy = self.dtype_policy

    def conv(name):
      return layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer=PartialIdentity(),
        dtype=policy, name=name,
      )  # fmt: skip

    def norm(name):
      return batch_norm.create(
        sync_batch_norm, fused_batch_norm, policy, name, momentum=BATCH_NORM_MOMENTUM, scale=False
      )

    self.conv1, self.bn1 = conv("conv1"), norm("bn1")
    self.max_pool = layers.MaxPooling2D(2, dtype=policy, name="max_pool")
    self.conv2, self.bn2 = conv("conv2"), norm("bn2")

  def call(self, inputs, training=False):
    x = self.max_pool(self.conv1(inputs))
    x = keras.ops.gelu(self.bn1(x, training=training), approximate=False)
    x = self.bn2(self.conv2(x), training=training)
    return keras.ops.gelu(x, approximate=False)


@keras.saving.register_keras_serializable(package="resnet")
class Airbench(common.Network):
  """airbench94's network mapping [B, H, W, 3] images to [B, classes] float32 logits.

  `widths` are the three groups' widths; `dtype`, `sync_batch_norm` and
  `fused_batch_norm` are as in cifar_resnet.ResNet. Until `prepare` (or `set_whitening`)
  is called the whitening kernel holds random values, as any untrained convolution.
  """

  def __init__(
    self, widths=WIDTHS, num_classes=10, sync_batch_norm=False, fused_batch_norm=True, **kwargs
  ):
    options = dict(
      widths=tuple(widths),
      num_classes=num_classes,
      sync_batch_norm=sync_batch_norm,
      fused_batch_norm=fused_batch_norm,
    )
    super().__init__(options, **kwargs)
    self.widths = tuple(widths)
    policy = self.dtype_policy
    self.whitening = Whitening(2 * 3 * WHITENING_PATCH**2, dtype=policy, name="whitening")
    for index, width in enumerate(self.widths):
      name = f"group{index + 1}"  # Attributes, not a list: see cifar_resnet.ResNet.
      group = ConvGroup(width, sync_batch_norm, fused_batch_norm, dtype=policy, name=name)
      setattr(self, name, group)
    self.pool = layers.MaxPooling2D(3, dtype=policy, name="pool")  # 3x3 -> 1x1.
    self.flatten = layers.Flatten(dtype=policy, name="flatten")
    self.classifier = layers.Dense(
      num_classes,
      use_bias=False,
      kernel_initializer=_torch_default_initializer(),
      dtype="float32",
      name="classifier",
    )

  def set_whitening(self, kernel):
    """Sets the frozen whitening kernel (see whitening_kernel)."""
    self.whitening.kernel.assign(kernel)

  def prepare(self, train_images, normalize):
    """Whitens 2x2 patches of the first WHITENING_IMAGES of `train_images` (airbench's 5,000).

    Args:
      train_images: uint8 [N, H, W, 3], the run's training split.
      normalize: uint8 images -> the float32 images the model sees.
    """
    self.set_whitening(whitening_kernel(normalize(train_images[:WHITENING_IMAGES])))

  def call(self, images, training=False):
    x = self.whitening(images)
    for index in range(len(self.widths)):
      x = getattr(self, f"group{index + 1}")(x, training=training)
    return self.classifier(self.flatten(self.pool(x))) * LOGIT_SCALE
