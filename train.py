r"""Trains a CIFAR ResNet with a custom tf.distribute loop; keeps the best checkpoint.

  python train.py --flagfile=configs/resnet20.cfg --model_dir=runs/resnet20
  python train.py --flagfile=configs/debug.cfg --dataset=folder:../shared/data/cifar10-jpeg75
  tensorboard --logdir runs/resnet20
  python eval.py --model_dir=runs/resnet20 --split=validation

Re-running the same command with the same --model_dir resumes from the latest
checkpoint and stops at the same total number of epochs.
"""

import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Keep TF's warnings, drop its info lines.
# TF turns oneDNN on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX. On the AVX2
# CPUs we measured, it made resnet20 training 1.6x faster (~190 -> ~310 images/s).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from data import pipeline, sources, visualize  # noqa: E402
from resnet import checkpointing, console, export, metrics, plots, summaries, train_lib  # noqa: E402
from resnet import model as model_lib


@dataclasses.dataclass(frozen=True)
class Config:
  """Resolved training configuration (the flags, as plain data; defaults = resnet20.cfg)."""

  model: str = "resnet20"
  dataset: str = "cifar10"
  tfds_data_dir: str | None = None
  validation_size: int = 5000
  epochs: int = 200
  batch_size: int = 128  # Global, over all replicas.
  optimizer: str = "adam"  # Or "sgd" (with momentum), the paper's.
  momentum: float = 0.9  # SGD only.
  nesterov: bool = False  # SGD only.
  learning_rate: float = 1e-3
  lr_schedule: str = "cosine"
  warmup_epochs: float = 2.0
  weight_decay: float = 2e-4  # L2 term in the loss.
  decoupled_weight_decay: float = 0.0  # AdamW-style: kernels *= 1 - lr * this, per step.
  label_smoothing: float = 0.0
  crop_padding: int = 4  # Random translations of up to this many pixels.
  seed: int = 0
  deterministic: bool = False  # Op determinism: bit-identical reruns, slower on GPUs.
  strategy: str = "auto"
  tpu: str = ""  # TPU name or grpc:// address for --strategy=tpu; "" = this TPU VM.
  precision: str = "float32"
  jit_compile: bool = False
  sync_batch_norm: bool = False
  lr_reference_batch_size: int = 0  # > 0: scale learning_rate by batch_size / this.
  steps_per_epoch: int = 0  # 0: a full pass over the training examples.
  log_every_steps: int = 50
  checkpoint_every_steps: int = 0  # 0: only at the end of each epoch.
  export: bool = True  # Export the best model to MODEL_DIR/export when training ends.
  on_nan: str = "stop"  # Or "recover": restore the latest checkpoint, lower the rate.
  nan_lr_factor: float = 0.5  # Learning-rate multiplier of each recovery.


ON_NAN = ("stop", "recover")
MAX_NAN_RECOVERIES = 3  # Then the run stops: the problem is not the learning rate.


class RunError(ValueError):
  """A problem with the requested flags, with a message for the user."""


