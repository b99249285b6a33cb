"""Pictures of the data and of predictions, as PNG bytes (for files and TensorBoard).

Runnable on its own to look at a dataset before training:

  python -m data.visualize --dataset=folder:../shared/data/cifar10-jpeg75 --output=/tmp/grid.png
"""

import io

import numpy as np
from matplotlib.figure import Figure  # No pyplot: no global state, no display backend.


def figure_to_png(figure):
  """Renders a matplotlib Figure to PNG bytes."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
  return buffer.getvalue()


def _mosaic_png(tiles, columns, titles=None, row_labels=None, title=None):
  """Images in a grid drawn as one picture (one matplotlib axis: fast, unlike subplots).

  Args:
    tiles: uint8 [N, H, W, 3]; titles: N strings over the images, or None;
    row_labels: a label left of each row, or None.
  """
  count, height, width = len(tiles), tiles.shape[1], tiles.shape[2]
  rows = max(1, -(-count // columns))
  gap = 2 if titles is None else 14  # Pixels between tiles (room for two-line titles).
  cell_h, cell_w = height + gap, width + 2
  mosaic = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
  for index, tile in enumerate(tiles):
    row, column = divmod(index, columns)
    top, left = row * cell_h + gap - 1, column * cell_w + 1
    mosaic[top : top + height, left : left + width] = tile
  scale = 0.035 if titles is None else 0.04  # Inches per pixel.
  label_room = 1.2 if row_labels is not None else 0.2
  figure = Figure(figsize=(mosaic.shape[1] * scale + label_room, mosaic.shape[0] * scale + 0.4))
  axis = figure.subplots()
  axis.imshow(mosaic, interpolation="nearest")
  axis.set_xticks([])
  axis.set_frame_on(False)
  if row_labels is not None:
    axis.set_yticks(
      [row * cell_h + gap + height / 2 for row in range(rows)], row_labels, fontsize=9
    )
    axis.tick_params(length=0)
  else:
    axis.set_yticks([])
  for index, text in enumerate(titles or []):
    row, column = divmod(index, columns)
    axis.text(
      column * cell_w + cell_w / 2,
      row * cell_h + gap - 2,
      text,
      ha="center",
      va="bottom",
      fontsize=6,
      linespacing=0.9,
    )
  if title:
    axis.set_title(title, fontsize=9)
  return figure_to_png(figure)


def class_grid_png(images, labels, class_names, per_class=8, seed=0):
  """A grid with one row per class of `per_class` random examples of it.

  Args:
    images: uint8 [N, 32, 32, 3]; labels: int [N]; class_names: list of C names.

  Returns:
    PNG bytes.
  """
  rng = np.random.default_rng(seed)
  tiles = np.full((len(class_names) * per_class, *images.shape[1:]), 255, np.uint8)
  for label in range(len(class_names)):
    members = np.flatnonzero(labels == label)
    chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
    tiles[label * per_class : label * per_class + len(chosen)] = images[chosen]
  return _mosaic_png(tiles, per_class, row_labels=list(class_names))


def confusion_matrix_png(confusion_matrix, class_names, title="Confusion matrix"):
  """A labelled heat map of a confusion matrix (rows true, columns predicted), with counts.

  Returns:
    PNG bytes.
  """
  confusion_matrix = np.asarray(confusion_matrix)
  size = len(class_names)
  figure = Figure(figsize=(1.0 + 0.6 * size, 0.8 + 0.55 * size))
  axis = figure.subplots()
  row_totals = np.maximum(confusion_matrix.sum(axis=1, keepdims=True), 1)
  normalized = confusion_matrix / row_totals  # Colour by recall so rare classes stay visible.
  image = axis.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
  figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of true class")
  for row in range(size):
    for column in range(size):
      axis.text(  # The count, and under it the fraction of the true class (row).
        column,
        row,
        f"{confusion_matrix[row, column]}\n{normalized[row, column]:.0%}",
        ha="center",
        va="center",
        fontsize=6,
        color="white" if normalized[row, column] > 0.5 else "black",
      )
  axis.set_xticks(range(size), class_names, rotation=45, ha="right", fontsize=8)
  axis.set_yticks(range(size), class_names, fontsize=8)
  axis.set_xlabel("predicted")
  axis.set_ylabel("true")
  accuracy = np.trace(confusion_matrix) / max(confusion_matrix.sum(), 1)
  axis.set_title(f"{title} (accuracy {accuracy:.2%}, n={confusion_matrix.sum()})", fontsize=10)
  return figure_to_png(figure)


def image_grid_png(images, titles, columns=8, title=None):
  """Images in a grid, each with a small title (e.g. its class).

  Args:
    images: uint8 [N, H, W, 3]; titles: N strings.

  Returns:
    PNG bytes.
  """
  return _mosaic_png(np.asarray(images), columns, titles=list(titles), title=title)


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
    return image_grid_png(images[:0], [], title=f"{title or ''} (no mistakes)")
  return image_grid_png(images[chosen], titles, columns=8, title=title)


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
  return figure_to_png(figure)


def main(argv):
  """Writes the class grid of a dataset's training split to --output."""
  from absl import flags

  from data import pipeline

  del argv
  images, labels, class_names = pipeline.load_split(
    flags.FLAGS.dataset, flags.FLAGS.split, flags.FLAGS.tfds_data_dir
  )
  with open(flags.FLAGS.output, "wb") as file:
    file.write(class_grid_png(images, labels, class_names))
  print(f"Wrote {flags.FLAGS.output} ({len(labels)} images, {len(class_names)} classes).")


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("dataset", "cifar10", "cifar10 (TFDS) or folder:PATH.")
  flags.DEFINE_string("split", "train", "Split to draw from.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory.")
  flags.DEFINE_string("output", "class_samples.png", "PNG file to write.")
  app.run(main)
