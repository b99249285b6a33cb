"""The distributed steps: train steps, prediction, and BatchNorm statistics made alike.

resnet/optimization.py says what is minimised and how; this module runs it
under a tf.distribute strategy. The step functions are pure TensorFlow (no
printing, saving or flags): they take batches and return sums over their
steps and replicas, and the host loop in train.py / eval.py decides what to
log, save and evaluate. resnet/train_lib.py builds a run's model, optimizer and
steps together.
"""

import keras
import tensorflow as tf

from data import augment, datasets
from resnet import optimization

# What train_steps returns: float32 sums over steps and replicas (see make_train_steps).
SUM_KEYS = ("loss_sum", "correct", "count", "gradient_norm")


def _skip_on_every_replica_if_one_overflowed(gradients):
  """Makes every replica's gradients non-finite if any replica's are.

  Keras 3's LossScaleOptimizer decides to skip a step from each replica's own,
  not yet all-reduced, gradients; one replica overflowing while another does
  not would make the replicas disagree (one skips, one all-reduces and waits).
  One scalar all-reduce makes the decision global: all skip or none do.
  """
  local_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
  overflowed_replicas = tf.distribute.get_replica_context().all_reduce(
    tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(local_finite, tf.float32)
  )
  poison = tf.where(overflowed_replicas > 0, float("nan"), 0.0)
  return [g + tf.cast(poison, g.dtype) for g in gradients]


def _make_replica_step(
  model,
  optimizer,
  *,
  global_batch_size,
  num_classes,
  label_smoothing,
  weight_decay,
  batch_norm_weight_decay,
  batch_norm_lr_scale,
  jit_compile,
  normalization,
):
  """`replica_step(totals, images, labels) -> totals`: one replica's step (see make_train_steps),
  its sums added to `totals` (float32 [len(SUM_KEYS)])."""
  loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

  def loss_and_gradients(images, labels):
    # One replica's forward and backward pass: (per-example loss float32 [b],
    # predicted classes int32 [b], gradients of its (scaled) loss).
    with tf.GradientTape() as tape:
      logits = model(augment.normalize(images, **normalization), training=True)  # uint8 in.
      per_example_loss = optimization.cross_entropy(labels, logits, num_classes, label_smoothing)
      loss = tf.nn.compute_average_loss(per_example_loss, global_batch_size=global_batch_size)
      if weight_decay:
        penalty = optimization.weight_decay_penalty(
          model, weight_decay, batch_norm_weight_decay, batch_norm_lr_scale
        )
        loss += tf.nn.scale_regularization_loss(penalty)
      scaled_loss = optimizer.scale_loss(loss)  # The loss itself unless loss scaling.
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return per_example_loss, predictions, tape.gradient(scaled_loss, model.trainable_variables)

  if jit_compile:
    # XLA compiles what it speeds up, the forward and backward pass; the optimizer
    # runs outside: Keras' optimizer counts its steps through a merge_call, which
    # TensorFlow refuses inside a compiled replica function (keras#21366).
    loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

  def replica_step(totals, images, labels):
    per_example_loss, predictions, gradients = loss_and_gradients(images, labels)
    # The norm of the gradient of this replica's mean loss: its gradient times the
    # replica count (the loss was divided by the global batch). With one replica
    # the full batch's gradient norm; with several, each replica's estimate of it.
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    gradient_norm = tf.linalg.global_norm(gradients) * replicas
    if loss_scaling:
      gradient_norm /= optimizer.dynamic_scale  # The scale this step's loss was scaled by.
      gradients = _skip_on_every_replica_if_one_overflowed(gradients)
    if batch_norm_lr_scale != 1:  # After the norm, which is that of the loss' gradient.
      gradients = [
        g * batch_norm_lr_scale if optimization.is_batch_norm_parameter(v) else g
        for g, v in zip(gradients, model.trainable_variables, strict=True)
      ]
    optimizer.apply(gradients, model.trainable_variables)
    classes = optimization.dominant_labels(labels)  # Soft targets: their dominant class.
    step_sums = [  # In the order of SUM_KEYS.
      tf.reduce_sum(per_example_loss),
      tf.reduce_sum(tf.cast(predictions == classes, tf.float32)),
      tf.cast(tf.size(classes), tf.float32),
      # Summed over replicas: their mean; 0 for a step skipped on overflow.
      tf.where(tf.math.is_finite(gradient_norm), gradient_norm, 0.0) / replicas,
    ]
    return totals + tf.stack(step_sums)

  return replica_step


