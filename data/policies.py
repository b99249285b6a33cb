"""AutoAugment's CIFAR-10 policy and RandAugment: their operations on uint8 batches.

Our own small version, not Keras 3's `keras.layers.RandAugment` (read in Keras 3.15's
source): that layer draws its `num_ops` operations once per *batch* (every image of a
batch gets the same ones), computes all 11 of its operations on the whole batch for each
of them and keeps one with `where`, draws magnitudes from a range instead of the paper's
fixed M, and takes its randomness from a stateful SeedGenerator (its
`get_random_transformation(seed=...)` ignores the seed). Keras has no AutoAugment. Here
each *position* of an epoch gets its own operations and magnitudes, planned up front as a
pure function of (seed, epoch) (`plan_autoaugment`, `plan_randaugment`, called by
augment.epoch_plan), and `apply_ops` runs each operation only on the images that drew it
(tf.dynamic_partition), so the cost is about one operation per image and slot.

The operations and their magnitudes follow torchvision's `AutoAugment` and `RandAugment`
(torchvision/transforms/autoaugment.py, which follows Cubuk et al. 2019 and 2020): the
same 25 CIFAR-10 sub-policies, magnitude bins and random signs, PIL's pixel arithmetic
(grey level, blending, equalisation, autocontrast). One difference: the pixels that the
geometric operations uncover take `fill`, the run's mean colour (zero once normalised),
as AutoAugment's own CIFAR code, where torchvision's default is black.
"""

import math

import tensorflow as tf

# Every operation; RandAugment draws from the first 14 (torchvision's list), AutoAugment's
# policy names any. A magnitude is a signed fraction of the operation's maximum, below.
OPS = (
  "Identity",
  "ShearX",
  "ShearY",
  "TranslateX",
  "TranslateY",
  "Rotate",
  "Brightness",
  "Color",
  "Contrast",
  "Sharpness",
  "Posterize",
  "Solarize",
  "AutoContrast",
  "Equalize",
  "Invert",
)
RANDAUGMENT_OPS = 14
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate") + OPS[6:10]
MAX_SHEAR = 0.3  # Horizontal pixels per row (or vertical per column).
MAX_TRANSLATE = 150 / 331  # Of the image's side (AutoAugment's ImageNet range, as torchvision).
MAX_DEGREES = 30.0
MAX_ENHANCE = 0.9  # Brightness, Color, Contrast, Sharpness: PIL's factor 1 +- 0.9.
RANDAUGMENT_LEVELS = 30  # --randaugment's M is in [0, 30]: torchvision's 31 bins.
AUTOAUGMENT_LEVELS = 9  # The policy's levels 0..9: torchvision's 10 bins.

