"""The pictures eval.py writes stay readable (and small) for any number of classes."""

import struct

import numpy as np

from resnet import plots


def png_size(png):
  """(width, height) in pixels, from the PNG's IHDR chunk."""
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  return struct.unpack(">II", png[16:24])


def test_a_100_class_confusion_matrix_is_no_bigger_than_a_20_class_one():
  rng = np.random.default_rng(0)
  sizes = {}
  for classes in (10, 20, 100):
    matrix = rng.integers(0, 50, (classes, classes))
    sizes[classes] = png_size(plots.confusion_matrix_png(matrix, [f"c{i}" for i in range(classes)]))
  assert sizes[10] < sizes[20]  # Up to 20 classes the figure grows with them ...
  # ... then stays at 20's size, give or take its labels (100 classes once drew a 60-inch
  # figure, 3x as wide).
  ratios = np.array(sizes[100]) / np.array(sizes[20])
  assert ((0.9 <= ratios) & (ratios <= 1.1)).all()