def _validate(config):
  for name in ("epochs", "batch_size", "learning_rate", "log_every_steps"):
    if getattr(config, name) <= 0:
      raise RunError(f"--{name} must be positive, got {getattr(config, name)}.")
  for name in (
    "weight_decay",
    "decoupled_weight_decay",
    "warmup_epochs",
    "steps_per_epoch",
    "checkpoint_every_steps",
    "lr_reference_batch_size",
  ):
    if getattr(config, name) < 0:
      raise RunError(f"--{name} must not be negative, got {getattr(config, name)}.")
  if not 0 <= config.label_smoothing < 1:
    raise RunError(f"--label_smoothing must be in [0, 1), got {config.label_smoothing}.")
  if not 0 <= config.crop_padding <= 16:
    raise RunError(f"--crop_padding must be in [0, 16] pixels, got {config.crop_padding}.")
  if config.on_nan not in ON_NAN:
    raise RunError(f"--on_nan must be one of {', '.join(ON_NAN)}, got {config.on_nan!r}.")
  if not 0 < config.nan_lr_factor < 1:
    raise RunError(f"--nan_lr_factor must be in (0, 1), got {config.nan_lr_factor}.")
  if config.optimizer not in train_lib.OPTIMIZERS:
    raise RunError(
      f"--optimizer must be one of {', '.join(train_lib.OPTIMIZERS)}, got {config.optimizer!r}."
    )
  if not 0 <= config.momentum < 1:
    raise RunError(f"--momentum must be in [0, 1), got {config.momentum}.")
  if config.nesterov and not (config.optimizer == "sgd" and config.momentum > 0):
    raise RunError("--nesterov needs --optimizer=sgd with a --momentum above 0.")
  if config.precision not in train_lib.PRECISIONS:
    raise RunError(f"--precision must be one of {', '.join(train_lib.PRECISIONS)}.")


def peak_learning_rate(config):
  """--learning_rate, scaled linearly with the global batch when
  --lr_reference_batch_size is set (Goyal et al. 2017: k times the batch,
  k times the rate, with a warm-up)."""
  if not config.lr_reference_batch_size:
    return config.learning_rate
  return config.learning_rate * config.batch_size / config.lr_reference_batch_size


class _Meter:
  """Sums of the train step's outputs, steps and wall time since the last reset()."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.sums = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0, "gradient_norm": 0.0}
    self.steps = 0
    self.start = time.perf_counter()

  def add(self, sums, num_steps):
    for key in self.sums:
      self.sums[key] += float(sums[key])
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


class _StopSignals:
  """Within `with`, records SIGTERM and SIGINT instead of dying, so the loop can save.

  With `sigint_as_sigterm` (multi-worker runs), SIGTERM is left to
  TensorFlow's PreemptionCheckpointHandler, which makes every worker save at
  the same step and then calls `preempted`; SIGINT is passed on to it as a
  SIGTERM.
  """

  def __init__(self, sigint_as_sigterm=False):
    self.sigint_as_sigterm = sigint_as_sigterm
    self.received = None  # Name of the first signal received.

  def __enter__(self):
    signals = (signal.SIGINT,) if self.sigint_as_sigterm else (signal.SIGTERM, signal.SIGINT)
    self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}
    return self

  def __exit__(self, *exc_info):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    if self.sigint_as_sigterm:
      os.kill(os.getpid(), signal.SIGTERM)  # To the handler, which tells the other workers.
    elif self.received is None:
      self.received = signal.Signals(signum).name
      logging.warning("%s received: saving a checkpoint after the current steps.", self.received)

  def preempted(self):
    """The PreemptionCheckpointHandler's exit_fn: every worker has saved; leave the loop."""
    self.received = "SIGTERM"


