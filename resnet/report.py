"""eval.py's report of a split's metrics: the tables, the pictures and the files written.

Each evaluation has its own place (eval_dir): MODEL_DIR/eval/<split>/ for the run's own
dataset (the layout runs have always had), MODEL_DIR/eval/<dataset slug>/<split>/ for
any other. It gets metrics.json, report.txt (the per-class table), predictions.npz and
the pictures; TensorBoard's eval_<split> (eval_<slug>_<split>) the headline figures.
"""

import hashlib
import io
import os
import re

import numpy as np
import tensorflow as tf

from data import augment
from resnet import checkpointing, files, plots, summaries

# metrics.json keys of the test-time augmentations (--tta) reported beside the plain metrics.
TTA_KEYS = [f"{mode}_tta" for mode in augment.TTA_MODES if mode != "none"]


def format_table(metrics):
  """A plain-text table of per-class precision, recall and F1, and the totals."""
  lines = [f"{'class':<12} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
  for name, scores in metrics["per_class"].items():
    lines.append(
      f"{name:<12} {scores['precision']:>9.4f} {scores['recall']:>9.4f} "
      f"{scores['f1']:>9.4f} {scores['support']:>8d}"
    )
  macro = metrics["macro_avg"]
  lines.append(
    f"{'macro avg':<12} {macro['precision']:>9.4f} {macro['recall']:>9.4f} "
    f"{macro['f1']:>9.4f} {metrics['num_examples']:>8d}"
  )
  top_k = "   ".join(f"top-{k} {value:.4f}" for k, value in metrics["top_k_accuracy"].items())
  lines.append(
    f"accuracy {metrics['accuracy']:.4f}   loss {metrics['loss']:.4f}   {top_k}   "
    f"ECE {metrics['ece']:.4f}   examples {metrics['num_examples']}"
  )
  for key in TTA_KEYS:
    if key in metrics:
      tta = metrics[key]
      lines.append(
        f"with {key.removesuffix('_tta')} test-time augmentation: accuracy "
        f"{tta['accuracy']:.4f}   loss {tta['loss']:.4f}   ECE {tta['ece']:.4f}"
      )
  return "\n".join(lines)


def report_pictures(metrics, images, labels, probabilities, class_names, title):
  """{"confusion_matrix", "mistakes", "reliability"}: PNG bytes of eval.py's report.

  Args:
    metrics: resnet.metrics.compute_metrics' dict of these predictions.
    images: uint8 [N, 32, 32, 3]; labels: int [N]; probabilities: float [N, C].
    class_names: the C class names; title: what was evaluated on what.
  """
  return {
    "confusion_matrix": plots.confusion_matrix_png(
      metrics["confusion_matrix"], class_names, title=title
    ),
    "mistakes": plots.mistakes_png(
      images, labels, probabilities, class_names, count=32, title=f"Mistakes: {title}"
    ),
    "reliability": plots.reliability_diagram_png(
      metrics["calibration"]["bin_confidence"],
      metrics["calibration"]["bin_accuracy"],
      metrics["calibration"]["bin_counts"],
      metrics["ece"],
      title=title,
    ),
  }


def dataset_slug(dataset):
  """A readable, filesystem-safe name of --dataset's value, one per dataset.

  A TFDS name stays itself, with "/" (config) and ":" (version) as "-":
  "cifar10_corrupted/fog_1" -> "cifar10_corrupted-fog_1". An image folder is
  "folder-<its base name>-<8 hex digits of the SHA-256 of its absolute path>":
  "folder:/data/cifar10_jpeg75" -> "folder-cifar10_jpeg75-1a2b3c4d", so two folders
  with the same base name never share a directory (a relative PATH is resolved
  against the working directory).
  """
  if dataset.startswith("folder:"):
    path = os.path.normpath(os.path.abspath(os.path.expanduser(dataset[len("folder:") :])))
    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(path)) or "root"
    return f"folder-{name}-{digest}"
  return re.sub(r"[^A-Za-z0-9._-]+", "-", dataset)


def eval_dir(run_dataset, dataset, split):
  """(directory under MODEL_DIR, TensorBoard run name) of an evaluation of `dataset`'s
  `split`: eval/<split> and eval_<split> for the run's own dataset (`run_dataset`),
  eval/<slug>/<split> and eval_<slug>_<split> for any other (dataset_slug)."""
  if dataset_slug(dataset) == dataset_slug(run_dataset):
    return f"eval/{split}", f"eval_{split}"
  slug = dataset_slug(dataset)
  return f"eval/{slug}/{split}", f"eval_{slug}_{split}"


