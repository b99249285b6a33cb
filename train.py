r"""Trains a CIFAR ResNet with a custom tf.distribute loop; keeps the best checkpoint.

  python train.py --flagfile=configs/resnet20.cfg      # model directory: runs/resnet20
  tensorboard --logdir runs/resnet20
  python eval.py --model_dir=runs/resnet20 --split=validation

Re-running the same command resumes the run in its model directory (--model_dir, by
default runs/<the flagfile's name>) from the latest checkpoint, at the exact position
in the data order, and stops at the same step.
"""

import resnet  # noqa: F401 - first: sets TensorFlow's environment (resnet/__init__.py).

# isort: split
import contextlib
import dataclasses
import os
import signal
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from data import datasets, pipeline
from resnet import (
  checkpointing,
  console,
  distribute,
  errors,
  export,
  metrics,
  precision,
  run_record,
  summaries,
  train_lib,
  workers,
)
from resnet import config as config_lib


def train_and_evaluate(config, model_dir):
  """Trains `config.model` to `config.epochs`, validating every epoch; resumes if it can.

  Under --strategy=multi_worker every worker runs this with the same flags; only
  the chief writes to `model_dir`.

  Returns:
    {"stopped_by": None or the signal that stopped training early ("SIGTERM"), "step",
     "epoch", "best_accuracy", "validation": the last validation metrics}.

  Raises:
    errors.UserError: bad input, an unusable model directory, or a divergence.
  """
  # --- Set-up: strategy first (multi-worker must start before anything else runs TF) --
  config_lib.validate(config)
  if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
    raise config_lib.ConfigError(f"--model_dir={model_dir} is a file, not a directory.")
  strategy = _create_strategy(config)
  config, precision_choice = _resolve_precision(config, strategy, model_dir)
  chief = distribute.is_chief(strategy)
  data = _load_data(config)
  # Padding and input normalisation: the record's on a resume, else --init_from's, else new.
  config, model_facts = run_record.resolve_model_facts(
    model_dir, config, data.class_names, datasets.input_normalization(config.dataset, data.train[0])
  )
  # Only the chief writes (and locks) the model directory; if it cannot, every worker stops.
  lock = checkpointing.claim_model_dir(model_dir) if chief else contextlib.nullcontext()
  # Non-chief workers save their checkpoints (as TensorFlow requires) to a scratch directory.
  with (
    workers.entered_together(strategy, lock),
    distribute.scratch_directory(strategy) as scratch_dir,
  ):
    with workers.failing_together(strategy):  # A worker's own directory may hold another run.
      record = _start_run_record(
        config, model_dir, data, strategy, chief, precision_choice, model_facts
      )
    run, checkpoints = _create_training(
      config, strategy, data, model_dir, scratch_dir, chief, model_facts["input_normalization"]
    )
    with workers.restoring_alike(strategy, checkpoints):  # All read the chief's checkpoints.
      restored = checkpoints.restore()
    if config.init_from and not restored:  # A new run starts from another run's weights.
      run_record.init_model_from_run(run.model, config.init_from, record)
    writers = _create_writers(config, model_dir, data, record, checkpoints.step, chief)
    stop = distribute.StopSignals(coordinated=scratch_dir is not None)
    preemption = distribute.preemption_handler(
      strategy, checkpoints.checkpoint, scratch_dir, checkpoints.save_latest, stop
    )
    if config.on_nan == "recover" and not restored:
      checkpoints.save_latest()  # A step-0 checkpoint to recover to if epoch 1 diverges.

    # --- Training loop -----------------------------------------------------------------
    step, validation = checkpoints.step, None
    batches = iter(data.distribute_train(strategy, start_step=step))
    validation_views = data.distribute_validation(strategy, config.validation_tta)
    progress = console.Progress(data.total_steps, data.steps_per_epoch, step)
    window, epoch_meter = console.Meter(), console.Meter()  # Since the last log; epoch.
    with stop:  # Preemption or Ctrl-C: save, then leave the loop.
      while step < data.total_steps and not stop.received:
        # Run to the next log line, checkpoint, epoch end or (several workers) preemption check.
        boundaries = [config.log_every_steps, data.steps_per_epoch, config.checkpoint_every_steps]
        boundaries += [config.preemption_check_steps] if preemption else []
        num_steps = min([b - step % b for b in boundaries if b] + [data.total_steps - step])
        sums = run.train_steps(batches, tf.constant(num_steps))
        if not np.isfinite(loss := float(sums["loss_sum"])):  # Never saved: back to the latest.
          with workers.restoring_alike(strategy, checkpoints):
            step = checkpoints.recover_from_non_finite_loss(
              loss, step, num_steps, config.max_nan_recoveries, config.nan_lr_factor
            )
          batches = iter(data.distribute_train(strategy, start_step=step))
          window.reset()
          continue
        step += num_steps
        checkpoints.counters["step"].assign(step)
        window.add(sums, num_steps)
        epoch_meter.add(sums, num_steps)
        epoch, step_in_epoch = divmod(step, data.steps_per_epoch)
        if step % config.log_every_steps == 0 or step_in_epoch == 0:
          scalars = dict(window.result(), learning_rate=float(run.schedule(step - 1)))
          summaries.write_train_scalars(writers, step, scalars, run.model)
          progress.update(step, scalars)
          window.reset()
        if step_in_epoch == 0:
          validation, line = _end_epoch(
            config, epoch, run, checkpoints, data, validation_views, writers, epoch_meter
          )
          progress.end_epoch(line)
          window.reset()  # Validation time is not training throughput.
        elif config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
          checkpoints.save_latest()
        if preemption:
          preemption.save_checkpoint_if_preempted()  # Same call count on every worker.
    if stop.received:
      checkpoints.save_latest()  # A no-op if this step is saved already.

    # --- The end: export when finished -----------------------------------------------------
    summaries.flush(writers)
    if chief and config.export and not stop.received and step >= data.total_steps:
      with checkpoints.writing("the exported model"):
        paths = export.export_best_model(model_dir)
      logging.info("Exported the best model to %s and %s.", paths["saved_model"], paths["keras"])
  return {
    "stopped_by": stop.received,
    "step": step,
    "epoch": step // data.steps_per_epoch,
    "best_accuracy": float(checkpoints.counters["best_accuracy"].numpy()),
    "validation": validation,
  }


