"""Manual checkpointing: the latest state for resuming, the best model by validation accuracy.

MODEL_DIR/checkpoints/  latest training state (model, optimizer, counters), a few kept
                        for safety; a resume restores the newest that reads back whole.
MODEL_DIR/best/         rewritten only when validation accuracy improves; the best
                        accuracy is stored inside the checkpoint and in best/best.json.
"""

import contextlib
import os
import uuid

import tensorflow as tf
from absl import logging

from resnet import files, run_lock
from resnet.errors import UserError, one_line_message

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
KEEP_LATEST = 3  # Checkpoints kept in LATEST_DIR: a damaged newest one falls back.


class CheckpointError(UserError, ValueError):
  """A checkpoint or model directory that cannot be used, with a message for the user."""


class DivergedError(UserError, RuntimeError):
  """The training loss became non-finite and the run cannot (or may not) recover."""


def create_counters():
  """The training counters saved with every checkpoint (create them inside strategy.scope()).

  step, epoch: progress; best_accuracy: best validation accuracy so far (-1
  before the first validation, so that any accuracy is an improvement);
  lr_multiplier, nan_recoveries: the learning-rate factor and count of
  recoveries from a non-finite loss (--on_nan=recover).
  """
  return {
    "step": tf.Variable(0, dtype=tf.int64, trainable=False, name="step"),
    "epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch"),
    "best_accuracy": tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_accuracy"),
    "lr_multiplier": tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_multiplier"),
    "nan_recoveries": tf.Variable(0, dtype=tf.int64, trainable=False, name="nan_recoveries"),
  }


def make_writable_directory(model_dir):
  """Creates `model_dir` and proves that a file can be written there, before the run starts.

  The probe, a file with a unique name (never one of the user's), is written and
  deleted through tf.io.gfile: the check works for gs:// as for a local directory.

  Raises:
    CheckpointError: the directory cannot be created or written (read-only, full).
  """
  probe = os.path.join(model_dir, f".write_probe.{uuid.uuid4().hex}")
  try:
    tf.io.gfile.makedirs(model_dir)
    try:
      with tf.io.gfile.GFile(probe, "wb") as file:
        file.write(bytes(1 << 16))  # 64 KiB: an empty file can still be created on a full disk.
    finally:
      with contextlib.suppress(tf.errors.NotFoundError):
        tf.io.gfile.remove(probe)
  except tf.errors.OpError as error:
    raise CheckpointError(
      f"Cannot write to --model_dir={model_dir}: {one_line_message(error)}. Choose a "
      "directory you can write to, with free space."
    ) from None


@contextlib.contextmanager
def claim_model_dir(model_dir):
  """Proves that `model_dir` can be written (make_writable_directory), then holds its run
  lock (resnet/run_lock.py) within `with`: a second run there is refused before it writes.

  Raises:
    CheckpointError: the directory cannot be written; RunLockedError: a live run holds it.
  """
  make_writable_directory(model_dir)
  with run_lock.hold(model_dir):
    yield


def best_checkpoint_path(model_dir):
  """The path of MODEL_DIR's best checkpoint; CheckpointError when there is none."""
  path = tf.train.latest_checkpoint(os.path.join(model_dir, BEST_DIR))
  if path is None:
    raise CheckpointError(
      f"No best checkpoint in {os.path.join(model_dir, BEST_DIR)}: train "
      f"with --model_dir={model_dir} for at least one epoch first."
    )
  return path


