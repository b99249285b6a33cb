"""CIFAR-10 input pipeline: load once into memory, then index-based tf.data.

Every split is decoded once into a uint8 array held in memory (CIFAR-10's 60,000
images are 184 MB). Training batches are then described by *positions*: for
epoch `e` the order of the examples, the crop offsets and the flips are a pure
function of `(seed, e)`. That gives
  * the same global batches for any number of replicas or workers (each input
    pipeline takes its shard of one global order),
  * exact mid-epoch resume: start the plan at any step,
  * cheap per-batch, vectorised augmentation (one gather per batch).
"""

import os
import socket

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# --- Constants -----------------------------------------------------------------

IMAGE_SIZE = 32  # pixels, height == width
CROP_PADDING = 4  # default pixels of zero padding on each side before the random crop
# Per-channel statistics of the CIFAR-10 training images, in [0, 1] units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Where TFDS downloads CIFAR-10 from: checked first, so that an offline machine
# gets the explanation at once instead of after minutes of download retries.
DOWNLOAD_HOSTS = {"cifar10": "www.cs.toronto.edu"}

OFFLINE_HELP = """\
The TFDS dataset {name!r} is not prepared in {data_dir} and could not be \
downloaded ({error}). If this machine has no network access, either point \
--tfds_data_dir at a directory where `tfds build {name}` was run on a \
connected machine (copy the whole directory over), or use an image folder \
with --dataset=folder:PATH, where PATH/<split>/<class>/<image>.png|jpg (for \
example PATH/train/cat/0001.png)."""


class DataError(ValueError):
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


