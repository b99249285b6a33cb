"""train.py that sends itself SIGTERM from inside training step SIGNAL_AT_STEP (an env variable).

For tests that count the steps between a preemption and the checkpoint it
causes: the signal lands while that step runs, inside a call of the train
steps, as a real one would, at a known step. From that step on, each step
takes at least SLOW_STEP_SECONDS, so that the 1-s poll of TensorFlow's
PreemptionCheckpointHandler spans at most 2 steps.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402 - first: TensorFlow's environment (via resnet).

# isort: split
import signal  # noqa: E402
import time  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from resnet import config as config_lib  # noqa: E402
from resnet import optimization  # noqa: E402

SIGNAL_AT_STEP = int(os.environ["SIGNAL_AT_STEP"])  # 1 = the run's first step.
SLOW_STEP_SECONDS = 0.5
_steps_run = 0
_cross_entropy = optimization.cross_entropy


def _count_step():
  global _steps_run
  _steps_run += 1
  if _steps_run == SIGNAL_AT_STEP:
    os.kill(os.getpid(), signal.SIGTERM)
  if _steps_run >= SIGNAL_AT_STEP:
    time.sleep(SLOW_STEP_SECONDS)
  return _steps_run


def _counting_cross_entropy(*args, **kwargs):
  """optimization.cross_entropy, which the train step calls once a step (one replica here)."""
  loss = _cross_entropy(*args, **kwargs)
  with tf.control_dependencies([tf.py_function(_count_step, [], tf.int64)]):
    return tf.identity(loss)


if __name__ == "__main__":
  optimization.cross_entropy = _counting_cross_entropy
  config_lib.define_flags(flags.FLAGS)
  app.run(train.main, flags_parser=train.parse_command_line)
