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

from data import datasets, pipeline, training_data
from resnet import (
  checkpointing,
  config_checks,
  console,
  distribute,
  errors,
  export,
  metrics,
  models,
  precision,
  preemption,
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
  config_checks.validate(config)
  if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
    raise config_lib.ConfigError(f"--model_dir={model_dir} is a file, not a directory.")
  strategy = _create_strategy(config)
  config, precision_choice = precision.resolve(config, strategy, model_dir)
  chief = distribute.is_chief(strategy)
  data = training_data.TrainingData.load_for(config)
  config_checks.check_model_input(config, data.train[0].shape[1:3], len(data.class_names))
  # Padding and input normalisation: the record's on a resume, else --init_from's, else new.
  statistics = datasets.input_normalization(config.dataset, data.train[0], config.train_split)
  config, model_facts = run_record.resolve_model_facts(
    model_dir, config, data.class_names, statistics
  )
  data.set_input_normalization(model_facts["input_normalization"])
  # Only the chief writes (and locks) the model directory; if it cannot, every worker stops.
  lock = checkpointing.claim_model_dir(model_dir) if chief else contextlib.nullcontext()
  # Non-chief workers save their checkpoints (as TensorFlow requires) to a scratch directory.
  with (
    workers.entered_together(strategy, lock),
    distribute.scratch_directory(strategy) as scratch_dir,
  ):
    run, checkpoints = _create_training(config, strategy, data, model_dir, scratch_dir, chief)
    model_facts["num_parameters"] = models.count_parameters(run.model)  # Trainable.
    logging.info("Model %s: %s parameters.", config.model, f"{model_facts['num_parameters']:,}")
    with workers.failing_together(strategy):  # A worker's own directory may hold another run.
      record = run_record.start_training_record(
        model_dir, config, chief, data.facts(), model_facts, strategy, precision_choice
      )
    with workers.restoring_alike(strategy, checkpoints):  # All read the chief's checkpoints.
      restored = checkpoints.restore()
    if config.init_from and not restored:  # A new run starts from another run's weights.
      run.init_model_from_run(config.init_from, record)
    writers = summaries.create_run_writers(
      model_dir, chief, checkpoints.step, dataclasses.asdict(config), record, data, config.seed
    )
    stop = preemption.StopSignals(coordinated=scratch_dir is not None)
    handler = preemption.create_handler(
      strategy, checkpoints.checkpoint, scratch_dir, checkpoints.save_latest, stop
    )
    if config.on_nan == "recover" and not restored:
      checkpoints.save_latest()  # A step-0 checkpoint to recover to if epoch 1 diverges.

    # --- Training: preemption or Ctrl-C saves, then leaves the loop ------------------------
    with stop:
      step, validation = _train_loop(
        config, strategy, data, run, checkpoints, writers, stop, handler
      )
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


def _train_loop(config, strategy, data, run, checkpoints, writers, stop, handler):
  """Trains from the restored step to the end, or until `stop` (preemption.StopSignals)
  has received a signal; validates and saves at every epoch's end. `handler`: several
  workers' preemption.create_handler, else None.

  Returns:
    (the step reached, the last validation metrics or None).
  """
  step, validation = checkpoints.step, None
  batches = iter(data.distribute_train(strategy, start_step=step))
  validation_views = data.distribute_validation(strategy, config.validation_tta)
  progress = console.Progress(data.total_steps, data.steps_per_epoch, step)
  window, epoch_meter = console.Meter(), console.Meter()  # Since the last log; epoch.
  while step < data.total_steps and not stop.received:
    # Run to the next log line, checkpoint, epoch end or (several workers) preemption check.
    boundaries = [config.log_every_steps, data.steps_per_epoch, config.checkpoint_every_steps]
    boundaries += [config.preemption_check_steps] if handler else []
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
    if handler:
      handler.save_checkpoint_if_preempted()  # Same call count on every worker.
  return step, validation


# --- Set-up, and the end of an epoch ----------------------------------------------------


def _create_strategy(config):
  """The strategy `config` asks for, checked against the batch size and XLA; seeds set."""
  strategy = distribute.create_for_training(config)
  pipeline.check_global_batch_size(strategy, config.batch_size)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()  # For the whole process.
  keras.utils.set_random_seed(config.seed)  # Initial weights; the data order and
  # augmentation are stateless functions of the same seed (data/augment.py).
  return strategy


def _create_training(config, strategy, data, model_dir, scratch_dir, chief):
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
    input_normalization=data.input_normalization,
  )
  checkpoints = checkpointing.Checkpoints(
    model_dir,
    run.model,
    run.optimizer,
    counters,
    write_dir=None if chief else scratch_dir,
    before_save=run.average_moving_statistics,  # Replicas' BatchNorm statistics drift apart.
    extra=run.checkpointed(),  # Lookahead's state, the average of the weights.
  )
  return run, checkpoints


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
  learning_rate = float(run.schedule(step - 1))
  line = console.epoch_line(
    epoch, config.epochs, train_metrics, validation, improved, learning_rate, seconds
  )
  epoch_meter.reset()
  return validation, line


# --- Command line ------------------------------------------------------------------------


def default_model_dir(argv, model):
  """--model_dir when none is given: runs/<name of the first --flagfile in `argv`> (the
  command line as typed; runs/resnet20 for configs/resnet20.cfg), else runs/<model>.
  Relative to the working directory: the same command, run again from the same place,
  resumes the same run (and one run at a time: its lock)."""
  for index, arg in enumerate(argv):
    if arg in ("--flagfile", "-flagfile") and index + 1 < len(argv):
      arg = f"--flagfile={argv[index + 1]}"
    if arg.startswith(("--flagfile=", "-flagfile=")):
      return os.path.join("runs", os.path.splitext(os.path.basename(arg.split("=", 1)[1]))[0])
  return os.path.join("runs", model)


def parse_command_line(argv, flag_values=flags.FLAGS):
  """app.run's flags_parser: absl's parsing (its message and exit status 1 on a bad flag),
  then --model_dir's default (default_model_dir)."""
  try:
    remaining = flag_values(argv)
  except flags.Error as error:
    sys.exit(f"FATAL Flags parsing error: {error}\nPass --helpshort or --helpfull for help.")
  flag_values.model_dir = flag_values.model_dir or default_model_dir(argv, flag_values.model)
  return remaining


def _exit_stopped(signal_name, what_happened):
  sys.stderr.write(
    f"Stopped by {signal_name} {what_happened}; run the same command again to resume.\n"
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