def _decode_image(image_bytes):
  """JPEG/PNG bytes -> [32, 32, 3] uint8 (grey becomes RGB, other sizes are resized)."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image = tf.ensure_shape(image, [None, None, 3])
  resized = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
  resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
  is_cifar_sized = tf.reduce_all(tf.shape(image)[:2] == IMAGE_SIZE)
  return tf.cond(is_cifar_sized, lambda: image, lambda: resized)


def _find_unreadable_file(filenames):
  """Returns the first file that does not decode (slow; only used on the error path)."""
  for filename in filenames:
    try:
      _decode_image(tf.io.read_file(filename))
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
    lambda example: (_decode_image(example["image"]), example["label"]),
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
    host = DOWNLOAD_HOSTS.get(name)
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


# --- Preprocessing (per batch, vectorised) --------------------------------------------


def normalize(images):
  """uint8 [..., 32, 32, 3] in [0, 255] -> float32 with per-channel zero mean, unit std."""
  images = tf.cast(images, tf.float32) / 255.0
  return (images - tf.constant(CIFAR10_MEAN)) / tf.constant(CIFAR10_STD)


def denormalize(images):
  """Inverse of normalize: float32 normalised images -> uint8 [..., 32, 32, 3]."""
  images = images * tf.constant(CIFAR10_STD) + tf.constant(CIFAR10_MEAN)
  return tf.cast(tf.clip_by_value(tf.round(images * 255.0), 0.0, 255.0), tf.uint8)


def crop_and_flip(images, offsets, flips, crop_padding=CROP_PADDING):
  """Pads by `crop_padding` pixels, crops 32x32 at per-example offsets, flips left-right.

  Args:
    images: uint8 [B, 32, 32, 3].
    offsets: int32 [B, 2], (row, column) of each crop's corner, in [0, 2 * crop_padding].
    flips: bool [B], whether to mirror each example.
    crop_padding: zero pixels added on each side (4: translations of up to +-4 pixels).

  Returns:
    uint8 [B, 32, 32, 3].
  """
  pad = crop_padding
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  window = tf.range(IMAGE_SIZE)
  rows = offsets[:, 0:1] + window  # [B, 32]
  cols = offsets[:, 1:2] + window  # [B, 32]
  cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, 32, 32 + 2 * pad, 3]
  cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)  # [B, 32, 32, 3]
  return tf.where(flips[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


def _epoch_plan(seed, epoch, num_examples, examples_per_epoch, crop_padding):
  """Order, crop offsets and flips of one epoch: a pure function of (seed, epoch)."""
  key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
  order_key, offset_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, num=3))
  order = tf.argsort(tf.random.stateless_uniform([num_examples], order_key))
  order = tf.cast(order[:examples_per_epoch], tf.int32)
  offsets = tf.random.stateless_uniform(
    [examples_per_epoch, 2], offset_key, minval=0, maxval=2 * crop_padding + 1, dtype=tf.int32
  )
  flips = tf.random.stateless_uniform([examples_per_epoch], flip_key) < 0.5
  return tf.data.Dataset.from_tensor_slices((order, offsets, flips))


# --- Datasets ------------------------------------------------------------------------


def _dataset_options():
  options = tf.data.Options()
  options.deterministic = True
  # The train step needs both cores; a private pool keeps tf.data from
  # competing with it for the intra-op threads (it only gathers and crops).
  options.threading.private_threadpool_size = 2
  return options


def _shard_and_batch_size(input_context, global_batch_size):
  """(number of input pipelines, this pipeline's id, per-replica batch size)."""
  if input_context is None:
    return 1, 0, global_batch_size
  return (
    input_context.num_input_pipelines,
    input_context.input_pipeline_id,
    input_context.get_per_replica_batch_size(global_batch_size),
  )


def make_train_dataset(
  images,
  labels,
  *,
  global_batch_size,
  steps_per_epoch,
  start_step,
  total_steps,
  seed,
  crop_padding=CROP_PADDING,
  input_context=None,
):
  """Augmented training batches for one input pipeline, from `start_step` to `total_steps`.

  Global step `s` is made of positions [s * B, (s + 1) * B) of its epoch's
  order (B = global batch size), whatever the number of replicas. Replica `k`
  (in tf.distribute's global order: worker by worker) gets the contiguous
  slice [k * b, (k + 1) * b) of it, b = B / replicas: pipeline `p` of `P`
  takes slice p of B / P positions and hands it out to its local replicas in
  turn. So every replica sees the same examples with 1 or N workers, and
  per-replica BatchNorm statistics do not depend on how replicas are spread.

  Args:
    images: uint8 [N, 32, 32, 3]; labels: int32 [N].
    global_batch_size: examples per step over all replicas.
    steps_per_epoch: steps per epoch (at most N // global_batch_size; the rest
      of each epoch's order is dropped so every batch is full).
    start_step, total_steps: the half-open range of global steps to produce.
    seed: the data order and augmentation seed.
    crop_padding: random translations of up to this many pixels (see crop_and_flip).
    input_context: a tf.distribute.InputContext, or None for one pipeline.

  Returns:
    A dataset of (float32 [b, 32, 32, 3] normalised images, int32 [b] labels),
    b = the per-replica batch size.
  """
  num_pipelines, pipeline_id, batch_size = _shard_and_batch_size(input_context, global_batch_size)
  examples_per_epoch = steps_per_epoch * global_batch_size
  if examples_per_epoch > len(labels):
    raise DataError(
      f"{steps_per_epoch} steps of {global_batch_size} examples need "
      f"{examples_per_epoch} training examples; there are {len(labels)}."
    )
  start_epoch, start_offset = divmod(start_step, steps_per_epoch)
  end_epoch = -(-total_steps // steps_per_epoch)  # ceil
  images, labels = tf.constant(images), tf.constant(labels)

  def plan(epoch):
    skip = tf.where(epoch == start_epoch, start_offset * global_batch_size, 0)
    epoch_plan = _epoch_plan(seed, epoch, len(labels), examples_per_epoch, crop_padding)
    return epoch_plan.skip(tf.cast(skip, tf.int64))

  def gather_and_augment(order, offsets, flips):
    augmented = crop_and_flip(tf.gather(images, order), offsets, flips, crop_padding)
    return normalize(augmented), tf.gather(labels, order)

  dataset = tf.data.Dataset.range(start_epoch, end_epoch).flat_map(plan)
  dataset = dataset.take((total_steps - start_step) * global_batch_size)
  # [B / P] chunks, every P-th one from `pipeline_id` on, then per-replica batches.
  dataset = dataset.batch(global_batch_size // num_pipelines, drop_remainder=True)
  dataset = dataset.shard(num_pipelines, pipeline_id).unbatch()
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.map(gather_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_dataset_options())


def make_eval_dataset(images, labels, *, global_batch_size, input_context=None):
  """Every example exactly once, in full batches padded with masked-out examples.

  The split is padded to a multiple of the global batch size so that every
  replica and worker runs the same number of full steps; padded entries have
  mask 0 and must be excluded from every count.

  Returns:
    A dataset of dicts: "image" float32 [b, 32, 32, 3], "label" int32 [b],
    "mask" float32 [b] (1 real, 0 padding), "index" int32 [b] (position in the split).
  """
  num_pipelines, pipeline_id, batch_size = _shard_and_batch_size(input_context, global_batch_size)
  num_examples = len(labels)
  padded_size = -(-num_examples // global_batch_size) * global_batch_size
  images, labels = tf.constant(images), tf.constant(labels)

  def gather(index):
    real = index < num_examples
    safe_index = tf.where(real, index, 0)
    return {
      "image": normalize(tf.gather(images, safe_index)),
      "label": tf.gather(labels, safe_index),
      "mask": tf.cast(real, tf.float32),
      "index": index,
    }

  dataset = tf.data.Dataset.range(padded_size).map(lambda i: tf.cast(i, tf.int32))
  dataset = dataset.shard(num_pipelines, pipeline_id).batch(batch_size, drop_remainder=True)
  dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_dataset_options())


def check_global_batch_size(strategy, global_batch_size):
  """Raises DataError unless the global batch divides evenly across replicas."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size <= 0 or global_batch_size % replicas:
    raise DataError(
      f"--batch_size={global_batch_size} must be a positive multiple of the "
      f"number of replicas ({replicas})."
    )


def distribute_train_dataset(strategy, images, labels, **kwargs):
  """make_train_dataset for every input pipeline of `strategy` (kwargs as there)."""
  check_global_batch_size(strategy, kwargs["global_batch_size"])
  return strategy.distribute_datasets_from_function(
    lambda context: make_train_dataset(images, labels, input_context=context, **kwargs)
  )


def distribute_eval_dataset(strategy, images, labels, *, global_batch_size):
  """make_eval_dataset for every input pipeline of `strategy`."""
  check_global_batch_size(strategy, global_batch_size)
  return strategy.distribute_datasets_from_function(
    lambda context: make_eval_dataset(
      images, labels, global_batch_size=global_batch_size, input_context=context
    )
  )
