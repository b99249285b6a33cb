"""What a TFDS dataset is, read from its builder's info without downloading anything.

`tfds.builder(name).info` is available offline for every registered builder: its features
(which say whether it is an image-classification dataset, its classes and its image shape)
and, from the checksums TFDS ships with it, the URLs it downloads from. Its splits are known
only once it is prepared; until then the splits of the datasets we know stand in for them.
"""

import dataclasses
import re
import urllib.parse

import tensorflow_datasets as tfds

from resnet import errors

# The splits of the datasets we know, for checking a split before anything is downloaded.
KNOWN_SPLITS = {
  "cifar10": ("train", "test"),
  "cifar100": ("train", "test"),
  "svhn_cropped": ("train", "test", "extra"),
}


class DataError(errors.UserError, ValueError):
  """Input data that cannot be used, with a message meant for the user (data.sources.DataError:
  defined here, below data/sources.py, which imports this module)."""


@dataclasses.dataclass(frozen=True)
class ImageClassification:
  """A TFDS dataset seen as image classification.

  image_key, label_key: its features holding the image and the class.
  image_shape: (height, width, channels) as the info declares them; None where they vary.
  class_names: the label feature's names, in label order.
  """

  builder: object
  image_key: str
  label_key: str
  image_shape: tuple
  class_names: tuple


def image_classification(name, data_dir=None, label_key="label"):
  """The builder of TFDS dataset `name` with its image and `label_key` features.

  Raises:
    DataError: `name` is no registered TFDS dataset, has no image feature, or no
      ClassLabel feature `label_key`.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
      f"Unknown dataset {name!r}: no TFDS dataset has that name (tensorflow_datasets "
      f"{tfds.__version__}); an image folder is --dataset=folder:PATH."
    ) from None
  features = builder.info.features
  images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]
  if not images:
    raise DataError(
      f"TFDS dataset {name!r} is not an image-classification dataset: it has no image "
      f"feature (its features: {', '.join(features)})."
    )
  supervised = builder.info.supervised_keys
  image_key = supervised[0] if supervised and supervised[0] in images else images[0]
  labels = [k for k, feature in features.items() if isinstance(feature, tfds.features.ClassLabel)]
  if label_key not in labels:
    choices = f"its class labels: {', '.join(labels)}" if labels else "it has no class labels"
    raise DataError(
      f"TFDS dataset {name!r} has no class-label feature {label_key!r} ({choices}; "
      "--label_feature chooses one): it is not an image-classification dataset as asked."
    )
  shape = tuple(features[image_key].shape)
  if shape[-1] not in (1, 3):
    raise DataError(f"TFDS dataset {name!r} has {shape[-1]}-channel images; RGB or grey only.")
  return ImageClassification(
    builder,
    image_key,
    label_key,
    None if None in shape[:2] else shape,
    tuple(features[label_key].names),
  )


def split_names(spec):
  """The split names a TFDS split `spec` reads ("train[:90%]+extra" -> ["train", "extra"]).

  Raises:
    DataError: `spec` is not TFDS split syntax.
  """
  try:
    tfds.core.ReadInstruction.from_spec(spec)
  except (ValueError, NotImplementedError):
    raise DataError(
      f"Split {spec!r} is not TFDS split syntax (e.g. train, train+extra, train[:90%]; "
      "https://www.tensorflow.org/datasets/splits)."
    ) from None
  return [re.match(r"[\w-]+", part.strip()).group(0) for part in spec.split("+")]


def check_split(dataset, name, spec):
  """Raises DataError naming the split of `spec` that TFDS dataset `name` does not have.

  The splits are the prepared dataset's, else KNOWN_SPLITS'; a dataset neither prepared
  nor known is checked only when it is read (after its download).
  """
  prepared = list(dataset.builder.info.splits.keys()) if dataset.builder.is_prepared() else []
  splits = prepared or KNOWN_SPLITS.get(name)
  if not splits:
    return
  for split in split_names(spec):
    if split not in splits and split != "all":
      raise DataError(
        f"TFDS dataset {name!r} has no split {split!r} (its splits: {', '.join(sorted(splits))})."
      )


def download_hosts(dataset):
  """The host names the builder downloads from, sorted, from the checksums TFDS ships with
  it (no network); empty when TFDS lists none (manual downloads, generated data)."""
  urls = dataset.builder.url_infos or {}
  return sorted({urllib.parse.urlparse(url).hostname for url in urls} - {None})
