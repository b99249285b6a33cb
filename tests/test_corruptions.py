"""eval.py --corruptions: CIFAR-10-C's figures, mCE and heat map on TFDS mock data; offline
help; bad flags."""

import dataclasses
import importlib
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from tensorboard.backend.event_processing import event_accumulator

from data import augment, datasets, sources
from data import corruptions as corruption_data
from resnet import checkpointing, corruptions, files, models, run_record
from resnet import config as config_lib

eval_main = importlib.import_module("eval")

NUM_IMAGES = 20
# Examples the model gets right, of NUM_IMAGES, in each config (None: the clean cifar10 test).
CORRECT = {None: 18, "snow_1": 14, "snow_5": 5, "fog_1": 15, "fog_5": 9}


@pytest.fixture
def cifar10_run(tmp_path):
  """A CIFAR-10 run directory, untrained (no training needed to count): an initialised
  resnet8 as its best checkpoint, and run.json with the classes TFDS's mock cifar10 has."""
  model_dir = str(tmp_path / "run")
  model = models.create_model("resnet8", num_classes=10)
  checkpoint = tf.train.Checkpoint(model=model, **checkpointing.create_counters())
  best_dir = os.path.join(model_dir, checkpointing.BEST_DIR)
  tf.train.CheckpointManager(checkpoint, best_dir, 1, checkpoint_name="best").save(0)
  config = dataclasses.asdict(
    config_lib.Config(model="resnet8", dataset="cifar10", stride2_padding="symmetric")
  )
  run_record.start_run_record(
    model_dir,
    config,
    class_names=[str(label) for label in range(10)],  # Mock data's info has no names.
    input_normalization=datasets.CIFAR10.normalization,
  )
  return model_dir, model


def mock_examples(model):
  """A TFDS `_as_dataset` for mock_data: the same NUM_IMAGES images in every config, labelled
  so that `model` gets CORRECT[config] of them right (the rest get the next class)."""
  images = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, 32, 32, 3), np.uint8)
  predicted = model(augment.normalize(images), training=False).numpy().argmax(axis=1)

  def as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    correct = CORRECT[builder.builder_config and builder.builder_config.name]
    labels = np.where(np.arange(NUM_IMAGES) < correct, predicted, (predicted + 1) % 10)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels.astype(np.int64)})

  return as_dataset


def test_cifar10_c_report_counts_each_config_and_defines_mce(cifar10_run, monkeypatch):
  model_dir, model = cifar10_run
  monkeypatch.setattr(sources, "download_host_reachable", lambda host: True)
  names, levels = corruption_data.select(["fog", "snow"], ["5", "1"])
  assert (names, levels) == (("snow", "fog"), (1, 5))  # The paper's order, ascending.
  with tfds.testing.mock_data(as_dataset_fn=mock_examples(model)):
    metrics = corruptions.evaluate_corruptions(
      model_dir, names, levels, batch_size=8, strategy_name="default"
    )
  accuracy = {c: {s: CORRECT[f"{c}_{s}"] / NUM_IMAGES for s in "15"} for c in names}
  assert metrics["accuracy"] == accuracy  # Correct / seen, exactly.
  assert metrics["clean_accuracy"] == pytest.approx(0.9)
  errors = [0.3, 0.75, 0.25, 0.55]  # snow 1, 5, fog 1, 5.
  assert metrics["mce"] == pytest.approx(np.mean(errors))  # 0.4625
  assert metrics["relative_mce"] == pytest.approx(np.mean(errors) - 0.1)  # Minus clean error.
  assert metrics["benchmark_mce"] is None  # 2 of the 15 benchmark corruptions only.
  assert metrics["mean_accuracy_per_severity"] == pytest.approx({"1": 0.725, "5": 0.35})
  assert metrics["mean_accuracy_per_corruption"] == pytest.approx({"snow": 0.475, "fog": 0.6})
  assert metrics["num_examples"] == {c: {"1": NUM_IMAGES, "5": NUM_IMAGES} for c in names}

  output = os.path.join(model_dir, "eval", "corruptions")
  assert files.read_json(os.path.join(output, "metrics.json")) == metrics
  report = open(os.path.join(output, "report.txt")).read().splitlines()
  assert report[2].split() == ["snow", "0.7000", "0.2500", "0.4750"]
  assert "mCE 0.4625" in report[-1] and "relative mCE 0.3625" in report[-1]
  heatmap = tf.io.decode_png(open(os.path.join(output, "heatmap.png"), "rb").read())
  assert heatmap.shape[0] > 150 and heatmap.shape[1] > 300
  events = glob_events(os.path.join(model_dir, "tensorboard", "eval_corruptions"))
  assert {"mce", "relative_mce", "clean_accuracy", "accuracy/fog_5"} <= set(
    events.Tags()["tensors"]
  )
  assert tf.make_ndarray(events.Tensors("mce")[0].tensor_proto) == pytest.approx(0.4625)
  assert "heatmap" in events.Tags()["tensors"]


