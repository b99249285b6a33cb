"""--ema_decay: the average's arithmetic, replicas, resume, validation, export, refusals."""

import dataclasses
import importlib
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
from data import augment
from resnet import checkpointing, config_checks, distribute, run_record, train_lib
from resnet import config as config_lib
from tests.test_train import debug_config, modification_times

eval_main = importlib.import_module("eval")
NUM_CLASSES = 3


def ema_training(strategy, **overrides):
  """create_training's Training of resnet8 with --ema_decay=0.9, and `overrides`."""
  config = config_lib.Config(
    model="resnet8", batch_size=16, epochs=2, warmup_epochs=0, precision="float32"
  )
  config = dataclasses.replace(config, ema_decay=0.9, learning_rate=1e-2, **overrides)
  keras.utils.set_random_seed(1)
  return train_lib.create_training(config, strategy, NUM_CLASSES, steps_per_epoch=3)


def batches(strategy, per_replica_images=8, seed=0):
  """Endless batches: every replica gets the same 8 examples (one device: them twice), so
  that BatchNorm statistics agree between one device and two replicas."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(8) % NUM_CLASSES).astype(np.int32)
  batch = tuple(np.concatenate([x] * (per_replica_images // 8)) for x in (images, labels))
  return iter(
    strategy.distribute_datasets_from_function(
      lambda context: tf.data.Dataset.from_tensors(batch).repeat()
    )
  )


def float_variables(model):
  return [v for v in model.weights if keras.backend.is_float_dtype(v.dtype)]


def float_values(model):
  return [v.numpy() for v in float_variables(model)]


def train_and_check_against_numpy(strategy, per_replica_images, model_dir):
  """The average of an SGD run with Lookahead, checked against numpy step by
  step, then against itself after a save and a restore; returns the average at the end.

  average_0 = the initial weights; after step t (and Lookahead, which moves the weights at
  step 5): average += (1 - decay) (weights_t - average), in float32, BatchNorm statistics
  too, on every replica alike.
  """
  run = ema_training(strategy, optimizer="sgd", lookahead=True, lookahead_start_epochs=0)
  with strategy.scope():
    counters = checkpointing.create_counters()
  saved = checkpointing.Checkpoints(
    model_dir, run.model, run.optimizer, counters, extra=run.checkpointed()
  )
  data = batches(strategy, per_replica_images)
  average = float_values(run.model)
  one_minus_decay = np.float32(1 - 0.9)
  for _ in range(6):
    run.train_steps(data, tf.constant(1))
    weights = float_values(run.model)  # Replica 0's: the replicas see the same examples.
    average = [a + one_minus_decay * (w - a) for a, w in zip(average, weights, strict=True)]
  assert len(average) > 20  # Kernels, BatchNorm parameters and statistics.
  for variable, expected in zip(float_variables(run.ema.average_model), average, strict=True):
    for copy in getattr(variable.value, "values", [variable.value]):  # On every replica.
      np.testing.assert_allclose(copy, expected, rtol=1e-6, atol=1e-7, err_msg=variable.path)
  raw = float_values(run.model)
  assert max(np.abs(a - w).max() for a, w in zip(average, raw, strict=True)) > 1e-3

  # A restored checkpoint goes on as the uninterrupted run, bit for bit. Every batch is
  # the same: there is no position in the data to skip to.
  saved.save_latest()
  finals = []
  for _ in range(2):
    run.train_steps(data, tf.constant(3))
    finals.append(float_values(run.ema.average_model) + float_values(run.model))
    assert saved.restore() is not None
  for uninterrupted, resumed in zip(*finals, strict=True):
    np.testing.assert_array_equal(resumed, uninterrupted)
  return run, finals[0][: len(average)]


def test_the_average_follows_numpy_resumes_exactly_and_is_alike_on_one_and_two_replicas(
  tmp_path,
):
  # Every replica gets the same 8 examples (one device: them twice): BatchNorm statistics
  # agree, so one device and two replicas train alike, and average alike.
  runs, averages = {}, {}
  for name, per_replica_images in (("default", 16), ("mirrored", 8)):
    strategy = distribute.create_strategy(name)
    runs[name], averages[name] = train_and_check_against_numpy(
      strategy, per_replica_images, str(tmp_path / name)
    )
  for mirrored, single in zip(averages["mirrored"], averages["default"], strict=True):
    np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-5)

  # Validation's predict_step runs the average, not the model.
  run = runs["default"]
  images, labels = next(batches(tf.distribute.get_strategy(), per_replica_images=16))
  batch = {"image": images, "label": labels, "mask": np.ones(16), "index": np.arange(16)}
  probabilities = run.predict_step(batch)["probabilities"].numpy()
  for model, equal in ((run.ema.average_model, True), (run.model, False)):
    logits = model(augment.normalize(images), training=False)
    expected = tf.nn.softmax(tf.cast(logits, tf.float32)).numpy()
    assert np.allclose(probabilities, expected, rtol=1e-5, atol=1e-6) == equal


def test_validation_the_best_checkpoint_eval_and_export_use_the_average(image_folder, tmp_path):
  # A decay this close to 1 keeps the average at the initial weights (float32 rounds its
  # steps away) while the model trains: validation, eval.py and the export see the former.
  model_dir = str(tmp_path / "run")
  decay = 1 - 1e-9
  # In mixed_float16: through the LossScaleOptimizer (eval.py computes in float32).
  config = debug_config(image_folder, epochs=1, ema_decay=decay, on_nan="recover")
  config = dataclasses.replace(config, precision="mixed_float16")
  result = train.train_and_evaluate(config, model_dir)
  assert run_record.read_run_record(model_dir)["config"]["ema_decay"] == decay

  def weights(path, key=None):  # Key None: what eval.py and the export load (the average).
    model, _, _ = run_record.load_trained_model(model_dir, path)
    if key:
      checkpointing.restore_model(model, path, key)
    return float_values(model)

  best = checkpointing.best_checkpoint_path(model_dir)
  initial = os.path.join(model_dir, "checkpoints", "ckpt-0")  # Saved by --on_nan=recover.
  start = weights(initial, "model")
  for name, got in (("initial average", weights(initial)), ("best average", weights(best))):
    for value, expected in zip(got, start, strict=True):
      np.testing.assert_allclose(value, expected, rtol=0, atol=1e-8, err_msg=name)
  trained = weights(best, "model")
  assert sum(np.abs(a - b).max() > 1e-4 for a, b in zip(trained, start, strict=True)) > 10

  metrics = eval_main.evaluate_model_dir(model_dir, "validation", batch_size=8)
  assert metrics["accuracy"] == result["best_accuracy"]
  assert metrics["loss"] == pytest.approx(result["validation"]["loss"], rel=1e-3)

  before = modification_times(model_dir)
  with pytest.raises(checkpointing.CheckpointError, match=f"--ema_decay={decay!r} there, 0.5 now"):
    train.train_and_evaluate(dataclasses.replace(config, ema_decay=0.5), model_dir)
  assert modification_times(model_dir) == before


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, float("nan")])
def test_a_decay_outside_0_to_1_is_refused(decay):
  with pytest.raises(config_lib.ConfigError, match=r"^--ema_decay must be in \[0, 1\), got "):
    config_checks.validate(config_lib.Config(ema_decay=decay))
