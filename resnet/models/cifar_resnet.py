"""He et al.'s CIFAR ResNets of depth 6n + 2 (2016, arXiv:1512.03385, section 4.2).

A 3x3 convolution with 16 filters, three stages of n basic blocks with 16, 32 and 64 filters
(feature maps 32x32, 16x16, 8x8), global average pooling and a dense classifier. Shortcuts
are identities; where a stage halves the resolution and doubles the width, the shortcut
subsamples by 2 and pads the new channels with zeros (the paper's option A), so shortcuts add
no parameters. The stride-2 convolutions pad one pixel on every side, as the paper's Torch
code and the reference PyTorch implementation do, so that output pixel i of both branches is
centred on input pixel 2i (see STRIDE2_PADDINGS).
"""

import keras
from keras import layers

from resnet import batch_norm
from resnet.models import common

# Depth of each registered name. The paper's Table 6 counts 0.27M, 0.46M, 0.66M, 0.85M and
# 1.7M parameters (tests pin the exact values); resnet8 (n = 1) is not in the paper: it is
# for tests and the debug config.
DEPTHS = {
  "resnet8": 8,
  "resnet20": 20,
  "resnet32": 32,
  "resnet44": 44,
  "resnet56": 56,
  "resnet110": 110,
}
STAGE_FILTERS = (16, 32, 64)
MIN_IMAGE_SIZE = 4  # Two stride-2 stages: smaller, the last stage would see only padding.

# How a 3x3 convolution of stride 2 pads an even-sized input. "symmetric": 1 pixel on
# every side (the paper's code), output pixel i centred on input pixel 2i, where the
# option-A shortcut samples. "same": Keras' padding="same", 0 pixels before and 1 after,
# centred on 2i + 1, one pixel off the shortcut; what every run before this option was
# built with (a run record or .keras config without the key means "same").
STRIDE2_PADDINGS = ("symmetric", "same")
LEGACY_STRIDE2_PADDING = "same"


def _conv3x3(filters, strides, stride2_padding, dtype=None, name=None):
  """common.conv, but Keras' "same" at stride 2 for runs built before the paper's padding."""
  if strides > 1 and stride2_padding == LEGACY_STRIDE2_PADDING:
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
  return common.conv(filters, 3, strides, dtype=dtype, name=name)


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
    # Named like their attributes, so weights read "stage1_block1/conv1/kernel".
    policy = self.dtype_policy
    self.conv1 = _conv3x3(filters, strides, stride2_padding, dtype=policy, name="conv1")
    self.bn1 = batch_norm.create(sync_batch_norm, fused_batch_norm, self.dtype_policy, name="bn1")
    self.conv2 = _conv3x3(filters, 1, stride2_padding, dtype=policy, name="conv2")
    self.bn2 = batch_norm.create(sync_batch_norm, fused_batch_norm, self.dtype_policy, name="bn2")

  def call(self, inputs, training=False):
    x = keras.ops.relu(self.bn1(self.conv1(inputs), training=training))
    x = self.bn2(self.conv2(x), training=training)
    return keras.ops.relu(x + option_a_shortcut(inputs, self.filters, self.strides))


def option_a_shortcut(inputs, filters, strides):
  """The paper's parameter-free shortcut: `inputs` [B, H, W, C] subsampled by `strides`
  (pixels 0, s, 2s, ...) and zero-padded to `filters` channels, half of them on each side.

  The subsampling is a 1x1 average pooling, equal to inputs[:, ::s, ::s, :] bit for bit:
  on the CPU TensorFlow's strided-slice kernel and its gradient take 3-7x longer, ~7% of a
  ResNet-20 step in bfloat16 (`python -m resnet.tools.step_profile`, docs/speed.md).
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
class ResNet(common.Network):
  """CIFAR ResNet of depth 6n + 2 mapping [B, H, W, 3] images to [B, classes] logits.

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
    options = dict(
      depth=depth,
      num_classes=num_classes,
      sync_batch_norm=sync_batch_norm,
      fused_batch_norm=fused_batch_norm,
      stride2_padding=stride2_padding,
    )
    super().__init__(options, **kwargs)
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1, got {depth}.")
    if stride2_padding not in STRIDE2_PADDINGS:
      raise ValueError(
        f"stride2_padding must be one of {STRIDE2_PADDINGS}, got {stride2_padding!r}."
      )
    self.depth = depth
    self.stride2_padding = stride2_padding
    blocks_per_stage = (depth - 2) // 6
    policy = self.dtype_policy
    self.stem_conv = common.conv(STAGE_FILTERS[0], 3, dtype=policy, name="stem_conv")
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

  @classmethod
  def from_config(cls, config):
    # .keras files saved before the option existed were built with Keras' "same".
    return cls(**{"stride2_padding": LEGACY_STRIDE2_PADDING, **config})

  def call(self, images, training=False):
    x = keras.ops.relu(self.stem_bn(self.stem_conv(images), training=training))
    for name in self.block_names:
      x = getattr(self, name)(x, training=training)
    return self.classifier(self.pool(x))
