r"""Learning curves of training runs, read from their TensorBoard events.

  python -m resnet.curves --output=curves.png runs/fast runs/resnet20

prints, for each run, a Markdown table (epoch, minutes since the run's first
event, train and validation accuracy) and draws validation accuracy against
wall-clock minutes and against epochs, one line per run. Minutes count from
the first event the run wrote (after its data were loaded); a resumed run's
pause is included.
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

from resnet import files  # noqa: E402


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


def _first_wall_time(directory):
  accumulator = event_accumulator.EventAccumulator(directory)
  accumulator.Reload()
  return accumulator.FirstEventTimestamp()


def read_curve(model_dir):
  """One row per validation pass: {epoch, minutes, train_accuracy, validation_accuracy}.

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
  start = _first_wall_time(tensorboard_dir)
  train = scalars(os.path.join(tensorboard_dir, "train"), "accuracy")
  rows = []
  for wall_time, step, accuracy in scalars(os.path.join(tensorboard_dir, "validation"), "accuracy"):
    earlier = [value for _, train_step, value in train if train_step <= step]
    rows.append(
      {
        "epoch": step / steps_per_epoch,
        "minutes": (wall_time - start) / 60,
        "train_accuracy": earlier[-1] if earlier else None,
        "validation_accuracy": accuracy,
      }
    )
  return rows


def markdown_table(rows):
  """The rows as a Markdown table, accuracies in percent."""
  lines = [
    "| epoch | minutes | train accuracy (last logged) | validation accuracy |",
    "| ---: | ---: | ---: | ---: |",
  ]
  for row in rows:
    train = "" if row["train_accuracy"] is None else f"{100 * row['train_accuracy']:.1f}"
    validation = f"{100 * row['validation_accuracy']:.2f}"
    lines.append(f"| {row['epoch']:g} | {row['minutes']:.1f} | {train} | {validation} |")
  return "\n".join(lines)


def plot_curves(curves, output_path):
  """Validation accuracy against minutes (left) and epochs (right); curves: {label: rows}."""
  figure, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for label, rows in curves.items():
    accuracy = [100 * row["validation_accuracy"] for row in rows]
    by_time.plot([row["minutes"] for row in rows], accuracy, marker=".", label=label)
    by_epoch.plot([row["epoch"] for row in rows], accuracy, marker=".", label=label)
  by_time.set_xlabel("wall-clock minutes")
  by_epoch.set_xlabel("epoch")
  by_time.set_ylabel("validation accuracy (%)")
  for axis in (by_time, by_epoch):
    axis.grid(alpha=0.3)
  by_epoch.legend(loc="lower right")
  figure.tight_layout()
  figure.savefig(output_path, dpi=100)
  plt.close(figure)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # TensorBoard's loader logs every file it reads.
  model_dirs = argv[1:]
  if not model_dirs:
    sys.exit("resnet.curves: error: name at least one model directory.")
  curves = {}
  for model_dir in model_dirs:
    try:
      curves[model_dir] = read_curve(model_dir)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as error:
      sys.exit(f"resnet.curves: error: {model_dir}: not a training run ({error}).")
    print(f"{model_dir}\n\n{markdown_table(curves[model_dir])}\n")
  if flags.FLAGS.output:
    plot_curves(curves, flags.FLAGS.output)
    print(f"Wrote {flags.FLAGS.output}", file=sys.stderr)


if __name__ == "__main__":
  flags.DEFINE_string("output", None, "PNG file for the plot (none: tables only).")
  app.run(main)