def keep_earlier_tta(metrics, output_dir):
  """Adds to `metrics` the test-time augmentation figures (TTA_KEYS) that an earlier
  evaluation of the same checkpoint on the same examples wrote to output_dir/metrics.json
  and this one did not compute, so that `--tta=flip`, then `--tta=flip_translate` (or no
  --tta) keeps both. Figures of another checkpoint are dropped: they are stale."""
  earlier = files.read_json(os.path.join(output_dir, "metrics.json")) or {}
  same = all(earlier.get(key) == metrics[key] for key in ("checkpoint", "num_examples"))
  for key in TTA_KEYS:
    if same and key in earlier and key not in metrics:
      metrics[key] = earlier[key]


def write_report(model_dir, metrics, images, labels, probabilities, class_names, title):
  """Writes an evaluation's files to MODEL_DIR/<metrics["output_dir"]>/ and its
  TensorBoard summaries at the checkpoint's step.

  Args:
    model_dir: the run's directory.
    metrics: compute_metrics' dict with "split", "checkpoint", "model", "description",
      "output_dir" and "tensorboard_run" (eval_dir's) and any TTA_KEYS; gets the
      earlier TTA figures (keep_earlier_tta).
    images: uint8 [N, H, W, 3]; labels: int [N]; probabilities: float [N, C].
    class_names, title: of the pictures.
  """
  output_dir = os.path.join(model_dir, metrics["output_dir"])
  checkpoint_path = metrics["checkpoint"]
  keep_earlier_tta(metrics, output_dir)
  files.write_json(os.path.join(output_dir, "metrics.json"), metrics)
  heading = f"{metrics['model']} ({checkpoint_path}) on {metrics['description']}"
  report = f"{heading}\n{format_table(metrics)}\n"
  files.write_bytes(os.path.join(output_dir, "report.txt"), report.encode())
  predictions = io.BytesIO()
  np.savez_compressed(predictions, labels=labels, probabilities=probabilities)
  files.write_bytes(os.path.join(output_dir, "predictions.npz"), predictions.getvalue())
  pictures = report_pictures(metrics, images, labels, probabilities, class_names, title)
  for name, png in pictures.items():
    files.write_bytes(os.path.join(output_dir, f"{name}.png"), png)
  step = checkpointing.saved_step(checkpoint_path)
  writer = tf.summary.create_file_writer(
    os.path.join(model_dir, "tensorboard", metrics["tensorboard_run"])
  )
  scalars = {key: metrics[key] for key in ("accuracy", "loss", "ece")}
  scalars.update({f"top{k}_accuracy": v for k, v in metrics["top_k_accuracy"].items()})
  for key in (key for key in TTA_KEYS if key in metrics):  # Own tags: "flip_tta/accuracy".
    scalars.update({f"{key}/{name}": metrics[key][name] for name in ("accuracy", "loss", "ece")})
  summaries.write_scalars(writer, step, scalars)
  for name, png in pictures.items():
    summaries.write_png(writer, step, name, png)
  writer.flush()


def format_comparison(rows, tta="none"):
  """One table of several runs' metrics: rows of (model_dir, metrics), and the accuracy
  with the test-time augmentation `tta` that this command ran (not one kept from earlier,
  which only some of the runs may have)."""
  ks = sorted({k for _, metrics in rows for k in metrics["top_k_accuracy"]}, key=int)
  header = f"{'model_dir':<32} {'model':<10} {'accuracy':>9} " + " ".join(
    f"{'top-' + k:>7}" for k in ks
  )
  lines = [header + f" {'loss':>8} {'ECE':>7} {'TTA':>9} {'examples':>9}"]
  for model_dir, metrics in rows:
    top_k = " ".join(f"{metrics['top_k_accuracy'].get(k, float('nan')):>7.4f}" for k in ks)
    augmented = metrics.get(f"{tta}_tta", {}).get("accuracy")
    lines.append(
      f"{model_dir[-32:]:<32} {metrics['model']:<10} {metrics['accuracy']:>9.4f} {top_k} "
      f"{metrics['loss']:>8.4f} {metrics['ece']:>7.4f} "
      f"{'-' if augmented is None else f'{augmented:.4f}':>9} {metrics['num_examples']:>9d}"
    )
  return "\n".join(lines)