def train_and_evaluate(config, model_dir):
  """Trains `config.model` to `config.epochs`, validating every epoch.

  Under --strategy=multi_worker every worker runs this with the same flags;
  only the chief writes to `model_dir` (the others save their checkpoints,
  as TensorFlow requires, to a temporary directory removed at the end).

  Returns:
    {"stopped_by": None or the name of the signal that stopped training early,
     "step", "epoch", "best_accuracy", "validation": last validation metrics}.

  Raises:
    RunError, pipeline.DataError, checkpointing.CheckpointError: bad input,
      or a non-finite training loss (nothing is saved then).
  """
  _validate(config)
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise RunError(f"--model_dir={model_dir} is a file, not a directory.")

  # --- Strategy (first: multi-worker must start before anything else runs TF) --------
  try:
    strategy = train_lib.create_strategy(config.strategy, config.tpu)
  except ValueError as error:
    raise RunError(str(error)) from None
  pipeline.check_global_batch_size(strategy, config.batch_size)
  if (
    config.jit_compile
    and strategy.num_replicas_in_sync > 1
    and not isinstance(strategy, tf.distribute.TPUStrategy)
    and not all("GPU" in device.upper() for device in strategy.extended.worker_devices)
  ):
    raise RunError(
      "--jit_compile with several replicas needs GPU (or TPU) replicas: TensorFlow "
      "cannot compile the cross-replica update on CPU devices. Drop --jit_compile, or "
      "use one device."
    )
  task_type, task_id = train_lib.worker_task(strategy)
  logging.info(
    "Strategy %s (--strategy=%s) with %d replica(s)%s.",
    type(strategy).__name__.lstrip("_"),
    config.strategy,
    strategy.num_replicas_in_sync,
    f"; this is {task_type} {task_id}" if task_type else "",
  )
  # Multi-worker: every worker needs a scratch directory (the non-chief ones
  # save their checkpoints there), removed however training ends.
  if task_type is None:
    return _train(config, model_dir, strategy, scratch_dir=None)
  with tempfile.TemporaryDirectory(prefix=f"resnet-{task_type}{task_id}-") as scratch_dir:
    return _train(config, model_dir, strategy, scratch_dir)


