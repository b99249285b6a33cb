"""The fused BatchNorm layer (resnet/batch_norm.py) against Keras' own."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnet import batch_norm, models


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_fused_batch_norm_equals_keras_batch_norm(policy):
  # Same outputs, same moving statistics (biased variance) after two training
  # calls, same inference outputs: checkpoints of either layer are interchangeable.
  images = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 4, 4, 5)).astype(np.float32)
  reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy)
  fused = batch_norm.FusedBatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy)
  for layer in (reference, fused):
    layer.build(images.shape)
    layer.gamma.assign(np.linspace(0.5, 1.5, 5))
    layer.beta.assign(np.linspace(-1.0, 1.0, 5))
  tolerance = 1e-5 if policy == "float32" else 2e-2
  for _ in range(2):
    expected, actual = reference(images, training=True), fused(images, training=True)
    assert actual.dtype == expected.dtype
    np.testing.assert_allclose(np.float32(actual), np.float32(expected), atol=tolerance)
  for name in ("moving_mean", "moving_variance"):
    np.testing.assert_allclose(
      getattr(fused, name).numpy(), getattr(reference, name).numpy(), rtol=1e-5
    )
  np.testing.assert_allclose(
    np.float32(fused(images, training=False)),
    np.float32(reference(images, training=False)),
    atol=tolerance,
  )
  # Gradients through the fused kernel (inputs, gamma, beta) equal Keras'.
  if policy == "float32":
    images = tf.constant(images)
    gradients = []
    for layer in (reference, fused):
      with tf.GradientTape() as tape:
        tape.watch(images)
        loss = tf.reduce_sum(tf.square(layer(images, training=True)) * tf.range(5.0))
      gradients.append(tape.gradient(loss, [images, layer.gamma, layer.beta]))
    for expected, actual in zip(*gradients, strict=True):
      np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_fused_and_stock_batch_norm_models_share_checkpoints_and_outputs(tmp_path):
  fused = models.create_model("resnet8")
  stock = models.create_model("resnet8", fused_batch_norm=False)
  assert isinstance(fused.stem_bn, batch_norm.FusedBatchNormalization)
  assert not isinstance(stock.stem_bn, batch_norm.FusedBatchNormalization)
  path = tf.train.Checkpoint(model=fused).write(str(tmp_path / "ckpt"))
  tf.train.Checkpoint(model=stock).read(path).assert_existing_objects_matched()
  images = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
  for training in (True, False):
    np.testing.assert_allclose(
      stock(images, training=training).numpy(),
      fused(images, training=training).numpy(),
      atol=1e-4,
    )


@pytest.mark.parametrize(
  "kwargs", [{"axis": 1}, {"axis": 1, "scale": False}, {"scale": False}, {"center": False}]
)
def test_fused_batch_norm_equals_keras_without_scale_or_channels_last(kwargs):
  # A scale-less layer (airbench's) runs the fused kernel with a scale of ones;
  # channels-first and offset-less layers go through Keras' own implementation.
  images = np.random.default_rng(2).normal(1.0, 2.0, size=(4, 3, 5, 5)).astype(np.float32)
  reference = keras.layers.BatchNormalization(**kwargs)
  fused = batch_norm.FusedBatchNormalization(**kwargs)
  for training in (True, False):
    np.testing.assert_allclose(
      fused(images, training=training).numpy(),
      reference(images, training=training).numpy(),
      atol=1e-5,
    )