# AutoAugment's CIFAR-10 policy (Cubuk et al. 2019, as torchvision lists it): 25
# sub-policies of two (operation, probability, level); None: the operation has no level.
CIFAR10_POLICY = (
  (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
  (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
  (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
  (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
  (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
  (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
  (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
  (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
  (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
  (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
  (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
  (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
  (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
  (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
  (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
  (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
  (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
  (("Color", 0.9, 9), ("Equalize", 0.6, None)),
  (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
  (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
  (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
  (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
  (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
  (("Equalize", 0.8, None), ("Invert", 0.1, None)),
  (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)


# --- Plans: per position, pure functions of a stateless key ---------------------------


def _signed(key, ops, magnitudes):
  """Magnitudes negated at random (probability 1/2) where the operation is signed."""
  signed = tf.gather(tf.constant([op in SIGNED for op in OPS]), ops)
  negate = signed & (tf.random.stateless_uniform(tf.shape(ops), key) < 0.5)
  return tf.where(negate, -magnitudes, magnitudes)


def plan_randaugment(key, count, num_ops, magnitude):
  """RandAugment's N = `num_ops` operations per position, each uniform among
  RANDAUGMENT_OPS, at magnitude M = `magnitude` (of RANDAUGMENT_LEVELS), random signs.

  Returns:
    (ops int32 [count, N] indices into OPS, magnitudes float32 [count, N] in [-1, 1]).
  """
  op_key, sign_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
  ops = tf.random.stateless_uniform(
    [count, num_ops], op_key, minval=0, maxval=RANDAUGMENT_OPS, dtype=tf.int32
  )
  magnitudes = tf.fill([count, num_ops], magnitude / RANDAUGMENT_LEVELS)
  return ops, _signed(sign_key, ops, magnitudes)


def plan_autoaugment(key, count):
  """One of CIFAR10_POLICY's sub-policies per position, each of its two operations
  applied with its probability (else Identity), random signs.

  Returns:
    (ops int32 [count, 2] indices into OPS, magnitudes float32 [count, 2] in [-1, 1]).
  """
  table_ops = tf.constant([[OPS.index(op) for op, _, _ in pair] for pair in CIFAR10_POLICY])
  probabilities = tf.constant([[p for _, p, _ in pair] for pair in CIFAR10_POLICY])
  levels = [[(level or 0) / AUTOAUGMENT_LEVELS for _, _, level in pair] for pair in CIFAR10_POLICY]
  choice_key, apply_key, sign_key = tf.unstack(tf.random.experimental.stateless_split(key, num=3))
  chosen = tf.random.stateless_uniform(
    [count], choice_key, minval=0, maxval=len(CIFAR10_POLICY), dtype=tf.int32
  )
  applied = tf.random.stateless_uniform([count, 2], apply_key) < tf.gather(probabilities, chosen)
  ops = tf.where(applied, tf.gather(table_ops, chosen), OPS.index("Identity"))
  return ops, _signed(sign_key, ops, tf.gather(tf.constant(levels), chosen))


# --- Operations: uint8 [b, H, W, 3] and magnitudes float32 [b] -> uint8 [b, H, W, 3] ----


def _per_image(values):
  return values[:, None, None, None]


def _blend(degenerate, images, factors):
  """PIL's Image.blend: degenerate + factor * (image - degenerate), clipped, truncated."""
  images = tf.cast(images, tf.float32)
  blended = degenerate + _per_image(factors) * (images - degenerate)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def _grey(images):
  """PIL's "L" conversion, int32 [b, H, W, 1]: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
  weighted = tf.cast(images, tf.int32) * tf.constant([19595, 38470, 7471])
  return tf.bitwise.right_shift(tf.reduce_sum(weighted, -1, keepdims=True) + 32768, 16)


def _enhance(name, images, magnitudes):
  """PIL's ImageEnhance.`name` with factor 1 + MAX_ENHANCE * magnitude."""
  factors = 1.0 + MAX_ENHANCE * magnitudes
  if name == "Brightness":
    return _blend(tf.zeros_like(images, tf.float32), images, factors)
  grey = _grey(images)
  if name == "Color":
    return _blend(tf.cast(tf.tile(grey, [1, 1, 1, 3]), tf.float32), images, factors)
  if name == "Contrast":  # The grey level's mean, rounded half up (PIL's int(mean + 0.5)).
    mean = tf.reduce_mean(tf.cast(grey, tf.float64), axis=[1, 2, 3], keepdims=True)
    return _blend(tf.cast(tf.floor(mean + 0.5), tf.float32), images, factors)
  # Sharpness: PIL's SMOOTH filter (3x3, centre 5, others 1, / 13) inside, the border as is.
  # Slices, not a convolution: TensorFlow's depthwise convolution of an empty batch (no
  # image drew the operation) returns the wrong shape.
  pixels = tf.cast(images, tf.float32)
  height, width = images.shape[1], images.shape[2]
  window = [pixels[:, y : y + height - 2, x : x + width - 2] for y in range(3) for x in range(3)]
  smooth = tf.floor((tf.add_n(window) + 4 * window[4]) / 13 + 0.5)  # window[4]: the centre.
  inside = tf.pad(tf.ones([1, height - 2, width - 2, 1]), [[0, 0], [1, 1], [1, 1], [0, 0]]) > 0
  smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
  return _blend(tf.where(inside, smooth, pixels), images, factors)


def _geometric(name, images, magnitudes, fill):
  """Shear, translation or rotation (nearest pixel), uncovered pixels `fill` (uint8 [3])."""
  height, width = images.shape[1], images.shape[2]
  zeros, ones = tf.zeros_like(magnitudes), tf.ones_like(magnitudes)
  if name in ("ShearX", "ShearY"):  # PIL's (1, k, 0, 0, 1, 0), sampled at pixel centres.
    k = MAX_SHEAR * magnitudes
    rows = (
      [ones, k, k / 2, zeros, ones, zeros]
      if name == "ShearX"
      else [ones, zeros, zeros, k, ones, k / 2]
    )
  elif name in ("TranslateX", "TranslateY"):  # Whole pixels, truncated as torchvision.
    side = width if name == "TranslateX" else height
    pixels = tf.cast(tf.cast(MAX_TRANSLATE * side * magnitudes, tf.int32), tf.float32)
    x, y = (pixels, zeros) if name == "TranslateX" else (zeros, pixels)
    rows = [ones, zeros, x, zeros, ones, y]
  else:  # Rotate: counter-clockwise by MAX_DEGREES * magnitude about the centre, as PIL.
    radians = MAX_DEGREES * math.pi / 180 * magnitudes
    cos, sin = tf.cos(radians), tf.sin(radians)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2
    rows = [cos, -sin, x_offset, sin, cos, y_offset]
  transformed = tf.raw_ops.ImageProjectiveTransformV3(
    images=tf.cast(images, tf.float32),
    transforms=tf.stack(rows + [zeros, zeros], axis=1),  # Output pixel -> input pixel.
    output_shape=[height, width],
    interpolation="NEAREST",
    fill_mode="CONSTANT",
    fill_value=-1.0,  # Marks uncovered pixels, then filled per channel.
  )
  filled = tf.where(transformed < 0, tf.cast(fill, tf.float32), transformed)
  return tf.cast(filled, tf.uint8)


def _histogram_op(name, images):
  """AutoContrast or Equalize, as PIL's ImageOps, per image and channel through a table."""
  batch, channels = tf.shape(images)[0], images.shape[-1]
  values = tf.cast(images, tf.int32)
  if name == "AutoContrast":  # (x - lo) * 255 / (hi - lo), in float64 and truncated, as PIL.
    low = tf.cast(tf.reduce_min(values, axis=[1, 2], keepdims=True), tf.float64)
    high = tf.cast(tf.reduce_max(values, axis=[1, 2], keepdims=True), tf.float64)
    scale = 255.0 / tf.maximum(high - low, 1.0)
    stretched = tf.cast(values, tf.float64) * scale - low * scale
    stretched = tf.cast(tf.clip_by_value(stretched, 0.0, 255.0), tf.int32)
    return tf.cast(tf.where(high > low, stretched, values), tf.uint8)
  # Equalize: lut[v] = (step // 2 + pixels below v) // step, step = (pixels - those at
  # the top value) // 255; unchanged where step is 0.
  tables = tf.reshape(tf.range(batch * channels), [-1, 1, 1, channels]) * 256
  counts = tf.math.bincount(tf.reshape(values + tables, [-1]), minlength=batch * channels * 256)
  counts = tf.reshape(counts, [batch, channels, 256])
  top = tf.reduce_max(tf.reshape(tf.transpose(values, [0, 3, 1, 2]), [batch, channels, -1]), -1)
  step = (tf.reduce_sum(counts, -1) - tf.gather(counts, top, batch_dims=2)) // 255  # [b, C]
  below = tf.cumsum(counts, axis=-1, exclusive=True)
  lut = tf.minimum((below + step[..., None] // 2) // tf.maximum(step[..., None], 1), 255)
  lut = tf.where(step[..., None] > 0, lut, tf.range(256))  # [b, C, 256]
  equalized = tf.gather(tf.reshape(lut, [-1]), values + tables)
  return tf.cast(equalized, tf.uint8)


def apply_op(name, images, magnitudes, fill):
  """Operation `name` (of OPS) on uint8 [b, H, W, 3] at magnitudes float32 [b] in [-1, 1]."""
  if name == "Identity":
    return images
  if name == "Invert":
    return 255 - images
  if name == "Posterize":  # Keeps 8 - round(4 |m|) bits (4 to 8).
    bits = 8 - tf.cast(tf.round(4 * tf.abs(magnitudes)), tf.int32)
    mask = tf.cast(256 - tf.bitwise.left_shift(1, 8 - bits), tf.uint8)
    return tf.bitwise.bitwise_and(images, _per_image(mask))
  if name == "Solarize":  # Inverts the pixels at or above 255 (1 - |m|).
    threshold = _per_image(255.0 * (1.0 - tf.abs(magnitudes)))
    return tf.where(tf.cast(images, tf.float32) >= threshold, 255 - images, images)
  if name in ("AutoContrast", "Equalize"):
    return _histogram_op(name, images)
  if name in ("Brightness", "Color", "Contrast", "Sharpness"):
    return _enhance(name, images, magnitudes)
  return _geometric(name, images, magnitudes, fill)


def apply_ops(images, ops, magnitudes, fill):
  """The planned operations, slot by slot: uint8 [B, H, W, 3] -> uint8 [B, H, W, 3].

  Args:
    images: uint8 [B, H, W, 3].
    ops: int32 [B, K] indices into OPS; magnitudes: float32 [B, K] (plan_* above).
    fill: uint8 [3], the colour of pixels the geometric operations uncover.
  """
  positions = tf.range(tf.shape(images)[0])

  def one_slot(slot, images):
    # Each operation on the images that drew it: about one operation per image.
    slot_ops = ops[:, slot]
    parts = tf.dynamic_partition(images, slot_ops, len(OPS))
    part_magnitudes = tf.dynamic_partition(magnitudes[:, slot], slot_ops, len(OPS))
    done = [
      apply_op(name, *part, fill) for name, *part in zip(OPS, parts, part_magnitudes, strict=True)
    ]
    stitched = tf.dynamic_stitch(tf.dynamic_partition(positions, slot_ops, len(OPS)), done)
    return slot + 1, tf.ensure_shape(stitched, images.shape)

  # A loop, not a Python one: the slots share one copy of the operations in the graph.
  return tf.while_loop(lambda slot, _: slot < tf.shape(ops)[1], one_slot, (0, images))[1]
