"""Tests for resnet/optimization.py: schedules, optimizers and the loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnet import models, optimization


def test_learning_rate_schedules():
  cosine = optimization.LearningRateSchedule("cosine", 1.0, total_steps=110, warmup_steps=10)
  assert float(cosine(0)) == pytest.approx(0.1)  # Warm-up: (step + 1) / warmup_steps.
  assert float(cosine(9)) == pytest.approx(1.0)
  assert float(cosine(60)) == pytest.approx(0.5)
  assert float(cosine(110)) == pytest.approx(0.0, abs=1e-7)
  piecewise = optimization.LearningRateSchedule("piecewise", 1.0, total_steps=100)
  assert [float(piecewise(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
    [1, 1, 0.1, 0.1, 0.01, 0.01]
  )
  # Wide ResNets: x0.2 at epochs 60, 120 and 160 of 200 (steps here).
  wide = optimization.LearningRateSchedule(
    "piecewise", 1.0, total_steps=200, drops=(0.3, 0.6, 0.8), drop_factor=0.2
  )
  assert [float(wide(s)) for s in (0, 59, 60, 119, 120, 159, 160, 199)] == pytest.approx(
    [1, 1, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008]
  )
  assert float(optimization.LearningRateSchedule("constant", 0.3, 100)(99)) == pytest.approx(0.3)
  linear = optimization.LearningRateSchedule("linear", 2.0, total_steps=110, warmup_steps=10)
  assert [float(linear(s)) for s in (4, 9, 10, 60, 109, 110)] == pytest.approx(
    [1.0, 2.0, 2.0, 1.0, 0.02, 0.0], abs=1e-6
  )


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_decoupled_weight_decay_shrinks_kernels_only(precision):
  # Zero gradients: Adam's own update is 0, so what remains is the decay,
  # kernel *= 1 - 0.1 * 0.5; BatchNorm scales/offsets and biases are untouched.
  model = models.create_model("resnet8")
  optimizer = optimization.create_optimizer(0.1, precision, decoupled_weight_decay=0.5)
  variables = model.trainable_variables
  before = [v.numpy() for v in variables]
  optimizer.apply([tf.zeros_like(v) for v in variables], variables)
  for variable, old in zip(variables, before, strict=True):
    factor = 0.95 if variable.name == "kernel" else 1.0
    np.testing.assert_allclose(variable.numpy(), factor * old, rtol=1e-6, err_msg=variable.path)
  assert {v.name for v in variables} == {"kernel", "gamma", "beta", "bias"}


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_takes_momentum_steps(nesterov):
  # A constant gradient g: heavy-ball steps lr*g, lr*g*(1+m); Nesterov's look
  # ahead makes them lr*g*(1+m), lr*g*(1+m+m^2).
  weight = keras.Variable(np.zeros(3, np.float32))
  optimizer = optimization.create_optimizer(0.1, name="sgd", momentum=0.9, nesterov=nesterov)
  gradient = tf.constant([1.0, -2.0, 0.5])
  positions = []
  for _ in range(2):
    optimizer.apply([gradient], [weight])
    positions.append(weight.numpy().copy())
  factors = (1.9, 1.9 + 2.71) if nesterov else (1.0, 1.0 + 1.9)
  for position, factor in zip(positions, factors, strict=True):
    np.testing.assert_allclose(position, -0.1 * factor * gradient.numpy(), rtol=1e-5)
  with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'"):
    optimization.create_optimizer(0.1, name="rmsprop")


def test_cross_entropy_matches_its_definition():
  logits = tf.constant([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  labels = tf.constant([0, 2])
  log_probs = tf.nn.log_softmax(logits).numpy()
  expected = -log_probs[[0, 1], [0, 2]]
  np.testing.assert_allclose(optimization.cross_entropy(labels, logits, 3), expected, rtol=1e-6)
  smoothed = optimization.cross_entropy(labels, logits, 3, label_smoothing=0.3).numpy()
  targets = np.full((2, 3), 0.1) + 0.7 * np.eye(3)[[0, 2]]
  np.testing.assert_allclose(smoothed, -(targets * log_probs).sum(axis=1), rtol=1e-5)
