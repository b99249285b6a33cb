"""The input pipeline: index-based tf.data over splits held in memory.

data/sources.py decodes every split once into a uint8 array held in memory.
Training batches are then described by *positions*: for epoch `e` the order
of the examples, the crop offsets and the flips are a pure function of
`(seed, e)`. That gives
  * the same global batches for any number of replicas or workers (each input
    pipeline takes its shard of one global order),
  * exact mid-epoch resume: start the plan at any step,
  * cheap per-batch, vectorised augmentation (one gather per batch).
A training run's examples and epochs, and their datasets: data/training_data.py.
"""

import os

import tensorflow as tf

from data import augment, mixing, sources

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


def augmented_batch(images, labels, positions, augmentation, num_classes):
  """(augmented images, labels) of planned positions (augment.epoch_plan's fields), from
  every example's `images` and `labels`; see make_train_dataset."""
  own_labels = tf.gather(labels, positions["order"])
  if not augmentation.mixing:
    return augment.augmented_images(images, positions, augmentation), own_labels
  # Each position and its partner (augmented exactly as at its own position), in one
  # batch of 2b: one copy of the augmentation's ops in the graph.
  partner = positions["partner"]
  both = {name: tf.concat([positions[name], partner[name]], 0) for name in partner}
  augmented, partner_images = tf.split(augment.augmented_images(images, both, augmentation), 2)
  partner_labels = tf.gather(labels, partner["order"])
  return mixing.mix(
    augmented, partner_images, own_labels, partner_labels, positions["mixing"], num_classes
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
  augmentation=augment.CROPS_AND_FLIPS,
  num_classes=None,
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
    augmentation: an augment.Augmentation (MixUp's and CutMix's partners: any position
      of the same global batch); num_classes: the soft targets' width, for those two.
    input_context: a tf.distribute.InputContext, or None for one pipeline.

  Returns:
    A dataset of (uint8 [b, H, W, 3] augmented images, labels), b = the per-replica
    batch size; labels int32 [b], or with MixUp or CutMix float32 [b, num_classes]
    soft targets. The steps normalise the images on the device.
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
  if augmentation.mixing and not num_classes:
    raise ValueError("MixUp and CutMix need num_classes for their soft targets.")
  image_size = images.shape[1:3]
  images, labels = tf.constant(images), tf.constant(labels)

  def plan(epoch):
    skip = tf.where(epoch == start_epoch, start_offset, 0)
    epoch_plan = augment.epoch_plan(
      seed, epoch, len(labels), steps_per_epoch, global_batch_size, augmentation, image_size
    )
    return epoch_plan.skip(tf.cast(skip, tf.int64))

  def replica_batches(global_batch):
    """This pipeline's slice of a global batch, as [local replicas, b, ...] per tensor."""
    per_pipeline = global_batch_size // num_pipelines
    return tf.nest.map_structure(
      lambda part: tf.reshape(
        part[pipeline_id * per_pipeline : (pipeline_id + 1) * per_pipeline],
        [per_pipeline // batch_size, batch_size, *part.shape[1:]],
      ),
      global_batch,
    )

  dataset = tf.data.Dataset.range(start_epoch, end_epoch).flat_map(plan)
  dataset = dataset.take(total_steps - start_step)  # Global batches.
  # Pipeline p of P takes slice p of B / P positions, then hands out per-replica batches.
  dataset = dataset.map(replica_batches).unbatch()
  dataset = dataset.map(
    lambda positions: augmented_batch(images, labels, positions, augmentation, num_classes),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
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


def distribute_eval_views(strategy, images, labels, *, global_batch_size, tta="none"):
  """[(weight, distribute_eval_dataset of a view)] for augment.tta_views(images, tta)."""
  return [
    (weight, distribute_eval_dataset(strategy, view, labels, global_batch_size=global_batch_size))
    for weight, view in augment.tta_views(images, tta)
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
  """make_train_dataset for every input pipeline of `strategy` (kwargs as there).

  Each pipeline is declared endless (tf.data raises if one is read past its end,
  which the loop never does): in multi-worker mode TensorFlow 2.21's iterator
  asks every worker at each next() whether it still has data, an all-reduce
  per step, for every dataset but an endless one (a known finite length does
  not spare it; input_lib._enable_get_next_as_optional). Every pipeline yields
  the same number of full batches, so the answer would always be yes.
  """
  check_global_batch_size(strategy, kwargs["global_batch_size"])
  endless = tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY)
  return strategy.distribute_datasets_from_function(
    lambda context: make_train_dataset(images, labels, input_context=context, **kwargs).apply(
      endless
    )
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