def saved_step(path):
  """The training step at which the checkpoint `path` was saved."""
  # Not tf.train.load_variable: on ram://, where directories are mere name prefixes, it
  # takes the prefix of a checkpoint's files for a directory and finds no checkpoint.
  reader = tf.compat.v1.train.NewCheckpointReader(path)
  return int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def restore_model(model, path, key="model"):
  """Restores only the model weights from a training checkpoint at `path`: those saved
  under `key` ("ema_model": the average of the weights, resnet/ema.py).

  Raises:
    CheckpointError: the checkpoint is missing, unreadable, or of another model.
  """
  try:
    status = tf.train.Checkpoint(**{key: model}).restore(path).expect_partial()
    status.assert_existing_objects_matched()
  except (tf.errors.OpError, AssertionError, ValueError) as error:  # Missing, damaged, other.
    raise CheckpointError(
      f"Cannot restore {model.name} from {path}: {one_line_message(error)}"
    ) from None


class Checkpoints:
  """The checkpoints of one run: restore, save the latest and the best, recover from NaN.

  Holds the tf.train.Checkpoint of the model, the optimizer and the counters
  (see create_counters), and the two managers. The optimizer is saved under
  "optimizer" with or without loss scaling, and mixed_float16's loss scale on
  its own, so a run resumes in any precision (see restore). Every process reads the chief's
  checkpoints in `model_dir`; under MultiWorkerMirroredStrategy every worker must also save
  (saving runs collective ops), the non-chief ones into `write_dir` (None: the
  chief, which saves into `model_dir` and writes best/best.json).
  """

  def __init__(
    self, model_dir, model, optimizer, counters, write_dir=None, before_save=None, extra=None
  ):
    self.model_dir = model_dir
    # Called before each save: under several replicas, averages their BatchNorm statistics.
    self._before_save = before_save or (lambda: None)
    self.counters = counters
    self.is_chief = write_dir is None
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    loss_scale = {"loss_scale_optimizer": optimizer} if optimizer is not inner else {}
    # The run's other state by key (train_lib.Training.checkpointed: Lookahead's, the
    # average of the weights).
    extra = extra or {}
    # What a restore fills. Not self.checkpoint's attributes: TF's PreemptionCheckpointHandler
    # adds a counter of its own to that, which checkpoints saved without it lack.
    self._objects = dict(model=model, optimizer=inner, **loss_scale, **extra, **counters)
    self.checkpoint = tf.train.Checkpoint(**self._objects)
    write_dir = write_dir or model_dir
    self._latest = tf.train.CheckpointManager(
      self.checkpoint, os.path.join(write_dir, LATEST_DIR), max_to_keep=KEEP_LATEST
    )
    self._best = tf.train.CheckpointManager(
      self.checkpoint, os.path.join(write_dir, BEST_DIR), max_to_keep=1, checkpoint_name="best"
    )
    self._saved_step = None  # The step of the state on disk: saving it again is a no-op.
    self.restored_path = None  # The checkpoint the last restore read, if any.

  @property
  def step(self):
    return int(self.counters["step"].numpy())

  def latest_checkpoint(self):
    """The newest checkpoint in the chief's directory (a fresh read: it may have grown)."""
    return tf.train.latest_checkpoint(os.path.join(self.model_dir, LATEST_DIR))

  def restore(self):
    """Restores the newest of the chief's checkpoints that reads back whole.

    A damaged newest checkpoint (a kill during a write, a full disk) falls back
    to the previous one instead of ending the run.

    Returns:
      The restored path, or None when there is no checkpoint.

    Raises:
      CheckpointError: there are checkpoints but none of them can be restored.
    """
    manager = tf.train.CheckpointManager(
      self.checkpoint, os.path.join(self.model_dir, LATEST_DIR), max_to_keep=KEEP_LATEST
    )
    errors, self.restored_path = [], None
    for path in reversed(manager.checkpoints):
      try:
        self._restore_from(path)
        self._saved_step, self.restored_path = self.step, path
        best = float(self.counters["best_accuracy"].numpy())
        logging.info(
          "Resumed from %s at step %d (best validation accuracy %.4f).", path, self.step, best
        )
        return path
      except Exception as error:  # noqa: BLE001 - damaged files raise OpError, IndexError, ...
        logging.warning(
          "Cannot restore %s (%s); trying the previous checkpoint.", path, one_line_message(error)
        )
        errors.append(f"{os.path.basename(path)}: {one_line_message(error)}")
    if errors:
      raise CheckpointError(
        f"No checkpoint in {manager.directory} can be restored ("
        f"{'; '.join(errors)}). Move the directory away to start afresh."
      )
    return None

  def _restore_from(self, path):
    """Restores the checkpoint at `path` into the run's own objects, all of which it must
    hold but the loss scale: a float32 or bfloat16 run saved none, so a mixed_float16
    run resumed from it starts with a fresh one (and a run without loss scaling leaves
    a saved one unread)."""
    saved = tf.compat.v1.train.NewCheckpointReader(path).get_variable_to_shape_map()
    objects = dict(self._objects)
    if not any(name.startswith("loss_scale_optimizer/") for name in saved):
      objects.pop("loss_scale_optimizer", None)
    tf.train.Checkpoint(**objects).restore(path).assert_existing_objects_matched()

  def save_latest(self):
    """Saves the current state as checkpoints/ckpt-<step>, unless that step is saved already."""
    if self._saved_step == self.step:
      return
    self._before_save()
    with self.writing("a checkpoint"):
      self._latest.save(checkpoint_number=self.step)
    self._saved_step = self.step

  def save_best(self, validation):
    """Saves the best checkpoint and (the chief) best/best.json describing it."""
    step = self.step
    self._before_save()
    with self.writing("the best checkpoint"):
      self._best.save(checkpoint_number=step)
      if self.is_chief:
        files.write_json(
          os.path.join(self._best.directory, "best.json"),
          {
            "accuracy": validation["accuracy"],
            "loss": validation["loss"],
            "epoch": int(self.counters["epoch"].numpy()),
            "step": step,
            "checkpoint": os.path.basename(self._best.latest_checkpoint),
          },
        )

  @contextlib.contextmanager
  def writing(self, what):
    """Turns a failed write (full disk, lost permissions) into one message for the user."""
    try:
      yield
    except (OSError, tf.errors.OpError) as error:
      raise CheckpointError(
        f"Cannot write {what} in {self.model_dir}: {one_line_message(error)}. What was saved "
        f"before is intact (latest checkpoint: {self.latest_checkpoint()}); make room or "
        "fix the permissions, then run the same command to resume."
      ) from None

  def recover_from_non_finite_loss(self, loss, step, num_steps, max_recoveries, lr_factor):
    """Restores the latest checkpoint and multiplies the learning rate by `lr_factor`.

    Args:
      loss: the non-finite loss of the `num_steps` steps after `step`.
      max_recoveries: recoveries allowed in the whole run (0: stop at once).

    Returns:
      The restored step.

    Raises:
      DivergedError: no recovery allowed or left, or no checkpoint to go back to.
    """
    where = (
      f"The training loss became {loss} in steps {step + 1}-{step + num_steps}; nothing was "
      f"saved from them. Last good checkpoint: {self.latest_checkpoint()}."
    )
    recoveries = int(self.counters["nan_recoveries"].numpy())
    if not max_recoveries:
      raise DivergedError(f"{where} Try a lower --learning_rate, or --on_nan=recover.")
    if recoveries >= max_recoveries or self.latest_checkpoint() is None:
      raise DivergedError(
        f"{where} Stopped after {recoveries} recoveries with lower learning rates."
      )
    multiplier = float(self.counters["lr_multiplier"].numpy()) * lr_factor
    restored = self.restore()
    self.counters["lr_multiplier"].assign(multiplier)  # After the restore, which resets both.
    self.counters["nan_recoveries"].assign(recoveries + 1)
    logging.warning(
      "%s Restored %s (step %d); learning rate x%g from now on (recovery %d of %d).",
      where,
      restored,
      self.step,
      multiplier,
      recoveries + 1,
      max_recoveries,
    )
    return self.step
