"""Manual checkpointing: the latest state for resuming, the best model by validation accuracy.

MODEL_DIR/checkpoints/  latest training state (model, optimizer, step, epoch,
                        best validation accuracy), a few kept for safety.
MODEL_DIR/best/         rewritten only when validation accuracy improves; the
                        best accuracy is stored inside the checkpoint and in
                        best/best.json for people and scripts.
MODEL_DIR/run.json      what eval.py needs to rebuild the model, and the record
                        of the run (resolved flags, versions, restarts).
"""

import json
import os
import platform
import subprocess
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from resnet import model as model_lib

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
RUN_RECORD = "run.json"
# Config keys that define the model, the data or the optimizer's state: resuming with other
# values is refused. Runs recorded before a key existed had its default (RUN_KEY_DEFAULTS).
RUN_DEFINING_KEYS = ("model", "dataset", "validation_size", "batch_size", "seed", "optimizer")
RUN_KEY_DEFAULTS = {"optimizer": "adam"}


class CheckpointError(ValueError):
  """A checkpoint or model directory that cannot be used, with a message for the user."""


def create_training_state():
  """Step, epoch, best accuracy and NaN-recovery variables (create them inside
  strategy.scope())."""
  return {
    "step": tf.Variable(0, dtype=tf.int64, trainable=False, name="step"),
    "epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch"),
    # -1 until the first validation, so that any accuracy is an improvement.
    "best_accuracy": tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_accuracy"),
    # Learning-rate multiplier and count of recoveries from a non-finite loss.
    "lr_multiplier": tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_multiplier"),
    "nan_recoveries": tf.Variable(0, dtype=tf.int64, trainable=False, name="nan_recoveries"),
  }


def create_managers(checkpoint, model_dir):
  """(latest, best) tf.train.CheckpointManagers for one tf.train.Checkpoint."""
  latest = tf.train.CheckpointManager(
    checkpoint, os.path.join(model_dir, LATEST_DIR), max_to_keep=3
  )
  best = tf.train.CheckpointManager(
    checkpoint, os.path.join(model_dir, BEST_DIR), max_to_keep=1, checkpoint_name="best"
  )
  return latest, best


def first_line(error):
  """The first line of an exception's message (TF's run to pages), or its type's name."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


def restore_newest_readable(checkpoint, manager):
  """Restores the newest checkpoint of `manager` that reads back whole.

  A damaged newest checkpoint (a kill during a write, a full disk) falls back
  to the previous one instead of ending the run.

  Returns:
    The restored path, or None when `manager` has no checkpoint.

  Raises:
    CheckpointError: there are checkpoints but none of them can be restored.
  """
  errors = []
  for path in reversed(manager.checkpoints):
    try:
      checkpoint.restore(path).assert_existing_objects_matched()
      return path
    except Exception as error:  # noqa: BLE001 - damaged files raise OpError, IndexError, ...
      logging.warning(
        "Cannot restore %s (%s); trying the previous checkpoint.", path, first_line(error)
      )
      errors.append(f"{os.path.basename(path)}: {first_line(error)}")
  if errors:
    raise CheckpointError(
      f"No checkpoint in {manager.directory} can be restored ("
      f"{'; '.join(errors)}). Move the directory away to start afresh."
    )
  return None


def save_best(best_manager, validation, *, epoch, step, write_record=True):
  """Saves the best checkpoint and (if `write_record`) best/best.json describing it.

  Under MultiWorkerMirroredStrategy every worker must save (saving may run
  collective ops), each to its own manager's directory; only the chief
  writes the record.
  """
  best_manager.save(checkpoint_number=step)
  if not write_record:
    return
  write_json(
    os.path.join(best_manager.directory, "best.json"),
    {
      "accuracy": validation["accuracy"],
      "loss": validation["loss"],
      "epoch": epoch,
      "step": step,
      "checkpoint": os.path.basename(best_manager.latest_checkpoint),
    },
  )


def write_json(path, payload):
  """Writes JSON atomically: a reader sees the old file or the new one, never half of one."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as file:
    json.dump(payload, file, indent=2, sort_keys=True, default=_to_builtin)
    file.write("\n")
  os.replace(file.name, path)


def _to_builtin(value):
  """JSON fallback for numpy scalars and arrays."""
  return value.tolist() if hasattr(value, "tolist") else str(value)


def read_run_record(model_dir):
  """The run record of a training run, or None when `model_dir` has none."""
  path = os.path.join(model_dir, RUN_RECORD)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as file:
      return json.load(file)
  except (OSError, json.JSONDecodeError) as error:
    raise CheckpointError(f"Cannot read the run record {path}: {error}") from None


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


def cpu_model(cpuinfo_path="/proc/cpuinfo"):
  """The CPU's model name ("AMD EPYC", ...) from /proc/cpuinfo, else platform's guess."""
  try:
    with open(cpuinfo_path) as file:
      for line in file:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_description():
  """{"host", "cpu", "cpu_count", "gpus"}: what a run's speed figures were measured on."""
  gpus = []
  for device in tf.config.list_physical_devices("GPU"):
    details = tf.config.experimental.get_device_details(device)
    gpus.append(details.get("device_name", device.name))
  return {"host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpus": gpus}


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
      raise CheckpointError(
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
  record.setdefault("machines", []).append(machine_description())
  if write:
    write_json(os.path.join(model_dir, RUN_RECORD), record)
  return record


def best_checkpoint_path(model_dir):
  """The path of MODEL_DIR's best checkpoint; CheckpointError when there is none."""
  path = tf.train.latest_checkpoint(os.path.join(model_dir, BEST_DIR))
  if path is None:
    raise CheckpointError(
      f"No best checkpoint in {os.path.join(model_dir, BEST_DIR)}: train "
      f"with --model_dir={model_dir} for at least one epoch first."
    )
  return path


def restore_model(model, path):
  """Restores only the model weights from a training checkpoint at `path`.

  Raises:
    CheckpointError: the checkpoint is missing, unreadable, or of another model.
  """
  try:
    status = tf.train.Checkpoint(model=model).restore(path).expect_partial()
    status.assert_existing_objects_matched()
  except (tf.errors.OpError, AssertionError, ValueError) as error:  # Missing, damaged, other.
    raise CheckpointError(f"Cannot restore {model.name} from {path}: {first_line(error)}") from None


def load_trained_model(model_dir, checkpoint_path=None):
  """The float32 model of a train.py run with its weights from `checkpoint_path` (default:
  the best checkpoint). Call it inside a strategy's scope to place the model there.

  Returns:
    (model, run record, the checkpoint path restored).

  Raises:
    CheckpointError: no run.json, no best checkpoint, or a checkpoint of another model.
  """
  record = read_run_record(model_dir)
  if record is None:
    raise CheckpointError(f"{model_dir} is not a training run: it has no {RUN_RECORD}.")
  checkpoint_path = checkpoint_path or best_checkpoint_path(model_dir)
  # float32 whatever the run's --precision: checkpoints hold float32 weights.
  model = model_lib.create_model(
    record["config"]["model"], num_classes=len(record["class_names"]), precision="float32"
  )
  restore_model(model, checkpoint_path)
  return model, record, checkpoint_path
