"""Lookahead on a moving average of the weights, as airbench94 trains (Jordan 2024).

From `start_epochs` on, every `every_steps` steps the weights move to an
exponential moving average of themselves:

    average <- rho * average + (1 - rho) * weights;  weights <- average

with rho = decay^every_steps * (step / total_steps)^decay_power: the average
follows the weights closely early on and holds on to them more and more
strongly towards the end, where it smooths out the noise of the last steps.
At the end of every epoch (so also at the end of training) the weights are
set to the average again, which is what validation sees and checkpoints keep.
The BatchNorm moving statistics are averaged with the weights.
"""

import keras
import tensorflow as tf


class Lookahead:
  """The average, its state, and `after_step`, to be called after every optimizer step.

  Create it inside strategy.scope(); checkpoint its `state` with the run (the
  step counter and the average make a resume exact).
  """

  def __init__(
    self,
    model,
    steps_per_epoch,
    total_steps,
    start_epochs=3,
    every_steps=5,
    decay=0.95,
    decay_power=3.0,
  ):
    # Trained weights and BatchNorm statistics; not the integer state of dropout's seeds.
    self._weights = [w for w in model.weights if keras.backend.is_float_dtype(w.dtype)]
    self._steps_per_epoch = steps_per_epoch
    self._total_steps = total_steps
    self._start_step = int(start_epochs * steps_per_epoch)
    self._every_steps = every_steps
    self._decay = decay
    self._decay_power = decay_power
    self.state = tf.Module(name="lookahead")
    self.state.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.state.started = tf.Variable(False, trainable=False, name="started")
    self.state.averages = [
      tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False, name=f"average_{i}")
      for i, w in enumerate(self._weights)
    ]

  def after_step(self):
    """Counts a step; moves the weights to the average when due. In cross-replica context:
    every replica's weights are set alike."""
    step = self.state.step.assign_add(1)
    due = (step > self._start_step) & (step % self._every_steps == 0)
    tf.cond(due, lambda: self._average(step), lambda: None)
    epoch_end = self.state.started & (step % self._steps_per_epoch == 0)
    tf.cond(epoch_end, self._copy_back, lambda: None)

  def _average(self, step):
    progress = tf.cast(step, tf.float32) / self._total_steps
    rho = self._decay**self._every_steps * progress**self._decay_power
    rho = tf.where(self.state.started, rho, 0.0)  # The first time, the average is the weights.
    for average, weight in zip(self.state.averages, self._weights, strict=True):
      average.assign(rho * average + (1.0 - rho) * weight.value)
    self.state.started.assign(True)
    self._copy_back()

  def _copy_back(self):
    for average, weight in zip(self.state.averages, self._weights, strict=True):
      weight.assign(average)
