"""Where the images come from: TFDS datasets and image folders, decoded into memory.

Every split is read once into a uint8 array (CIFAR-10's 60,000 images are
184 MB); data/pipeline.py then makes the training and evaluation batches from
it. Loading errors are DataErrors whose message tells the user what to do.
"""

import os
import socket

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data import datasets
from resnet import errors

# --- Constants -----------------------------------------------------------------

OFFLINE_HELP = """\
The TFDS dataset {name!r} is not prepared in {data_dir} and could not be \
downloaded ({error}). If this machine has no network access, either point \
--tfds_data_dir at a directory where `tfds build {name}` was run on a \
connected machine (copy the whole directory over), or use an image folder \
with --dataset=folder:PATH, where PATH/<split>/<class>/<image>.png|jpg (for \
example PATH/train/cat/0001.png)."""


class DataError(errors.UserError, ValueError):
  """Input data that cannot be used, with a message meant for the user."""


# --- Loading ---------------------------------------------------------------------


def _to_arrays(dataset, name):
  """Materialises a dataset of (image, label) into uint8/int32 numpy arrays."""
  images, labels = [], []
  try:
    for image_batch, label_batch in tfds.as_numpy(dataset.batch(4096)):
      images.append(image_batch)
      labels.append(label_batch)
  except tf.errors.InvalidArgumentError as error:
    raise DataError(f"Could not decode the images of {name}: {error.message}") from None
  if not images:
    raise DataError(f"{name} holds no images.")
  return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)


def decode_image(image_bytes):
  """JPEG/PNG bytes -> uint8 [32, 32, 3]: grey becomes RGB, other sizes are resized.

  The one decoding of image files: image folders are loaded through it, and
  resnet.tools.predict reads photos through it, so that a model sees a photo as it
  saw its training images. Runs eagerly and inside tf.data.

  Raises:
    tf.errors.InvalidArgumentError: the bytes are not a PNG, JPEG, GIF or BMP image.
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image = tf.ensure_shape(image, [None, None, 3])

  def resized():  # In the branch, so that CIFAR-sized images (most) skip the work.
    pixels = tf.image.resize(image, [datasets.IMAGE_SIZE, datasets.IMAGE_SIZE], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)

  is_cifar_sized = tf.reduce_all(tf.shape(image)[:2] == datasets.IMAGE_SIZE)
  return tf.cond(is_cifar_sized, lambda: image, resized)


def _find_unreadable_file(filenames):
  """Returns the first file that does not decode (slow; only used on the error path)."""
  for filename in filenames:
    try:
      decode_image(tf.io.read_file(filename))
    except tf.errors.InvalidArgumentError:
      return filename
  return None


def _load_folder_split(root, split):
  """Loads PATH/<split>/<class>/<file> through TFDS's ImageFolder builder."""
  if not os.path.isdir(root):
    raise DataError(f"--dataset=folder:{root}: {root} is not a directory.")
  builder = tfds.ImageFolder(root)
  splits = sorted(builder.info.splits.keys())
  if split not in splits:
    raise DataError(
      f"The image folder {root} has no {split!r} split (found: {splits or 'none'}); "
      f"expected images in {os.path.join(root, split, '<class>', '<image>.jpg')}."
    )
  class_names = builder.info.features["label"].names
  split_dir = os.path.join(root, split)
  if builder.info.splits[split].num_examples == 0:
    raise DataError(f"The image folder {split_dir} holds no PNG or JPEG images.")
  # Empty class folders are invisible to ImageFolder; say so instead of silently
  # training a classifier that can never predict that class.
  empty_classes = [
    c
    for c in class_names
    if os.path.isdir(os.path.join(split_dir, c))
    and not any(
      f.lower().endswith((".png", ".jpg", ".jpeg")) for f in os.listdir(os.path.join(split_dir, c))
    )
  ]
  if empty_classes:
    raise DataError(f"Class folders without images in {split_dir}: {', '.join(empty_classes)}.")
  raw = builder.as_dataset(
    split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
  )
  filenames = raw.map(lambda example: example["image/filename"])
  dataset = raw.map(
    lambda example: (decode_image(example["image"]), example["label"]),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  try:
    images, labels = _to_arrays(dataset, split_dir)
  except DataError:
    bad = _find_unreadable_file(f.decode() for f in tfds.as_numpy(filenames))
    raise DataError(f"Unreadable image file in {split_dir}: {bad}") from None
  return images, labels, list(class_names)


def download_host_reachable(host, timeout_s=10.0):
  """Whether a TCP connection to host:443 succeeds within `timeout_s` seconds."""
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
    return True
  except OSError:
    return False


def _load_tfds_split(name, split, data_dir):
  """Loads a TFDS dataset split, downloading it on first use."""
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    host = datasets.DATASETS[name].download_host if name in datasets.DATASETS else None
    if host and not download_host_reachable(host):
      raise DataError(
        OFFLINE_HELP.format(name=name, data_dir=builder.data_dir, error=f"cannot reach {host}")
      )
    try:
      builder.download_and_prepare()
    except Exception as error:  # noqa: BLE001 - any failure here means "cannot download".
      raise DataError(
        OFFLINE_HELP.format(
          name=name, data_dir=builder.data_dir, error=f"{type(error).__name__}: {error}"
        )
      ) from None
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
  except (KeyError, ValueError) as error:
    raise DataError(f"TFDS dataset {name!r} has no {split!r} split: {error}") from None
  images, labels = _to_arrays(dataset, f"{name}[{split}]")
  return images, labels, list(builder.info.features["label"].names)


def load_split(dataset, split, tfds_data_dir=None):
  """Loads one whole split into memory.

  Args:
    dataset: "cifar10" (TFDS) or "folder:PATH" (an image-folder tree).
    split: split name, e.g. "train" or "test".
    tfds_data_dir: TFDS data directory (None: the TFDS default).

  Returns:
    (images, labels, class_names): uint8 [N, 32, 32, 3], int32 [N], list of str.

  Raises:
    DataError: the data cannot be found or read; the message says what to do.
  """
  if dataset.startswith("folder:"):
    return _load_folder_split(os.path.expanduser(dataset[len("folder:") :]), split)
  return _load_tfds_split(dataset, split, tfds_data_dir)


def split_off_validation(num_examples, validation_size):
  """Deterministically partitions range(num_examples) into (train, validation) indices.

  The permutation is fixed (seed 0, independent of the training seed) so that
  every run of a study is selected on the same validation examples.
  """
  if not 0 < validation_size < num_examples:
    raise DataError(
      f"--validation_size={validation_size} must be between 1 and "
      f"{num_examples - 1} for a training split of {num_examples} examples."
    )
  order = np.random.default_rng(0).permutation(num_examples)
  return np.sort(order[validation_size:]), np.sort(order[:validation_size])


def load_train_and_validation(dataset, validation_size, tfds_data_dir=None):
  """Loads the training data and the data used for model selection.

  Returns:
    (train, validation, class_names, validation_source) where train and
    validation are (images, labels) pairs and validation_source says where the
    validation examples came from.
  """
  images, labels, class_names = load_split(dataset, "train", tfds_data_dir)
  if validation_size == 0:
    test_images, test_labels, _ = load_split(dataset, "test", tfds_data_dir)
    return (images, labels), (test_images, test_labels), class_names, "test split"
  train_index, validation_index = split_off_validation(len(labels), validation_size)
  return (
    (images[train_index], labels[train_index]),
    (images[validation_index], labels[validation_index]),
    class_names,
    f"{validation_size} examples held out of the training split",
  )
