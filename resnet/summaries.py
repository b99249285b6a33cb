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

from data import visualize
from resnet import files, plots

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


def flush(writers):
  """Writes out what every writer holds."""
  for writer in writers.values():
    writer.flush()


def write_scalars(writer, step, scalars):
  """Scalars {tag: float} at `step`."""
  with writer.as_default(step=step):
    for tag, value in scalars.items():
      tf.summary.scalar(tag, value)


def write_png(writer, step, tag, png_bytes, description=None):
  """One PNG image (from resnet/plots.py or data/visualize.py) at `step`."""
  with writer.as_default(step=step):
    tf.summary.image(tag, tf.io.decode_png(png_bytes)[None], description=description)


def write_weight_histograms(writer, step, model):
  """A histogram of every trainable variable, tagged by its path (e.g. stage1_block1/...)."""
  with writer.as_default(step=step):
    for variable in model.trainable_variables:
      tf.summary.histogram(f"weights/{variable.path.split('/', 1)[-1]}", variable.value)


def write_train_scalars(writers, step, scalars, model):
  """The training window's scalars {tag: float} and the global norm of the weights."""
  weights = [variable.value for variable in model.trainable_variables]
  write_scalars(writers["train"], step, dict(scalars, weight_norm=tf.linalg.global_norm(weights)))


def write_validation(writers, step, epoch, validation, data, model, best_accuracy, epoch_seconds):
  """Everything TensorBoard shows after a validation: scalars, pictures, weight histograms.

  Args:
    validation: metrics.evaluate's dict of the validation examples of `data`, a
      training_data.TrainingData; best_accuracy: the best validation accuracy so far.
  """
  writer, images, class_names = writers["validation"], data.validation[0], data.class_names
  per_class = {  # A class's recall is the accuracy on that class.
    f"accuracy_per_class/{name}": scores["recall"]
    for name, scores in validation["per_class"].items()
  }
  write_scalars(
    writer,
    step,
    {
      "loss": validation["loss"],
      "accuracy": validation["accuracy"],
      BEST_ACCURACY_TAG: best_accuracy,
      **per_class,
    },
  )
  confusion = plots.confusion_matrix_png(
    validation["confusion_matrix"], class_names, title=f"Validation, epoch {epoch}"
  )
  write_png(writer, step, "confusion_matrix", confusion)
  mistakes = plots.mistakes_png(
    images,
    validation["labels"],
    validation["probabilities"],
    class_names,
    title=f"Most confident mistakes, epoch {epoch} (true -> predicted)",
  )
  write_png(writer, step, "most_confident_mistakes", mistakes)
  write_weight_histograms(writers["train"], step, model)
  write_scalars(writers["train"], step, {"epoch_seconds": epoch_seconds})


def write_run_start(writers, step, config, run_record, model_dir):
  """Hyperparameters for the HParams dashboard, and the flags and run record as text.

  Args:
    config: the resolved flags, {name: value}; run_record: run.json's content.

  The hyperparameters go with the validation summaries, whose scalars are the
  dashboard's metrics: then it finds them whether --logdir is this run's
  tensorboard/ directory or a parent of several runs. The model directory's
  name identifies the run among others.
  """
  run_name = _run_name(model_dir)
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


def _run_name(model_dir):
  """The directory's last part: "r20" for runs/r20/, gs://bucket/runs/r20, or . in runs/r20."""
  if "://" not in model_dir:
    model_dir = os.path.abspath(model_dir)  # A plain local path only: "." has a name too.
  return os.path.basename(model_dir.rstrip("/"))


def _markdown_table(config):
  rows = [f"| --{key} | {value} |" for key, value in sorted(config.items())]
  return "\n".join(["| flag | value |", "| --- | --- |", *rows])


def create_run_writers(model_dir, chief, step, config, run_record, data, seed):
  """create_writers; on the chief, with the run's start written at `step` (write_run_start,
  write_data_pictures of a training_data.TrainingData). `config`: the resolved flags, a dict."""
  writers = create_writers(model_dir, chief)
  if chief:
    write_run_start(writers, step, config, run_record, model_dir)
    write_data_pictures(writers, step, model_dir, data, seed)
  return writers


def write_data_pictures(writers, step, model_dir, data, seed):
  """Class samples (also MODEL_DIR/class_samples.png), and global batch `step` as the model
  sees it (augmented, before normalisation), of a training_data.TrainingData."""
  class_names = data.class_names
  class_grid = visualize.class_grid_png(*data.train, class_names, seed=seed)
  files.write_bytes(os.path.join(model_dir, "class_samples.png"), class_grid)
  write_png(writers["train"], step, "class_samples", class_grid)
  images, labels = data.augmented_batch(step)
  labels = labels.numpy()  # Soft targets (MixUp, CutMix): titled by their dominant class.
  titles = [
    class_names[label] for label in (labels.argmax(-1) if labels.ndim == 2 else labels)[:32]
  ]
  grid = visualize.image_grid_png(
    images[:32].numpy(), titles, title=f"Augmented training batch {step}"
  )
  description = "The next training batch as the model sees it (before normalisation)."
  write_png(writers["train"], step, "augmented_inputs", grid, description=description)
