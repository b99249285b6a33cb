r"""Learning curves of training runs, read from their TensorBoard events.

  python -m resnet.tools.curves --output=curves.png runs/fast runs/resnet20

prints, for each run, a Markdown table (epoch, minutes, training FLOPs, train
and validation accuracy) and draws validation accuracy against minutes, epochs
and training FLOPs (3 x forward FLOPs x images trained), one line per run.
Minutes are the epochs' wall time so far (validation included; data loading and
the time a cut-off run waited for its resume not), as `resnet.tools.results`' "epochs'
time". Runs written before epochs were timed count from their first event.
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # Files only, no display.
import matplotlib.pyplot as plt  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from resnet import (
  files,  # noqa: E402
  models,  # noqa: E402
)


def scalars(directory, tag):
  """[(wall_time seconds, step, value)] of a tf.summary.scalar tag in one event directory."""
  accumulator = event_accumulator.EventAccumulator(
    directory, size_guidance={event_accumulator.TENSORS: 0}
  )
  accumulator.Reload()
  if tag not in accumulator.Tags()["tensors"]:
    return []
  return [
    (event.wall_time, event.step, float(tensor_util.make_ndarray(event.tensor_proto)))
    for event in accumulator.Tensors(tag)
  ]


def last_per_step(rows):
  """{step: value} of scalars() rows, the last value written for each step (a resumed run
  repeats the steps after its last checkpoint)."""
  return {step: value for _, step, value in sorted(rows)}


def _first_wall_time(directory):
  accumulator = event_accumulator.EventAccumulator(directory)
  accumulator.Reload()
  return accumulator.FirstEventTimestamp()


def _minutes(tensorboard_dir, validation_rows):
  """Minutes of epochs up to each validation pass (its (wall_time, step, value) rows)."""
  epoch_seconds = last_per_step(scalars(os.path.join(tensorboard_dir, "train"), "epoch_seconds"))
  if not epoch_seconds:  # A run from before epochs were timed: wall time since its start.
    start = _first_wall_time(tensorboard_dir)
    return [(wall_time - start) / 60 for wall_time, _, _ in validation_rows]
  return [
    sum(seconds for end, seconds in epoch_seconds.items() if end <= step) / 60
    for _, step, _ in validation_rows
  ]


def read_curve(model_dir):
  """One row per validation pass: {epoch, minutes, training_flops, train_accuracy,
  validation_accuracy}.

  train_accuracy is the last value logged at or before that epoch's end (None
  if none was). Raises FileNotFoundError if the run has no TensorBoard events.
  """
  tensorboard_dir = os.path.join(model_dir, "tensorboard")
  if not tf.io.gfile.isdir(os.path.join(tensorboard_dir, "validation")):
    raise FileNotFoundError(f"No TensorBoard validation events under {tensorboard_dir}.")
  record = files.read_json(os.path.join(model_dir, "run.json"))
  if record is None:
    raise FileNotFoundError(f"No run.json in {model_dir}.")
  steps_per_epoch = record["steps_per_epoch"]
  images_per_step = record["config"]["batch_size"]
  train = scalars(os.path.join(tensorboard_dir, "train"), "accuracy")
  validation = scalars(os.path.join(tensorboard_dir, "validation"), "accuracy")
  rows = []
  for (_, step, accuracy), minutes in zip(
    validation, _minutes(tensorboard_dir, validation), strict=True
  ):
    earlier = [value for _, train_step, value in train if train_step <= step]
    rows.append(
      {
        "epoch": step / steps_per_epoch,
        "minutes": minutes,
        "training_flops": models.training_flops(record["config"]["model"], step * images_per_step),
        "train_accuracy": earlier[-1] if earlier else None,
        "validation_accuracy": accuracy,
      }
    )
  return rows


def markdown_table(rows):
  """The rows as a Markdown table, accuracies in percent."""
  lines = [
    "| epoch | minutes | training FLOPs | train accuracy (last logged) | validation accuracy |",
    "| ---: | ---: | ---: | ---: | ---: |",
  ]
  for row in rows:
    train = "" if row["train_accuracy"] is None else f"{100 * row['train_accuracy']:.1f}"
    validation = f"{100 * row['validation_accuracy']:.2f}"
    lines.append(
      f"| {row['epoch']:g} | {row['minutes']:.1f} | {row['training_flops']:.2e} | {train} | "
      f"{validation} |"
    )
  return "\n".join(lines)


def plot_curves(curves, output_path):
  """Validation accuracy against minutes, epochs and training FLOPs; curves: {label: rows}."""
  figure, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
  x_axes = {
    "minutes": "minutes of epochs (wall time)",
    "epoch": "epoch",
    "training_flops": "training FLOPs",
  }
  for label, rows in curves.items():
    accuracy = [100 * row["validation_accuracy"] for row in rows]
    for axis, key in zip(axes, x_axes, strict=True):
      axis.plot([row[key] for row in rows], accuracy, marker=".", label=label)
  for axis, title in zip(axes, x_axes.values(), strict=True):
    axis.set_xlabel(title)
    axis.grid(alpha=0.3)
  axes[0].set_ylabel("validation accuracy (%)")
  axes[-1].legend(loc="lower right")
  figure.tight_layout()
  figure.savefig(output_path, dpi=100)
  plt.close(figure)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # TensorBoard's loader logs every file it reads.
  model_dirs = argv[1:]
  if not model_dirs:
    sys.exit("resnet.tools.curves: error: name at least one model directory.")
  curves = {}
  for model_dir in model_dirs:
    try:
      rows = read_curve(model_dir)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as error:
      sys.exit(f"resnet.tools.curves: error: {model_dir}: not a training run ({error}).")
    print(f"{model_dir}\n\n{markdown_table(rows)}\n")
    label = os.path.basename(os.path.normpath(model_dir))  # The legend's name for the run.
    curves[model_dir if label in curves else label] = rows
  if flags.FLAGS.output:
    plot_curves(curves, flags.FLAGS.output)
    print(f"Wrote {flags.FLAGS.output}", file=sys.stderr)


if __name__ == "__main__":
  flags.DEFINE_string("output", None, "PNG file for the plot (none: tables only).")
  app.run(main)