def _train(config, model_dir, strategy, scratch_dir):
  """train_and_evaluate once the strategy exists; `scratch_dir` as there."""
  chief = train_lib.is_chief(strategy)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()  # For the whole process.
  keras.utils.set_random_seed(config.seed)  # Initial weights; data order and augmentation
  # are stateless functions of the same seed (data/pipeline.py).

  # --- Data --------------------------------------------------------------------------
  (train_images, train_labels), (val_images, val_labels), class_names, val_source = (
    sources.load_train_and_validation(config.dataset, config.validation_size, config.tfds_data_dir)
  )
  steps_per_epoch = config.steps_per_epoch or len(train_labels) // config.batch_size
  if not 0 < steps_per_epoch * config.batch_size <= len(train_labels):
    raise RunError(
      f"An epoch of {steps_per_epoch} steps x --batch_size={config.batch_size} does not fit "
      f"the {len(train_labels)} training examples: lower --batch_size or --steps_per_epoch."
    )
  total_steps = config.epochs * steps_per_epoch
  if config.validation_size == 0:
    logging.warning(
      "--validation_size=0: validating and selecting the best checkpoint on the "
      "TEST split, so test accuracy of the best checkpoint is optimistic."
    )
  logging.info(
    "%d training examples, %d validation examples (%s), %d steps per epoch.",
    len(train_labels),
    len(val_labels),
    val_source,
    steps_per_epoch,
  )
  if chief:
    _make_writable_directory(model_dir)
  run_record = checkpointing.start_run_record(
    model_dir,
    dataclasses.asdict(config),
    write=chief,
    class_names=class_names,
    num_classes=len(class_names),
    num_train_examples=len(train_labels),
    validation_source=val_source,
    num_validation_examples=len(val_labels),
    steps_per_epoch=steps_per_epoch,
    peak_learning_rate=peak_learning_rate(config),
    num_replicas=strategy.num_replicas_in_sync,
    devices=[d.name for d in tf.config.list_logical_devices()],
  )
  write_dir = model_dir if chief else scratch_dir  # Where this process saves checkpoints.

  # --- Model, optimizer and checkpoint, all under the strategy's scope -------------------
  with strategy.scope():
    model = model_lib.create_model(
      config.model,
      num_classes=len(class_names),
      precision=config.precision,
      sync_batch_norm=config.sync_batch_norm,
    )
    state = checkpointing.create_training_state()
    schedule = train_lib.LearningRateSchedule(
      config.lr_schedule,
      peak_learning_rate(config),
      total_steps,
      warmup_steps=int(config.warmup_epochs * steps_per_epoch),
      multiplier=state["lr_multiplier"],
    )
    optimizer = train_lib.create_optimizer(
      schedule,
      config.precision,
      config.decoupled_weight_decay,
      name=config.optimizer,
      momentum=config.momentum,
      nesterov=config.nesterov,
    )
    optimizer.build(model.trainable_variables)  # Slots exist before a restore fills them.
    # Adam (or SGD) is saved under the same name with or without loss scaling, so
    # a run can resume in another precision; the loss scale is saved on its own.
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    loss_scale = {"loss_scale_optimizer": optimizer} if optimizer is not inner else {}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=inner, **loss_scale, **state)
  read_manager, _ = checkpointing.create_managers(checkpoint, model_dir)
  latest_manager, best_manager = checkpointing.create_managers(checkpoint, write_dir)

  # --- Restore (every worker reads the chief's checkpoints) ----------------------------
  restored = checkpointing.restore_newest_readable(checkpoint, read_manager)
  if restored:
    logging.info(
      "Resumed from %s at step %d (best validation accuracy %.4f).",
      restored,
      int(state["step"].numpy()),
      float(state["best_accuracy"].numpy()),
    )
  start_step = int(state["step"].numpy())
  if start_step >= total_steps:
    logging.info(
      "Already trained for %d steps (%d epochs); nothing to do.", start_step, config.epochs
    )

  # --- Steps and input -----------------------------------------------------------------
  train_steps = train_lib.make_train_steps(
    strategy,
    model,
    optimizer,
    global_batch_size=config.batch_size,
    num_classes=len(class_names),
    label_smoothing=config.label_smoothing,
    weight_decay=config.weight_decay,
    jit_compile=config.jit_compile,
  )
  predict_step = train_lib.make_predict_step(strategy, model)
  average_moving_statistics = train_lib.make_average_moving_statistics(strategy, model)

  def train_batches_from(first_step):  # The exact data order from any step on.
    return iter(
      pipeline.distribute_train_dataset(
        strategy,
        train_images,
        train_labels,
        global_batch_size=config.batch_size,
        steps_per_epoch=steps_per_epoch,
        start_step=first_step,
        total_steps=total_steps,
        seed=config.seed,
        crop_padding=config.crop_padding,
      )
    )

  train_iterator = train_batches_from(start_step)
  val_dataset = pipeline.distribute_eval_dataset(
    strategy, val_images, val_labels, global_batch_size=config.batch_size
  )

  # --- Summaries (the chief's only; see resnet/summaries.py) ---------------------------
  writers = summaries.create_writers(model_dir, chief)
  if chief:
    summaries.write_run_start(
      writers,
      start_step,
      dataclasses.asdict(config),
      run_record,
      run_name=os.path.basename(os.path.abspath(model_dir)),
    )
    grid = visualize.class_grid_png(train_images, train_labels, class_names, seed=config.seed)
    with open(os.path.join(model_dir, "class_samples.png"), "wb") as file:
      file.write(grid)
    summaries.write_png(writers["train"], start_step, "class_samples", grid)
    summaries.write_png(
      writers["train"],
      start_step,
      "augmented_inputs",
      _augmented_inputs_png(
        config, train_images, train_labels, class_names, steps_per_epoch, start_step
      ),
      description="The next training batch as the model sees it (de-normalised).",
    )

  # --- Preemption: under multi-worker, TensorFlow's handler aligns the workers ---------
  def save_latest():
    if latest_manager.latest_checkpoint != _checkpoint_path(latest_manager, state):
      average_moving_statistics()  # Replicas' copies drift apart; see train_lib.
      with _writing("a checkpoint", model_dir):
        latest_manager.save(checkpoint_number=int(state["step"].numpy()))

  stop = _StopSignals(sigint_as_sigterm=scratch_dir is not None)
  preemption_handler = None
  if scratch_dir is not None:
    # Its own manager points at an empty directory, so it restores nothing (we
    # did, with fallback past damaged files); it saves through save_latest.
    preemption_handler = tf.distribute.experimental.PreemptionCheckpointHandler(
      strategy.cluster_resolver,
      tf.train.CheckpointManager(checkpoint, os.path.join(scratch_dir, "unused"), max_to_keep=1),
      termination_config=tf.distribute.experimental.TerminationConfig(
        exit_fn=stop.preempted, save_fn=save_latest
      ),
    )

  if config.on_nan == "recover" and not restored:
    save_latest()  # A step-0 checkpoint to recover to if the first epoch diverges.

  # --- Training loop -------------------------------------------------------------------
  step, validation = start_step, None
  progress = console.Progress(total_steps, steps_per_epoch, start_step)
  window, epoch_meter = _Meter(), _Meter()  # Since the last log line; since the epoch began.
  with stop:  # Preemption or Ctrl-C: save, then leave the loop.
    while step < total_steps and not stop.received:
      # Run until the next log line, checkpoint or epoch end, whichever comes first.
      boundaries = [config.log_every_steps, steps_per_epoch, config.checkpoint_every_steps]
      num_steps = min([b - step % b for b in boundaries if b] + [total_steps - step])
      sums = train_steps(train_iterator, tf.constant(num_steps))
      if not np.isfinite(float(sums["loss_sum"])):
        # Never saved: restore the latest checkpoint with a lower rate, or stop.
        step = _recover_from_non_finite_loss(
          config, checkpoint, state, model_dir, float(sums["loss_sum"]), step, num_steps
        )
        train_iterator = train_batches_from(step)
        window.reset()
        continue
      step += num_steps
      state["step"].assign(step)
      window.add(sums, num_steps)
      epoch_meter.add(sums, num_steps)
      epoch, step_in_epoch = divmod(step, steps_per_epoch)
      learning_rate = float(schedule(step - 1))  # The rate of the last step taken.

      if step % config.log_every_steps == 0 or step_in_epoch == 0:
        scalars = dict(
          window.result(), learning_rate=learning_rate, weight_norm=summaries.weight_norm(model)
        )
        summaries.write_scalars(writers["train"], step, scalars)
        progress.update(step, scalars)
        window.reset()

      if step_in_epoch == 0:
        average_moving_statistics()  # One model on every replica; see train_lib.
        validation = metrics.evaluate(predict_step, val_dataset, len(val_labels), class_names)
        state["epoch"].assign(epoch)
        improved = validation["accuracy"] > float(state["best_accuracy"].numpy())
        if improved:
          state["best_accuracy"].assign(validation["accuracy"])
          with _writing("the best checkpoint", model_dir):
            checkpointing.save_best(
              best_manager, validation, epoch=epoch, step=step, write_record=chief
            )
        save_latest()
        train_metrics = epoch_meter.result()
        if chief:
          _write_validation_summaries(
            writers, step, epoch, validation, val_images, class_names, model, state
          )
          summaries.write_scalars(writers["train"], step, {"epoch_seconds": epoch_meter.seconds()})
        progress.end_epoch(
          f"epoch {epoch:3d}/{config.epochs}  train loss {train_metrics['loss']:.4f} "
          f"acc {train_metrics['accuracy']:.4f}  val loss {validation['loss']:.4f} "
          f"acc {validation['accuracy']:.4f}{' (best)' if improved else ''}  "
          f"lr {learning_rate:.2e}  {epoch_meter.seconds():.0f}s  "
          f"{train_metrics['images_per_second']:.0f} img/s"
        )
        epoch_meter.reset()
        window.reset()  # Validation time is not training throughput.
      elif config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        save_latest()
      if preemption_handler:
        preemption_handler.save_checkpoint_if_preempted()  # Same call count on every worker.

  if stop.received:
    save_latest()  # A no-op if this step is saved already.
  for writer in writers.values():
    writer.flush()
  if chief and config.export and not stop.received and step >= total_steps:
    with _writing("the exported model", model_dir):
      paths = export.export_best_model(model_dir)
    logging.info("Exported the best model to %s and %s.", paths["saved_model"], paths["keras"])
  return {
    "stopped_by": stop.received,
    "step": step,
    "epoch": step // steps_per_epoch,
    "best_accuracy": float(state["best_accuracy"].numpy()),
    "validation": validation,
  }