def glob_events(directory):
  accumulator = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
  return accumulator.Reload()


def test_offline_it_says_what_to_download_and_writes_nothing(cifar10_run, tmp_path, monkeypatch):
  model_dir, _ = cifar10_run
  monkeypatch.setattr(sources, "download_host_reachable", lambda host: host != "zenodo.org")
  before = sorted(os.listdir(model_dir))
  with pytest.raises(sources.DataError) as error:
    corruptions.evaluate_corruptions(
      model_dir, ("fog",), (1,), tfds_data_dir=str(tmp_path / "tfds"), strategy_name="default"
    )
  message = str(error.value)
  assert "(cifar10_corrupted/fog_1) is not prepared" in message and "\n" not in message
  assert "tfds build cifar10_corrupted --data_dir=DIR" in message and "--tfds_data_dir" in message
  assert sorted(os.listdir(model_dir)) == before


@pytest.mark.parametrize(
  "args, message",
  [
    (["--corruptions=fgo"], "--corruptions: unknown fgo; 'all' or some of: gaussian_noise,"),
    (["--corruptions=fog", "--severities=0,5"], "--severities=0,5: each in 1..5."),
    (["--severities=1"], "--severities applies with --corruptions only."),
    (["--corruptions=all", "--dataset=cifar10"], "--dataset does not apply"),
    (["--corruptions=all", "--split=test"], "--split does not apply"),
  ],
)
def test_bad_corruption_flags_are_one_clear_line(args, message, tmp_path):
  flag_values = flags.FlagValues()
  eval_main.define_flags(flag_values)
  flag_values(["eval.py", f"--model_dir={tmp_path}", *args])
  with pytest.raises((sources.DataError, config_lib.ConfigError), match=re.escape(message)):
    eval_main.evaluate_corruptions(flag_values)
  assert os.listdir(tmp_path) == []


def test_all_means_the_19_corruptions_and_the_15_give_the_benchmark_mce():
  names, levels = corruption_data.select(["all"], ["1", "2", "3", "4", "5"])
  assert len(names) == 19 and levels == (1, 2, 3, 4, 5)
  builder_configs = tfds.builder_cls("cifar10_corrupted").BUILDER_CONFIGS
  assert sorted(f"{c}_{s}" for c in names for s in levels) == sorted(
    config.name for config in builder_configs
  )
  clean = {"accuracy": 0.9, "ece": 0.0, "loss": 0.0, "num_examples": 1}
  figures = {
    (c, s): dict(clean, accuracy=0.5 if c in corruption_data.EXTRA_CORRUPTIONS else 0.8)
    for c in names
    for s in levels
  }
  metrics = corruptions.summarize(clean, figures, names, levels)
  assert metrics["benchmark_mce"] == pytest.approx(0.2)  # The 4 extra ones left out.
  assert metrics["mce"] == pytest.approx((15 * 0.2 + 4 * 0.5) / 19)
