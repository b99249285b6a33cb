"""The CIFAR baselines: parameter counts against their sources, padding, and complete
checkpoints and .keras files."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnet.models import cifar_stem_resnet, common, preact_resnet

# Trainable parameters at 10 classes, as the sources' PyTorch models count them
# (kuangliu/pytorch-cifar; xternalz/WideResNet-pytorch), the papers' 11.2M, 23.5M, 11.0M, 36.5M.
BUILDERS = {
  "resnet18": (lambda: cifar_stem_resnet.CifarStemResNet("resnet18"), 11_173_962),
  "resnet50": (lambda: cifar_stem_resnet.CifarStemResNet("resnet50"), 23_520_842),
  "preact_resnet18": (preact_resnet.preact_resnet18, 11_171_146),
  "wrn16_8": (lambda: preact_resnet.wide_resnet(16, 8), 10_961_370),
  "wrn28_10": (lambda: preact_resnet.wide_resnet(28, 10, dropout=0.3), 36_479_194),
}


def built(name):
  model = BUILDERS[name][0]()
  model(np.zeros((1, 32, 32, 3), np.float32))
  return model


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_parameter_counts_match_the_sources(name):
  model = built(name)
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == BUILDERS[name][1]


@pytest.mark.parametrize("size", [32, 15])
def test_a_symmetric_convolution_at_stride_2_is_centred_on_the_even_pixels(size):
  images = np.random.default_rng(0).normal(size=(2, size, size, 4)).astype(np.float32)
  layer = common.conv(4, 3, strides=2)
  assert isinstance(layer, common.SymmetricConv2D)
  layer.build(images.shape)
  kernel = np.zeros((3, 3, 4, 4), np.float32)
  kernel[1, 1] = np.eye(4)
  layer.kernel.assign(kernel)
  np.testing.assert_array_equal(layer(images).numpy(), images[:, ::2, ::2, :])
  # The projection shortcut (1x1, stride 2) samples the same pixels.
  projection = common.conv(4, 1, strides=2)
  projection.build(images.shape)
  projection.kernel.assign(np.eye(4, dtype=np.float32)[None, None])
  np.testing.assert_array_equal(projection(images).numpy(), images[:, ::2, ::2, :])


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "wrn16_8"])
def test_checkpoints_and_keras_files_hold_every_variable(name, tmp_path):
  model = built(name)
  images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  for variable in model.variables:  # Not the initial values, so a missed one shows.
    variable.assign(variable + tf.random.normal(variable.shape, stddev=0.01) + 0.01)
  expected = model(images, training=False).numpy()
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  fresh = built(name)
  tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
  np.testing.assert_allclose(fresh(images, training=False).numpy(), expected, atol=1e-5)
  reader = tf.train.load_checkpoint(path)
  saved = [key for key in reader.get_variable_to_shape_map() if key.startswith("model/")]
  assert len([k for k in saved if k.endswith("VARIABLE_VALUE")]) == len(model.variables)
  model.save(tmp_path / "model.keras")
  loaded = keras.saving.load_model(tmp_path / "model.keras")
  np.testing.assert_allclose(loaded(images, training=False).numpy(), expected, atol=1e-5)


def test_wide_resnet_dropout_acts_in_training_only_and_bad_depths_are_refused():
  model = preact_resnet.wide_resnet(10, 1, dropout=0.5)
  images = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype(np.float32)
  model(images)
  assert model.stage1_block1.dropout.rate == 0.5
  np.testing.assert_array_equal(model(images).numpy(), model(images).numpy())
  with pytest.raises(ValueError, match="6n \\+ 4"):
    preact_resnet.wide_resnet(27, 10)
