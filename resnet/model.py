"""ResNet for CIFAR (He et al. 2016, arXiv:1512.03385, section 4.2).

Depth 6n + 2: a 3x3 convolution with 16 filters, three stages of n basic
blocks with 16, 32 and 64 filters (feature maps 32x32, 16x16, 8x8), global
average pooling and a dense classifier. Shortcuts are identities; where a
stage halves the resolution and doubles the width, the shortcut subsamples
by 2 and pads the new channels with zeros (the paper's option A), so
shortcuts add no parameters.
"""

import keras
import tensorflow as tf
from keras import layers

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


def _conv3x3(filters, strides=1, dtype=None, name=None):
  return layers.Conv2D(
    filters,
    3,
    strides=strides,
    padding="same",
    use_bias=False,
    kernel_initializer="he_normal",
    dtype=dtype,
    name=name,
  )


class FusedBatchNormalization(layers.BatchNormalization):
  """keras.layers.BatchNormalization computed by TensorFlow's fused kernel.

  Keras 3 builds batch norm from separate ops (moments, then the affine
  normalisation) and differentiates each; TensorFlow's fused kernel (oneDNN on
  CPUs, cuDNN on GPUs) does the forward and the backward pass in one op each.
  Measured on a 2-core CPU: the ResNet-20 train step runs 10-26% faster. The
  variables, their names and the update of the moving statistics are Keras'
  own (the moving variance takes the biased batch variance, as Keras does), so
  checkpoints are interchangeable. Synchronized statistics, masks, and layouts
  other than channels-last 4-D batches with scale and offset use Keras'
  implementation. The fused kernel needs epsilon >= 1.001e-5 and raises smaller
  values to that (as Keras 2 did).
  """

  def call(self, inputs, training=None, mask=None):
    fusable = (
      len(inputs.shape) == 4
      and self.axis in (-1, 3)
      and self.gamma is not None
      and self.beta is not None
    )
    if self.synchronized or mask is not None or not fusable:
      return super().call(inputs, training=training, mask=mask)
    # gamma and beta stay float32 (Keras does not autocast them); inputs may be
    # float16/bfloat16 under a mixed policy, which the fused kernel accepts.
    if training and self.trainable:
      outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
      )
      # The kernel returns the unbiased (n - 1) variance; Keras tracks the biased one.
      count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
      variance = unbiased_variance * (count - 1.0) / count
      momentum = self.momentum
      self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
      self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
      return outputs
    outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
      inputs,
      self.gamma,
      self.beta,
      mean=self.moving_mean,
      variance=self.moving_variance,
      epsilon=self.epsilon,
      is_training=False,
    )
    return outputs


def _batch_norm(synchronized, fused=True, dtype=None, name=None):
  # Momentum and epsilon of the reference Torch/PyTorch implementations
  # (momentum 0.1 there is 0.9 here). By default statistics are per replica:
  # each replica normalises its own per-replica batch, as the paper's
  # multi-GPU training did; `synchronized` all-reduces them over replicas.
  layer = FusedBatchNormalization if fused else layers.BatchNormalization
  return layer(momentum=0.9, epsilon=1e-5, synchronized=synchronized, dtype=dtype, name=name)


class BasicBlock(layers.Layer):
  """Two 3x3 convolutions with batch norm and a parameter-free shortcut."""

  def __init__(self, filters, strides=1, sync_batch_norm=False, fused_batch_norm=True, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.strides = strides
    # Named like their attributes, so weights read "stage1_block1/conv1/kernel".
    self.conv1 = _conv3x3(filters, strides, dtype=self.dtype_policy, name="conv1")
    self.bn1 = _batch_norm(sync_batch_norm, fused_batch_norm, self.dtype_policy, name="bn1")
    self.conv2 = _conv3x3(filters, dtype=self.dtype_policy, name="conv2")
    self.bn2 = _batch_norm(sync_batch_norm, fused_batch_norm, self.dtype_policy, name="bn2")

  def call(self, inputs, training=False):
    x = keras.ops.relu(self.bn1(self.conv1(inputs), training=training))
    x = self.bn2(self.conv2(x), training=training)
    shortcut = inputs
    if self.strides > 1:
      shortcut = shortcut[:, :: self.strides, :: self.strides, :]
    extra_channels = self.filters - inputs.shape[-1]
    if extra_channels:
      half = extra_channels // 2
      shortcut = keras.ops.pad(shortcut, [[0, 0], [0, 0], [0, 0], [half, extra_channels - half]])
    return keras.ops.relu(x + shortcut)


@keras.saving.register_keras_serializable(package="resnet")
class ResNet(keras.Model):
  """CIFAR ResNet of depth 6n + 2 mapping [B, 32, 32, 3] images to [B, classes] logits.

  `dtype` is a Keras dtype policy ("float32", "mixed_float16",
  "mixed_bfloat16") for every layer but the classifier: weights stay float32,
  computation runs in the policy's compute dtype. Logits are float32 even
  under a mixed policy, so that the softmax and the loss are computed in full
  precision.
  """

  def __init__(self, depth, num_classes=10, sync_batch_norm=False, fused_batch_norm=True, **kwargs):
    super().__init__(**kwargs)
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1, got {depth}.")
    self.depth = depth
    self.num_classes = num_classes
    blocks_per_stage = (depth - 2) // 6
    self.sync_batch_norm = sync_batch_norm
    self.fused_batch_norm = fused_batch_norm
    policy = self.dtype_policy
    self.stem_conv = _conv3x3(STAGE_FILTERS[0], dtype=policy, name="stem_conv")
    self.stem_bn = _batch_norm(sync_batch_norm, fused_batch_norm, policy, name="stem_bn")
    # Blocks are attributes (stage1_block1, ...), not a list: tf.train.Checkpoint
    # does not see layers inside a Keras 3 list, and would silently skip them.
    self.block_names = []
    for stage, filters in enumerate(STAGE_FILTERS):
      for index in range(blocks_per_stage):
        name = f"stage{stage + 1}_block{index + 1}"
        strides = 2 if stage > 0 and index == 0 else 1
        block = BasicBlock(
          filters, strides, sync_batch_norm, fused_batch_norm, dtype=policy, name=name
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
    }

  def call(self, images, training=False):
    x = keras.ops.relu(self.stem_bn(self.stem_conv(images), training=training))
    for name in self.block_names:
      x = getattr(self, name)(x, training=training)
    return self.classifier(self.pool(x))


def create_model(
  name_or_depth, num_classes=10, precision="float32", sync_batch_norm=False, fused_batch_norm=True
):
  """Builds a ResNet by name ("resnet20", ...) or depth, with its weights created.

  `precision` is the Keras dtype policy of its layers (see ResNet);
  `sync_batch_norm` computes BatchNorm statistics over all replicas' batches;
  `fused_batch_norm=False` uses stock keras.layers.BatchNormalization (the
  same variables and results, slower; for comparisons).

  Raises:
    ValueError: an unknown name or a depth that is not 6n + 2.
  """
  if isinstance(name_or_depth, str):
    if name_or_depth not in DEPTHS:
      raise ValueError(f"Unknown model {name_or_depth!r}; choose one of {', '.join(DEPTHS)}.")
    depth = DEPTHS[name_or_depth]
  else:
    depth = name_or_depth
  model = ResNet(
    depth,
    num_classes,
    sync_batch_norm,
    fused_batch_norm,
    name=f"resnet{depth}",
    dtype=precision,
  )
  model(keras.ops.zeros((1, 32, 32, 3)))  # Creates the weights (a subclassed model has no build()).
  return model
