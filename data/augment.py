"""What the model sees of an image: normalisation, the training augmentation, test-time views.

Everything here is vectorised over a batch (uint8 in, as data/pipeline.py
gathers it). A training epoch's order and every random choice of its
augmentation (crops, flips, Cutout, the policies' operations, MixUp/CutMix
partners) are planned up front per position by `epoch_plan`, a pure function
of (seed, epoch): data/pipeline.py turns the plan into datasets. The menu and
its sources: docs/augmentation.md.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from data import datasets, mixing, policies

CROP_PADDING = 4  # default pixels of zero padding on each side before the random crop
# random: each image flipped with probability 1/2 each epoch. alternating: a random half
# flipped in the first epoch, then every image the other way round each epoch, so two
# epochs show every image once each way (Jordan 2024's derandomised flips). none: never
# (digits, text: SVHN's mirror images are not digits).
FLIP_MODES = ("random", "alternating", "none")
TTA_MODES = ("none", "flip", "flip_translate")  # Test-time augmentation: see tta_views.


def mean_colour(mean):
  """uint8 RGB (a tuple) nearest to a normalisation's per-channel `mean` in [0, 1]: the
  colour that normalises to about zero."""
  return tuple(int(np.round(255 * value)) for value in mean)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """A run's training augmentation: train.py's options of the same names (resnet/config.py)."""

  crop_padding: int = CROP_PADDING
  flips: str = "random"  # One of FLIP_MODES.
  cutout: int = 0  # Side of Cutout's square, pixels; 0: none.
  randaugment: tuple = ()  # RandAugment's (N, M); (): none.
  autoaugment: bool = False  # AutoAugment's CIFAR-10 policy.
  mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0: none.
  cutmix: float = 0.0  # CutMix's alpha; 0: none.
  # uint8 RGB of Cutout's square and of pixels the geometric operations uncover: the
  # run's mean colour, zero once normalised (DeVries & Taylor and AutoAugment fill zeros
  # of normalised images).
  fill: tuple = mean_colour(datasets.CIFAR10.mean)

  @property
  def mixing(self):
    """Whether training targets are soft (MixUp or CutMix on)."""
    return bool(self.mixup or self.cutmix)


CROPS_AND_FLIPS = Augmentation()  # The default: random crops of CROP_PADDING and flips.


def parse_randaugment(spec):
  """--randaugment's "N,M" as (N, M): N >= 1 operations per image at magnitude M in
  [0, policies.RANDAUGMENT_LEVELS]; "" (off) as ().

  Raises:
    ValueError: anything else, with a message naming the option.
  """
  if not spec:
    return ()
  parts = spec.split(",")
  if len(parts) == 2 and all(part.strip().isdigit() for part in parts):
    num_ops, magnitude = (int(part) for part in parts)
    if num_ops >= 1 and magnitude <= policies.RANDAUGMENT_LEVELS:
      return (num_ops, magnitude)
  raise ValueError(
    f"--randaugment must be N,M with N >= 1 operations and a magnitude M in "
    f"[0, {policies.RANDAUGMENT_LEVELS}], e.g. 2,9, or empty for none; got {spec!r}."
  )


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


def cutout(images, centres, size, fill):
  """DeVries & Taylor 2017's Cutout: a `size` x `size` square of `fill` per image.

  Args:
    images: uint8 [B, H, W, 3].
    centres: int32 [B, 2], (row, column) of each square's centre, anywhere in the image:
      the square spans [centre - size // 2, centre - size // 2 + size), clipped at the
      borders (their code's square for an even size; an odd one keeps its size here).
    size: the square's side, pixels.
    fill: uint8 [3], the square's colour.

  Returns:
    uint8 [B, H, W, 3].
  """
  height, width = images.shape[1], images.shape[2]
  corners = centres - size // 2
  rows = tf.range(height)[None, :, None]
  columns = tf.range(width)[None, None, :]
  inside = (
    (rows >= corners[:, 0, None, None])
    & (rows < corners[:, 0, None, None] + size)
    & (columns >= corners[:, 1, None, None])
    & (columns < corners[:, 1, None, None] + size)
  )
  return tf.where(inside[..., None], tf.constant(fill, tf.uint8), images)


def _extra_plan(key, count, augmentation, image_size):
  """Per position: Cutout's centres ("cutout" [count, 2]) and the policies' "ops" and
  "magnitudes" ([count, K]), those that `augmentation` uses."""
  cutout_key, policy_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
  plan = {}
  if augmentation.cutout:
    row_key, column_key = tf.unstack(tf.random.experimental.stateless_split(cutout_key, num=2))
    plan["cutout"] = tf.stack(
      [
        tf.random.stateless_uniform([count], row_key, maxval=image_size[0], dtype=tf.int32),
        tf.random.stateless_uniform([count], column_key, maxval=image_size[1], dtype=tf.int32),
      ],
      axis=1,
    )
  if augmentation.randaugment:
    plan["ops"], plan["magnitudes"] = policies.plan_randaugment(
      policy_key, count, *augmentation.randaugment
    )
  elif augmentation.autoaugment:
    plan["ops"], plan["magnitudes"] = policies.plan_autoaugment(policy_key, count)
  return plan


def epoch_plan(
  seed, epoch, num_examples, steps_per_epoch, global_batch_size, augmentation, image_size
):
  """Order and augmentation of one epoch, per position: a pure function of (seed, epoch).

  Args:
    augmentation: an Augmentation; image_size: (height, width) of the images.

  Returns:
    A dataset of `steps_per_epoch` global batches, dicts of tensors [B, ...] (B =
    global_batch_size): "order" int32 (example), "offsets" int32 [B, 2], "flips" bool,
    and as `augmentation` needs: "cutout" int32 [B, 2], "ops" and "magnitudes" [B, K]
    (data/policies.py), "mixing" (data/mixing.py's plan) and "partner" (each of the
    former fields, of the position's partner in the global batch). Whole batches, not
    examples, are the elements: tf.data's cost is per element.
  """
  examples_per_epoch = steps_per_epoch * global_batch_size
  key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
  order_key, offset_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, num=3))
  order = tf.argsort(tf.random.stateless_uniform([num_examples], order_key))
  order = tf.cast(order[:examples_per_epoch], tf.int32)
  crop_padding = augmentation.crop_padding
  offsets = tf.random.stateless_uniform(
    [examples_per_epoch, 2], offset_key, minval=0, maxval=2 * crop_padding + 1, dtype=tf.int32
  )
  if augmentation.flips == "alternating":
    # Per example, not per position: one key for the whole run (epochs are >= 0).
    first_key = tf.stack([tf.cast(seed, tf.int64), tf.constant(-1, tf.int64)])
    first_epoch = tf.random.stateless_uniform([num_examples], first_key) < 0.5
    flipped = tf.gather(first_epoch, order) != tf.equal(tf.cast(epoch, tf.int64) % 2, 1)
  elif augmentation.flips == "none":
    flipped = tf.zeros([examples_per_epoch], tf.bool)
  else:
    flipped = tf.random.stateless_uniform([examples_per_epoch], flip_key) < 0.5
  # The options added later draw from keys of their own, so that crops and flips stay
  # what they were without them.
  extra_key, mixing_key = tf.unstack(
    tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(key, 1), 2)
  )
  plan = dict(order=order, offsets=offsets, flips=flipped)
  plan.update(_extra_plan(extra_key, examples_per_epoch, augmentation, image_size))
  plan = {
    name: tf.reshape(value, [steps_per_epoch, global_batch_size, *value.shape[1:]])
    for name, value in plan.items()
  }
  if augmentation.mixing:
    plan["mixing"] = mixing.plan_mixing(
      mixing_key,
      steps_per_epoch,
      global_batch_size,
      augmentation.mixup,
      augmentation.cutmix,
      image_size,
    )
    partner = plan["mixing"].pop("partner")  # [steps, B]: positions in the same batch.
    fields = [name for name in plan if name != "mixing"]
    plan["partner"] = {name: tf.gather(plan[name], partner, batch_dims=1) for name in fields}
  return tf.data.Dataset.from_tensor_slices(plan)


def augmented_images(images, plan, augmentation):
  """The images of planned positions, augmented: uint8 [b, H, W, 3].

  Args:
    images: uint8 [N, H, W, 3], every example.
    plan: epoch_plan's per-position fields for b positions (or their "partner" fields).
    augmentation: the Augmentation the plan was made for.

  The policy (AutoAugment or RandAugment) comes first, then the crop and flip, then
  Cutout, in the order of AutoAugment's and Cutout's reference code.
  """
  images = tf.gather(images, plan["order"])
  if "ops" in plan:
    images = policies.apply_ops(images, plan["ops"], plan["magnitudes"], augmentation.fill)
  images = crop_and_flip(images, plan["offsets"], plan["flips"], augmentation.crop_padding)
  if augmentation.cutout:
    images = cutout(images, plan["cutout"], augmentation.cutout, augmentation.fill)
  return images


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