def make_train_steps(
  strategy,
  model,
  optimizer,
  *,
  global_batch_size,
  num_classes,
  label_smoothing=0.0,
  weight_decay=0.0,
  batch_norm_weight_decay=False,
  batch_norm_lr_scale=1.0,
  lookahead=None,
  ema=None,
  jit_compile=False,
  input_normalization=None,
):
  """Builds `train_steps(iterator, num_steps) -> dict` running steps under `strategy`.

  The iterator yields (uint8 [b, H, W, 3] images, labels) per replica, as
  data/pipeline.py makes them (labels int32 [b], or float32 [b, C] soft targets
  with MixUp or CutMix: "correct" then counts the dominant class); the step normalises on the device
  with `input_normalization`, the run's {"mean", "std"} (None: CIFAR-10's).
  Each replica's loss is its per-example sum divided by the GLOBAL batch size
  (plus weight decay divided by the replica count); the optimizer sums the
  gradients over replicas, so the update is that of one device on the global
  batch, whatever the replica count. With a LossScaleOptimizer the loss is
  scaled before differentiation and the gradients unscaled by `apply`, which
  skips (and lowers the scale on) steps with non-finite gradients.
  `jit_compile` compiles each replica's forward and backward pass with XLA; the
  gradient all-reduce and the optimizer run outside (distribute.check_jit_compile).

  The BatchNorm parameters' gradients are multiplied by `batch_norm_lr_scale`:
  with SGD, a learning rate that many times larger (Page's and airbench's
  faster-learning BatchNorm biases); see optimization.weight_decay_penalty for their decay.
  `lookahead`, a resnet.lookahead.Lookahead, runs after every step; then `ema`'s update,
  a resnet.ema.WeightAverage.

  Returns:
    A tf.function returning float32 sums over the `num_steps` steps and all
    replicas: "loss_sum" (cross-entropy, with label smoothing), "correct",
    "count" (examples), and "gradient_norm" (per step: the mean over replicas
    of the gradient norm).
  """
  replica_step = _make_replica_step(
    model,
    optimizer,
    global_batch_size=global_batch_size,
    num_classes=num_classes,
    label_smoothing=label_smoothing,
    weight_decay=weight_decay,
    batch_norm_weight_decay=batch_norm_weight_decay,
    batch_norm_lr_scale=batch_norm_lr_scale,
    jit_compile=jit_compile,
    normalization=input_normalization or datasets.CIFAR10.normalization,
  )

  @tf.function
  def train_steps(iterator, num_steps):
    # Each replica adds up its own sums over the steps, and one all-reduce of
    # that vector per call sums them over replicas: across machines every
    # all-reduce is a network round trip, and a NaN in any step or replica
    # still makes the total NaN.
    totals = strategy.run(lambda: tf.zeros([len(SUM_KEYS)]))
    for _ in tf.range(num_steps):
      images, labels = next(iterator)
      totals = strategy.run(replica_step, args=(totals, images, labels))
      if lookahead is not None:
        lookahead.after_step()  # Cross-replica: sets every replica's weights alike.
      if ema is not None:
        strategy.run(ema.update)  # Each replica its own copy; no communication.
    totals = strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)
    return dict(zip(SUM_KEYS, tf.unstack(totals), strict=True))

  return train_steps


def make_average_moving_statistics(strategy, *models):
  """Builds `average()`: sets every replica's BatchNorm moving statistics to their mean.

  Keras 3 creates the moving mean and variance as mirrored variables without
  aggregation, so under a multi-replica strategy each replica updates its own
  copy from its own batches and the copies drift apart: evaluation would use
  a different model on each replica, and checkpoints would keep replica 0's.
  Call this before evaluating or saving. (With synchronised BatchNorm the
  copies are equal already.) Training itself uses batch statistics only, so
  averaging does not change it. Several `models` (the model and its resnet/ema.py
  average) share one all-reduce.
  """
  # Not the integer state of dropout's seed generators: each replica draws its own masks.
  variables = [
    v for m in models for v in m.non_trainable_variables if keras.backend.is_float_dtype(v.dtype)
  ]
  sizes = [variable.shape.num_elements() for variable in variables]

  def local_values():
    # This replica's copies, flattened into one vector: one all-reduce for all
    # of them (each all-reduce is a network round trip across machines).
    return tf.concat([tf.reshape(variable.value, [-1]) for variable in variables], axis=0)

  @tf.function
  def average():
    means = strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(local_values), axis=None)
    for variable, mean in zip(variables, tf.split(means, sizes), strict=True):
      variable.assign(tf.reshape(mean, variable.shape))

  return average


def make_predict_step(strategy, model, input_normalization=None):
  """Builds `predict_step(batch) -> dict` of per-example outputs gathered from all replicas.

  `batch` is a dict of pipeline.make_eval_dataset (uint8 images, normalised here with
  `input_normalization`, the run's {"mean", "std"}; None: CIFAR-10's).

  Returns numpy-convertible tensors "probabilities" float32 [B, C], "label",
  "mask" and "index" [B], where B is the global batch (padding included).
  """
  normalization = input_normalization or datasets.CIFAR10.normalization

  def replica_step(batch):
    logits = model(augment.normalize(batch["image"], **normalization), training=False)
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
    return {
      "probabilities": probabilities,
      "label": batch["label"],
      "mask": batch["mask"],
      "index": batch["index"],
    }

  @tf.function
  def predict_step(batch):
    per_replica = strategy.run(replica_step, args=(batch,))
    return {key: strategy.gather(value, axis=0) for key, value in per_replica.items()}

  return predict_step