# --- Set-up, and the end of an epoch ----------------------------------------------------


def _create_strategy(config):
  """The strategy `config` asks for, checked against the batch size and XLA; seeds set."""
  strategy = distribute.create_strategy(config.strategy, config.tpu)
  pipeline.check_global_batch_size(strategy, config.batch_size)
  if config.jit_compile:
    distribute.check_jit_compile(strategy, config.sync_batch_norm)
  logging.info(distribute.describe(strategy, config.strategy))
  if warning := distribute.small_batch_norm_warning(
    strategy, config.batch_size, config.sync_batch_norm
  ):
    logging.warning(warning)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()  # For the whole process.
  keras.utils.set_random_seed(config.seed)  # Initial weights; the data order and
  # augmentation are stateless functions of the same seed (data/augment.py).
  return strategy


def _resolve_precision(config, strategy, model_dir):
  """(`config` with --precision=auto resolved (precision.resolve_auto), the choice and
  its reason for the run record, or None when the precision was given)."""
  if config.precision != "auto":
    return config, None
  chosen, choice = precision.resolve_auto(model_dir, strategy)
  logging.info("--precision=auto: %s.", choice)
  return dataclasses.replace(config, precision=chosen), choice


def _load_data(config):
  """The run's examples in memory and its epochs (pipeline.TrainingData)."""
  return pipeline.TrainingData.load(
    config.dataset,
    config.validation_size,
    config.tfds_data_dir,
    epochs=config.epochs,
    steps_per_epoch=config.steps_per_epoch,
    global_batch_size=config.batch_size,
    seed=config.seed,
    crop_padding=config.crop_padding,
    flips=config.flips,
  )


def _create_training(config, strategy, data, model_dir, scratch_dir, chief, input_normalization):
  """(train_lib.Training, checkpointing.Checkpoints) of the run, not yet restored."""
  with strategy.scope():
    counters = checkpointing.create_counters()
  run = train_lib.create_training(
    config,
    strategy,
    len(data.class_names),
    data.steps_per_epoch,
    counters["lr_multiplier"],
    train_images=data.train[0],
    input_normalization=input_normalization,
  )
  checkpoints = checkpointing.Checkpoints(
    model_dir,
    run.model,
    run.optimizer,
    counters,
    write_dir=None if chief else scratch_dir,
    before_save=run.average_moving_statistics,  # Replicas' BatchNorm statistics drift apart.
    lookahead=run.lookahead,
  )
  return run, checkpoints


def _start_run_record(config, model_dir, data, strategy, chief, precision_choice, model_facts):
  """Creates (the chief) or checks (every worker) MODEL_DIR/run.json; see run_record."""
  return run_record.start_run_record(
    model_dir,
    dataclasses.asdict(config),
    write=chief,
    **data.facts(),
    **model_facts,
    peak_learning_rate=config.peak_learning_rate,
    num_replicas=strategy.num_replicas_in_sync,
    precision_choice=precision_choice,
    devices=[device.name for device in tf.config.list_logical_devices()],
  )


