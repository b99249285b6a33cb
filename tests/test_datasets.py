"""Datasets beyond CIFAR-10: TFDS names (mock data, no network), their options, image
sizes, image folders of any size, offline failures and bad input."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags

import train
from data import datasets, sources, training_data
from resnet import checkpointing, config_checks, export, run_record
from resnet import config as config_lib
from resnet.tools import predict
from tests.test_train import debug_config

eval_main = __import__("eval")


@pytest.fixture
def mock_tfds(monkeypatch):
  """TFDS's mock data for every dataset (random images of the info's shape, no network):
  its hosts reachable, as on a connected machine, where TFDS would download."""
  monkeypatch.setattr(sources, "download_host_reachable", lambda host: True)
  with tfds.testing.mock_data(num_examples=20):
    yield


def write_sized_folder(root, sizes_by_split, classes=("ant", "bee", "cow")):
  """PATH/<split>/<class>/<i>.png of the given (height, width) sizes, in turn per class;
  the class's own channel is the brightest, so the labels can be checked."""
  for split, sizes in sizes_by_split.items():
    for label, name in enumerate(classes):
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for index, (height, width) in enumerate(sizes):
        image = np.full((height, width, 3), 40, np.uint8)
        image[..., label] = 200
        data = tf.io.encode_png(image).numpy()
        with open(os.path.join(root, split, name, f"{index:03d}.png"), "wb") as file:
          file.write(data)
  return root


# --- TFDS datasets by name ------------------------------------------------------------


@pytest.mark.parametrize(
  "name, label_feature, num_classes",
  [("cifar10", "label", 10), ("cifar100", "label", 100), ("cifar100", "coarse_label", 20)],
)
def test_tfds_datasets_load_with_their_info_s_classes_and_size(
  mock_tfds, name, label_feature, num_classes
):
  images, labels, class_names = sources.load_split(name, "train", label_feature=label_feature)
  assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
  info = tfds.builder(name).info
  assert class_names == info.features[label_feature].names and len(class_names) == num_classes
  assert labels.dtype == np.int32 and 0 <= labels.min() and labels.max() < num_classes


def test_svhn_trains_on_train_plus_extra_and_holds_validation_out_of_it(mock_tfds, monkeypatch):
  read = []
  mocked = tfds.core.DatasetBuilder.as_dataset
  with monkeypatch.context() as patch:  # Undone before mock_data restores TFDS.
    patch.setattr(
      tfds.core.DatasetBuilder,
      "as_dataset",
      lambda self, split, **kwargs: read.append(split) or mocked(self, split=split, **kwargs),
    )
    train_split, validation, class_names, source = sources.load_train_and_validation(
      "svhn_cropped", 5, train_split="train+extra"
    )
  assert read == ["train+extra"]
  assert len(train_split[1]) == 15 and len(validation[1]) == 5 and len(class_names) == 10
  assert source == "5 examples held out of the training split (train+extra)"


def test_grey_and_varying_size_datasets_become_rgb_at_one_size(mock_tfds):
  images, _, class_names = sources.load_split("mnist", "train")  # 28x28x1.
  assert images.shape == (20, 28, 28, 3) and len(class_names) == 10
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  with pytest.raises(sources.DataError, match="varying size: give --image_size"):
    sources.load_split("imagenette", "train")
  images, _, _ = sources.load_split("imagenette", "train", image_size=24)
  assert images.shape == (20, 24, 24, 3)


def test_eval_reads_the_run_s_split_labels_and_size_from_its_record(mock_tfds):
  coarse = tfds.builder("cifar100").info.features["coarse_label"].names
  config = {"dataset": "cifar100", "validation_size": 5, "label_feature": "coarse_label"}
  record = {"config": config, "class_names": coarse, "image_size": [40, 40]}
  images, labels, description = eval_main.load_eval_split(record, "validation", "cifar100", None)
  assert images.shape == (5, 40, 40, 3) and labels.max() < 20
  assert description == "cifar100 validation (5 examples held out of the training split)"
  assert eval_main.load_eval_split(record, "test", "cifar100", None)[0].shape == (20, 40, 40, 3)


