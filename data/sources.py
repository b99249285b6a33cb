"""Where the images come from: TFDS datasets and image folders, decoded into memory.

Every split is read once into a uint8 array (CIFAR-10's 60,000 images are
184 MB); data/pipeline.py then makes the training and evaluation batches from
it. Loading errors are DataErrors whose message tells the user what to do.

Image size. A split is loaded at one size, (height, width): `image_size` when given (an
int N is N x N), else the dataset's own: a TFDS dataset's declared image shape (one with
images of varying size needs `image_size`), an image folder's first image in sorted path
order. Every image of another size is resized to it (bilinear, with antialiasing, as
tf.image.resize does); for a folder the number resized is logged.
"""

import os
import socket

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from data import tfds_info
from data.tfds_info import DataError  # noqa: F401 - data.sources.DataError, as always.

# --- Constants -----------------------------------------------------------------

OFFLINE_HELP = """\
The TFDS dataset {name!r} is not prepared in {data_dir} and could not be \
downloaded ({error}). If this machine has no network access, either point \
--tfds_data_dir at a directory where `tfds build {name}` was run on a \
connected machine (copy the whole directory over), or use an image folder \
with --dataset=folder:PATH, where PATH/<split>/<class>/<image>.png|jpg (for \
example PATH/train/cat/0001.png)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# --- Decoding ----------------------------------------------------------------------


def _to_arrays(dataset, name):
  """Materialises a dataset of (image, label, ...) into numpy arrays (uint8 images, int32
  labels, the rest as they come)."""
  parts = []
  try:
    for batch in tfds.as_numpy(dataset.batch(4096)):
      parts.append(batch)
  except tf.errors.InvalidArgumentError as error:
    raise DataError(f"Could not decode the images of {name}: {error.message}") from None
  if not parts:
    raise DataError(f"{name} holds no images.")
  images, labels, *rest = (np.concatenate(column) for column in zip(*parts, strict=True))
  return (images.astype(np.uint8), labels.astype(np.int32), *rest)


def image_size_pair(image_size):
  """(height, width) of an --image_size value (an int N: N x N; a pair as it is; None/0: None)."""
  if not image_size:
    return None
  return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def resize_image(image, size):
  """uint8 [H, W, 3] -> uint8 [size[0], size[1], 3], bilinear with antialiasing; images
  already of that size skip the work (in a tf.cond: eagerly and inside tf.data)."""

  def resized():
    pixels = tf.image.resize(image, size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)

  return tf.cond(tf.reduce_all(tf.shape(image)[:2] == size), lambda: image, resized)


def decode_image(image_bytes, size=None):
  """JPEG/PNG bytes -> uint8 [H, W, 3]: grey becomes RGB; resized to `size` (height, width)
  when given (resize_image), else as stored.

  The one decoding of image files: image folders are loaded through it, and
  resnet.tools.predict reads photos through it at the export's size, so that a model sees a
  photo as it saw its training images.

  Raises:
    tf.errors.InvalidArgumentError: the bytes are not a PNG, JPEG, GIF or BMP image.
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image = tf.ensure_shape(image, [None, None, 3])
  return image if size is None else resize_image(image, size)


# --- Image folders -------------------------------------------------------------------


def _find_unreadable_file(filenames):
  """Returns the first file that does not decode (slow; only used on the error path)."""
  for filename in filenames:
    try:
      decode_image(tf.io.read_file(filename))
    except tf.errors.InvalidArgumentError:
      return filename
  return None


