"""Residual networks for CIFAR: He et al.'s ResNet-6n+2 and Page's ResNet-9 (and, by name
in create_model, Jordan's airbench network of resnet/airbench.py).

ResNet (He et al. 2016, arXiv:1512.03385, section 4.2):

Depth 6n + 2: a 3x3 convolution with 16 filters, three stages of n basic
blocks with 16, 32 and 64 filters (feature maps 32x32, 16x16, 8x8), global
average pooling and a dense classifier. Shortcuts are identities; where a
stage halves the resolution and doubles the width, the shortcut subsamples
by 2 and pads the new channels with zeros (the paper's option A), so
shortcuts add no parameters. The stride-2 convolutions pad one pixel on every
side, as the paper's Torch code and the reference PyTorch implementation do, so
that output pixel i of both branches is centred on input pixel 2i (see
STRIDE2_PADDINGS).

ResNet9 (David Page, "How to train your ResNet", 2018; the DAWNBench
CIFAR-10 winner): four 3x3 convolutions that set the width (64, 128, 256,
512), the last three followed by 2x2 max pooling (32 -> 16 -> 8 -> 4), with a
residual block of two more convolutions after the first and the last
pooling; global max pooling and a classifier whose logits are scaled by
1/8. Fewer, wider layers than ResNet-20: per FLOP about 1.5x faster on a
CPU, and more accurate per minute of training there.
"""

import functools

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from resnet import airbench, batch_norm

# Model name -> depth. Parameter counts in the paper's Table 6 are
# 0.27M, 0.46M, 0.66M, 0.85M and 1.7M (tests pin the exact values). resnet8
# (n = 1) is not in the paper: it is for tests and the debug config.
DEPTHS = {
  "resnet8": 8,
  "resnet20": 20,
  "resnet32": 32,
  "resnet44": 44,
  "resnet56": 56,
  "resnet110": 110,
}
STAGE_FILTERS = (16, 32, 64)

# Model name -> widths of ResNet9's four width-changing convolutions. Page used
# (64, 128, 256, 512); "resnet9_half" halves them (a quarter of the FLOPs) for
# CPUs, where it is the fast recipe's model (configs/fast.cfg).
RESNET9_WIDTHS = {
  "resnet9": (64, 128, 256, 512),
  "resnet9_half": (32, 64, 128, 256),
}
MODEL_NAMES = (*DEPTHS, *RESNET9_WIDTHS, "airbench")  # airbench: resnet/airbench.py.

# How a 3x3 convolution of stride 2 pads an even-sized input. "symmetric": 1 pixel on
# every side (the paper's code), output pixel i centred on input pixel 2i, where the
# option-A shortcut samples. "same": Keras' padding="same", 0 pixels before and 1 after,
# centred on 2i + 1, one pixel off the shortcut; what every run before this option was
# built with (a run record or .keras config without the key means "same").
STRIDE2_PADDINGS = ("symmetric", "same")
LEGACY_STRIDE2_PADDING = "same"


def _conv3x3(filters, strides=1, dtype=None, name=None, padding="same"):
  return layers.Conv2D(
    filters,
    3,
    strides=strides,
    padding=padding,
    use_bias=False,
    kernel_initializer="he_normal",
    dtype=dtype,
    name=name,
  )


def symmetric_pad(images):
  """[B, H, W, C] -> [B, H + 2, W + 2, C], one row/column of zeros on every side."""
  return keras.ops.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])


