"""Pictures of a model's predictions, as PNG bytes (for files and TensorBoard).

The confusion matrix, the most confident mistakes and the reliability diagram,
drawn from what resnet.metrics computes. Pictures of the data itself are in
data/visualize.py, whose grid of images the mistakes reuse.
"""

import numpy as np
from matplotlib.figure import Figure  # No pyplot: no global state, no display backend.

from data import visualize

MAX_ANNOTATED_CLASSES = 20


def confusion_matrix_png(confusion_matrix, class_names, title="Confusion matrix"):
  """A labelled heat map of a confusion matrix (rows true, columns predicted), with counts.

  Returns:
    PNG bytes.
  """
  confusion_matrix = np.asarray(confusion_matrix)
  size = len(class_names)
  # Counts in the cells up to MAX_ANNOTATED_CLASSES classes; beyond (CIFAR-100), colour only,
  # in a figure of at most ~14 inches a side (100 annotated classes would be 60).
  annotated = size <= MAX_ANNOTATED_CLASSES
  side = min(size, MAX_ANNOTATED_CLASSES)
  figure = Figure(figsize=(1.0 + 0.6 * side, 0.8 + 0.55 * side))
  axis = figure.subplots()
  row_totals = np.maximum(confusion_matrix.sum(axis=1, keepdims=True), 1)
  normalized = confusion_matrix / row_totals  # Colour by recall so rare classes stay visible.
  image = axis.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
  figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of true class")
  if annotated:  # Beyond, the counts would not fit in their cells.
    for row, column in np.ndindex(size, size):
      axis.text(  # The count, and under it the fraction of the true class (row).
        column,
        row,
        f"{confusion_matrix[row, column]}\n{normalized[row, column]:.0%}",
        ha="center",
        va="center",
        fontsize=6,
        color="white" if normalized[row, column] > 0.5 else "black",
      )
  tick_size = 8 if annotated else 4
  axis.set_xticks(
    range(size),
    class_names,
    rotation=45 if annotated else 90,
    ha="right" if annotated else "center",
    fontsize=tick_size,
  )
  axis.set_yticks(range(size), class_names, fontsize=tick_size)
  axis.set_xlabel("predicted")
  axis.set_ylabel("true")
  accuracy = np.trace(confusion_matrix) / max(confusion_matrix.sum(), 1)
  axis.set_title(f"{title} (accuracy {accuracy:.2%}, n={confusion_matrix.sum()})", fontsize=10)
  return visualize.figure_to_png(figure)


def most_confident_mistakes(probabilities, labels, count=16):
  """Indices of the `count` wrong predictions with the highest predicted probability."""
  predictions = probabilities.argmax(axis=1)
  wrong = np.flatnonzero(predictions != labels)
  confidence = probabilities[wrong, predictions[wrong]]
  return wrong[np.argsort(-confidence, kind="stable")[:count]]


def mistakes_png(images, labels, probabilities, class_names, count=16, title=None):
  """A grid of the most confident mistakes: "true -> predicted (probability)" under each.

  Args:
    images: uint8 [N, 32, 32, 3]; labels: int [N]; probabilities: float [N, C].

  Returns:
    PNG bytes (a grid with a note if there are no mistakes).
  """
  chosen = most_confident_mistakes(probabilities, labels, count)
  predictions = probabilities.argmax(axis=1)
  titles = [
    f"{class_names[labels[i]]} -> {class_names[predictions[i]]}\n"
    f"({probabilities[i, predictions[i]]:.2f})"
    for i in chosen
  ]
  if not len(chosen):
    return visualize.image_grid_png(images[:0], [], title=f"{title or ''} (no mistakes)")
  return visualize.image_grid_png(images[chosen], titles, columns=8, title=title)


def reliability_diagram_png(bin_confidence, bin_accuracy, bin_counts, ece, title=None):
  """Accuracy against confidence per confidence bin, with the diagonal of perfect calibration.

  Args:
    bin_confidence, bin_accuracy: mean confidence and accuracy in each bin
      (None or NaN for empty bins); bin_counts: examples per bin; ece:
      expected calibration error, shown in the title.

  Returns:
    PNG bytes.
  """
  bin_confidence = np.array(bin_confidence, dtype=float)  # None -> NaN.
  bin_accuracy = np.array(bin_accuracy, dtype=float)
  num_bins = len(bin_counts)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  centers = (edges[:-1] + edges[1:]) / 2
  figure = Figure(figsize=(4.5, 4.5))
  axis = figure.subplots()
  filled = np.asarray(bin_counts) > 0
  axis.bar(
    centers[filled],
    np.asarray(bin_accuracy)[filled],
    width=1.0 / num_bins,
    edgecolor="black",
    color="tab:blue",
    label="accuracy",
  )
  axis.bar(
    centers[filled],
    (np.asarray(bin_confidence) - np.asarray(bin_accuracy))[filled],
    bottom=np.asarray(bin_accuracy)[filled],
    width=1.0 / num_bins,
    color="tab:red",
    alpha=0.3,
    label="gap to confidence",
  )
  axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
  axis.set_xlim(0, 1)
  axis.set_ylim(0, 1)
  axis.set_xlabel("confidence (top-1 probability)")
  axis.set_ylabel("accuracy")
  axis.legend(loc="upper left", fontsize=8)
  axis.set_title(f"{title or 'Reliability'} (ECE {ece:.3f})", fontsize=10)
  return visualize.figure_to_png(figure)


def corruption_heatmap_png(accuracy, corruptions, severities, title=None):
  """Accuracy per corruption (rows) and severity (columns), each cell annotated, with a
  last column of each corruption's mean.

  Args:
    accuracy: [C, S] accuracies in [0, 1]; corruptions: the C names; severities: the S.

  Returns:
    PNG bytes.
  """
  accuracy = np.asarray(accuracy, dtype=float)
  table = np.concatenate([accuracy, accuracy.mean(axis=1, keepdims=True)], axis=1)
  columns = [str(s) for s in severities] + ["mean"]
  figure = Figure(figsize=(1.8 + 0.75 * len(columns), 0.9 + 0.32 * len(corruptions)))
  axis = figure.subplots()
  image = axis.imshow(table, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
  figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="accuracy")
  for row, column in np.ndindex(table.shape):
    axis.text(
      column,
      row,
      f"{table[row, column]:.1%}",
      ha="center",
      va="center",
      fontsize=7,
      color="black" if table[row, column] > 0.6 else "white",  # Readable on viridis.
    )
  axis.axvline(len(severities) - 0.5, color="white", linewidth=2)  # Sets the mean apart.
  axis.set_xticks(range(len(columns)), columns, fontsize=8)
  axis.set_yticks(range(len(corruptions)), corruptions, fontsize=8)
  axis.set_xlabel("severity")
  axis.set_title(title or "Accuracy under corruption", fontsize=10)
  return visualize.figure_to_png(figure)
