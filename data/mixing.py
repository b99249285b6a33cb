"""MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019): each position of a global
batch mixed with a partner from the same global batch, with soft targets.

Ours, not Keras 3's `keras.layers.MixUp` / `CutMix`: those pair the images of the batch
they are given (under tf.distribute, one replica's slice, so the pairs would change with
the replica count) and draw from a stateful generator. Here the partners, the mixing
weights and the boxes are planned per global batch by augment.epoch_plan, a pure function
of (seed, epoch): each input pipeline builds its positions' partners (augmented as they
are at their own positions) from the images it holds, whatever the replica count.

As the authors' reference code and timm's default: one weight lambda ~ Beta(alpha, alpha)
per global batch (Keras draws one per example), partners by a random permutation of the
batch, CutMix's box of side sqrt(1 - lambda) times the image's, centred uniformly and
clipped at the borders, its label weight the area actually kept. With both options on,
each global batch is CutMix or MixUp with probability 1/2 (timm's switch_prob 0.5).
MixUp's blend is rounded to uint8 (at most half a grey level; the targets use the exact
lambda): the pipeline sends uint8 to the device, which normalises.
"""

import tensorflow as tf


def _beta(key, shape, alpha):
  """Beta(alpha, alpha) samples as G1 / (G1 + G2) of two Gamma(alpha) draws."""
  gammas = tf.random.stateless_gamma([2, *shape], key, alpha=alpha)
  return gammas[0] / (gammas[0] + gammas[1])


def _cutmix_boxes(key, lam, image_size):
  """Yun et al.'s rand_bbox per batch: int32 [S, 4] (top, bottom, left, right), and the
  label weight of the image kept, 1 - box area / image area, float32 [S]."""
  height, width = image_size
  ratio = tf.sqrt(1.0 - lam)
  cut_height = tf.cast(height * ratio, tf.int32) // 2  # Half sides, truncated as theirs.
  cut_width = tf.cast(width * ratio, tf.int32) // 2
  y_key, x_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
  centre_y = tf.random.stateless_uniform(tf.shape(lam), y_key, maxval=height, dtype=tf.int32)
  centre_x = tf.random.stateless_uniform(tf.shape(lam), x_key, maxval=width, dtype=tf.int32)
  top = tf.clip_by_value(centre_y - cut_height, 0, height)
  bottom = tf.clip_by_value(centre_y + cut_height, 0, height)
  left = tf.clip_by_value(centre_x - cut_width, 0, width)
  right = tf.clip_by_value(centre_x + cut_width, 0, width)
  area = tf.cast((bottom - top) * (right - left), tf.float32)
  return tf.stack([top, bottom, left, right], axis=1), 1.0 - area / (height * width)


def plan_mixing(key, steps, batch_size, mixup, cutmix, image_size):
  """The mixing of `steps` global batches of `batch_size` (MixUp and CutMix alphas, 0 off).

  Returns:
    A dict of per-position tensors [steps, batch_size, ...]: "partner" int32, the
    partner's position in the global batch; "box" int32 [..., 4], the pixels (top,
    bottom, left, right; empty for MixUp) that come from the partner; "weight" float32,
    the weight of the position's own image elsewhere (MixUp's lambda, 1 for CutMix);
    "label_weight" float32, that of its own label. The last three are alike across a batch.
  """
  partner_key, mixup_key, cutmix_key, box_key, switch_key = tf.unstack(
    tf.random.experimental.stateless_split(key, num=5)
  )
  partner = tf.argsort(tf.random.stateless_uniform([steps, batch_size], partner_key), axis=1)
  ones = tf.ones([steps])
  mixup_lam = _beta(mixup_key, [steps], mixup) if mixup else ones
  cutmix_lam = _beta(cutmix_key, [steps], cutmix) if cutmix else ones
  box, cutmix_label_weight = _cutmix_boxes(box_key, cutmix_lam, image_size)
  if mixup and cutmix:
    use_cutmix = tf.random.stateless_uniform([steps], switch_key) < 0.5
  else:
    use_cutmix = tf.fill([steps], bool(cutmix))
  per_batch = {
    "box": tf.where(use_cutmix[:, None], box, 0),
    "weight": tf.where(use_cutmix, ones, mixup_lam),
    "label_weight": tf.where(use_cutmix, cutmix_label_weight, mixup_lam),
  }
  plan = {name: tf.repeat(value[:, None], batch_size, axis=1) for name, value in per_batch.items()}
  return dict(plan, partner=tf.cast(partner, tf.int32))


def mix(images, partner_images, labels, partner_labels, plan, num_classes):
  """Mixed images and soft targets of positions and their partners (plan_mixing's).

  Args:
    images, partner_images: uint8 [b, H, W, 3], augmented.
    labels, partner_labels: int32 [b].
    plan: this batch's "box" [b, 4], "weight" [b] and "label_weight" [b].

  Returns:
    (uint8 [b, H, W, 3] weight * image + (1 - weight) * partner, rounded to the nearest
     level, the partner's own pixels inside the box; float32 [b, num_classes] targets
     label_weight * one_hot(label) + (1 - label_weight) * one_hot(partner's label)).
  """
  height, width = images.shape[1], images.shape[2]
  box = plan["box"]
  rows = tf.range(height)[None, :, None]
  columns = tf.range(width)[None, None, :]
  in_box = (
    (rows >= box[:, 0, None, None])
    & (rows < box[:, 1, None, None])
    & (columns >= box[:, 2, None, None])
    & (columns < box[:, 3, None, None])
  )  # [b, H, W]
  weight = tf.where(in_box, 0.0, plan["weight"][:, None, None])[..., None]
  blended = weight * tf.cast(images, tf.float32) + (1.0 - weight) * tf.cast(
    partner_images, tf.float32
  )
  mixed = tf.cast(tf.floor(blended + 0.5), tf.uint8)
  label_weight = plan["label_weight"][:, None]
  targets = label_weight * tf.one_hot(labels, num_classes) + (1.0 - label_weight) * tf.one_hot(
    partner_labels, num_classes
  )
  return mixed, targets