def _image_files(split_dir, class_names):
  """{class name: its image files}, for the classes ImageFolder found in `split_dir`."""
  listing = {}
  for name in class_names:
    folder = os.path.join(split_dir, name)
    files = os.listdir(folder) if os.path.isdir(folder) else []
    listing[name] = [os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
  return listing


def _load_folder_split(root, split, image_size=None):
  """Loads PATH/<split>/<class>/<file> through TFDS's ImageFolder builder, at `image_size`
  (height, width), by default the size of the split's first image in sorted path order."""
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
  listing = _image_files(split_dir, class_names)
  empty_classes = [name for name in class_names if not listing[name]]
  if empty_classes:
    raise DataError(f"Class folders without images in {split_dir}: {', '.join(empty_classes)}.")
  first = min(path for paths in listing.values() for path in paths)
  if image_size is None:
    try:
      image_size = tuple(decode_image(tf.io.read_file(first)).shape[:2])
    except tf.errors.InvalidArgumentError:
      raise DataError(f"Unreadable image file in {split_dir}: {first}") from None
  raw = builder.as_dataset(
    split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
  )
  filenames = raw.map(lambda example: example["image/filename"])

  def decode(example):
    image = decode_image(example["image"])
    return resize_image(image, image_size), example["label"], tf.shape(image)[:2]

  dataset = raw.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  try:
    images, labels, sizes = _to_arrays(dataset, split_dir)
  except DataError:
    bad = _find_unreadable_file(f.decode() for f in tfds.as_numpy(filenames))
    raise DataError(f"Unreadable image file in {split_dir}: {bad}") from None
  resized = int(np.any(sizes != image_size, axis=1).sum())
  if resized:
    logging.info(
      "Resized %d of the %d images of %s to %dx%d (--image_size, else the size of %s).",
      *(resized, len(labels), split_dir, *image_size, first),
    )
  return images, labels, list(class_names)


# --- TFDS ------------------------------------------------------------------------------


def download_host_reachable(host, timeout_s=10.0):
  """Whether a TCP connection to host:443 succeeds within `timeout_s` seconds."""
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
    return True
  except OSError:
    return False


def _prepare(dataset, name):
  """Downloads and prepares a TFDS dataset that is not prepared yet; offline, fails at once
  with OFFLINE_HELP when a host it downloads from (tfds_info.download_hosts) is unreachable,
  instead of after minutes of TFDS's retries."""
  builder = dataset.builder
  for host in tfds_info.download_hosts(dataset):
    if not download_host_reachable(host):
      error = f"cannot reach {host}"
      raise DataError(OFFLINE_HELP.format(name=name, data_dir=builder.data_dir, error=error))
  try:
    builder.download_and_prepare()
  except Exception as error:  # noqa: BLE001 - any failure here means "cannot download".
    raise DataError(
      OFFLINE_HELP.format(
        name=name, data_dir=builder.data_dir, error=f"{type(error).__name__}: {error}"
      )
    ) from None


def _load_tfds_split(name, split, data_dir, label_feature="label", image_size=None):
  """Loads split `split` (TFDS split syntax) of TFDS dataset `name`, downloading it on first
  use, at `image_size` (height, width; None: the dataset's declared size)."""
  dataset = tfds_info.image_classification(name, data_dir, label_feature)
  if image_size is None and dataset.image_shape is None:
    raise DataError(
      f"TFDS dataset {name!r} has images of varying size: give --image_size to resize them to."
    )
  size = image_size or dataset.image_shape[:2]
  tfds_info.check_split(dataset, name, split)  # Before a download, where the splits are known.
  if not dataset.builder.is_prepared():
    _prepare(dataset, name)
  tfds_info.check_split(dataset, name, split)
  image_key = dataset.image_key

  def example_to_pair(example):
    image = example[image_key]
    if image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    if tuple(image.shape[:2]) != tuple(size):  # Statically known: CIFAR skips the cond.
      image = resize_image(image, size)
    return image, example[label_feature]

  try:
    examples = dataset.builder.as_dataset(split=split, shuffle_files=False)
  except (KeyError, ValueError) as error:
    raise DataError(f"TFDS dataset {name!r} has no {split!r} split: {error}") from None
  examples = examples.map(example_to_pair, num_parallel_calls=tf.data.AUTOTUNE)
  images, labels = _to_arrays(examples, f"{name}[{split}]")
  return images, labels, list(dataset.class_names)


def load_split(dataset, split, tfds_data_dir=None, *, label_feature="label", image_size=None):
  """Loads one whole split into memory.

  Args:
    dataset: a TFDS dataset name ("cifar10", "cifar100", "svhn_cropped", ...) or
      "folder:PATH" (an image-folder tree).
    split: split name, e.g. "train" or "test"; for TFDS, TFDS split syntax ("train+extra").
    tfds_data_dir: TFDS data directory (None: the TFDS default).
    label_feature: the TFDS class-label feature ("label"; cifar100 also has "coarse_label").
    image_size: None, the dataset's own size (see the module doc), else an int N (N x N)
      or (height, width) to resize to.

  Returns:
    (images, labels, class_names): uint8 [N, H, W, 3], int32 [N], list of str.

  Raises:
    DataError: the data cannot be found or read; the message says what to do.
  """
  size = image_size_pair(image_size)
  if dataset.startswith("folder:"):
    if label_feature != "label":
      raise DataError(f"--label_feature={label_feature}: an image folder has one label, its class.")
    return _load_folder_split(os.path.expanduser(dataset[len("folder:") :]), split, size)
  return _load_tfds_split(dataset, split, tfds_data_dir, label_feature, size)


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


def load_train_and_validation(
  dataset, validation_size, tfds_data_dir=None, *, train_split="train", **load_args
):
  """Loads the training data and the data used for model selection.

  The training examples are `train_split` less `validation_size` examples held out of it
  (or, with validation_size 0, the test split validates). `load_args` (label_feature,
  image_size) are load_split's; the test split is loaded at the training images' size.

  Returns:
    (train, validation, class_names, validation_source) where train and
    validation are (images, labels) pairs and validation_source says where the
    validation examples came from.
  """
  images, labels, class_names = load_split(dataset, train_split, tfds_data_dir, **load_args)
  if validation_size == 0:
    load_args["image_size"] = images.shape[1:3]
    test_images, test_labels, _ = load_split(dataset, "test", tfds_data_dir, **load_args)
    return (images, labels), (test_images, test_labels), class_names, "test split"
  train_index, validation_index = split_off_validation(len(labels), validation_size)
  return (
    (images[train_index], labels[train_index]),
    (images[validation_index], labels[validation_index]),
    class_names,
    f"{validation_size} examples held out of the training split"
    + ("" if train_split == "train" else f" ({train_split})"),
  )
