"""What the model sees of an image: normalisation, crops and flips, and test-time views.

Everything here is vectorised over a batch (uint8 in, as data/pipeline.py
gathers it). A training epoch's order, crops and flips are planned up front
by `epoch_plan`, a pure function of (seed, epoch): data/pipeline.py turns the
plan into datasets.
"""

import numpy as np
import tensorflow as tf

from data import datasets

CROP_PADDING = 4  # default pixels of zero padding on each side before the random crop
# random: each image flipped with probability 1/2 each epoch. alternating: a random half
# flipped in the first epoch, then every image the other way round each epoch, so two
# epochs show every image once each way (Jordan 2024's derandomised flips). none: never
# (digits, text: SVHN's mirror images are not digits).
FLIP_MODES = ("random", "alternating", "none")
TTA_MODES = ("none", "flip", "flip_translate")  # Test-time augmentation: see tta_views.


def normalize(images, mean=datasets.CIFAR10.mean, std=datasets.CIFAR10.std):
  """uint8 [..., H, W, 3] in [0, 255] -> float32 (images / 255 - mean) / std.

  `mean` and `std` are 3 per-channel values in [0, 1] pixel units: a run's input
  normalisation (`normalize(images, **run_record.input_normalization(record))`, see
  data/datasets.py); CIFAR-10's statistics by default.

  Applied by the model's steps (resnet/train_lib.py) on the device, not by the
  input pipeline: the host then sends uint8, a quarter of the bytes, and does
  less work per image.
  """
  images = tf.cast(images, tf.float32) / 255.0
  return (images - tf.convert_to_tensor(mean, tf.float32)) / tf.convert_to_tensor(std, tf.float32)


def crop_and_flip(images, offsets, flips, crop_padding=CROP_PADDING):
  """Pads by `crop_padding` pixels, crops HxW at per-example offsets, flips left-right.

  One gather of whole pixels: each RGB pixel is packed into one int32, because
  gathering 3-byte slices element by element made this the slowest part of the
  input pipeline (docs/speed.md). The size comes from the images' static shape (the
  pipeline's arrays are constants), so CIFAR's 32x32 graph is the one it always was.

  Args:
    images: uint8 [B, H, W, 3], H and W static.
    offsets: int32 [B, 2], (row, column) of each crop's corner, in [0, 2 * crop_padding].
    flips: bool [B], whether to mirror each example.
    crop_padding: zero pixels added on each side (4: translations of up to +-4 pixels).

  Returns:
    uint8 [B, H, W, 3].
  """
  height, width = images.shape[1], images.shape[2]
  padded_height, padded_width = height + 2 * crop_padding, width + 2 * crop_padding
  pixels = tf.bitcast(tf.pad(images, [[0, 0], [0, 0], [0, 0], [0, 1]]), tf.int32)  # [B, H, W]
  pad = crop_padding
  padded = tf.reshape(tf.pad(pixels, [[0, 0], [pad, pad], [pad, pad]]), [-1])  # [B * H' * W']
  rows = offsets[:, 0:1] + tf.range(height)  # [B, H], in the padded image
  window = tf.range(width)
  mirrored = offsets[:, 1:2] + (width - 1) - window
  cols = tf.where(flips[:, None], mirrored, offsets[:, 1:2] + window)  # [B, W]
  first_row = tf.range(tf.shape(images)[0])[:, None] * padded_height + rows  # [B, H]
  index = first_row[:, :, None] * padded_width + cols[:, None, :]  # [B, H, W]
  return tf.bitcast(tf.gather(padded, index), tf.uint8)[..., :3]


def epoch_plan(
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
  elif flips == "none":
    flipped = tf.zeros([examples_per_epoch], tf.bool)
  else:
    flipped = tf.random.stateless_uniform([examples_per_epoch], flip_key) < 0.5
  batches = [steps_per_epoch, global_batch_size]
  return tf.data.Dataset.from_tensor_slices(
    (tf.reshape(order, batches), tf.reshape(offsets, batches + [2]), tf.reshape(flipped, batches))
  )


def tta_views(images, mode):
  """The views of test-time augmentation `mode` (one of TTA_MODES), with their weights.

  "flip": the images and their mirror image, 1/2 each. "flip_translate" (Jordan
  2024's airbench): half on those two, half on both of them translated by one
  pixel up-left and one down-right (edges reflected), 1/8 each. The prediction
  is the weighted mean of the views' probabilities.

  Args:
    images: uint8 [N, H, W, 3], in memory.

  Returns:
    [(weight, uint8 [N, H, W, 3])], weights summing to 1.
  """
  if mode == "none":
    return [(1.0, images)]
  views = [(0.5, images), (0.5, images[:, :, ::-1])]
  if mode == "flip_translate":
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    shifted = [padded[:, :height, :width], padded[:, 2:, 2:]]  # Up-left, down-right.
    views = [(weight / 2, view) for weight, view in views]
    views += [(1 / 8, view) for image in shifted for view in (image, image[:, :, ::-1])]
  return views
