"""The input pipeline: normalisation, augmentation, the data order, exact counting."""

import dataclasses
import types

import numpy as np
import pytest
import tensorflow as tf

from data import augment, datasets, pipeline, sources
from resnet import distribute


def random_split(num_examples, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8)
  return images, np.arange(num_examples, dtype=np.int32) % 10


# --- Preprocessing --------------------------------------------------------------------


def test_normalize_eagerly_and_inside_tf_data_agree():
  images, _ = random_split(8)
  eager = augment.normalize(images).numpy()
  in_data = next(iter(tf.data.Dataset.from_tensors(images).map(augment.normalize))).numpy()
  np.testing.assert_allclose(eager, in_data, rtol=1e-6)
  assert eager.dtype == np.float32
  expected = (images / 255.0 - np.array(datasets.CIFAR10.mean)) / np.array(datasets.CIFAR10.std)
  np.testing.assert_allclose(eager, expected, atol=1e-5)


def test_each_dataset_brings_its_statistics_and_others_get_their_own():
  images, _ = random_split(5000)
  stats = datasets.statistics(images, chunk=700)  # Chunks that do not divide the images.
  pixels = images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), atol=1e-4)
  np.testing.assert_allclose(stats["std"], pixels.std(axis=0), atol=1e-4)
  for name, dataset in datasets.DATASETS.items():  # Trained as the table's figures were.
    assert datasets.input_normalization(name, images) == dataset.normalization, name
    assert len(dataset.mean) == len(dataset.std) == 3 and dataset.source, name
  assert datasets.input_normalization("cifar100", images)["mean"] == [0.5071, 0.4865, 0.4409]
  # Their own statistics: a folder, a TFDS name without an entry, another split or size.
  assert datasets.input_normalization("folder:/x", images) == stats
  assert datasets.input_normalization("mnist", images) == stats
  assert datasets.input_normalization("svhn_cropped", images, "train+extra") == stats
  larger = np.repeat(np.repeat(images[:100], 2, axis=1), 2, axis=2)  # 64x64.
  assert datasets.input_normalization("cifar10", larger) == datasets.statistics(larger)


def test_crop_and_flip():
  images, _ = random_split(3)
  centre = tf.fill([3, 2], augment.CROP_PADDING)
  no_flip = tf.zeros([3], tf.bool)
  np.testing.assert_array_equal(augment.crop_and_flip(images, centre, no_flip), images)
  flipped = augment.crop_and_flip(images, centre, tf.ones([3], tf.bool)).numpy()
  np.testing.assert_array_equal(flipped, images[:, :, ::-1])
  corner = augment.crop_and_flip(images, tf.zeros([3, 2], tf.int32), no_flip).numpy()
  assert (corner[:, :4, :, :] == 0).all() and (corner[:, :, :4, :] == 0).all()
  np.testing.assert_array_equal(corner[:, 4:, 4:], images[:, :28, :28])


def test_crop_flip_and_tta_take_any_image_size():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (4, 40, 24, 3), dtype=np.uint8)  # Not square, not 32.
  offsets = np.array([[0, 0], [3, 5], [6, 6], [2, 1]], np.int32)
  flips = np.array([False, True, False, True])
  crops = augment.crop_and_flip(images, offsets, flips, crop_padding=3).numpy()
  padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
  for crop, image, (row, column), flip in zip(crops, padded, offsets, flips, strict=True):
    expected = image[row : row + 40, column : column + 24]
    np.testing.assert_array_equal(crop, expected[:, ::-1] if flip else expected)
  views = augment.tta_views(images, "flip_translate")
  assert [view.shape for _, view in views] == [images.shape] * 6
  np.testing.assert_array_equal(views[-2][1][:, :-1, :-1], images[:, 1:, 1:])  # Down-right.
  no_flips = augment.Augmentation(crop_padding=4, flips="none")
  plan = augment.epoch_plan(0, 0, 16, 2, 8, no_flips, image_size=(40, 24))
  flipped = np.concatenate([batch["flips"] for batch in plan.as_numpy_iterator()])
  assert flipped.shape == (16,) and not flipped.any()


