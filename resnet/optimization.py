"""What training minimises and how: the learning-rate schedule, the optimizer, the loss terms.

Pure functions and Keras objects, no distribution: resnet/train_lib.py runs
them under a tf.distribute strategy.
"""

import math

import keras
import tensorflow as tf

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
LR_SCHEDULES = ("constant", "cosine", "piecewise", "linear")
OPTIMIZERS = ("adam", "sgd")


# --- Learning rate and optimizer ------------------------------------------------------


class LearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up to `base_learning_rate`, then constant, cosine, piecewise or linear decay.

  piecewise multiplies the rate by `drop_factor` at each of the fractions `drops` of the
  post-warm-up steps (by default /10 at 50% and 75%: He et al. 2016 drop at 32k and 48k of
  64k iterations; Wide ResNets x0.2 at 0.3, 0.6, 0.8); linear decays
  to zero at the last step (the short recipes of Page 2018 and Jordan 2024). `multiplier`,
  a scalar tf.Variable if given, scales the whole schedule (lowered when a run
  recovers from a non-finite loss; checkpointed with the run).
  """

  def __init__(
    self,
    kind,
    base_learning_rate,
    total_steps,
    warmup_steps=0,
    multiplier=None,
    drops=(0.5, 0.75),
    drop_factor=0.1,
  ):
    if kind not in LR_SCHEDULES:
      raise ValueError(f"Unknown schedule {kind!r}; choose one of {', '.join(LR_SCHEDULES)}.")
    self.kind = kind
    self.base_learning_rate = base_learning_rate
    self.total_steps = total_steps
    self.warmup_steps = warmup_steps
    self.multiplier = multiplier
    self.drops = tuple(drops)
    self.drop_factor = drop_factor

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warmup = tf.cast(self.warmup_steps, tf.float32)
    decay_steps = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
    progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
    if self.kind == "cosine":
      factor = 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif self.kind == "piecewise":
      drops_passed = tf.add_n([tf.cast(progress >= drop, tf.float32) for drop in self.drops])
      factor = tf.pow(tf.cast(self.drop_factor, tf.float32), drops_passed)
    elif self.kind == "linear":
      factor = 1.0 - progress
    else:
      factor = tf.constant(1.0)
    warmup_factor = tf.minimum(1.0, (step + 1.0) / tf.maximum(warmup, 1.0))
    rate = self.base_learning_rate * factor * warmup_factor
    if self.multiplier is not None:
      rate *= tf.cast(self.multiplier, tf.float32)
    return rate

  def get_config(self):
    return dict(
      kind=self.kind,
      base_learning_rate=self.base_learning_rate,
      total_steps=self.total_steps,
      warmup_steps=self.warmup_steps,
      drops=self.drops,
      drop_factor=self.drop_factor,
    )


def create_optimizer(
  schedule,
  precision="float32",
  decoupled_weight_decay=0.0,
  name="adam",
  momentum=0.9,
  nesterov=False,
):
  """Keras Adam (`name="adam"`) or SGD with momentum (`"sgd"`) driven by `schedule`.

  SGD is the paper's optimizer (He et al. 2016: momentum 0.9); Keras' form,
  v <- momentum * v - rate * g; w <- w + v, equals the usual one while the
  rate is constant. `momentum` and `nesterov` apply only to SGD.

  `decoupled_weight_decay` > 0 is Keras' own decoupled decay (Loshchilov &
  Hutter's AdamW): each step multiplies every convolution and dense kernel by
  (1 - learning rate * decoupled_weight_decay), outside Adam's normalisation.
  An L2 term in the loss, by contrast, is divided by Adam's running gradient
  scale, so kernels with small gradients shrink at up to the learning rate per
  step. BatchNorm scales and offsets, and biases, are not decayed.

  With "mixed_float16" the optimizer is wrapped in Keras 3's LossScaleOptimizer
  (dynamic loss scale): float16 gradients of small losses underflow to zero
  without it. bfloat16 has float32's exponent range and needs no scaling.
  Returns the optimizer to step with; its `inner_optimizer` (if wrapped) is
  the one to checkpoint, so that checkpoints move between precisions.

  Raises:
    ValueError: an unknown precision or optimizer name.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
  weight_decay = decoupled_weight_decay or None
  if name == "adam":
    optimizer = keras.optimizers.Adam(learning_rate=schedule, weight_decay=weight_decay)
  elif name == "sgd":
    optimizer = keras.optimizers.SGD(
      learning_rate=schedule, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )
  else:
    raise ValueError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")
  if decoupled_weight_decay:
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
  if precision == "mixed_float16":
    return keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


# --- Loss --------------------------------------------------------------------------


def is_soft(labels):
  """Whether `labels` are soft targets float [B, C] (MixUp, CutMix), not classes int [B]."""
  return len(labels.shape) == 2  # tf.TensorShape or a numpy shape.


def cross_entropy(labels, logits, num_classes, label_smoothing=0.0):
  """Per-example categorical cross-entropy, float32 [B], against int [B] classes (one-hot)
  or float [B, C] soft targets; label smoothing mixes either with the uniform one."""
  targets = tf.cast(labels, tf.float32) if is_soft(labels) else tf.one_hot(labels, num_classes)
  return keras.losses.categorical_crossentropy(
    targets, tf.cast(logits, tf.float32), from_logits=True, label_smoothing=label_smoothing
  )


def dominant_labels(labels):
  """int32 [B]: the classes themselves, or the largest-weighted class of soft targets (of
  MixUp or CutMix: the image with the larger share; a tie goes to the lower class index)."""
  return tf.argmax(labels, axis=-1, output_type=tf.int32) if is_soft(labels) else labels


def l2_penalty(model):
  """0.5 * sum of squared convolution and dense kernels (not biases or BN scales)."""
  return tf.add_n([tf.nn.l2_loss(v) for v in model.trainable_variables if v.name == "kernel"])


def is_batch_norm_parameter(variable):
  """Whether `variable` is a BatchNorm scale (gamma) or offset (beta)."""
  return variable.name in ("gamma", "beta")


def weight_decay_penalty(
  model, weight_decay, batch_norm_weight_decay=False, batch_norm_lr_scale=1.0
):
  """The L2 term of the loss: weight_decay * l2_penalty, plus the BatchNorm parameters'.

  With `batch_norm_weight_decay` the BatchNorm scales and offsets are decayed
  too, by weight_decay / batch_norm_lr_scale: their gradients are then scaled
  by batch_norm_lr_scale (steps.make_train_steps), so they decay by as much per step
  as the kernels do, as in airbench.
  """
  penalty = weight_decay * l2_penalty(model)
  if batch_norm_weight_decay:
    norms = [tf.nn.l2_loss(v) for v in model.trainable_variables if is_batch_norm_parameter(v)]
    penalty += weight_decay / batch_norm_lr_scale * tf.add_n(norms)
  return penalty
