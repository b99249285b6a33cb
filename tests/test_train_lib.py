"""The distributed steps, and a run built by create_training."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from data import augment
from resnet import config as config_lib
from resnet import distribute, models, optimization, precision, steps, train_lib
from resnet.lookahead import Lookahead
from resnet.models import airbench


def make_training(strategy, batch_size, weight_decay=0.0, optimizer_name="adam", **options):
  """(model, train_steps) of resnet8; `options` go to make_train_steps, and with
  lookahead=True a Lookahead that averages after every step."""
  keras.utils.set_random_seed(1)
  with strategy.scope():
    model = models.create_model("resnet8", num_classes=3)
    optimizer = optimization.create_optimizer(1e-3, name=optimizer_name)
    optimizer.build(model.trainable_variables)
    if options.pop("lookahead", False):
      options["lookahead"] = Lookahead(model, 1, total_steps=3, start_epochs=0, every_steps=1)
  train_steps = steps.make_train_steps(
    strategy,
    model,
    optimizer,
    global_batch_size=batch_size,
    num_classes=3,
    weight_decay=weight_decay,
    **options,
  )
  return model, train_steps


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
  strategy = distribute.create_strategy("default")
  model, train_steps = make_training(strategy, 16, weight_decay=5e-4)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(16) % 3).astype(np.int32)
  batches = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
  first = train_steps(batches, tf.constant(1))
  train_steps(batches, tf.constant(8))
  last = train_steps(batches, tf.constant(1))
  assert float(first["count"]) == 16 and float(last["count"]) == 16
  assert float(last["loss_sum"]) < 0.5 * float(first["loss_sum"])


AIRBENCH_OPTIONS = dict(batch_norm_weight_decay=True, batch_norm_lr_scale=8.0, lookahead=True)


@pytest.mark.parametrize("options", [{}, AIRBENCH_OPTIONS], ids=["plain", "airbench_options"])
def test_two_replicas_update_the_weights_like_one_device(options):
  # Each replica gets the same 8 examples, the single device gets them twice:
  # BatchNorm statistics then agree, so any difference in the weights is a bug
  # in loss scaling or gradient aggregation across replicas (keras#19891).
  # SGD: Adam turns float32 noise in near-zero gradients into +-learning-rate
  # steps, and it would hide a wrongly scaled gradient.
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(8) % 3).astype(np.int32)
  weights, sums = {}, {}
  for name, per_replica_batch in (("default", 16), ("mirrored", 8)):
    strategy = distribute.create_strategy(name)
    model, train_steps = make_training(
      strategy, 16, weight_decay=5e-4, optimizer_name="sgd", **options
    )
    batch = (
      np.concatenate([images] * (per_replica_batch // 8)),
      np.concatenate([labels] * (per_replica_batch // 8)),
    )
    dataset = strategy.distribute_datasets_from_function(
      lambda context, batch=batch: tf.data.Dataset.from_tensors(batch).repeat()
    )
    sums[name] = train_steps(iter(dataset), tf.constant(3))
    weights[name] = [v.numpy() for v in model.variables]
  assert float(sums["mirrored"]["count"]) == float(sums["default"]["count"]) == 48
  assert float(sums["mirrored"]["loss_sum"]) == pytest.approx(
    float(sums["default"]["loss_sum"]), rel=1e-5
  )
  for single, mirrored in zip(weights["default"], weights["mirrored"], strict=True):
    np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-5)


def test_batch_norm_parameters_learn_faster_and_decay_as_much_per_step():
  # Plain SGD, one step: kernels move by -lr (g + wd w); with batch_norm_lr_scale=s and
  # batch_norm_weight_decay, BatchNorm scales and offsets by -lr (s g + wd w).
  strategy = distribute.create_strategy("default")
  decay, scale = 0.01, 8.0
  model, train_steps = make_training(
    strategy,
    8,
    weight_decay=decay,
    optimizer_name="sgd",  # Momentum 0.9, but a first step is plain SGD's.
    batch_norm_weight_decay=True,
    batch_norm_lr_scale=scale,
  )
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(8) % 3).astype(np.int32)
  with tf.GradientTape() as tape:
    logits = model(augment.normalize(images), training=True)
    loss = tf.reduce_mean(optimization.cross_entropy(labels, logits, 3))
  variables = model.trainable_variables
  gradients = tape.gradient(loss, variables)
  before = [v.numpy() for v in variables]
  train_steps(iter(tf.data.Dataset.from_tensors((images, labels)).repeat()), tf.constant(1))
  learning_rate = 1e-3  # make_training's.
  for variable, old, gradient in zip(variables, before, gradients, strict=True):
    if optimization.is_batch_norm_parameter(variable):
      expected = old - learning_rate * (scale * gradient.numpy() + decay * old)
    elif variable.name == "kernel":
      expected = old - learning_rate * (gradient.numpy() + decay * old)
    else:  # The classifier's bias: no decay.
      expected = old - learning_rate * gradient.numpy()
    np.testing.assert_allclose(
      variable.numpy(), expected, rtol=1e-4, atol=1e-7, err_msg=variable.path
    )


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_lookahead_follows_airbench(graph):
  # airbench94's loop, in numpy: from epoch `start` on, every 5 steps
  # average <- rho average + (1 - rho) weights, weights <- average, with
  # rho = 0.95^5 (step / total)^3; at every epoch end, weights <- average.
  steps_per_epoch, total, start_epochs = 7, 42, 2
  weight = keras.Variable(np.zeros(4, np.float32))
  lookahead = Lookahead(
    types.SimpleNamespace(weights=[weight]), steps_per_epoch, total, start_epochs=start_epochs
  )

  def step_then_lookahead(update):  # As train_steps calls it: after the optimizer's step.
    weight.assign(weight.value + update)
    lookahead.after_step()

  if graph:
    step_then_lookahead = tf.function(step_then_lookahead)
  rng = np.random.default_rng(0)
  reference, average = np.zeros(4), None
  for step in range(1, total + 1):
    update = rng.normal(size=4)  # Stands in for the optimizer's step.
    step_then_lookahead(tf.constant(update, tf.float32))
    reference = reference + update
    if (step - 1) // steps_per_epoch >= start_epochs and step % 5 == 0:
      if average is None:
        average = reference.copy()
      else:
        rho = 0.95**5 * (step / total) ** 3
        average = rho * average + (1 - rho) * reference
        reference = average.copy()
    if average is not None and step % steps_per_epoch == 0:
      reference = average.copy()
    np.testing.assert_allclose(weight.numpy(), reference, rtol=1e-5, atol=1e-6, err_msg=step)
  assert average is not None and int(lookahead.state.step.numpy()) == total


@pytest.mark.parametrize(
  "cpu_flags, gpus, tpu, expected",
  [
    ({"avx512f": True, "avx512_bf16": False, "amx_bf16": False}, [], False, "float32"),
    ({}, [], False, "float32"),  # No /proc/cpuinfo: assume nothing.
    ({"avx512_bf16": True, "amx_bf16": False}, [], False, "mixed_bfloat16"),
    ({"avx512_bf16": False, "amx_bf16": True}, [], False, "mixed_bfloat16"),
    ({"amx_bf16": True}, [(7, 0)], False, "mixed_float16"),  # The GPUs run the step.
    ({}, [(7, 5)], False, "mixed_float16"),  # T4: float16 tensor cores.
    ({}, [(8, 0), (8, 6)], False, "mixed_bfloat16"),
    ({}, [(8, 6), (7, 5)], False, "mixed_float16"),  # The oldest GPU decides.
    ({"amx_bf16": True}, [(6, 0)], False, "float32"),  # P100: no tensor cores.
    ({}, [(6, 1)], False, "float32"),  # P4, P40: float16 at a fraction of float32's rate.
    ({}, [(9, 0), (6, 1)], False, "float32"),
    ({"amx_bf16": True}, [None], False, "float32"),  # A GPU that does not say.
    ({}, [], True, "mixed_bfloat16"),
  ],
)
def test_auto_precision_follows_the_hardware(cpu_flags, gpus, tpu, expected):
  chosen, reason = precision.choose(cpu_flags, gpus, tpu=tpu)
  assert chosen == expected and chosen in optimization.PRECISIONS and reason


@pytest.mark.parametrize("whitening", [True, False])
def test_airbench_whitening_comes_from_the_training_images_unless_turned_off(whitening):
  images = np.random.default_rng(0).integers(0, 256, [64, 32, 32, 3], dtype=np.uint8)
  config = config_lib.Config(model="airbench", whitening=whitening)
  strategy = distribute.create_strategy("default")
  run = train_lib.create_training(config, strategy, 10, steps_per_epoch=1, train_images=images)
  (kernel,) = [v for v in run.model.non_trainable_variables if "whitening" in v.path]
  whitened = airbench.whitening_kernel(augment.normalize(images))
  assert np.allclose(kernel.numpy(), whitened, rtol=1e-6) == whitening