def _augmented_inputs_png(config, train_images, train_labels, class_names, steps_per_epoch, step):
  """The first 32 examples of global batch `step`, augmented, de-normalised, with classes."""
  batch_images, batch_labels = next(
    iter(
      pipeline.make_train_dataset(
        train_images,
        train_labels,
        global_batch_size=config.batch_size,
        steps_per_epoch=steps_per_epoch,
        start_step=step,
        total_steps=step + 1,
        seed=config.seed,
        crop_padding=config.crop_padding,
      )
    )
  )
  images = pipeline.denormalize(batch_images[:32]).numpy()
  titles = [class_names[label] for label in batch_labels[:32].numpy()]
  return visualize.image_grid_png(images, titles, title=f"Augmented training batch {step}")


def _write_validation_summaries(
  writers, step, epoch, validation, images, class_names, model, state
):
  """Everything TensorBoard shows after a validation (the chief calls this)."""
  writer = writers["validation"]
  summaries.write_scalars(
    writer,
    step,
    {
      "loss": validation["loss"],
      "accuracy": validation["accuracy"],
      summaries.BEST_ACCURACY_TAG: float(state["best_accuracy"].numpy()),
      **{
        f"accuracy_per_class/{name}": scores["recall"]  # A class's recall is its accuracy.
        for name, scores in validation["per_class"].items()
      },
    },
  )
  summaries.write_png(
    writer,
    step,
    "confusion_matrix",
    plots.confusion_matrix_png(
      validation["confusion_matrix"], class_names, title=f"Validation, epoch {epoch}"
    ),
  )
  summaries.write_png(
    writer,
    step,
    "most_confident_mistakes",
    plots.mistakes_png(
      images,
      validation["labels"],
      validation["probabilities"],
      class_names,
      title=f"Most confident mistakes, epoch {epoch} (true -> predicted)",
    ),
  )
  summaries.write_weight_histograms(writers["train"], step, model)


