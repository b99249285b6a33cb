"""CIFAR-10 input pipeline: index-based tf.data over splits held in memory.

data/sources.py decodes every split once into a uint8 array held in memory.
Training batches are then described by *positions*: for epoch `e` the order
of the examples, the crop offsets and the flips are a pure function of
`(seed, e)`. That gives
  * the same global batches for any number of replicas or workers (each input
    pipeline takes its shard of one global order),
  * exact mid-epoch resume: start the plan at any step,
  * cheap per-batch, vectorised augmentation (one gather per batch).
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from data import sources

# --- Constants -----------------------------------------------------------------

CROP_PADDING = 4  # default pixels of zero padding on each side before the random crop
# random: each image flipped with probability 1/2 each epoch. alternating: a random half
# flipped in the first epoch, then every image the other way round each epoch, so two
# epochs show every image once each way (Jordan 2024's derandomised flips).
FLIP_MODES = ("random", "alternating")
TTA_MODES = ("none", "flip", "flip_translate")  # Test-time augmentation: see tta_views.
# Per-channel statistics of the CIFAR-10 training images, in [0, 1] units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


# --- Preprocessing (per batch, vectorised) --------------------------------------------


def normalize(images):
  """uint8 [..., 32, 32, 3] in [0, 255] -> float32 with per-channel zero mean, unit std.

  Applied by the model's steps (resnet/train_lib.py) on the device, not by the
  input pipeline: the host then sends uint8, a quarter of the bytes, and does
  less work per image.
  """
  images = tf.cast(images, tf.float32) / 255.0
  return (images - tf.constant(CIFAR10_MEAN)) / tf.constant(CIFAR10_STD)


def crop_and_flip(images, offsets, flips, crop_padding=CROP_PADDING):
  """Pads by `crop_padding` pixels, crops 32x32 at per-example offsets, flips left-right.

  One gather of whole pixels: each RGB pixel is packed into one int32, because
  gathering 3-byte slices element by element is what made this the slowest part
  of the input pipeline (2-3x slower than this version on CPU).

  Args:
    images: uint8 [B, 32, 32, 3].
    offsets: int32 [B, 2], (row, column) of each crop's corner, in [0, 2 * crop_padding].
    flips: bool [B], whether to mirror each example.
    crop_padding: zero pixels added on each side (4: translations of up to +-4 pixels).

  Returns:
    uint8 [B, 32, 32, 3].
  """
  size, padded_size = sources.IMAGE_SIZE, sources.IMAGE_SIZE + 2 * crop_padding
  pixels = tf.bitcast(tf.pad(images, [[0, 0], [0, 0], [0, 0], [0, 1]]), tf.int32)  # [B, 32, 32]
  pad = crop_padding
  padded = tf.reshape(tf.pad(pixels, [[0, 0], [pad, pad], [pad, pad]]), [-1])  # [B * S * S]
  window = tf.range(size)
  rows = offsets[:, 0:1] + window  # [B, 32], in the padded image
  mirrored = offsets[:, 1:2] + (size - 1) - window
  cols = tf.where(flips[:, None], mirrored, offsets[:, 1:2] + window)  # [B, 32]
  first_row = tf.range(tf.shape(images)[0])[:, None] * padded_size + rows  # [B, 32]
  index = first_row[:, :, None] * padded_size + cols[:, None, :]  # [B, 32, 32]
  return tf.bitcast(tf.gather(padded, index), tf.uint8)[..., :3]


def _epoch_plan(
  seed, epoch, num_examples, steps_per_epoch, global_batch_size, crop_padding, flips="random"
):
  """Order, crop offsets and flips (FLIP_MODES) of one epoch: a pure function of (seed, epoch).

  Returns:
    A dataset of `steps_per_epoch` global batches: (order int32 [B], offsets int32 [B, 2],
    flips bool [B]), B = global_batch_size. Whole batches, not examples, are the
    elements: tf.data's cost is per element.
  """
  examples_per_epoch = steps_per_epoch * global_batch_size
  key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
  order_key, offset_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, num=3))
  order = tf.argsort(tf.random.stateless_uniform([num_examples], order_key))
  order = tf.cast(order[:examples_per_epoch], tf.int32)
  offsets = tf.random.stateless_uniform(
    [examples_per_epoch, 2], offset_key, minval=0, maxval=2 * crop_padding + 1, dtype=tf.int32
  )
  if flips == "alternating":
    # Per example, not per position: one key for the whole run (epochs are >= 0).
    first_key = tf.stack([tf.cast(seed, tf.int64), tf.constant(-1, tf.int64)])
    first_epoch = tf.random.stateless_uniform([num_examples], first_key) < 0.5
    flipped = tf.gather(first_epoch, order) != tf.equal(tf.cast(epoch, tf.int64) % 2, 1)
  else:
    flipped = tf.random.stateless_uniform([examples_per_epoch], flip_key) < 0.5
  batches = [steps_per_epoch, global_batch_size]
  return tf.data.Dataset.from_tensor_slices(
    (tf.reshape(order, batches), tf.reshape(offsets, batches + [2]), tf.reshape(flipped, batches))
  )


# --- Datasets ------------------------------------------------------------------------


def host_cores():
  """CPU cores this process may run on (its affinity mask: `taskset`, containers)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _dataset_options():
  options = tf.data.Options()
  options.deterministic = True
  # A private pool, one thread per host core: tf.data's work (gathers and crops)
  # then scales with the host, as a multi-GPU machine needs, without taking
  # threads from the intra-op pool a CPU-only train step runs on.
  options.threading.private_threadpool_size = host_cores()
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
  flips="random",
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
    flips: one of FLIP_MODES.
    input_context: a tf.distribute.InputContext, or None for one pipeline.

  Returns:
    A dataset of (uint8 [b, 32, 32, 3] augmented images, int32 [b] labels),
    b = the per-replica batch size. The steps normalise the images on the device.
  """
  num_pipelines, pipeline_id, batch_size = _shard_and_batch_size(input_context, global_batch_size)
  examples_per_epoch = steps_per_epoch * global_batch_size
  if examples_per_epoch > len(labels):
    raise sources.DataError(
      f"{steps_per_epoch} steps of {global_batch_size} examples need "
      f"{examples_per_epoch} training examples; there are {len(labels)}."
    )
  start_epoch, start_offset = divmod(start_step, steps_per_epoch)
  end_epoch = -(-total_steps // steps_per_epoch)  # ceil
  images, labels = tf.constant(images), tf.constant(labels)

  def plan(epoch):
    skip = tf.where(epoch == start_epoch, start_offset, 0)
    epoch_plan = _epoch_plan(
      seed, epoch, len(labels), steps_per_epoch, global_batch_size, crop_padding, flips
    )
    return epoch_plan.skip(tf.cast(skip, tf.int64))

  def replica_batches(*global_batch):
    """This pipeline's slice of a global batch, as [local replicas, b, ...] per tensor."""
    per_pipeline = global_batch_size // num_pipelines
    return tuple(
      tf.reshape(
        part[pipeline_id * per_pipeline : (pipeline_id + 1) * per_pipeline],
        [per_pipeline // batch_size, batch_size, *part.shape[1:]],
      )
      for part in global_batch
    )

  def gather_and_augment(order, offsets, flips):
    augmented = crop_and_flip(tf.gather(images, order), offsets, flips, crop_padding)
    return augmented, tf.gather(labels, order)

  dataset = tf.data.Dataset.range(start_epoch, end_epoch).flat_map(plan)
  dataset = dataset.take(total_steps - start_step)  # Global batches.
  # Pipeline p of P takes slice p of B / P positions, then hands out per-replica batches.
  dataset = dataset.map(replica_batches).unbatch()
  dataset = dataset.map(gather_and_augment, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_dataset_options())


def make_eval_dataset(images, labels, *, global_batch_size, input_context=None):
  """Every example exactly once, in full batches padded with masked-out examples.

  The split is padded to a multiple of the global batch size so that every
  replica and worker runs the same number of full steps; padded entries have
  mask 0 and must be excluded from every count.

  Returns:
    A dataset of dicts: "image" uint8 [b, 32, 32, 3] (not normalised), "label" int32 [b],
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
      "image": tf.gather(images, safe_index),
      "label": tf.gather(labels, safe_index),
      "mask": tf.cast(real, tf.float32),
      "index": index,
    }

  dataset = tf.data.Dataset.range(padded_size).map(lambda i: tf.cast(i, tf.int32))
  dataset = dataset.shard(num_pipelines, pipeline_id).batch(batch_size, drop_remainder=True)
  dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_dataset_options())


def tta_views(images, mode):
  """The views of test-time augmentation `mode` (one of TTA_MODES), with their weights.

  "flip": the images and their mirror image, 1/2 each. "flip_translate" (Jordan
  2024's airbench): half on those two, half on both of them translated by one
  pixel up-left and one down-right (edges reflected), 1/8 each. The prediction
  is the weighted mean of the views' probabilities.

  Args:
    images: uint8 [N, 32, 32, 3], in memory.

  Returns:
    [(weight, uint8 [N, 32, 32, 3])], weights summing to 1.
  """
  if mode == "none":
    return [(1.0, images)]
  views = [(0.5, images), (0.5, images[:, :, ::-1])]
  if mode == "flip_translate":
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    size = sources.IMAGE_SIZE
    shifted = [padded[:, :size, :size], padded[:, 2:, 2:]]  # Up-left, down-right.
    views = [(weight / 2, view) for weight, view in views]
    views += [(1 / 8, view) for image in shifted for view in (image, image[:, :, ::-1])]
  return views


def distribute_eval_views(strategy, images, labels, *, global_batch_size, tta="none"):
  """[(weight, distribute_eval_dataset of a view)] for tta_views(images, tta)."""
  return [
    (weight, distribute_eval_dataset(strategy, view, labels, global_batch_size=global_batch_size))
    for weight, view in tta_views(images, tta)
  ]


def check_global_batch_size(strategy, global_batch_size):
  """Raises sources.DataError unless the training batch divides evenly across replicas.

  Training refuses rather than rounds: --batch_size is part of the recipe (the
  learning rate, the steps per epoch, the data order, a resume's identity), so
  it must not change with the hardware. The message names the nearest batch
  sizes that divide.
  """
  replicas = strategy.num_replicas_in_sync
  if global_batch_size > 0 and global_batch_size % replicas == 0:
    return
  lower = max(global_batch_size // replicas, 0) * replicas
  nearest = " or ".join(str(size) for size in (lower, lower + replicas) if size > 0)
  raise sources.DataError(
    f"--batch_size={global_batch_size} does not divide over {replicas} replicas; "
    f"nearest that do: {nearest}."
  )


def eval_batch_size(strategy, global_batch_size):
  """`global_batch_size` (positive) rounded up to a multiple of the replica count.

  Evaluation takes any batch size: every replica gets the same number of
  examples, and the padding this adds is masked out like the split's own.
  """
  replicas = strategy.num_replicas_in_sync
  return -(-global_batch_size // replicas) * replicas


def distribute_train_dataset(strategy, images, labels, **kwargs):
  """make_train_dataset for every input pipeline of `strategy` (kwargs as there)."""
  check_global_batch_size(strategy, kwargs["global_batch_size"])
  return strategy.distribute_datasets_from_function(
    lambda context: make_train_dataset(images, labels, input_context=context, **kwargs)
  )


def distribute_eval_dataset(strategy, images, labels, *, global_batch_size):
  """make_eval_dataset for every input pipeline of `strategy`, for any replica count.

  The batch is rounded up to a multiple of the replicas (eval_batch_size).
  """
  batch_size = eval_batch_size(strategy, global_batch_size)
  return strategy.distribute_datasets_from_function(
    lambda context: make_eval_dataset(
      images, labels, global_batch_size=batch_size, input_context=context
    )
  )


# --- A training run's data ---------------------------------------------------------------


@dataclasses.dataclass
class TrainingData:
  """A run's examples in memory, the length of its epochs, and the datasets made of them."""

  train: tuple  # (images uint8 [N, 32, 32, 3], labels int32 [N])
  validation: tuple  # The same, for model selection.
  class_names: list
  validation_source: str  # Where the validation examples come from (for the run record).
  global_batch_size: int
  steps_per_epoch: int
  total_steps: int
  seed: int
  crop_padding: int
  flips: str = "random"  # One of FLIP_MODES.

  @classmethod
  def load(
    cls,
    dataset,
    validation_size,
    tfds_data_dir=None,
    *,
    epochs,
    steps_per_epoch=0,
    global_batch_size,
    seed,
    crop_padding=CROP_PADDING,
    flips="random",
  ):
    """Loads the training and validation examples (see sources) and sizes the epochs.

    `steps_per_epoch` 0 is a full pass over the training examples.

    Raises:
      sources.DataError: unreadable data, or an epoch that does not fit the examples.
    """
    train, validation, class_names, validation_source = sources.load_train_and_validation(
      dataset, validation_size, tfds_data_dir
    )
    num_train = len(train[1])
    steps_per_epoch = steps_per_epoch or num_train // global_batch_size
    if not 0 < steps_per_epoch * global_batch_size <= num_train:
      raise sources.DataError(
        f"An epoch of {steps_per_epoch} steps x --batch_size={global_batch_size} does not fit "
        f"the {num_train} training examples: lower --batch_size or --steps_per_epoch."
      )
    if validation_size == 0:
      logging.warning(
        "--validation_size=0: validating and selecting the best checkpoint on the "
        "TEST split, so test accuracy of the best checkpoint is optimistic."
      )
    logging.info(
      "%d training examples, %d validation examples (%s), %d steps per epoch.",
      num_train,
      len(validation[1]),
      validation_source,
      steps_per_epoch,
    )
    return cls(
      train,
      validation,
      list(class_names),
      validation_source,
      global_batch_size,
      steps_per_epoch,
      epochs * steps_per_epoch,
      seed,
      crop_padding,
      flips,
    )

  def _train_dataset_args(self):
    return dict(
      global_batch_size=self.global_batch_size,
      steps_per_epoch=self.steps_per_epoch,
      total_steps=self.total_steps,
      seed=self.seed,
      crop_padding=self.crop_padding,
      flips=self.flips,
    )

  def distribute_train(self, strategy, start_step):
    """The training batches from `start_step` on: the exact data order from any step."""
    return distribute_train_dataset(
      strategy, *self.train, start_step=start_step, **self._train_dataset_args()
    )

  def augmented_batch(self, step):
    """Global batch `step`, (images, labels), as the model sees it: for pictures."""
    args = dict(self._train_dataset_args(), total_steps=step + 1)
    return next(iter(make_train_dataset(*self.train, start_step=step, **args)))

  def distribute_validation(self, strategy, tta="none"):
    """distribute_eval_views of the validation examples, at the training's global batch."""
    return distribute_eval_views(
      strategy, *self.validation, global_batch_size=self.global_batch_size, tta=tta
    )

  def facts(self):
    """What the run record says about the data."""
    return dict(
      class_names=self.class_names,
      num_classes=len(self.class_names),
      num_train_examples=len(self.train[1]),
      validation_source=self.validation_source,
      num_validation_examples=len(self.validation[1]),
      steps_per_epoch=self.steps_per_epoch,
    )
