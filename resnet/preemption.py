"""Stopping on a signal: SIGTERM or Ctrl-C saves a checkpoint first, on every worker alike.

In a single process the loop notices the signal after its current steps, saves, and
leaves. In a multi-worker run one worker must not leave alone (the others would hang in
a collective): TensorFlow's PreemptionCheckpointHandler makes every worker save at the
same step, then stop.
"""

import contextlib
import os
import signal

import tensorflow as tf
from absl import logging


class StopSignals:
  """Within `with`, records SIGTERM and SIGINT instead of dying, so the loop can save.

  In a single process the first signal stops the loop (`received`). In a
  multi-worker run (`coordinated`) one worker must not leave the loop alone:
  the signal is only recorded (`signalled`), which TensorFlow's
  PreemptionCheckpointHandler polls; it makes every worker save at the same
  step, then calls `preempted` on each of them.
  """

  def __init__(self, coordinated=False):
    self.coordinated = coordinated
    self.signal_name = None  # Name of the first signal this process received.
    self.received = None  # Name of the signal that stops the loop.

  def __enter__(self):
    signals = (signal.SIGTERM, signal.SIGINT)
    self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}
    return self

  def __exit__(self, *exc_info):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:
      return
    self.signal_name = signal.Signals(signum).name
    if not self.coordinated:
      self.received = self.signal_name
    where = "on every worker at one step" if self.coordinated else "after the current steps"
    logging.warning("%s received: saving a checkpoint %s.", self.signal_name, where)

  def signalled(self):
    """The PreemptionCheckpointHandler's termination_watcher_fn: whether a signal came."""
    return self.signal_name is not None

  def preempted(self):
    """The PreemptionCheckpointHandler's exit_fn: every worker has saved; leave the loop."""
    self.received = self.signal_name or "SIGTERM"  # Without one of its own: a peer's SIGTERM.


def create_handler(strategy, checkpoint, scratch_dir, save_fn, stop_signals):
  """TensorFlow's PreemptionCheckpointHandler for a multi-worker run, else None.

  On SIGTERM or SIGINT to any worker, every worker calls `save_fn` at the same
  step (its `save_checkpoint_if_preempted` must be called once per loop
  iteration on every worker), then `stop_signals.preempted`. Its own manager
  points at an empty scratch directory so it restores nothing: the caller
  restores, with the fallback past damaged files.

  The handler otherwise adapts itself to the platform it detects: on a Google
  Cloud GPU VM it watches the maintenance-event metadata instead of SIGTERM and
  waits out a grace period of an hour; on a Google Cloud CPU VM it does nothing
  at all. Either way a SIGTERM or Ctrl-C would kill one worker without a save
  and leave the others hanging in a collective. So the signals are our own
  (`stop_signals.signalled`, polled by a thread of the handler every second),
  with no grace period, and the handler is built as on any other machine.
  (GCE's maintenance notice, up to an hour ahead, is not watched; the SIGTERM
  of the shutdown that follows it is.)
  """
  if scratch_dir is None:
    return None
  with _platform_detection_off():
    return tf.distribute.experimental.PreemptionCheckpointHandler(
      strategy.cluster_resolver,
      tf.train.CheckpointManager(checkpoint, os.path.join(scratch_dir, "unused"), max_to_keep=1),
      termination_config=tf.distribute.experimental.TerminationConfig(
        termination_watcher_fn=stop_signals.signalled,
        exit_fn=stop_signals.preempted,
        grace_period=0,
        save_fn=save_fn,
      ),
    )


@contextlib.contextmanager
def _platform_detection_off():
  """Makes the PreemptionCheckpointHandler built within see an ordinary machine.

  Its platform detection (TensorFlow 2.21, failure_handling_util) also asks
  GCE's metadata server over HTTP, for up to 5 s, before every run.
  """
  try:  # A private module: if TensorFlow moves it, the handler detects as it likes.
    from tensorflow.python.distribute.failure_handling import failure_handling_util as util
  except ImportError:
    logging.warning("Cannot turn off the PreemptionCheckpointHandler's platform detection.")
    yield
    return
  detect = util.detect_platform
  util.detect_platform = lambda: util.PlatformDevice.INTERNAL_CPU  # Same code path as GPU.
  try:
    yield
  finally:
    util.detect_platform = detect