def _recover_from_non_finite_loss(config, checkpoint, state, model_dir, loss, step, num_steps):
  """Restores the latest checkpoint and lowers the learning rate (--on_nan=recover).

  Returns:
    The restored step.

  Raises:
    RunError: --on_nan=stop, MAX_NAN_RECOVERIES reached, or no checkpoint.
  """
  # A fresh manager: the chief's directory may have gained checkpoints since start.
  latest_manager, _ = checkpointing.create_managers(checkpoint, model_dir)
  where = (
    f"The training loss became {loss} in steps {step + 1}-{step + num_steps}; nothing "
    f"was saved from them. Last good checkpoint: {latest_manager.latest_checkpoint}."
  )
  recoveries = int(state["nan_recoveries"].numpy())
  if config.on_nan == "stop":
    raise RunError(f"{where} Try a lower --learning_rate, or --on_nan=recover.")
  if recoveries >= MAX_NAN_RECOVERIES or latest_manager.latest_checkpoint is None:
    raise RunError(f"{where} Stopped after {recoveries} recoveries with lower learning rates.")
  multiplier = float(state["lr_multiplier"].numpy()) * config.nan_lr_factor
  restored = checkpointing.restore_newest_readable(checkpoint, latest_manager)
  state["lr_multiplier"].assign(multiplier)  # After the restore, which resets both.
  state["nan_recoveries"].assign(recoveries + 1)
  logging.warning(
    "%s Restored %s (step %d); learning rate x%g from now on (recovery %d of %d).",
    where,
    restored,
    int(state["step"].numpy()),
    multiplier,
    recoveries + 1,
    MAX_NAN_RECOVERIES,
  )
  return int(state["step"].numpy())


