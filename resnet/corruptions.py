"""Robustness to common corruptions: a run's accuracy on CIFAR-10-C (data/corruptions.py).

eval.py --corruptions calls evaluate_corruptions, which writes MODEL_DIR/eval/corruptions/
(metrics.json, report.txt, heatmap.png) and TensorBoard's eval_corruptions. With
E(c, s) the error (1 - accuracy) under corruption c at severity s, over the C
corruptions and S severities evaluated, and E_clean the error on CIFAR-10's clean
test split computed by the same command with the same checkpoint:

  mce          = mean over (c, s) of E(c, s)
  relative_mce = mean over (c, s) of (E(c, s) - E_clean) = mce - E_clean

Hendrycks & Dietterich (2019) divide each corruption's errors by AlexNet's (their mCE
and relative mCE are ratios to AlexNet, which we do not have): these are the
unnormalised numerators, averaged instead of summed; docs/robustness.md says more.
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from data import corruptions as corruption_data
from data import sources
from resnet import checkpointing, evaluation, files, plots, summaries
from resnet import metrics as metrics_lib

OUTPUT_DIR = "eval/corruptions"  # Under MODEL_DIR.
TENSORBOARD_RUN = "eval_corruptions"


def _figures(restored, images, labels, batch_size):
  """{"accuracy", "loss", "ece", "num_examples"} of the restored run on these examples."""
  probabilities, seen = evaluation.predict(restored, images, labels, batch_size)
  metrics = metrics_lib.compute_metrics(probabilities, seen, restored.record["class_names"])
  return {key: metrics[key] for key in ("accuracy", "loss", "ece", "num_examples")}


def summarize(clean, figures, corruptions, severities):
  """The robustness report's metrics (the module docstring defines mce, relative_mce).

  Args:
    clean: _figures of the clean CIFAR-10 test split.
    figures: {(corruption, severity): _figures of that config}.
    corruptions, severities: what was evaluated, in order.

  Returns:
    A JSON-ready dict: clean_accuracy, mce, relative_mce, benchmark_mce (over the
    paper's 15 benchmark corruptions, None unless all were evaluated), mean_accuracy
    (= 1 - mce), accuracy and ece {corruption: {str(severity): value}},
    mean_accuracy_per_severity {str(s)}, mean_accuracy_per_corruption {c},
    num_examples {c: {str(s)}}, clean_num_examples, corruptions, severities. Means
    weigh each config alike (CIFAR-10-C's each hold 10,000 images).
  """
  accuracy = np.array([[figures[c, s]["accuracy"] for s in severities] for c in corruptions])
  errors = 1.0 - accuracy  # [C, S]
  clean_error = 1.0 - clean["accuracy"]
  benchmark = [i for i, c in enumerate(corruptions) if c in corruption_data.BENCHMARK_CORRUPTIONS]
  complete = len(benchmark) == len(corruption_data.BENCHMARK_CORRUPTIONS)

  by_severity, by_corruption = accuracy.mean(axis=0), accuracy.mean(axis=1)

  def nested(key):
    return {c: {str(s): figures[c, s][key] for s in severities} for c in corruptions}

  return {
    "clean_accuracy": clean["accuracy"],
    "mce": float(errors.mean()),
    "relative_mce": float((errors - clean_error).mean()),
    "benchmark_mce": float(errors[benchmark].mean()) if complete else None,
    "mean_accuracy": float(accuracy.mean()),
    "accuracy": nested("accuracy"),
    "ece": nested("ece"),
    "mean_accuracy_per_severity": {
      str(s): float(v) for s, v in zip(severities, by_severity, strict=True)
    },
    "mean_accuracy_per_corruption": {
      c: float(v) for c, v in zip(corruptions, by_corruption, strict=True)
    },
    "num_examples": nested("num_examples"),
    "clean_num_examples": clean["num_examples"],
    "corruptions": list(corruptions),
    "severities": list(severities),
  }


def format_table(metrics):
  """Accuracy per corruption (rows) and severity (columns) with the means, then the summary."""
  severities = metrics["severities"]
  lines = [
    f"{'corruption':<20}" + "".join(f"{'sev ' + str(s):>8}" for s in severities) + "    mean"
  ]
  for name in metrics["corruptions"]:
    row = "".join(f"{metrics['accuracy'][name][str(s)]:>8.4f}" for s in severities)
    lines.append(f"{name:<20}{row}{metrics['mean_accuracy_per_corruption'][name]:>8.4f}")
  means = "".join(f"{metrics['mean_accuracy_per_severity'][str(s)]:>8.4f}" for s in severities)
  lines.append(f"{'mean':<20}{means}{metrics['mean_accuracy']:>8.4f}")
  count = f"{len(metrics['corruptions'])} corruptions x {len(severities)} severities"
  lines.append(f"clean accuracy {metrics['clean_accuracy']:.4f} (cifar10 test, same checkpoint)")
  lines.append(
    f"mCE {metrics['mce']:.4f} (mean error over {count})   "
    f"relative mCE {metrics['relative_mce']:.4f} (mCE minus the clean error)"
  )
  if metrics["benchmark_mce"] is not None:
    lines.append(f"mCE over the 15 benchmark corruptions {metrics['benchmark_mce']:.4f}")
  return "\n".join(lines)


def write_report(model_dir, metrics):
  """MODEL_DIR/eval/corruptions/ (metrics.json, report.txt, heatmap.png) and TensorBoard's
  eval_corruptions (scalars and the heat map) at the checkpoint's step."""
  output_dir = os.path.join(model_dir, OUTPUT_DIR)
  files.write_json(os.path.join(output_dir, "metrics.json"), metrics)
  heading = f"{metrics['model']} ({metrics['checkpoint']}) on CIFAR-10-C"
  files.write_bytes(
    os.path.join(output_dir, "report.txt"), f"{heading}\n{format_table(metrics)}\n".encode()
  )
  corruptions, severities = metrics["corruptions"], metrics["severities"]
  accuracy = [[metrics["accuracy"][c][str(s)] for s in severities] for c in corruptions]
  png = plots.corruption_heatmap_png(
    accuracy,
    corruptions,
    severities,
    title=f"{metrics['model']} on CIFAR-10-C: clean {metrics['clean_accuracy']:.2%}, "
    f"mCE {metrics['mce']:.2%}",
  )
  files.write_bytes(os.path.join(output_dir, "heatmap.png"), png)
  scalars = {
    key: metrics[key] for key in ("clean_accuracy", "mce", "relative_mce", "mean_accuracy")
  }
  scalars.update(
    {f"accuracy/{c}_{s}": metrics["accuracy"][c][str(s)] for c in corruptions for s in severities}
  )
  scalars.update(
    {f"mean_accuracy/severity_{s}": v for s, v in metrics["mean_accuracy_per_severity"].items()}
  )
  writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard", TENSORBOARD_RUN))
  step = checkpointing.saved_step(metrics["checkpoint"])
  summaries.write_scalars(writer, step, scalars)
  summaries.write_png(writer, step, "heatmap", png)
  writer.flush()


def evaluate_corruptions(
  model_dir,
  corruptions=corruption_data.CORRUPTIONS,
  severities=corruption_data.SEVERITIES,
  tfds_data_dir=None,
  checkpoint_path=None,
  batch_size=256,
  strategy_name="auto",
):
  """Evaluates a checkpoint of a CIFAR-10 run on CIFAR-10-C and on the clean test split.

  Every config's 10,000 images and the clean test split are each predicted once
  (evaluation.predict: no example dropped or repeated). Fails before writing
  anything when the data is missing offline (data.corruptions.check_available).

  Args:
    model_dir: a train.py model directory of a model with CIFAR-10's classes.
    corruptions, severities: data.corruptions.select's.
    tfds_data_dir: where cifar10 and cifar10_corrupted are (default: the run's).
    checkpoint_path, batch_size, strategy_name: as for eval.evaluate_model_dir.

  Returns:
    The metrics written to MODEL_DIR/eval/corruptions/metrics.json (summarize's,
    plus checkpoint and model).
  """
  restored = evaluation.restore_run(model_dir, checkpoint_path, strategy_name)
  tfds_data_dir = tfds_data_dir or restored.record["config"]["tfds_data_dir"]
  corruption_data.check_available(corruptions, severities, tfds_data_dir)
  images, labels, class_names = sources.load_split("cifar10", "test", tfds_data_dir)
  # CIFAR-10-C's labels are CIFAR-10's: TFDS's cifar10 names them.
  evaluation.check_classes("cifar10", class_names, restored.record)
  clean = _figures(restored, images, labels, batch_size)
  figures = {}
  for corruption in corruptions:
    for severity in severities:
      images, labels = corruption_data.load(corruption, severity, tfds_data_dir)
      figures[corruption, severity] = _figures(restored, images, labels, batch_size)
      logging.info(
        "%s: accuracy %.4f", corruption_data.tfds_name(corruption, severity),
        figures[corruption, severity]["accuracy"],
      )  # fmt: skip
  metrics = summarize(clean, figures, corruptions, severities)
  metrics.update(checkpoint=restored.checkpoint, model=restored.record["config"]["model"])
  write_report(model_dir, metrics)
  return metrics
