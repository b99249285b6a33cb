"""David Page's ResNet-9 ("How to train your ResNet", 2018; the DAWNBench CIFAR-10 winner).

Four 3x3 convolutions that set the width (64, 128, 256, 512), the last three followed by 2x2
max pooling (32 -> 16 -> 8 -> 4), with a residual block of two more convolutions after the
first and the last pooling; global max pooling and a classifier whose logits are scaled by
1/8. Fewer, wider layers than ResNet-20 (docs/speed.md compares them on CPUs).
"""

import keras
from keras import layers

from resnet import batch_norm
from resnet.models import common

# Name -> widths of the four width-changing convolutions. Page used (64, 128, 256, 512);
# "resnet9_half" halves them (a quarter of the FLOPs).
WIDTHS = {
  "resnet9": (64, 128, 256, 512),
  "resnet9_half": (32, 64, 128, 256),
}
MIN_IMAGE_SIZE = 8  # Three 2x2 max poolings leave at least one pixel.


class ConvBlock(layers.Layer):
  """3x3 convolution, then (optionally) 2x2 max pooling, batch norm and ReLU.

  Pooling comes before batch norm (as in Keller Jordan's airbench), so that
  batch norm runs on a quarter of the pixels: a cheaper variant of Page's
  conv-BN-ReLU-pool (max pooling commutes with ReLU, not with BN's affine map).
  """

  def __init__(self, filters, pool=False, sync_batch_norm=False, fused_batch_norm=True, **kwargs):
    super().__init__(**kwargs)
    self.conv = common.conv(filters, 3, dtype=self.dtype_policy, name="conv")
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
class ResNet9(common.Network):
  """Page's ResNet-9 mapping [B, H, W, 3] images to [B, classes] float32 logits.

  `widths` are the four widths (prep, layer1, layer2, layer3); `dtype`,
  `sync_batch_norm` and `fused_batch_norm` are as in cifar_resnet.ResNet.
  """

  # Page's scale of the logits: the classifier starts with small outputs, so the
  # first updates do not saturate the softmax.
  LOGIT_SCALE = 0.125

  def __init__(
    self,
    widths=WIDTHS["resnet9"],
    num_classes=10,
    sync_batch_norm=False,
    fused_batch_norm=True,
    **kwargs,
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

  def call(self, images, training=False):
    x = self.prep(images, training=training)
    x = self.layer1(x, training=training)
    x = x + self.layer1_residual2(self.layer1_residual1(x, training=training), training=training)
    x = self.layer2(x, training=training)
    x = self.layer3(x, training=training)
    x = x + self.layer3_residual2(self.layer3_residual1(x, training=training), training=training)
    return self.classifier(self.pool(x)) * self.LOGIT_SCALE