def _make_writable_directory(model_dir):
  """Creates `model_dir` and proves that a file can be written there, before the run starts."""
  try:
    os.makedirs(model_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=model_dir) as probe:
      probe.write(bytes(1 << 16))  # 64 KiB: an empty file can still be created on a full disk.
      probe.flush()
      os.fsync(probe.fileno())
  except OSError as error:
    raise RunError(
      f"Cannot write to --model_dir={model_dir}: {error.strerror or error}. Choose a "
      "directory you can write to, with free space."
    ) from None


@contextlib.contextmanager
def _writing(what, model_dir):
  """Turns a failed write (full disk, lost permissions) into one message for the user."""
  try:
    yield
  except (OSError, tf.errors.OpError) as error:
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, checkpointing.LATEST_DIR))
    raise RunError(
      f"Cannot write {what} in {model_dir}: {checkpointing.first_line(error)}. What was "
      f"saved before is intact (latest checkpoint: {latest}); make room or fix the "
      "permissions, then run the same command to resume."
    ) from None


def _checkpoint_path(manager, state):
  """The path `manager` gives the checkpoint of the current step."""
  return os.path.join(manager.directory, f"ckpt-{int(state['step'].numpy())}")


# --- Flags (defined only when run as a script, so tests can import this file) -----------