def _create_writers(config, model_dir, data, record, step, chief):
  """TensorBoard writers (no-ops but on the chief), with the run's flags and pictures."""
  writers = summaries.create_writers(model_dir, chief)
  if chief:
    summaries.write_run_start(writers, step, dataclasses.asdict(config), record, model_dir)
    summaries.write_data_pictures(writers, step, model_dir, data, config.seed)
  return writers


def _end_epoch(config, epoch, run, checkpoints, data, validation_views, writers, epoch_meter):
  """Validates; saves the best and the latest checkpoints; writes the summaries.

  Returns:
    (the validation metrics, the epoch's line for the console).
  """
  run.average_moving_statistics()  # One model on every replica; see train_lib.
  validation = metrics.evaluate(
    run.predict_step, validation_views, len(data.validation[1]), data.class_names
  )
  counters = checkpoints.counters
  counters["epoch"].assign(epoch)
  improved = validation["accuracy"] > float(counters["best_accuracy"].numpy())
  if improved:
    counters["best_accuracy"].assign(validation["accuracy"])
    checkpoints.save_best(validation)
  checkpoints.save_latest()
  step, train_metrics, seconds = checkpoints.step, epoch_meter.result(), epoch_meter.seconds()
  if checkpoints.is_chief:
    best = float(counters["best_accuracy"].numpy())
    summaries.write_validation(writers, step, epoch, validation, data, run.model, best, seconds)
  summary_line = (
    f"epoch {epoch:3d}/{config.epochs}  train loss {train_metrics['loss']:.4f} "
    f"acc {train_metrics['accuracy']:.4f}  val loss {validation['loss']:.4f} "
    f"acc {validation['accuracy']:.4f}{' (best)' if improved else ''}  "
    f"lr {float(run.schedule(step - 1)):.2e}  {seconds:.0f}s  "
    f"{train_metrics['images_per_second']:.0f} img/s"
  )
  epoch_meter.reset()
  return validation, summary_line


# --- Command line ------------------------------------------------------------------------


def default_model_dir(argv, model):
  """--model_dir when none is given: runs/<name of the first --flagfile in `argv`> (the
  command line as typed; runs/resnet20 for configs/resnet20.cfg), else runs/<model>.

  Relative to the working directory: the same command, run again from the same place,
  resumes the same run (and a second one at the same time is refused by its lock).
  """
  for index, arg in enumerate(argv):
    if arg in ("--flagfile", "-flagfile") and index + 1 < len(argv):
      arg = f"--flagfile={argv[index + 1]}"
    if arg.startswith(("--flagfile=", "-flagfile=")):
      return os.path.join("runs", os.path.splitext(os.path.basename(arg.split("=", 1)[1]))[0])
  return os.path.join("runs", model)


def parse_command_line(argv, flag_values=flags.FLAGS):
  """Parses `argv` into `flag_values` as absl does (the usage and exit 1 on a bad flag),
  then gives --model_dir its default (default_model_dir). app.run's flags_parser."""
  if flag_values is flags.FLAGS:
    remaining = app.parse_flags_with_usage(argv)
  else:
    remaining = flag_values(argv)
  if not flag_values.model_dir:
    flag_values.model_dir = default_model_dir(argv, flag_values.model)
  return remaining


def _exit_stopped(signal_name, what_happened):
  print(
    f"Stopped by {signal_name} {what_happened}; run the same command again to resume.",
    file=sys.stderr,
  )
  sys.exit(128 + signal.Signals[signal_name].value)  # The shell's code for the signal.


def main(argv, flag_values=flags.FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  tf.get_logger().setLevel("WARNING")  # TF's own info lines (one per checkpoint save) are noise.
  model_dir = flag_values.model_dir or default_model_dir([], flag_values.model)
  given = "" if flag_values["model_dir"].present else " (the default for this command)"
  logging.info("Model directory: %s%s.", model_dir, given)
  try:
    result = train_and_evaluate(config_lib.config_from_flags(flag_values), model_dir)
  except errors.UserError as error:  # The message is the whole story: one line, status 1.
    sys.exit(f"train.py: error: {error}")
  except KeyboardInterrupt:  # Ctrl-C outside the loop's handler: loading the data, exporting.
    _exit_stopped("SIGINT", "outside the training loop; what was saved before is intact")
  if result["stopped_by"]:
    _exit_stopped(result["stopped_by"], f"at step {result['step']} and saved a checkpoint there")
  logging.info(
    "Done at step %d; best validation accuracy %.4f.", result["step"], result["best_accuracy"]
  )


if __name__ == "__main__":
  config_lib.define_flags(flags.FLAGS)
  app.run(main, flags_parser=parse_command_line)
