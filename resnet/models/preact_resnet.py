"""Pre-activation ResNets: PreAct-ResNet-18 (He et al. 2016b) and Wide ResNets (Zagoruyko &
Komodakis 2016), whose blocks are BN-ReLU-conv-BN-ReLU-conv with the sum left unactivated.

PreAct-ResNet-18 is kuangliu/pytorch-cifar's models/preact_resnet.py (MIT; the source of the
95.11% cited in configs/preact_resnet18.cfg): a 3x3 stem of 64 filters, four stages of two
blocks (64, 128, 256, 512 filters at 32, 16, 8, 4 pixels), 1x1 projection shortcuts (no
BatchNorm) taken from the pre-activated input where the shape changes, global average pooling
of the last block's sum (kuangliu has no final BN-ReLU, unlike the paper's Figure 1), a dense
classifier: 11,171,146 parameters.

WRN-d-k (the authors' Torch code, szagoruyko/wide-residual-networks models/wide-resnet.lua,
and its PyTorch port xternalz/WideResNet-pytorch): a 3x3 stem of 16 filters, three stages of
(d - 4) / 6 blocks of 16k, 32k and 64k filters at 32, 16 and 8 pixels, a final BN-ReLU, global
average pooling, a dense classifier: WRN-16-8 10,961,370 and WRN-28-10 36,479,194 parameters.
`dropout` (the paper's 0.3, optional) acts after a block's second BN-ReLU, before its second
convolution, as in the authors' code (xternalz drops the first convolution's output before that
BN instead). Stride-2 convolutions pad 1 pixel on every side, as all three sources.

Initial weights as each source: PreAct-ResNet-18 PyTorch's defaults (common.kernel_init
"torch"), which kuangliu keeps and tuned its recipe with (with He-normal, 6x their variance,
and no final BN its logits start large: docs/how_training_works.md); the Wide ResNets
He-normal, as their authors (fan in here, fan out there).
"""

import keras

from resnet.models import common

# Stride-2 stages: smaller images would leave the last stage nothing but padding.
PREACT_MIN_IMAGE_SIZE, WIDE_MIN_IMAGE_SIZE = 8, 4


class PreActBlock(keras.layers.Layer):
  """BN-ReLU-conv3x3(stride)-[dropout]-BN-ReLU-conv3x3, plus the shortcut: the input, or a
  1x1 convolution of the pre-activated input where the shape changes."""

  def __init__(self, filters, strides, in_channels, model_options, dropout=0.0, **kwargs):
    super().__init__(**kwargs)
    policy, init = self.dtype_policy, common.kernel_init(model_options["init"])
    self.bn1 = common.norm(model_options, policy, "bn1")
    self.conv1 = common.conv(filters, 3, strides, dtype=policy, name="conv1", kernel_init=init)
    self.dropout = keras.layers.Dropout(dropout, dtype=policy, name="dropout") if dropout else None
    self.bn2 = common.norm(model_options, policy, "bn2")
    self.conv2 = common.conv(filters, 3, dtype=policy, name="conv2", kernel_init=init)
    self.projection = None
    if strides != 1 or in_channels != filters:
      self.projection = common.conv(
        filters, 1, strides, dtype=policy, name="shortcut", kernel_init=init
      )

  def call(self, inputs, training=False):
    activated = keras.ops.relu(self.bn1(inputs, training=training))
    shortcut = inputs if self.projection is None else self.projection(activated)
    x = self.conv1(activated)
    x = keras.ops.relu(self.bn2(x, training=training))
    if self.dropout is not None:
      x = self.dropout(x, training=training)
    return self.conv2(x) + shortcut


@keras.saving.register_keras_serializable(package="resnet")
class PreActResNet(common.Network):
  """A pre-activation ResNet: `stage_filters` widths, `blocks_per_stage` blocks each, the
  first block of every stage but the first at stride 2; see the module doc."""

  def __init__(
    self,
    stage_filters,
    blocks_per_stage,
    stem_filters,
    final_activation,
    dropout=0.0,
    init="he_normal",
    num_classes=10,
    sync_batch_norm=False,
    fused_batch_norm=True,
    **kwargs,
  ):
    options = dict(
      stage_filters=tuple(stage_filters),
      blocks_per_stage=blocks_per_stage,
      stem_filters=stem_filters,
      final_activation=final_activation,
      dropout=dropout,
      init=init,
      num_classes=num_classes,
      sync_batch_norm=sync_batch_norm,
      fused_batch_norm=fused_batch_norm,
    )
    super().__init__(options, **kwargs)
    policy = self.dtype_policy
    self.stem_conv = common.conv(
      stem_filters, 3, dtype=policy, name="stem_conv", kernel_init=common.kernel_init(init)
    )
    self.block_names, channels = [], stem_filters
    for stage, filters in enumerate(stage_filters):
      for index in range(blocks_per_stage):
        name = f"stage{stage + 1}_block{index + 1}"
        strides = 2 if stage > 0 and index == 0 else 1
        block = PreActBlock(filters, strides, channels, options, dropout, dtype=policy, name=name)
        setattr(self, name, block)  # Attributes: checkpoints track them by name.
        self.block_names.append(name)
        channels = filters
    self.final_bn = common.norm(options, policy, "final_bn") if final_activation else None
    self.pool = keras.layers.GlobalAveragePooling2D(dtype=policy, name="pool")
    self.classifier = common.classifier(num_classes, init, fan_in=stage_filters[-1])

  def call(self, images, training=False):
    x = self.stem_conv(images)
    for name in self.block_names:
      x = getattr(self, name)(x, training=training)
    if self.final_bn is not None:
      x = keras.ops.relu(self.final_bn(x, training=training))
    return self.classifier(self.pool(x))


def preact_resnet18(**kwargs):
  """kuangliu's PreActResNet18: four stages of two blocks, no final BN-ReLU, no dropout."""
  return PreActResNet((64, 128, 256, 512), 2, 64, final_activation=False, init="torch", **kwargs)


def wide_resnet(depth, widen_factor, dropout=0.0, **kwargs):
  """WRN-`depth`-`widen_factor`: (depth - 4) / 6 blocks per stage, widths 16k, 32k, 64k."""
  if (depth - 4) % 6 or depth < 10:
    raise ValueError(f"A Wide ResNet's depth must be 6n + 4 with n >= 1, got {depth}.")
  widths = tuple(16 * widen_factor * 2**stage for stage in range(3))
  return PreActResNet(widths, (depth - 4) // 6, 16, True, dropout, **kwargs)
