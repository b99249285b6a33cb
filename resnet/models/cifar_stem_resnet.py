"""He et al.'s ImageNet ResNets (18, 34, 50) with a CIFAR stem, as the CIFAR baselines use.

The stem is one 3x3 convolution of 64 filters at 32x32 (no 7x7 stride-2 convolution, no max
pooling: on 32x32 images those cost 10+ points), then four stages of basic (two 3x3) or
bottleneck (1x1, 3x3, 1x1 with 4x the width out) blocks of 64, 128, 256 and 512 filters at
32, 16, 8 and 4 pixels, global average pooling and a dense classifier with bias. Where a block
changes the shape, its shortcut is a 1x1 convolution of that stride and BatchNorm (projection,
the paper's option B); stride-2 3x3 convolutions pad 1 pixel on every side. This is
kuangliu/pytorch-cifar's models/resnet.py (MIT), the source of the published CIFAR-10 figures
cited in configs/resnet18.cfg; its ResNet-18 and ResNet-50 have 11,173,962 and 23,520,842
parameters (10 classes), pinned in tests/test_model.py. Initial weights are PyTorch's defaults,
as kuangliu's (common.kernel_init("torch")).
"""

import keras

from resnet.models import common

STAGE_FILTERS = (64, 128, 256, 512)
# Name -> (bottleneck blocks?, blocks per stage).
DEPTHS = {
  "resnet18": (False, (2, 2, 2, 2)),
  "resnet34": (False, (3, 4, 6, 3)),
  "resnet50": (True, (3, 4, 6, 3)),
}
MIN_IMAGE_SIZE = 8  # Three stride-2 stages: smaller, the last stage would see only padding.
# kuangliu's models keep PyTorch's default initial weights; its recipe (SGD at 0.1 from the
# first step, weight decay 5e-4) was tuned with them.
INIT = "torch"


class Block(keras.layers.Layer):
  """A basic or bottleneck block, post-activation (conv-BN-ReLU, ReLU after the sum)."""

  def __init__(self, filters, strides, in_channels, bottleneck, model_options, **kwargs):
    super().__init__(**kwargs)
    policy, init = self.dtype_policy, common.kernel_init(INIT)
    self.out_channels = filters * (4 if bottleneck else 1)
    if bottleneck:  # The stride on the 3x3 convolution, as torchvision's v1.5 and kuangliu.
      shapes = ((filters, 1, 1), (filters, 3, strides), (self.out_channels, 1, 1))
    else:
      shapes = ((filters, 3, strides), (filters, 3, 1))
    self.convs = [
      common.conv(width, size, stride, dtype=policy, name=f"conv{i + 1}", kernel_init=init)
      for i, (width, size, stride) in enumerate(shapes)
    ]
    self.norms = [common.norm(model_options, policy, f"bn{i + 1}") for i in range(len(self.convs))]
    for index, (conv, bn) in enumerate(zip(self.convs, self.norms, strict=True)):
      setattr(self, f"conv{index + 1}", conv)  # Attributes: checkpoints track them by name.
      setattr(self, f"bn{index + 1}", bn)
    self.projection = None
    if strides != 1 or in_channels != self.out_channels:
      self.projection = common.conv(
        self.out_channels, 1, strides, dtype=policy, name="shortcut", kernel_init=init
      )
      self.projection_bn = common.norm(model_options, policy, "shortcut_bn")

  def call(self, inputs, training=False):
    x = inputs
    for index, (conv, bn) in enumerate(zip(self.convs, self.norms, strict=True)):
      x = bn(conv(x), training=training)
      if index < len(self.convs) - 1:
        x = keras.ops.relu(x)
    shortcut = inputs
    if self.projection is not None:
      shortcut = self.projection_bn(self.projection(inputs), training=training)
    return keras.ops.relu(x + shortcut)


@keras.saving.register_keras_serializable(package="resnet")
class CifarStemResNet(common.Network):
  """ResNet-18/34/50 (`variant`, a DEPTHS key) for small images; see the module doc."""

  def __init__(
    self, variant, num_classes=10, sync_batch_norm=False, fused_batch_norm=True, **kwargs
  ):
    options = dict(
      variant=variant,
      num_classes=num_classes,
      sync_batch_norm=sync_batch_norm,
      fused_batch_norm=fused_batch_norm,
    )
    super().__init__(options, **kwargs)
    if variant not in DEPTHS:
      raise ValueError(f"Unknown variant {variant!r}; choose one of {', '.join(DEPTHS)}.")
    bottleneck, blocks_per_stage = DEPTHS[variant]
    policy = self.dtype_policy
    self.stem_conv = common.conv(
      64, 3, dtype=policy, name="stem_conv", kernel_init=common.kernel_init(INIT)
    )
    self.stem_bn = common.norm(options, policy, "stem_bn")
    self.block_names, channels = [], 64
    for stage, (filters, blocks) in enumerate(zip(STAGE_FILTERS, blocks_per_stage, strict=True)):
      for index in range(blocks):
        name = f"stage{stage + 1}_block{index + 1}"
        strides = 2 if stage > 0 and index == 0 else 1
        block = Block(filters, strides, channels, bottleneck, options, dtype=policy, name=name)
        setattr(self, name, block)
        self.block_names.append(name)
        channels = block.out_channels
    self.pool = keras.layers.GlobalAveragePooling2D(dtype=policy, name="pool")
    self.classifier = common.classifier(num_classes, INIT, fan_in=channels)

  def call(self, images, training=False):
    x = keras.ops.relu(self.stem_bn(self.stem_conv(images), training=training))
    for name in self.block_names:
      x = getattr(self, name)(x, training=training)
    return self.classifier(self.pool(x))
