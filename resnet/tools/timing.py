"""How the benchmark times: functions that return images per second, alternated in rounds.

Every figure is the median and the spread (min-max) over rounds in which the variants
take turns, so that drift on a shared machine hits them alike (see Variants).
"""

import resource
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging


def median_and_spread(values):
  return {
    "median": float(np.median(values)),
    "min": float(np.min(values)),
    "max": float(np.max(values)),
    "runs": [float(v) for v in values],
  }


def peak_memory_bytes():
  """The peak resident memory of this process so far (Linux reports kilobytes)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(function):
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


def matmul_peak(dtype, size=2048, iterations=10):
  """FLOP/s of a square matmul chain in `dtype` (the machine's practical peak)."""
  a = tf.random.normal((size, size), dtype=tf.float32)
  a = tf.cast(a, dtype)

  @tf.function
  def chain(x):
    for _ in range(iterations):
      x = tf.matmul(x, a) * tf.cast(1e-3, dtype)  # Scaled: values stay finite.
    return tf.reduce_sum(tf.cast(x, tf.float32))

  chain(a).numpy()
  seconds = timed(lambda: chain(a).numpy())
  return 2 * size**3 * iterations / seconds


def pipeline_rate_function(dataset, batches, batch_size):
  """A function timing `batches` batches of the input pipeline alone -> images/s."""
  iterator = iter(dataset)
  next(iterator)

  def take():
    for _ in range(batches):
      next(iterator)

  return lambda: batches * batch_size / timed(take)


def one_batch_forever(dataset):
  """An iterator repeating `dataset`'s first batch, held in memory: only the step is timed."""
  return iter(tf.data.Dataset.from_tensors(next(iter(dataset))).repeat())


def rate_of(train_steps, iterator, steps, batch_size):
  """A function timing one call of `steps` steps on `iterator` -> images/s (traced first)."""
  train_steps(iterator, tf.constant(2))  # Trace and warm up.
  return lambda: steps * batch_size / timed(lambda: train_steps(iterator, tf.constant(steps)))


class _StepTimes(keras.callbacks.Callback):
  """perf_counter() at the end of every training batch of a model.fit call."""

  def on_train_begin(self, logs=None):
    self.times = []

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter())


def fit_rate_function(model, dataset, steps, batch_size):
  """A function timing `steps` + 1 batches of model.fit: images/s between the first
  and the last batch's end, so fit()'s own set-up (iterator, callbacks) is not
  counted against it, as our loop's iterator is created before its timing."""

  def fit_rate():
    timer = _StepTimes()
    model.fit(
      dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, shuffle=False, callbacks=[timer]
    )
    return steps * batch_size / (timer.times[-1] - timer.times[0])

  return fit_rate


class Variants:
  """Benchmarks registered by name, each a function (no arguments) -> images per second."""

  def __init__(self):
    self.functions = {}

  def add(self, name, function):
    self.functions[name] = function

  def run(self, repeats):
    results = {name: [] for name in self.functions}
    for round_index in range(repeats):
      for name, function in self.functions.items():  # Alternated within each round.
        results[name].append(function())
      logging.info("round %d/%d done", round_index + 1, repeats)
    return {name: median_and_spread(values) for name, values in results.items()}
