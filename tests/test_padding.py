"""Stride-2 padding: the residual branch is aligned with the shortcut, as in the paper's
code, and runs made before that (Keras' "same") evaluate, resume and export as trained."""

import dataclasses
import importlib.util
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
from data import augment
from resnet import checkpointing, export, files, models, run_record
from resnet.models import cifar_resnet
from tests.test_train import debug_config

OLD_RUN = os.path.join(os.path.dirname(__file__), "data", "same_padding_run")


def _centre_identity_kernel(channels):
  """[3, 3, C, C] kernel that copies each channel of the input pixel at its centre."""
  kernel = np.zeros((3, 3, channels, channels), np.float32)
  kernel[1, 1] = np.eye(channels)
  return kernel


@pytest.mark.parametrize("size", [32, 16, 8])
def test_a_symmetric_stride_2_convolution_samples_the_pixels_the_shortcut_keeps(size):
  # A convolution whose kernel is the identity at its centre returns the pixels it is
  # centred on: with the paper's padding they are the shortcut's (2i), so the two
  # branches of a downsampling block add up pixels of the same place.
  images = np.random.default_rng(0).normal(size=(2, size, size, 16)).astype(np.float32)
  block = cifar_resnet.BasicBlock(16, strides=2, stride2_padding="symmetric")
  block(images)  # Builds the weights.
  block.conv1.kernel.assign(_centre_identity_kernel(16))
  convolved = block.conv1(images).numpy()  # It pads itself.
  shortcut = cifar_resnet.option_a_shortcut(images, filters=16, strides=2).numpy()
  np.testing.assert_array_equal(convolved, shortcut)
  # Keras' "same" is centred one pixel down and right of the shortcut (2i + 1).
  legacy = cifar_resnet.BasicBlock(16, strides=2, stride2_padding="same")
  legacy(images)
  legacy.conv1.kernel.assign(_centre_identity_kernel(16))
  np.testing.assert_array_equal(legacy.conv1(images).numpy(), images[:, 1::2, 1::2, :])
  assert not np.allclose(legacy.conv1(images).numpy(), shortcut)


def asymmetric_convolutions(model):
  """Paths of `model`'s convolutions that pad one side more than the other (none allowed).

  The rule behind the fix, checked for every registered model by test_model's
  per-model test (which builds each model once): a convolution pads the same on both
  sides. Keras' "same" does so only at stride 1 with an odd kernel; a stride-2
  convolution is "valid" after an explicit symmetric pad (ResNet-9 and airbench
  downsample by max pooling, whose 2x2 windows over an even or odd size need no padding).
  """
  convolutions = [
    layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Conv2D)
  ]
  assert convolutions
  return [
    layer.path
    for layer in convolutions
    if not (
      layer.padding == "valid"
      or (
        layer.padding == "same"
        and layer.strides == (1, 1)
        and all(size % 2 for size in layer.kernel_size)
      )
    )
  ]


def test_the_padding_rule_catches_keras_same_at_stride_2():
  assert asymmetric_convolutions(models.create_model("resnet8")) == []
  legacy = models.create_model("resnet8", stride2_padding="same")
  assert len(asymmetric_convolutions(legacy)) == 2  # The two stride-2 convolutions.


def test_new_models_pad_symmetrically_and_legacy_keras_configs_mean_same():
  model = models.create_model("resnet8")
  assert model.stride2_padding == "symmetric"
  config = model.get_config()
  assert config["stride2_padding"] == "symmetric"
  legacy_config = {key: value for key, value in config.items() if key != "stride2_padding"}
  assert cifar_resnet.ResNet.from_config(legacy_config).stride2_padding == "same"
  with pytest.raises(ValueError, match="stride2_padding must be one of"):
    cifar_resnet.ResNet(8, stride2_padding="valid")


def _old_run_images(root):
  """Writes the old run's image folder (tests/data/make_same_padding_run.py) under root."""
  path = os.path.join(os.path.dirname(OLD_RUN), "make_same_padding_run.py")
  spec = importlib.util.spec_from_file_location("make_same_padding_run", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.write_folder(root)
  return root


@pytest.fixture
def old_run(tmp_path):
  """A copy of a run trained at commit bdb11b7 (before the option), its data rebuilt."""
  model_dir = str(tmp_path / "run")
  shutil.copytree(OLD_RUN, model_dir)
  images = _old_run_images(str(tmp_path / "images"))
  record = files.read_json(os.path.join(model_dir, "run.json"))
  assert "stride2_padding" not in record["config"]  # What old runs look like.
  record["config"]["dataset"] = f"folder:{images}"  # Where this test rebuilt its images.
  files.write_json(os.path.join(model_dir, "run.json"), record)
  return model_dir, images


def _probe_logits(model):
  probe = np.load(os.path.join(OLD_RUN, "probe_logits.npz"))
  return model(augment.normalize(probe["images"]), training=False).numpy(), probe["logits"]


def test_a_run_made_before_the_option_predicts_exactly_as_it_did(old_run):
  model_dir, _ = old_run
  model, _, _ = run_record.load_trained_model(model_dir)
  assert model.stride2_padding == "same"
  logits, logits_then = _probe_logits(model)
  np.testing.assert_allclose(logits, logits_then, rtol=1e-5, atol=1e-5)
  # The same weights in today's padding give other logits: the record is what keeps them.
  symmetric = models.create_model("resnet8", num_classes=3)
  symmetric.set_weights(model.get_weights())
  assert not np.allclose(_probe_logits(symmetric)[0], logits_then, atol=1e-3)


def test_a_run_made_before_the_option_resumes_and_exports_as_trained(old_run):
  model_dir, images = old_run
  old_config = files.read_json(os.path.join(model_dir, "run.json"))["config"]
  fields = {field.name for field in dataclasses.fields(train.config_lib.Config)}
  recorded = {key: value for key, value in old_config.items() if key in fields}
  # One more epoch than it trained, with --stride2_padding left at its default.
  config = dataclasses.replace(debug_config(images), **{**recorded, "epochs": 2, "export": True})
  assert config.stride2_padding == "auto"
  result = train.train_and_evaluate(config, model_dir)
  assert result["step"] == 6
  record = files.read_json(os.path.join(model_dir, "run.json"))
  assert record["config"]["stride2_padding"] == "same"
  exported = keras.saving.load_model(export.export_paths(model_dir)["keras"])
  assert exported.get_layer("resnet8").get_config()["stride2_padding"] == "same"
  # The export (uint8 in, probabilities out) is the best checkpoint in the legacy network.
  best, _, _ = run_record.load_trained_model(model_dir)
  probe = np.load(os.path.join(OLD_RUN, "probe_logits.npz"))["images"]
  expected = tf.nn.softmax(_probe_logits(best)[0]).numpy()
  np.testing.assert_allclose(exported(probe).numpy(), expected, atol=1e-5)
  # Asking for the other padding on it is refused, with the flag and both values named.
  with pytest.raises(checkpointing.CheckpointError, match="--stride2_padding='same' there"):
    train.train_and_evaluate(dataclasses.replace(config, stride2_padding="symmetric"), model_dir)


def test_a_new_run_records_symmetric_padding(image_folder, tmp_path):
  model_dir = str(tmp_path / "run")
  config = debug_config(image_folder, epochs=1, steps_per_epoch=1)
  train.train_and_evaluate(config, model_dir)
  with tf.io.gfile.GFile(os.path.join(model_dir, "run.json")) as file:
    assert json.load(file)["config"]["stride2_padding"] == "symmetric"
  model, _, _ = run_record.load_trained_model(model_dir)
  assert model.stride2_padding == "symmetric"