class BasicBlock(layers.Layer):
  """Two 3x3 convolutions with batch norm and a parameter-free shortcut.

  `stride2_padding` (STRIDE2_PADDINGS) is how conv1 pads when `strides` is 2.
  """

  def __init__(
    self,
    filters,
    strides=1,
    sync_batch_norm=False,
    fused_batch_norm=True,
    stride2_padding="symmetric",
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.filters = filters
    self.strides = strides
    # Padded explicitly, then a "valid" convolution: Keras has no symmetric padding.
    self.pad_symmetrically = strides > 1 and stride2_padding == "symmetric"
    padding = "valid" if self.pad_symmetrically else "same"
    # Named like their attributes, so weights read "stage1_block1/conv1/kernel".
    self.conv1 = _conv3x3(filters, strides, dtype=self.dtype_policy, name="conv1", padding=padding)
    self.bn1 = batch_norm.create(sync_batch_norm, fused_batch_norm, self.dtype_policy, name="bn1")
    self.conv2 = _conv3x3(filters, dtype=self.dtype_policy, name="conv2")
    self.bn2 = batch_norm.create(sync_batch_norm, fused_batch_norm, self.dtype_policy, name="bn2")

  def call(self, inputs, training=False):
    x = self.conv1(symmetric_pad(inputs) if self.pad_symmetrically else inputs)
    x = keras.ops.relu(self.bn1(x, training=training))
    x = self.bn2(self.conv2(x), training=training)
    return keras.ops.relu(x + option_a_shortcut(inputs, self.filters, self.strides))


def option_a_shortcut(inputs, filters, strides):
  """The paper's parameter-free shortcut: `inputs` [B, H, W, C] subsampled by `strides`
  (pixels 0, s, 2s, ...) and zero-padded to `filters` channels, half of them on each side.

  The subsampling is a 1x1 average pooling, equal to inputs[:, ::s, ::s, :] bit for bit:
  on the CPU TensorFlow's strided-slice kernel and its gradient take 3-7x longer, ~7% of a
  ResNet-20 step in bfloat16 (`python -m resnet.step_profile`, docs/speed.md).
  """
  shortcut = inputs
  if strides > 1:
    shortcut = keras.ops.average_pool(shortcut, pool_size=1, strides=strides, padding="valid")
  extra_channels = filters - inputs.shape[-1]
  if extra_channels:
    half = extra_channels // 2
    shortcut = keras.ops.pad(shortcut, [[0, 0], [0, 0], [0, 0], [half, extra_channels - half]])
  return shortcut


@keras.saving.register_keras_serializable(package="resnet")
class ResNet(keras.Model):
  """CIFAR ResNet of depth 6n + 2 mapping [B, 32, 32, 3] images to [B, classes] logits.

  `dtype` is a Keras dtype policy ("float32", "mixed_float16",
  "mixed_bfloat16") for every layer but the classifier: weights stay float32,
  computation runs in the policy's compute dtype. Logits are float32 even
  under a mixed policy, so that the softmax and the loss are computed in full
  precision. `stride2_padding` is one of STRIDE2_PADDINGS.
  """

  def __init__(
    self,
    depth,
    num_classes=10,
    sync_batch_norm=False,
    fused_batch_norm=True,
    stride2_padding="symmetric",
    **kwargs,
  ):
    super().__init__(**kwargs)
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1, got {depth}.")
    if stride2_padding not in STRIDE2_PADDINGS:
      raise ValueError(
        f"stride2_padding must be one of {STRIDE2_PADDINGS}, got {stride2_padding!r}."
      )
    self.depth = depth
    self.num_classes = num_classes
    blocks_per_stage = (depth - 2) // 6
    self.sync_batch_norm = sync_batch_norm
    self.fused_batch_norm = fused_batch_norm
    self.stride2_padding = stride2_padding
    policy = self.dtype_policy
    self.stem_conv = _conv3x3(STAGE_FILTERS[0], dtype=policy, name="stem_conv")
    self.stem_bn = batch_norm.create(sync_batch_norm, fused_batch_norm, policy, name="stem_bn")
    # Blocks are attributes (stage1_block1, ...), not a list: tf.train.Checkpoint
    # does not see layers inside a Keras 3 list, and would silently skip them.
    self.block_names = []
    for stage, filters in enumerate(STAGE_FILTERS):
      for index in range(blocks_per_stage):
        name = f"stage{stage + 1}_block{index + 1}"
        strides = 2 if stage > 0 and index == 0 else 1
        block = BasicBlock(
          filters,
          strides,
          sync_batch_norm,
          fused_batch_norm,
          stride2_padding,
          dtype=policy,
          name=name,
        )
        setattr(self, name, block)
        self.block_names.append(name)
    self.pool = layers.GlobalAveragePooling2D(dtype=policy, name="pool")
    self.classifier = layers.Dense(
      num_classes, kernel_initializer="he_normal", dtype="float32", name="classifier"
    )

  def get_config(self):
    # For .keras files (resnet/export.py). keras.Model, unlike a Layer, does not
    # record its constructor arguments by itself.
    return {
      **super().get_config(),
      "depth": self.depth,
      "num_classes": self.num_classes,
      "sync_batch_norm": self.sync_batch_norm,
      "fused_batch_norm": self.fused_batch_norm,
      "stride2_padding": self.stride2_padding,
    }

  @classmethod
  def from_config(cls, config):
    # .keras files saved before the option existed were built with Keras' "same".
    return cls(**{"stride2_padding": LEGACY_STRIDE2_PADDING, **config})

  def call(self, images, training=False):
    x = keras.ops.relu(self.stem_bn(self.stem_conv(images), training=training))
    for name in self.block_names:
      x = getattr(self, name)(x, training=training)
    return self.classifier(self.pool(x))


class ConvBlock(layers.Layer):
  """3x3 convolution, then (optionally) 2x2 max pooling, batch norm and ReLU.

  Pooling comes before batch norm (as in Keller Jordan's airbench), so that
  batch norm runs on a quarter of the pixels: a cheaper variant of Page's
  conv-BN-ReLU-pool (max pooling commutes with ReLU, not with BN's affine map).
  """

  def __init__(self, filters, pool=False, sync_batch_norm=False, fused_batch_norm=True, **kwargs):
    super().__init__(**kwargs)
    self.conv = _conv3x3(filters, dtype=self.dtype_policy, name="conv")
    self.max_pool = (
      layers.MaxPooling2D(2, dtype=self.dtype_policy, name="max_pool") if pool else None
    )
    self.bn = batch_norm.create(sync_batch_norm, fused_batch_norm, self.dtype_policy, name="bn")

  def call(self, inputs, training=False):
    x = self.conv(inputs)
    if self.max_pool is not None:
      x = self.max_pool(x)
    return keras.ops.relu(self.bn(x, training=training))


@keras.saving.register_keras_serializable(package="resnet")
class ResNet9(keras.Model):
  """Page's ResNet-9 mapping [B, 32, 32, 3] images to [B, classes] float32 logits.

  `widths` are the four widths (prep, layer1, layer2, layer3); `dtype`,
  `sync_batch_norm` and `fused_batch_norm` are as in ResNet.
  """

  # Page's scale of the logits: the classifier starts with small outputs, so the
  # first updates do not saturate the softmax.
  LOGIT_SCALE = 0.125

  def __init__(
    self,
    widths=(64, 128, 256, 512),
    num_classes=10,
    sync_batch_norm=False,
    fused_batch_norm=True,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.widths = tuple(widths)
    self.num_classes = num_classes
    self.sync_batch_norm = sync_batch_norm
    self.fused_batch_norm = fused_batch_norm
    policy = self.dtype_policy

    def block(filters, name, pool=False):
      return ConvBlock(filters, pool, sync_batch_norm, fused_batch_norm, dtype=policy, name=name)

    prep, width1, width2, width3 = self.widths
    self.prep = block(prep, "prep")  # 32x32
    self.layer1 = block(width1, "layer1", pool=True)  # 16x16
    self.layer1_residual1 = block(width1, "layer1_residual1")
    self.layer1_residual2 = block(width1, "layer1_residual2")
    self.layer2 = block(width2, "layer2", pool=True)  # 8x8
    self.layer3 = block(width3, "layer3", pool=True)  # 4x4
    self.layer3_residual1 = block(width3, "layer3_residual1")
    self.layer3_residual2 = block(width3, "layer3_residual2")
    self.pool = layers.GlobalMaxPooling2D(dtype=policy, name="pool")
    self.classifier = layers.Dense(num_classes, dtype="float32", name="classifier")

  def get_config(self):
    return {
      **super().get_config(),
      "widths": self.widths,
      "num_classes": self.num_classes,
      "sync_batch_norm": self.sync_batch_norm,
      "fused_batch_norm": self.fused_batch_norm,
    }

  def call(self, images, training=False):
    x = self.prep(images, training=training)
    x = self.layer1(x, training=training)
    x = x + self.layer1_residual2(self.layer1_residual1(x, training=training), training=training)
    x = self.layer2(x, training=training)
    x = self.layer3(x, training=training)
    x = x + self.layer3_residual2(self.layer3_residual1(x, training=training), training=training)
    return self.classifier(self.pool(x)) * self.LOGIT_SCALE


def create_model(
  name_or_depth,
  num_classes=10,
  precision="float32",
  sync_batch_norm=False,
  fused_batch_norm=True,
  stride2_padding="symmetric",
):
  """Builds a model by name ("resnet20", "resnet9", ...) or ResNet depth, weights created.

  `precision` is the Keras dtype policy of its layers (see ResNet);
  `sync_batch_norm` computes BatchNorm statistics over all replicas' batches;
  `fused_batch_norm=False` uses stock keras.layers.BatchNormalization (the
  same variables and results, slower; for comparisons); `stride2_padding`
  (STRIDE2_PADDINGS) applies to the ResNet-6n+2 models, which alone have
  stride-2 convolutions (ResNet-9 and airbench downsample by max pooling).

  Raises:
    ValueError: an unknown name or a depth that is not 6n + 2.
  """
  if isinstance(name_or_depth, str) and name_or_depth not in MODEL_NAMES:
    raise ValueError(f"Unknown model {name_or_depth!r}; choose one of {', '.join(MODEL_NAMES)}.")
  if name_or_depth == "airbench":
    model = airbench.Airbench(
      airbench.WIDTHS,
      num_classes,
      sync_batch_norm,
      fused_batch_norm,
      name="airbench",
      dtype=precision,
    )
  elif name_or_depth in RESNET9_WIDTHS:
    model = ResNet9(
      RESNET9_WIDTHS[name_or_depth],
      num_classes,
      sync_batch_norm,
      fused_batch_norm,
      name=name_or_depth,
      dtype=precision,
    )
  else:
    depth = DEPTHS.get(name_or_depth, name_or_depth)
    model = ResNet(
      depth,
      num_classes,
      sync_batch_norm,
      fused_batch_norm,
      stride2_padding,
      name=f"resnet{depth}",
      dtype=precision,
    )
  model(keras.ops.zeros((1, 32, 32, 3)))  # Creates the weights (a subclassed model has no build()).
  return model


def forward_flops_per_image(model):
  """2 x multiply-adds of one forward pass of one 32x32 image: convolutions and dense layers.

  Read off the model's traced graph (each Conv2D and MatMul op with its
  shapes), so it holds for every architecture in resnet/model.py; BatchNorm,
  ReLU, pooling and the shortcuts (under 1%) are left out. Training costs about
  3x this per image (forward, and backward for activations and weights).
  """
  graph = (
    tf.function(lambda images: model(images, training=False))
    .get_concrete_function(tf.TensorSpec([1, 32, 32, 3], tf.float32))
    .graph
  )
  flops = 0
  for op in graph.get_operations():
    if op.type == "Conv2D":  # Output [1, H, W, C_out]; kernel [kh, kw, C_in, C_out].
      _, height, width, _ = op.outputs[0].shape
      flops += 2 * height * width * int(np.prod(op.inputs[1].shape))
    elif op.type == "MatMul":  # One image: kernel [C_in, C_out].
      flops += 2 * int(np.prod(op.inputs[1].shape))
  return flops


@functools.cache
def forward_flops(name):
  """forward_flops_per_image of the model called `name` (built once per process)."""
  return forward_flops_per_image(create_model(name))


def training_flops(name, images):
  """FLOPs of training the model called `name` on `images` images: 3 x forward FLOPs each
  (the forward pass, and the backward pass for activations and for weights)."""
  return 3 * forward_flops(name) * images
