"""Pictures of the data, as PNG bytes (for files and TensorBoard).

Pictures of a model's predictions are in resnet/plots.py.

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


def image_grid_png(images, titles, columns=8, title=None):
  """Images in a grid, each with a small title (e.g. its class).

  Args:
    images: uint8 [N, H, W, 3]; titles: N strings.

  Returns:
    PNG bytes.
  """
  return _mosaic_png(np.asarray(images), columns, titles=list(titles), title=title)


def main(argv):
  """Writes the class grid of a dataset's training split to --output."""
  from absl import flags

  from data import sources

  del argv
  images, labels, class_names = sources.load_split(
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