def test_crop_padding_bounds_the_translation():
  images, labels = random_split(45)
  images = np.full_like(images, 255)  # So every zero pixel in a crop is padding.
  for crop_padding in (0, 2):
    batches = train_batches(images, labels, crop_padding=crop_padding)
    crops = np.concatenate([batch_images for batch_images, _ in batches])  # [80, 32, 32, 3]
    is_padding = (crops == 0).all(axis=-1)  # [80, 32, 32]
    padded_rows = is_padding.all(axis=2).sum(axis=1)
    padded_columns = is_padding.all(axis=1).sum(axis=1)
    # Translations reach crop_padding pixels (80 crops), never more.
    assert padded_rows.max() == padded_columns.max() == crop_padding


# --- Datasets ---------------------------------------------------------------------------


# Every option of the augmentation menu on (the two policies exclude each other).
EVERY_OPTION = dict(cutout=8, mixup=1.0, cutmix=1.0)
AUGMENTATIONS = {
  "crops_and_flips": {},
  "everything_autoaugment": dict(EVERY_OPTION, autoaugment=True),
  "everything_randaugment": dict(EVERY_OPTION, randaugment=(2, 9)),
}


def train_batches(images, labels, **kwargs):
  """make_train_dataset's batches; augment.Augmentation's fields given as keywords."""
  fields = [field.name for field in dataclasses.fields(augment.Augmentation)]
  options = {name: kwargs.pop(name) for name in fields if name in kwargs}
  args = dict(global_batch_size=8, steps_per_epoch=5, start_step=0, total_steps=10, seed=3)
  args.update(kwargs, augmentation=augment.Augmentation(**options), num_classes=10)
  return list(pipeline.make_train_dataset(images, labels, **args).as_numpy_iterator())


def test_train_dataset_shapes_ranges_and_step_count():
  images, labels = random_split(45)
  batches = train_batches(images, labels)
  assert len(batches) == 10  # 2 epochs x 5 steps; the last 5 examples of each epoch dropped.
  for batch_images, batch_labels in batches:
    # uint8, not normalised: a quarter of the bytes to the device, which normalises.
    assert batch_images.shape == (8, 32, 32, 3) and batch_images.dtype == np.uint8
    assert batch_labels.shape == (8,) and batch_labels.dtype == np.int32
  first_epoch = np.concatenate([labels for _, labels in batches[:5]])
  assert len(np.unique(first_epoch)) == 10 and len(first_epoch) == 40
  # Each epoch has its own order.
  assert not np.array_equal(batches[0][1], batches[5][1])


@pytest.mark.parametrize("augmentation", ["crops_and_flips", "everything_autoaugment"])
def test_train_dataset_is_a_pure_function_of_seed_and_step(augmentation):
  images, labels = random_split(45)
  options = AUGMENTATIONS[augmentation]
  full = train_batches(images, labels, **options)
  resumed = train_batches(images, labels, start_step=7, **options)  # Mid-epoch.
  assert len(resumed) == 3
  for (a_images, a_labels), (b_images, b_labels) in zip(full[7:], resumed, strict=True):
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
  if not options:
    other_seed = train_batches(images, labels, seed=4)
    assert not np.array_equal(full[0][0], other_seed[0][0])
  else:  # Soft targets, each a mix of at most two classes.
    targets = np.concatenate([batch_labels for _, batch_labels in full])
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert ((targets > 0).sum(axis=1) <= 2).all() and ((targets > 0).sum(axis=1) == 2).any()