def define_flags(flag_values=flags.FLAGS):
  """Defines the command-line flags in `flag_values`; defaults come from Config."""
  d = Config()
  fv = dict(flag_values=flag_values)
  # Model and data.
  flags.DEFINE_enum("model", d.model, list(model_lib.MODEL_NAMES), "Model (resnet/model.py).", **fv)
  flags.DEFINE_string(
    "dataset", d.dataset, "cifar10 (TFDS) or folder:PATH with PATH/<split>/<class>/<image>.", **fv
  )
  flags.DEFINE_string("tfds_data_dir", d.tfds_data_dir, "TFDS data directory.", **fv)
  flags.DEFINE_integer(
    "validation_size",
    d.validation_size,
    "Training examples held out for validation; 0 validates on the test split.",
    **fv,
  )
  # Optimisation.
  flags.DEFINE_integer("epochs", d.epochs, "Epochs to train for in total.", **fv)
  flags.DEFINE_integer("batch_size", d.batch_size, "Global batch size (all replicas).", **fv)
  flags.DEFINE_enum(
    "optimizer", d.optimizer, list(train_lib.OPTIMIZERS), "adam, or sgd with momentum.", **fv
  )
  flags.DEFINE_float("momentum", d.momentum, "SGD's momentum, in [0, 1).", **fv)
  flags.DEFINE_bool("nesterov", d.nesterov, "SGD with Nesterov momentum.", **fv)
  flags.DEFINE_float("learning_rate", d.learning_rate, "Peak learning rate.", **fv)
  flags.DEFINE_enum(
    "lr_schedule", d.lr_schedule, list(train_lib.LR_SCHEDULES), "Decay after the warm-up.", **fv
  )
  flags.DEFINE_float("warmup_epochs", d.warmup_epochs, "Linear warm-up, in epochs.", **fv)
  flags.DEFINE_float("weight_decay", d.weight_decay, "L2 coefficient on kernels.", **fv)
  flags.DEFINE_float(
    "decoupled_weight_decay",
    d.decoupled_weight_decay,
    "Decoupled (AdamW-style) decay of kernels: each step multiplies them by "
    "1 - learning rate * this. Use instead of --weight_decay, e.g. 0.1.",
    **fv,
  )
  flags.DEFINE_float("label_smoothing", d.label_smoothing, "Label smoothing, in [0, 1).", **fv)
  flags.DEFINE_integer(
    "crop_padding", d.crop_padding, "Augmentation: random translations of up to N pixels.", **fv
  )
  flags.DEFINE_integer("seed", d.seed, "Seed of initial weights, data order, augmentation.", **fv)
  flags.DEFINE_bool(
    "deterministic",
    d.deterministic,
    "Deterministic ops: the same seed gives "
    "bit-identical weights on the same hardware (slower on GPUs).",
    **fv,
  )
  flags.DEFINE_integer(
    "lr_reference_batch_size",
    d.lr_reference_batch_size,
    "If > 0, the peak learning rate is --learning_rate x --batch_size / this (linear "
    "scaling when moving to more replicas).",
    **fv,
  )
  # Hardware.
  flags.DEFINE_enum(
    "strategy",
    d.strategy,
    list(train_lib.STRATEGIES),
    "auto: multi_worker if TF_CONFIG names several workers, mirrored over several GPUs, "
    "else the default device. multi_worker is configured by TF_CONFIG.",
    **fv,
  )
  flags.DEFINE_string("tpu", d.tpu, "--strategy=tpu: TPU name or grpc:// address.", **fv)
  flags.DEFINE_enum(
    "precision",
    d.precision,
    list(train_lib.PRECISIONS),
    "Keras dtype policy: mixed_float16 for GPUs with tensor cores (with loss "
    "scaling), mixed_bfloat16 for TPUs, Ampere+ GPUs and CPUs with AVX-512 BF16.",
    **fv,
  )
  flags.DEFINE_bool("jit_compile", d.jit_compile, "Compile the train step with XLA.", **fv)
  flags.DEFINE_bool(
    "sync_batch_norm",
    d.sync_batch_norm,
    "BatchNorm statistics over the global batch instead of each replica's batch.",
    **fv,
  )
  # Loop and outputs.
  flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries, records.", **fv)
  flags.DEFINE_integer(
    "steps_per_epoch",
    d.steps_per_epoch,
    "Steps per epoch; 0 is a full pass over the training examples (smaller for smoke runs).",
    **fv,
  )
  flags.DEFINE_integer("log_every_steps", d.log_every_steps, "Steps between log lines.", **fv)
  flags.DEFINE_integer(
    "checkpoint_every_steps",
    d.checkpoint_every_steps,
    "Steps between mid-epoch checkpoints; 0 saves only at the end of each epoch.",
    **fv,
  )
  flags.DEFINE_bool(
    "export",
    d.export,
    "When training ends, export the best model (SavedModel and .keras) to MODEL_DIR/export.",
    **fv,
  )
  flags.DEFINE_enum(
    "on_nan",
    d.on_nan,
    list(ON_NAN),
    "On a non-finite training loss: stop, or recover (restore the latest checkpoint and "
    f"multiply the learning rate by --nan_lr_factor, at most {MAX_NAN_RECOVERIES} times).",
    **fv,
  )
  flags.DEFINE_float("nan_lr_factor", d.nan_lr_factor, "See --on_nan; in (0, 1).", **fv)
  flags.mark_flag_as_required("model_dir", **fv)


def config_from_flags(flag_values):
  """The Config whose fields are the parsed flags of the same names."""
  return Config(
    **{field.name: flag_values[field.name].value for field in dataclasses.fields(Config)}
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  tf.get_logger().setLevel("WARNING")  # TF's own info lines (one per checkpoint save) are noise.
  try:
    result = train_and_evaluate(config_from_flags(flags.FLAGS), flags.FLAGS.model_dir)
  except (RunError, sources.DataError, checkpointing.CheckpointError) as error:
    sys.exit(f"train.py: error: {error}")
  if result["stopped_by"]:
    print(
      f"Stopped by {result['stopped_by']} at step {result['step']} and saved a checkpoint "
      f"there; run the same command again to resume.",
      file=sys.stderr,
    )
    sys.exit(128 + signal.Signals[result["stopped_by"]].value)  # The shell's code for it.
  logging.info(
    "Done at step %d; best validation accuracy %.4f.", result["step"], result["best_accuracy"]
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
