"""What each dataset is: its classes, image size and normalisation statistics, one entry each.

A dataset the pipeline knows is one `Dataset` entry in DATASETS, keyed by its TFDS name.
A new run records its input normalisation in run.json (`input_normalization`); every
step, evaluation and export of the run then uses that record, never this table again:
`input_normalization` is read once, when a run starts.

A TFDS name without an entry is normalised with the statistics of its own training
images (computed at the start, then recorded). An image folder (`folder:PATH`) is taken
to hold CIFAR-10 images (the folders this project trains on are CIFAR-10 re-encoded), so
it gets CIFAR-10's statistics.
"""

import dataclasses

import numpy as np

# The image side the pipeline, the models and the export take (pixels, height == width);
# every dataset here is CIFAR-shaped: folders' other sizes are resized to it.
IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset's constants.

  mean, std: per-channel (R, G, B) statistics of the training images, [0, 1] pixel units.
  class_names: in label order, as its TFDS builder names them.
  download_host: where TFDS downloads it from, checked first (data/sources.py) so that an
    offline machine is told at once instead of after minutes of retries; None: not checked.
  """

  image_size: int
  mean: tuple
  std: tuple
  class_names: tuple
  download_host: str | None = None

  @property
  def normalization(self):
    """{"mean": [3], "std": [3]}: the input normalisation run.json records for a new run."""
    return {"mean": list(self.mean), "std": list(self.std)}


DATASETS = {
  "cifar10": Dataset(
    image_size=32,
    # Of the 50,000 training images (the usual published figures, to 4 decimals).
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    class_names=(
      "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
    ),
    download_host="www.cs.toronto.edu",
  ),
}  # fmt: skip
CIFAR10 = DATASETS["cifar10"]


def statistics(images, chunk=4096):
  """{"mean": [3], "std": [3]} per channel of uint8 [N, H, W, 3] images, [0, 1] units.

  In float64, a chunk of images at a time: a float copy of 45,000 images would take
  1.1 GB.
  """
  sums, squares, count = np.zeros(3), np.zeros(3), 0
  for start in range(0, len(images), chunk):
    pixels = images[start : start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
    sums += pixels.sum(axis=0)
    squares += np.square(pixels).sum(axis=0)
    count += len(pixels)
  mean = sums / count
  std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
  return {"mean": [round(float(m), 4) for m in mean], "std": [round(float(s), 4) for s in std]}


def input_normalization(dataset, train_images):
  """The input normalisation of a new run on `dataset` (--dataset's value): its entry's
  statistics; CIFAR-10's for an image folder; else those of `train_images` (uint8
  [N, H, W, 3], the run's training examples)."""
  if dataset in DATASETS:
    return DATASETS[dataset].normalization
  if dataset.startswith("folder:"):
    return CIFAR10.normalization
  return statistics(train_images)
