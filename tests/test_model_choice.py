"""train.py with any registered model: a new family end to end, the parameter count in
run.json, and what a model cannot take refused before anything is written."""

import dataclasses
import json
import logging
import os
import shutil

import numpy as np
import pytest

import train
from resnet import config as config_lib
from resnet import models, run_record
from tests.test_train import debug_config


def test_a_wide_resnet_with_dropout_trains_on_its_recipe_and_records_its_size(
  image_folder, tmp_path, caplog
):
  # WRN-10-1 stands for the Wide ResNets (same builder as wrn16_8 and wrn28_10), with
  # configs/wrn28_10.cfg's optimizer, schedule and dropout, on two replicas.
  caplog.set_level(logging.INFO, logger="absl")
  model_dir = str(tmp_path / "run")
  config = debug_config(
    image_folder,
    model="wrn10_1",
    dropout=0.3,
    optimizer="sgd",
    nesterov=True,
    learning_rate=0.1,
    lr_schedule="piecewise",
    lr_drops="0.3,0.6,0.8",
    lr_drop_factor=0.2,
    weight_decay=5e-4,
    epochs=1,
    steps_per_epoch=2,
    strategy="mirrored",  # Two replicas, each drawing its own dropout masks.
  )
  result = train.train_and_evaluate(config, model_dir)
  assert result["step"] == 2 and np.isfinite(result["validation"]["loss"])
  with open(os.path.join(model_dir, "run.json")) as file:
    record = json.load(file)
  # 77,850 at 10 classes (tests/test_model.py); the classifier here has 3 outputs.
  assert record["num_parameters"] == 77_850 - 64 * 7 - 7
  assert "Model wrn10_1: 77,395 parameters." in caplog.text
  assert record["config"]["dropout"] == 0.3
  model, _, _ = run_record.load_trained_model(model_dir)
  assert model.name == "wrn10_1" and model.stage2_block1.dropout.rate == 0.3


def _refused_before_writing(config, model_dir, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    train.train_and_evaluate(config, model_dir)
  assert not os.path.exists(model_dir)


def test_options_a_model_does_not_have_are_refused(image_folder, tmp_path):
  model_dir = str(tmp_path / "run")
  for overrides, message in [
    ({"dropout": 0.3}, r"--dropout applies to --model=wrn10_1, wrn16_8, wrn28_10 only, not "),
    ({"whitening": False}, "--nowhitening applies to --model=airbench only, not resnet8"),
    ({"model": "resnet19"}, "--model must be one of resnet8, resnet20, .*, wrn28_10, got"),
    ({"lr_drops": "0.75,0.5"}, "--lr_drops must be increasing fractions in"),
  ]:
    _refused_before_writing(debug_config(image_folder, **overrides), model_dir, message)


def test_images_or_classes_a_model_cannot_take_are_refused_before_writing(
  image_folder, tmp_path, monkeypatch
):
  model_dir = str(tmp_path / "run")
  one_class = str(tmp_path / "one_class")
  shutil.copytree(os.path.join(image_folder, "train", "bird"), f"{one_class}/train/bird")
  config = debug_config(one_class, validation_size=8, steps_per_epoch=1)
  _refused_before_writing(config, model_dir, "classifies into 2 or more classes; the dataset has 1")
  # Every dataset here is 32x32: a model that needs larger images stands in for a dataset
  # of smaller ones.
  larger = dataclasses.replace(models.MODELS["resnet8"], min_image_size=64)
  monkeypatch.setitem(models.MODELS, "resnet8", larger)
  message = r"--model=resnet8 takes images of at least 64 pixels a side; the dataset's are 32x32"
  _refused_before_writing(debug_config(image_folder), model_dir, message)