@pytest.mark.parametrize(
  "num_pipelines, augmentation",
  [(2, "crops_and_flips"), (4, "crops_and_flips"), (2, "everything_randaugment")],
)
def test_each_replica_gets_the_same_slice_whatever_the_number_of_pipelines(
  num_pipelines, augmentation
):
  images, labels = random_split(45)
  options = AUGMENTATIONS[augmentation]
  single = train_batches(images, labels, **options)  # Global batches of 8.
  num_replicas = 4  # Per-replica batches of 2; num_pipelines workers of 4 / num_pipelines.
  streams = []
  for pipeline_id in range(num_pipelines):
    context = tf.distribute.InputContext(
      num_input_pipelines=num_pipelines,
      input_pipeline_id=pipeline_id,
      num_replicas_in_sync=num_replicas,
    )
    streams.append(train_batches(images, labels, input_context=context, **options))
  replicas_per_pipeline = num_replicas // num_pipelines
  for step, (batch_images, batch_labels) in enumerate(single):
    for replica in range(num_replicas):
      pipeline_id, local = divmod(replica, replicas_per_pipeline)
      replica_images, replica_labels = streams[pipeline_id][step * replicas_per_pipeline + local]
      # Global replica k sees examples [2k, 2k + 2) of the global batch, augmented alike.
      np.testing.assert_array_equal(replica_images, batch_images[2 * replica : 2 * replica + 2])
      np.testing.assert_array_equal(replica_labels, batch_labels[2 * replica : 2 * replica + 2])
  assert all(len(stream) == len(single) * replicas_per_pipeline for stream in streams)


@pytest.mark.parametrize("strategy_name", ["default", "mirrored"])
def test_eval_dataset_sees_every_example_exactly_once(strategy_name):

  strategy = distribute.create_strategy(strategy_name)
  images, labels = random_split(21)
  seen_index, seen_labels = [], []
  for batch in pipeline.distribute_eval_dataset(strategy, images, labels, global_batch_size=8):
    for replica_batch in strategy.experimental_local_results(batch):
      real = replica_batch["mask"].numpy() > 0
      seen_index.append(replica_batch["index"].numpy()[real])
      seen_labels.append(replica_batch["label"].numpy()[real])
  seen_index = np.concatenate(seen_index)
  np.testing.assert_array_equal(np.sort(seen_index), np.arange(21))
  np.testing.assert_array_equal(np.concatenate(seen_labels), labels[seen_index])


def test_a_training_batch_that_does_not_divide_names_the_nearest_that_do():
  strategy = distribute.create_strategy("mirrored")
  with pytest.raises(sources.DataError, match="=7 does not divide over 2 replicas.*: 6 or 8\\.$"):
    pipeline.check_global_batch_size(strategy, 7)
  three = types.SimpleNamespace(num_replicas_in_sync=3)
  with pytest.raises(sources.DataError, match="=128 does not divide .* 3 .*: 126 or 129\\.$"):
    pipeline.check_global_batch_size(three, 128)
  with pytest.raises(sources.DataError, match="nearest that do: 3\\.$"):
    pipeline.check_global_batch_size(three, 2)
  with pytest.raises(sources.DataError, match="=0 does not .*: 3\\.$"):
    pipeline.check_global_batch_size(three, 0)
  pipeline.check_global_batch_size(three, 129)
  eval_batches = [pipeline.eval_batch_size(three, size) for size in (1, 128, 129, 256)]
  assert eval_batches == [3, 129, 129, 258]


def sides_per_epoch(batches, steps_per_epoch=5):
  """[{example: whether it was mirrored}] per epoch, for images whose top-left pixel is
  their index + 1 and no translations."""
  sides = [{} for _ in range(len(batches) // steps_per_epoch)]
  for step, (batch_images, _) in enumerate(batches):
    for image in batch_images:
      mirrored = image[0, 31, 0] > 0
      sides[step // steps_per_epoch][int(image[0, 31 if mirrored else 0, 0]) - 1] = mirrored
  return sides


def test_alternating_flips_turn_every_image_the_other_way_each_epoch():
  images = np.zeros((45, 32, 32, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(1, 46)  # Which example, and which way round.
  labels = np.zeros(45, np.int32)
  # 3 epochs of 5 steps of 8: 40 of the 45 examples each epoch.
  args = dict(crop_padding=0, total_steps=15)
  sides = sides_per_epoch(train_batches(images, labels, flips="alternating", **args))
  for before, after in zip(sides[:-1], sides[1:], strict=True):
    both = set(before) & set(after)
    assert len(both) >= 35 and all(before[i] != after[i] for i in both)
  assert 10 < sum(sides[0].values()) < 30  # A random half first.
  # The default stays random: some images keep their side from one epoch to the next.
  sides = sides_per_epoch(train_batches(images, labels, **args))
  assert any(sides[0][i] == sides[1][i] for i in set(sides[0]) & set(sides[1]))
