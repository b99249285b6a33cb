"""MODEL_DIR/run.json: what a run was (flags, data, machines, versions), and loading its model.

eval.py, the export and the results table rebuild a run's model from this
record, not from training flags; a resume whose run-defining flags differ from
the record is refused.
"""

import dataclasses
import json
import os
import platform
import subprocess
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from data import datasets
from resnet import checkpointing, files, machine, models
from resnet.models import cifar_resnet

RUN_RECORD = "run.json"
# Config keys that define the model, the data or the optimizer's state: resuming with other
# values is refused. Runs recorded before a key existed had its default (RUN_KEY_DEFAULTS).
RUN_DEFINING_KEYS = (
  "model",
  "stride2_padding",
  "dataset",
  "label_feature",
  "train_split",
  "image_size",
  "validation_size",
  "batch_size",
  "seed",
  "optimizer",
  # What the model is trained on: the augmentation added with issue 27.
  "cutout",
  "randaugment",
  "autoaugment",
  "mixup",
  "cutmix",
  "ema_decay",
)
RUN_KEY_DEFAULTS = {
  "optimizer": "adam",
  "stride2_padding": cifar_resnet.LEGACY_STRIDE2_PADDING,
  "label_feature": "label",
  "train_split": "train",
  "image_size": 0,
  **dict(cutout=0, randaugment="", autoaugment=False, mixup=0.0, cutmix=0.0),
  "ema_decay": 0.0,
}


def read_run_record(model_dir):
  """The run record of a training run, or None when `model_dir` has none."""
  path = os.path.join(model_dir, RUN_RECORD)
  try:
    return files.read_json(path)
  except (tf.errors.OpError, json.JSONDecodeError) as error:
    raise checkpointing.CheckpointError(f"Cannot read the run record {path}: {error}") from None


def trained_run_record(model_dir):
  """The run record of a training run.

  Raises:
    CheckpointError: `model_dir` holds no run.json (it is not a training run).
  """
  record = read_run_record(model_dir)
  if record is None:
    raise checkpointing.CheckpointError(
      f"{model_dir} is not a training run: it has no {RUN_RECORD}."
    )
  return record


def resolve_stride2_padding(model_dir, requested):
  """--stride2_padding: `requested`, or for "auto" "symmetric" in a new run and what the
  run in `model_dir` was built with when it resumes ("same" for runs recorded before the
  option existed), so that the same command resumes old runs as they were trained."""
  if requested != "auto":
    return requested
  record = read_run_record(model_dir)
  if record is None:
    return "symmetric"
  return {**RUN_KEY_DEFAULTS, **record["config"]}["stride2_padding"]


def input_normalization(record):
  """{"mean": [3], "std": [3]}, [0, 1] pixel units: how the run normalised its images (for
  augment.normalize); CIFAR-10's statistics for runs recorded before the key existed."""
  normalization = record.get("input_normalization") or datasets.CIFAR10.normalization
  return {"mean": list(normalization["mean"]), "std": list(normalization["std"])}


def image_size(record):
  """(height, width) of the images the run trained on (its `image_size` fact; 32x32 for runs
  recorded before the key existed): what evaluation, the export and predict feed it."""
  height, width = record.get("image_size") or (datasets.IMAGE_SIZE, datasets.IMAGE_SIZE)
  return int(height), int(width)


def weights_key(record):
  """Which of a run's models its checkpoints export: "ema_model", the average of the
  weights (resnet/ema.py), when the run kept one (--ema_decay), else "model"."""
  return "ema_model" if {**RUN_KEY_DEFAULTS, **record["config"]}["ema_decay"] else "model"


def _model_definition(record):
  """What makes two runs' models interchangeable: name, classes, padding, normalisation."""
  config = {**RUN_KEY_DEFAULTS, **record["config"]}
  return {
    "--model": config["model"],
    "classes": len(record["class_names"]),
    "--stride2_padding": config["stride2_padding"],
    "input normalisation": input_normalization(record),
  }


def resolve_model_facts(model_dir, config, class_names, new_run_normalization):
  """A run's model-defining facts beyond its flags, before it starts.

  A resumed run keeps those of its record. A new run with `config.init_from` takes
  --stride2_padding (when "auto") and the input normalisation from that run, whose
  --model and number of classes must be this run's; any other new run pads
  symmetrically and normalises with `new_run_normalization` (its dataset's statistics,
  data.datasets.input_normalization).

  Returns:
    (`config` with stride2_padding resolved, {"input_normalization": ...} to record).

  Raises:
    CheckpointError: --init_from is no training run or its model differs; or `model_dir`
      holds an imported model (resnet.tools.import_reference), not a run to resume.
  """
  record = read_run_record(model_dir)
  if record is not None and "imported_from" in record:
    raise checkpointing.CheckpointError(
      f"{model_dir} holds imported weights, not a run to resume: train from them with "
      f"--init_from={model_dir} and a new --model_dir."
    )
  if record is not None or not config.init_from:
    padding = resolve_stride2_padding(model_dir, config.stride2_padding)
    normalization = input_normalization(record) if record else new_run_normalization
    facts = {"input_normalization": normalization}
    return dataclasses.replace(config, stride2_padding=padding), facts
  source = _model_definition(trained_run_record(config.init_from))
  padding = config.stride2_padding
  if padding == "auto":
    padding = source["--stride2_padding"]
  wanted = {"--model": config.model, "classes": len(class_names), "--stride2_padding": padding}
  _check_same_model(config.init_from, source, wanted)
  checkpointing.best_checkpoint_path(config.init_from)  # Fails now, before a file is written.
  facts = {"input_normalization": source["input normalisation"]}
  return dataclasses.replace(config, stride2_padding=padding), facts