# --- Offline and bad input: one line, before any download ---------------------------------


@pytest.mark.parametrize(
  "name, host",
  [
    ("cifar10", "www.cs.toronto.edu"),
    ("cifar100", "www.cs.toronto.edu"),
    ("svhn_cropped", "ufldl.stanford.edu"),
    ("mnist", "storage.googleapis.com"),  # Any TFDS name: the hosts of its checksums.
  ],
)
def test_offline_fails_at_once_naming_tfds_data_dir_and_folders(tmp_path, monkeypatch, name, host):
  asked = []
  monkeypatch.setattr(sources, "download_host_reachable", lambda h: asked.append(h) and False)

  def download(*args, **kwargs):
    raise AssertionError("TFDS was asked to download")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download)
  with pytest.raises(sources.DataError, match=f"cannot reach {host}") as error:
    sources.load_split(name, "train", str(tmp_path))
  message = str(error.value)
  assert "--tfds_data_dir" in message and "--dataset=folder:PATH" in message
  assert asked == [host] and "\n" not in message


@pytest.mark.parametrize(
  "args, message",
  [
    (["--dataset=cifar1000"], "Unknown dataset 'cifar1000': no TFDS dataset has that name"),
    (["--dataset=glue"], "'glue' is not an image-classification dataset: it has no image"),
    (
      ["--dataset=cifar10", "--label_feature=coarse_label"],
      "has no class-label feature 'coarse_label' (its class labels: label;",
    ),
    (
      ["--dataset=svhn_cropped", "--train_split=train+extar"],
      "'svhn_cropped' has no split 'extar' (its splits: extra, test, train)",
    ),
    (["--dataset=cifar100", "--train_split=train[:10"], "is not TFDS split syntax"),
  ],
  ids=["unknown-name", "no-image", "no-such-label", "no-such-split", "bad-split-syntax"],
)
def test_bad_datasets_are_one_line_and_write_nothing(tmp_path, monkeypatch, args, message):
  from tests.test_eval import train_in_process

  monkeypatch.setattr(sources, "download_host_reachable", lambda host: pytest.fail(host))
  status, printed = train_in_process([*args, f"--model_dir={tmp_path}/run"])
  assert status == 1 and message in printed and "\n" not in printed
  assert os.listdir(tmp_path) == []


# --- Image folders of any size ------------------------------------------------------------


def test_a_folder_of_mixed_sizes_is_resized_to_its_first_image_s_size(tmp_path, monkeypatch):
  root = write_sized_folder(str(tmp_path), {"train": [(20, 28), (40, 40), (20, 28), (9, 9)]})
  logged = []  # (absl's handler may keep records from caplog once a run has started.)
  monkeypatch.setattr(sources.logging, "info", lambda message, *args: logged.append(message % args))
  images, labels, class_names = sources.load_split(f"folder:{root}", "train")
  assert images.shape == (12, 20, 28, 3) and class_names == ["ant", "bee", "cow"]
  # Every image, resized or not, keeps its colour: the label's channel is the brightest.
  np.testing.assert_array_equal(images.reshape(12, -1, 3).mean(axis=1).argmax(axis=1), labels)
  (line,) = [message for message in logged if message.startswith("Resized")]
  assert line.startswith(f"Resized 6 of the 12 images of {root}/train to 20x28 ")
  assert line.endswith(f"the size of {root}/train/ant/000.png).")
  assert sources.load_split(f"folder:{root}", "train", image_size=16)[0].shape == (12, 16, 16, 3)
  with pytest.raises(sources.DataError, match="an image folder has one label"):
    sources.load_split(f"folder:{root}", "train", label_feature="coarse_label")


