"""TensorBoard summaries of a run, written from the host loop (never inside a tf.function).

MODEL_DIR/tensorboard/            resolved flags and run record (text)
MODEL_DIR/tensorboard/train/      loss, accuracy, learning rate, throughput, norms, images
MODEL_DIR/tensorboard/validation/ loss, accuracy (overall, per class, best), images, and the
                                  hyperparameters (HParams dashboard)
"""

import json
import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

# The HParams dashboard's metric: validation accuracy of the best checkpoint so far.
BEST_ACCURACY_TAG = "best_accuracy"


def create_writers(model_dir, chief=True):
  """{"run", "train", "validation"} summary writers; no-op writers if not `chief`."""
  names = ("run", "train", "validation")
  if not chief:  # Only the chief of a multi-worker run writes summaries.
    return dict.fromkeys(names, tf.summary.create_noop_writer())
  root = os.path.join(model_dir, "tensorboard")
  return {
    "run": tf.summary.create_file_writer(root),
    "train": tf.summary.create_file_writer(os.path.join(root, "train")),
    "validation": tf.summary.create_file_writer(os.path.join(root, "validation")),
  }


def write_scalars(writer, step, scalars):
  """Scalars {tag: float} at `step`."""
  with writer.as_default(step=step):
    for tag, value in scalars.items():
      tf.summary.scalar(tag, value)


def write_png(writer, step, tag, png_bytes, description=None):
  """One PNG image (from data/visualize.py or resnet/plots.py) at `step`."""
  with writer.as_default(step=step):
    tf.summary.image(tag, tf.io.decode_png(png_bytes)[None], description=description)


def write_weight_histograms(writer, step, model):
  """A histogram of every trainable variable, tagged by its path (e.g. stage1_block1/...)."""
  with writer.as_default(step=step):
    for variable in model.trainable_variables:
      tf.summary.histogram(f"weights/{variable.path.split('/', 1)[-1]}", variable.value)


def weight_norm(model):
  """Global L2 norm of the trainable weights (float)."""
  return float(tf.linalg.global_norm([variable.value for variable in model.trainable_variables]))


def write_run_start(writers, step, config, run_record, run_name):
  """Hyperparameters for the HParams dashboard, and the flags and run record as text.

  The hyperparameters go with the validation summaries, whose scalars are the
  dashboard's metrics: then it finds them whether --logdir is this run's
  tensorboard/ directory or a parent of several runs. `run_name` (the model
  directory's name) identifies the run among others.
  """
  # HParams takes bool/int/float/str; None (e.g. an unset --tfds_data_dir) is left out.
  hparams = {key: value for key, value in config.items() if value is not None}
  with writers["validation"].as_default(step=step):
    hparams_api.hparams_config(
      hparams=[hparams_api.HParam(key) for key in sorted(hparams)],
      metrics=[
        hparams_api.Metric(BEST_ACCURACY_TAG, display_name="best val acc"),
        hparams_api.Metric("accuracy", display_name="val accuracy"),
        hparams_api.Metric("loss", display_name="val loss"),
      ],
    )
    hparams_api.hparams(hparams, trial_id=run_name)
  with writers["run"].as_default(step=step):
    tf.summary.text("config", _markdown_table(config))
    tf.summary.text("run_record", f"```\n{json.dumps(run_record, indent=2, default=str)}\n```")


def _markdown_table(config):
  rows = [f"| --{key} | {value} |" for key, value in sorted(config.items())]
  return "\n".join(["| flag | value |", "| --- | --- |", *rows])
