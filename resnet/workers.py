"""What the workers of a multi-worker run tell each other, so that none waits forever.

Each worker sets itself up on its own: the chief alone probes and locks the
model directory, and every worker restores from the checkpoints it reads. A
worker that fails there and exits leaves the others waiting for it in their
next collective op, or failing there with a traceback about sockets; workers
that restored different checkpoints run collectives that never match. So at
those points every worker sends the others one line, in one all-gather: whether
it failed and why, then what it restored. Used by train.py; in a single process
everything here does nothing but run what it is given.
"""

import contextlib
import os

import numpy as np
import tensorflow as tf

from resnet import distribute, errors

LINE_BYTES = 1024  # Of one worker's line (UTF-8); longer lines are cut.


def gather_lines(strategy, line):
  """Every worker's `line`, on every worker: one all-gather, so call it on all at once.

  Args:
    strategy: a MultiWorkerMirroredStrategy.
    line: this worker's text, one line.

  Returns:
    [(worker, its line)] in the order of the workers' replicas, e.g. ("worker 1", "...").

  Raises:
    StrategyError: another worker is gone (it stopped without a word, or was killed).
  """
  task_type, task_id = distribute.worker_task(strategy)
  data = f"{task_type} {task_id}\n{line}".encode()[:LINE_BYTES]
  # float32 bytes: the type the gradients' all-reduce moves on any device, and exact here.
  row = np.zeros([1, LINE_BYTES], np.float32)
  row[0, : len(data)] = np.frombuffer(data, np.uint8)
  try:
    rows = _all_gather(strategy, tf.constant(row)).numpy().astype(np.uint8)
  except tf.errors.OpError as error:
    raise distribute.StrategyError(
      "Lost touch with the other workers (see their logs for why they stopped): "
      f"{type(error).__name__}."
    ) from None
  # One row per replica: a worker with several devices sent its line several times.
  lines = dict.fromkeys(bytes(row).rstrip(b"\0").decode(errors="replace") for row in rows)
  return [tuple(text.split("\n", 1)) for text in lines]


@tf.function  # Traced once per strategy. (Eagerly, TF warns of eager collectives' overhead.)
def _all_gather(strategy, rows):
  """`rows` of every replica, concatenated: [replicas * len(rows), ...]."""
  return strategy.gather(strategy.run(tf.identity, args=(rows,)), axis=0)


@contextlib.contextmanager
def failing_together(strategy):
  """Within `with`, an exception on any worker is raised on every worker, at the block's end.

  The block must run no collective op, or a worker that failed before it would
  leave the others waiting there.

  Args:
    strategy: the run's strategy (a single process: a plain `with`).

  Raises:
    On a worker whose block failed, its own exception; on the others,
    StrategyError "worker N stopped: <its exception's first line>".
  """
  if distribute.worker_task(strategy)[0] is None:
    yield
    return
  try:
    yield
  except BaseException as error:  # Ctrl-C too: the others must hear of it, then it goes on up.
    with contextlib.suppress(distribute.StrategyError):  # This worker's error says more.
      gather_lines(strategy, errors.one_line_message(error))
    raise
  for worker, line in gather_lines(strategy, ""):
    if line:
      raise distribute.StrategyError(f"{worker} stopped: {line}")


@contextlib.contextmanager
def entered_together(strategy, context):
  """Enters `context` within failing_together: if entering fails on any worker, every
  worker raises (see failing_together), and those that had entered leave it again.

  Args:
    strategy: the run's strategy.
    context: a context manager, e.g. the chief's checkpointing.claim_model_dir.

  Yields:
    What `context` yields.
  """
  with contextlib.ExitStack() as stack:
    with failing_together(strategy):
      value = stack.enter_context(context)
    yield value


@contextlib.contextmanager
def restoring_alike(strategy, checkpoints):
  """Within `with`, every worker restores `checkpoints`; at the block's end, the workers
  check that they restored the same checkpoint: otherwise their collectives would stop
  matching. Like failing_together, the block must run no collective op.

  Args:
    strategy: the run's strategy (a single process: a plain `with`).
    checkpoints: the checkpointing.Checkpoints that the block restores.

  Raises:
    What the block raises, on its worker; StrategyError on every worker when another
    worker's block failed, or the workers restored different checkpoints.
  """
  with failing_together(strategy):
    yield
  if distribute.worker_task(strategy)[0] is None:
    return
  path = checkpoints.restored_path
  state = f"{os.path.basename(path)} at step {checkpoints.step}" if path else "no checkpoint"
  states = gather_lines(strategy, state)
  if len({line for _, line in states}) > 1:
    listing = "; ".join(f"{worker}: {line}" for worker, line in states)
    raise distribute.StrategyError(
      f"The workers restored different checkpoints ({listing}). Every worker must read the "
      "chief's: give them all one --model_dir on storage they share (a shared file system "
      "or gs://); if they have, a worker's log says which checkpoint it could not read."
    )
