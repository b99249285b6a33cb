"""Console progress: a live bar on a terminal, plain periodic lines otherwise (CI logs).

keras.utils.Progbar draws a bar per epoch, but cannot show the time left in the
whole run, and off a terminal it prints a bar per update instead of log lines;
hence this small class. Meter sums the train steps' outputs between reports.
"""

import collections
import sys
import time

from absl import logging


def _duration(seconds):
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
  """Reports training progress within each epoch.

  On a terminal (`stream.isatty()`), one line redrawn in place: epoch, a bar,
  steps, images/s, time left in the epoch and in the run, the latest loss
  and accuracy. Elsewhere, a log line per update, as a log file wants it.
  Epoch summaries are printed as ordinary lines in both cases.
  """

  def __init__(self, total_steps, steps_per_epoch, start_step=0, stream=None, width=24):
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.stream = stream or sys.stderr
    self.live = self.stream.isatty()
    self.width = width
    self._last_step, self._last_time = start_step, time.perf_counter()
    self._seconds_per_step = None  # Smoothed over updates.
    self._drawn = False

  def update(self, step, scalars):
    """After `step` steps; `scalars` holds loss, accuracy, learning_rate, images_per_second."""
    now = time.perf_counter()
    if step > self._last_step:
      latest = (now - self._last_time) / (step - self._last_step)
      smoothed = self._seconds_per_step
      self._seconds_per_step = latest if smoothed is None else 0.7 * smoothed + 0.3 * latest
    self._last_step, self._last_time = step, now
    if not self.live:
      logging.info(
        "step %d/%d (epoch %.2f): loss %.4f accuracy %.4f lr %.2e %.0f img/s",
        step,
        self.total_steps,
        step / self.steps_per_epoch,
        scalars["loss"],
        scalars["accuracy"],
        scalars["learning_rate"],
        scalars["images_per_second"],
      )
      return
    epoch, in_epoch = divmod(step, self.steps_per_epoch)
    if in_epoch == 0 and step:  # The last update of an epoch shows it complete.
      epoch, in_epoch = epoch - 1, self.steps_per_epoch
    done = int(self.width * in_epoch / self.steps_per_epoch)
    per_step = self._seconds_per_step or 0.0
    line = (
      f"epoch {epoch + 1} [{'=' * done}{'.' * (self.width - done)}] "
      f"{in_epoch}/{self.steps_per_epoch}  {scalars['images_per_second']:.0f} img/s  "
      f"epoch left {_duration(per_step * (self.steps_per_epoch - in_epoch))}  "
      f"run left {_duration(per_step * (self.total_steps - step))}  "
      f"loss {scalars['loss']:.4f} acc {scalars['accuracy']:.4f}"
    )
    self.stream.write(f"\r{line}\x1b[K")  # \x1b[K clears the rest of a longer old line.
    self.stream.flush()
    self._drawn = True

  def end_epoch(self, summary):
    """Prints an epoch's summary line (replacing the bar on a terminal)."""
    if self._drawn:
      self.stream.write("\r\x1b[K")
      self._drawn = False
    print(summary, flush=True)


def epoch_line(epoch, epochs, train_metrics, validation, improved, learning_rate, seconds):
  """An epoch's summary line: Meter.result() of its training steps, the validation
  metrics, whether they are the best so far, the rate of its last step, its seconds."""
  return (
    f"epoch {epoch:3d}/{epochs}  train loss {train_metrics['loss']:.4f} "
    f"acc {train_metrics['accuracy']:.4f}  val loss {validation['loss']:.4f} "
    f"acc {validation['accuracy']:.4f}{' (best)' if improved else ''}  "
    f"lr {learning_rate:.2e}  {seconds:.0f}s  "
    f"{train_metrics['images_per_second']:.0f} img/s"
  )


class Meter:
  """Host-side sums of the train steps' outputs, steps and wall time since the last reset()."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.sums = collections.defaultdict(float)  # Keyed as steps.SUM_KEYS.
    self.steps = 0
    self.start = time.perf_counter()

  def add(self, sums, num_steps):
    """Adds the sums that train_steps returned for `num_steps` steps."""
    for key, value in sums.items():
      self.sums[key] += float(value)
    self.steps += num_steps

  def seconds(self):
    return time.perf_counter() - self.start

  def result(self):
    """Mean loss, accuracy (correct / seen), mean gradient norm and images per second."""
    count = max(self.sums["count"], 1.0)
    return {
      "loss": self.sums["loss_sum"] / count,
      "accuracy": self.sums["correct"] / count,
      "gradient_norm": self.sums["gradient_norm"] / max(self.steps, 1),
      "images_per_second": self.sums["count"] / self.seconds(),
    }