def test_statistics_table_and_options_are_checked_and_recorded(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="--model=airbench takes images of 25 to 48"):
    config_checks.check_model_input(config_lib.Config(model="airbench"), (64, 64), 10)
  assert config_checks.check_model_input(config_lib.Config(model="resnet20"), (96, 96), 10) is None
  # A resume that changes a dataset option is refused in one line, and writes nothing.
  config = dataclasses.asdict(config_lib.Config(dataset="cifar100"))
  run_record.start_run_record(str(tmp_path), config)
  before = open(tmp_path / "run.json").read()
  for key, default, value in (
    ("label_feature", "label", "coarse_label"),
    ("train_split", "train", "train+extra"),
  ):
    refusal = re.escape(f"--{key}='{default}' there, '{value}' now")
    with pytest.raises(checkpointing.CheckpointError, match=refusal):
      run_record.start_run_record(str(tmp_path), {**config, key: value})
  with pytest.raises(checkpointing.CheckpointError, match="--image_size=0 there, 40 now"):
    run_record.start_run_record(str(tmp_path), {**config, "image_size": 40})
  assert open(tmp_path / "run.json").read() == before
  # Runs recorded before the options existed had their defaults, and 32x32 images.
  old = json.loads(before)
  for key in ("label_feature", "train_split", "image_size"):
    del old["config"][key]
  assert run_record.image_size(old) == (32, 32)
  with open(tmp_path / "run.json", "w") as file:
    json.dump(old, file)
  assert run_record.start_run_record(str(tmp_path), config)["config"] == config


def test_a_run_on_24x24_images_records_its_size_and_its_tools_use_it(tmp_path):
  root = write_sized_folder(str(tmp_path / "data"), {"train": [(24, 24)] * 16, "test": [(24, 24)]})
  model_dir = str(tmp_path / "run")
  config = debug_config(root, validation_size=8, epochs=1, steps_per_epoch=2, export=True)
  assert train.train_and_evaluate(config, model_dir)["step"] == 2
  record = run_record.read_run_record(model_dir)
  data = training_data.TrainingData.load_for(config)
  assert record["image_size"] == [24, 24] and data.train[0].shape[1:] == (24, 24, 3)
  assert record["input_normalization"] == datasets.statistics(data.train[0])  # Its own.
  serve = tf.saved_model.load(export.export_paths(model_dir)["saved_model"])
  spec = serve.signatures["serving_default"].structured_input_signature[1]["images"]
  assert spec.shape.as_list() == [None, 24, 24, 3]
  photo = str(tmp_path / "photo.png")  # 50x50: predict resizes it to the run's 24x24.
  tf.io.write_file(photo, tf.io.encode_png(np.full((50, 50, 3), 200, np.uint8)))
  assert predict.read_image(photo, (24, 24)).shape == (24, 24, 3)
  (result,) = predict.predict_files(export.export_paths(model_dir)["saved_model"], [photo])
  assert result["probabilities"].shape == (3,)


def parse_config(path):
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(["train.py", f"--flagfile={path}", "--model_dir=/tmp/unused"])
  return config_lib.config_from_flags(flag_values)


@pytest.mark.parametrize(
  "base", ["resnet56_paper", "resnet110_paper", "wrn28_10", "preact_resnet18"]
)
def test_cifar100_configs_are_their_cifar10_recipes_on_cifar100(base):
  config = parse_config(f"configs/{base}_cifar100.cfg")
  assert config == dataclasses.replace(parse_config(f"configs/{base}.cfg"), dataset="cifar100")
  assert config.label_feature == "label" and config.train_split == "train"


def test_svhn_config_never_flips_digits():
  config = parse_config("configs/resnet20_svhn.cfg")
  expected = dict(dataset="svhn_cropped", epochs=40, flips="none")
  assert config == dataclasses.replace(parse_config("configs/resnet20_paper.cfg"), **expected)