def _check_same_model(source_dir, source, wanted):
  """CheckpointError naming the first of `wanted`'s facts that `source`'s differ from."""
  for key, value in wanted.items():
    if source[key] != value:
      raise checkpointing.CheckpointError(
        f"--init_from={source_dir} has {key} {source[key]!r}, this run {value!r}: its "
        "weights do not fit this run's model."
      )


def init_model_from_run(model, source_dir, record):
  """Sets `model`'s weights (not an optimizer's) from the best checkpoint of the run in
  `source_dir`, a new run's starting point (--init_from): those it exports (weights_key).

  Args:
    model: the new run's model; record: its run record.

  Returns:
    The checkpoint path restored.

  Raises:
    CheckpointError: no run or best checkpoint there, or a model that differs from
      this run's (name, classes, padding, input normalisation).
  """
  source_record = trained_run_record(source_dir)
  _check_same_model(source_dir, _model_definition(source_record), _model_definition(record))
  path = checkpointing.best_checkpoint_path(source_dir)
  checkpointing.restore_model(model, path, weights_key(source_record))
  logging.info("Initialised the model from %s (--init_from).", path)
  return path


def _git_commit():
  try:
    return subprocess.run(
      ["git", "rev-parse", "HEAD"],
      capture_output=True,
      text=True,
      check=True,
      cwd=os.path.dirname(os.path.abspath(__file__)),
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def start_run_record(model_dir, config, write=True, **facts):
  """Creates MODEL_DIR/run.json, or extends it when a run resumes.

  Args:
    model_dir: the run's directory (must exist if `write`).
    config: dict of the resolved flags.
    write: False only checks compatibility (the non-chief workers of a
      multi-worker run, which must refuse exactly when the chief does).
    **facts: more entries to record (classes, dataset sizes, devices, ...).

  Raises:
    CheckpointError: model_dir holds a run whose RUN_DEFINING_KEYS differ;
      nothing is written then.
  """
  record = read_run_record(model_dir)
  if record is None:
    record = {"config": config, "starts": []}
  else:
    previous = {**RUN_KEY_DEFAULTS, **record["config"]}
    changed = [key for key in RUN_DEFINING_KEYS if previous.get(key) != config.get(key)]
    if changed:
      details = ", ".join(
        f"--{k}={previous.get(k)!r} there, {config.get(k)!r} now" for k in changed
      )
      raise checkpointing.CheckpointError(
        f"{model_dir} holds a run with other settings ({details}). Use a "
        f"new --model_dir, or the same flags to resume it."
      )
    if previous != config:
      logging.warning(
        "Resuming with changed flags: %s", {k: v for k, v in config.items() if previous.get(k) != v}
      )
    record["config"] = config
  record.update(
    facts,
    git_commit=_git_commit(),
    python=platform.python_version(),
    versions={"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__},
  )
  record["starts"].append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
  # Per start, as a resumed run may land on another machine (figures are per machine).
  record.setdefault("machines", []).append(machine.machine_description())
  if write:
    files.write_json(os.path.join(model_dir, RUN_RECORD), record)
  return record


def start_training_record(model_dir, config, write, data_facts, model_facts, strategy, choice):
  """start_run_record for train.py: a resnet.config.Config, the data's and the model's
  facts (TrainingData.facts, resolve_model_facts), the strategy and the precision choice.

  Returns:
    The run record; raises as start_run_record.
  """
  return start_run_record(
    model_dir,
    dataclasses.asdict(config),
    write=write,
    **data_facts,
    **model_facts,
    peak_learning_rate=config.peak_learning_rate,
    num_replicas=strategy.num_replicas_in_sync,
    precision_choice=choice,
    devices=[device.name for device in tf.config.list_logical_devices()],
  )


def load_trained_model(model_dir, checkpoint_path=None):
  """The float32 model of a train.py run with its weights from `checkpoint_path` (default:
  the best checkpoint): the average of the weights with --ema_decay (weights_key), which
  validation chose the best checkpoint by. Call it inside a strategy's scope to place it.

  Returns:
    (model, run record, the checkpoint path restored).

  Raises:
    CheckpointError: no run.json, no best checkpoint, or a checkpoint of another model.
  """
  record = trained_run_record(model_dir)
  checkpoint_path = checkpoint_path or checkpointing.best_checkpoint_path(model_dir)
  # float32 whatever the run's --precision: checkpoints hold float32 weights.
  config = {**RUN_KEY_DEFAULTS, **record["config"]}
  model = models.create_model(
    config["model"],
    num_classes=len(record["class_names"]),
    precision="float32",
    stride2_padding=config["stride2_padding"],
    dropout=config.get("dropout", 0.0),  # As trained (inactive in inference).
    image_size=image_size(record),
  )
  checkpointing.restore_model(model, checkpoint_path, weights_key(record))
  return model, record, checkpoint_path
