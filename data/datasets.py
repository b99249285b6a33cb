"""What each dataset is: the normalisation statistics of the known ones, and the rule for others.

Any TFDS image-classification dataset can be trained on (--dataset=NAME): its classes and
image size come from its builder's info (data/tfds_info.py). DATASETS holds what the info
does not: the published per-channel statistics of the datasets we know, keyed by TFDS name.

A new run records its input normalisation in run.json (`input_normalization`); every step,
evaluation and export of the run then uses that record, never this table again:
`input_normalization` is read once, when a run starts. A run on a dataset without an entry,
an image folder (`folder:PATH`), another training split or another image size than the
entry's is normalised with the statistics of its own training examples, computed at the start
and recorded. (Runs made before folders got their own statistics recorded CIFAR-10's, and keep
them: their record says so.)
"""

import dataclasses

import numpy as np

# CIFAR's image side (pixels): the size of runs recorded before run.json held an image size,
# and of the synthetic images of the benchmark and self-check.
IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset's published statistics.

  mean, std: per-channel (R, G, B) statistics of the images of `split` at `image_size`
    pixels a side, [0, 1] pixel units (the population std over every pixel of the split).
  source: where the figures are published.
  """

  mean: tuple
  std: tuple
  source: str
  split: str = "train"
  image_size: int = 32

  @property
  def normalization(self):
    """{"mean": [3], "std": [3]}: the input normalisation run.json records for a new run."""
    return {"mean": list(self.mean), "std": list(self.std)}


DATASETS = {
  "cifar10": Dataset(
    # Of the 50,000 training images, to 4 decimals (kuangliu/pytorch-cifar issue 19).
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    source="kuangliu/pytorch-cifar#19",
  ),
  "cifar100": Dataset(
    # Of the 50,000 training images (weiaicunzai/pytorch-cifar100, conf/global_settings.py:
    # 0.50708, 0.48655, 0.44092 and 0.26733, 0.25644, 0.27615), to 4 decimals.
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    source="weiaicunzai/pytorch-cifar100 conf/global_settings.py",
  ),
  "svhn_cropped": Dataset(
    # Of the 73,257 images of the train split (not `extra`), as used by e.g.
    # PatrickZH/DeepCore (deepcore/datasets/svhn.py).
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    source="PatrickZH/DeepCore deepcore/datasets/svhn.py",
  ),
}
CIFAR10 = DATASETS["cifar10"]
# As TFDS's cifar10 names them (its info has them too): for weights imported without a run
# (resnet.tools.import_reference), whose classes are CIFAR-10's.
CIFAR10_CLASS_NAMES = (
  "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)  # fmt: skip


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


def input_normalization(dataset, train_images, train_split="train"):
  """The input normalisation of a new run on `dataset` (--dataset's value) that trains on
  `train_images` (uint8 [N, H, W, 3]) from `train_split`: its DATASETS entry's statistics
  when the run trains on the entry's split at the entry's image size, else those of
  `train_images`."""
  entry = DATASETS.get(dataset)
  size = entry and (entry.image_size, entry.image_size)
  if entry and train_split == entry.split and tuple(train_images.shape[1:3]) == size:
    return entry.normalization
  return statistics(train_images)
