"""Metrics of a classifier on a whole split, computed on the host from per-example outputs.

One `compute_metrics` serves train.py's validation (through `evaluate`) and
eval.py's report, so the two can never disagree. It is plain numpy: the tests
check it against scikit-learn, which the library itself does not need.
"""

import numpy as np

CALIBRATION_BINS = 15  # As in Guo et al. 2017, "On Calibration of Modern Neural Networks".


def predict(predict_step, distributed_dataset, num_examples):
  """Per-example outputs over a whole eval dataset, padding removed, in split order.

  Args:
    predict_step: from steps.make_predict_step.
    distributed_dataset: from data.pipeline.distribute_eval_dataset.
    num_examples: examples in the split (without the padding).

  Returns:
    (probabilities float32 [N, C], labels int32 [N]) with row i = example i.

  Raises:
    RuntimeError: some example was seen twice or never.
  """
  probabilities, labels, indices = [], [], []
  for batch in distributed_dataset:
    outputs = {key: value.numpy() for key, value in predict_step(batch).items()}
    real = outputs["mask"] > 0
    probabilities.append(outputs["probabilities"][real])
    labels.append(outputs["label"][real])
    indices.append(outputs["index"][real])
  indices = np.concatenate(indices)
  if not np.array_equal(np.sort(indices), np.arange(num_examples)):
    raise RuntimeError("Evaluation did not see every example exactly once.")
  order = np.argsort(indices)
  return np.concatenate(probabilities)[order], np.concatenate(labels)[order]


def calibration(probabilities, labels, num_bins=CALIBRATION_BINS):
  """Expected calibration error over equal-width bins of top-1 confidence.

  ECE = sum over bins of (examples in bin / N) x |accuracy - mean confidence|.

  Args:
    probabilities: float [N, C]; labels: int [N]; num_bins: bins over [0, 1].

  Returns:
    {"ece", "bin_confidence", "bin_accuracy" (None for empty bins: valid
     JSON), "bin_counts"}.
  """
  confidence = probabilities.max(axis=1)
  correct = probabilities.argmax(axis=1) == labels
  bins = np.minimum((confidence * num_bins).astype(int), num_bins - 1)  # Confidence 1.0: last.
  counts = np.bincount(bins, minlength=num_bins)
  with np.errstate(invalid="ignore"):  # Empty bins: NaN.
    bin_confidence = np.bincount(bins, weights=confidence, minlength=num_bins) / counts
    bin_accuracy = np.bincount(bins, weights=correct, minlength=num_bins) / counts
  gaps = np.nan_to_num(np.abs(bin_accuracy - bin_confidence))
  return {
    "ece": float(np.sum(counts / len(labels) * gaps)),
    "bin_confidence": [None if np.isnan(x) else float(x) for x in bin_confidence],
    "bin_accuracy": [None if np.isnan(x) else float(x) for x in bin_accuracy],
    "bin_counts": counts.tolist(),
  }


def top_k_values(num_classes):
  """The k of the top-k accuracies reported: 1 and 5 for CIFAR-10 (fewer for few classes)."""
  return sorted({1, min(5, max(num_classes - 1, 1))})


def _top_k_accuracy(probabilities, labels, k):
  """Fraction of examples whose label is among their k most probable classes."""
  # Among equal probabilities the higher class index ranks first, as in scikit-learn's
  # top_k_accuracy_score (a stable ascending sort, reversed).
  ranked = np.argsort(probabilities, axis=1, kind="stable")[:, ::-1][:, :k]
  return float(np.mean((ranked == labels[:, None]).any(axis=1)))


def _divide(numerator, denominator):
  """numerator / denominator elementwise, 0 where the denominator is 0.

  A class never predicted has precision 0, never seen recall 0 (scikit-learn's
  zero_division=0), so that the macro averages stay defined.
  """
  return np.divide(
    numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0, dtype=np.float64
  )


def compute_metrics(probabilities, labels, class_names):
  """Accuracy, loss, top-k, calibration, confusion matrix and per-class scores.

  Args:
    probabilities: float32 or float64 [N, C] predicted class probabilities.
    labels: int [N] true classes.
    class_names: the C class names, in label order.

  Returns:
    A JSON-ready dict: accuracy (correct / seen), loss (mean cross-entropy,
    nats), num_examples, top_k_accuracy {str(k): accuracy}, ece, calibration
    (per bin), confusion_matrix (C lists: rows true, columns predicted),
    per_class {name: {precision, recall, f1, support}} and macro_avg
    {precision, recall, f1}. Per-class recall is that class's accuracy.
  """
  num_classes = len(class_names)
  labels = np.asarray(labels)
  predictions = probabilities.argmax(axis=1)
  confusion = np.bincount(labels * num_classes + predictions, minlength=num_classes**2)
  confusion = confusion.reshape(num_classes, num_classes)
  # Clipped to [eps, 1 - eps] in the probabilities' own precision, as scikit-learn's
  # log_loss does: a confidently wrong example costs -log(eps) (15.9 nats in float32),
  # not infinity.
  eps = np.finfo(probabilities.dtype).eps
  true_class_probability = np.clip(probabilities[np.arange(len(labels)), labels], eps, 1 - eps)
  true_positives = np.diag(confusion)
  support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)  # True and predicted counts.
  precision = _divide(true_positives, predicted)
  recall = _divide(true_positives, support)
  f1 = _divide(2 * true_positives, support + predicted)  # = 2 P R / (P + R), 0 if P = R = 0.
  reliability = calibration(probabilities, labels)
  return {
    "accuracy": float(np.mean(predictions == labels)),
    "loss": float(-np.mean(np.log(true_class_probability.astype(np.float64)))),
    "num_examples": int(len(labels)),
    "top_k_accuracy": {
      str(k): _top_k_accuracy(probabilities, labels, k) for k in top_k_values(num_classes)
    },
    "ece": reliability.pop("ece"),
    "calibration": reliability,
    "confusion_matrix": confusion.tolist(),
    "per_class": {
      name: {
        "precision": float(precision[i]),
        "recall": float(recall[i]),
        "f1": float(f1[i]),
        "support": int(support[i]),
      }
      for i, name in enumerate(class_names)
    },
    "macro_avg": {
      "precision": float(precision.mean()),
      "recall": float(recall.mean()),
      "f1": float(f1.mean()),
    },
  }


def predict_views(predict_step, views, num_examples):
  """`predict` over each view of pipeline.distribute_eval_views: the weighted mean of
  their probabilities (test-time augmentation; one view without it), and the labels."""
  total = 0.0
  for weight, distributed_dataset in views:
    probabilities, labels = predict(predict_step, distributed_dataset, num_examples)
    total = total + weight * probabilities
  return total, labels


def evaluate(predict_step, views, num_examples, class_names):
  """Predicts every example of an eval split once per view and computes its metrics.

  Args:
    predict_step, num_examples: as for `predict`.
    views: [(weight, distributed dataset)] from pipeline.distribute_eval_views.
    class_names: the C class names, in label order.

  Returns:
    compute_metrics' dict plus "probabilities" float32 [N, C] and "labels"
    int32 [N], in split order (for pictures of the mistakes).
  """
  probabilities, labels = predict_views(predict_step, views, num_examples)
  return {
    **compute_metrics(probabilities, labels, class_names),
    "probabilities": probabilities,
    "labels": labels,
  }
