"""A run's model, optimizer, schedule and steps (resnet/steps.py), built together.

`create_training` is what train.py, the benchmark, the self-check and the tests build
a run from; it makes nothing but TensorFlow objects (no files, no flags).
"""

import dataclasses

import keras

from data import augment, datasets
from resnet import models, optimization, precision, run_record, steps
from resnet.ema import WeightAverage
from resnet.lookahead import Lookahead

# --- Everything a training run steps ---------------------------------------------------


@dataclasses.dataclass
class Training:
  """The model, its schedule and optimizer, and the compiled steps that drive them."""

  model: keras.Model
  schedule: optimization.LearningRateSchedule
  optimizer: keras.optimizers.Optimizer
  train_steps: object  # steps.make_train_steps' tf.function.
  # steps.make_predict_step's tf.function, of the model validation sees: `ema`'s average
  # of the weights when the run keeps one, else `model`.
  predict_step: object
  # steps.make_average_moving_statistics' tf.function, over the model and `ema`'s average.
  average_moving_statistics: object
  lookahead: Lookahead | None = None  # Its state is checkpointed with the run.
  ema: WeightAverage | None = None  # --ema_decay; its average_model is checkpointed.

  def init_model_from_run(self, source_dir, record):
    """--init_from: run_record.init_model_from_run, and the average starts there too."""
    run_record.init_model_from_run(self.model, source_dir, record)
    if self.ema:
      self.ema.reset()

  def checkpointed(self):
    """The run's state beyond model, optimizer and counters, by checkpoint key."""
    extra = {"lookahead": self.lookahead.state} if self.lookahead else {}
    return extra | ({"ema_model": self.ema.average_model} if self.ema else {})


def _create_model(config, num_classes, fused_batch_norm, image_size):
  """The run's network for (height, width) images, with its weights created (call it inside
  the strategy's scope)."""
  return models.create_model(
    config.model,
    num_classes,
    precision=config.precision,
    sync_batch_norm=config.sync_batch_norm,
    fused_batch_norm=fused_batch_norm,
    # "auto" outside train.py (benchmark, selfcheck, tests): what a new run gets.
    stride2_padding=("symmetric" if config.stride2_padding == "auto" else config.stride2_padding),
    dropout=config.dropout,
    image_size=image_size,
  )


def _create_optimizer(config, model, steps_per_epoch, lr_multiplier):
  """(schedule, optimizer with its slots built, Lookahead or None) of `config` for `model`;
  call it inside the strategy's scope."""
  total_steps = config.epochs * steps_per_epoch
  lookahead = None
  if config.lookahead:
    lookahead = Lookahead(
      model, steps_per_epoch, total_steps, start_epochs=config.lookahead_start_epochs
    )
  schedule = optimization.LearningRateSchedule(
    config.lr_schedule,
    config.peak_learning_rate,
    total_steps,
    warmup_steps=int(config.warmup_epochs * steps_per_epoch),
    multiplier=lr_multiplier,
    drops=config.lr_drop_fractions,
    drop_factor=config.lr_drop_factor,
  )
  optimizer = optimization.create_optimizer(
    schedule,
    config.precision,
    config.decoupled_weight_decay,
    name=config.optimizer,
    momentum=config.momentum,
    nesterov=config.nesterov,
  )
  optimizer.build(model.trainable_variables)
  return schedule, optimizer, lookahead


def create_training(
  config,
  strategy,
  num_classes,
  steps_per_epoch,
  lr_multiplier=None,
  fused_batch_norm=True,
  train_images=None,
  input_normalization=None,
):
  """Builds a run's model and optimizer under `strategy.scope()`, and its steps.

  Args:
    config: a resnet.config.Config (model, optimizer, schedule, precision, loss options).
    strategy: the tf.distribute strategy to build under.
    num_classes: classifier outputs; steps_per_epoch: for the schedule's epochs.
    lr_multiplier: a scalar tf.Variable scaling the schedule (lowered when a run
      recovers from a non-finite loss, and checkpointed), or None.
    fused_batch_norm: False builds stock Keras BatchNorm (the benchmark's baseline).
    train_images: uint8 [N, H, W, 3] training images for the model's `prepare`
      (airbench's whitening; skipped with config.whitening False, or without them: for
      speed measurements).
    input_normalization: the run's {"mean", "std"} (run_record.input_normalization)
      for the steps and `prepare`; None: CIFAR-10's.

  Returns:
    A Training. The optimizer's slots exist, so a restore can fill them.
  """
  if config.precision == "auto":  # Outside train.py (benchmark, selfcheck, tests): a new run's.
    config = dataclasses.replace(config, precision=precision.choose_for_this_machine(strategy)[0])
  # (height, width) of the run's images; CIFAR's where none are given (benchmark, tests).
  image_size = datasets.IMAGE_SIZE if train_images is None else tuple(train_images.shape[1:3])
  with strategy.scope():
    model = _create_model(config, num_classes, fused_batch_norm, image_size)
    if config.whitening and train_images is not None:  # --nowhitening skips airbench's.
      normalization = input_normalization or datasets.CIFAR10.normalization
      model.prepare(train_images, lambda images: augment.normalize(images, **normalization))
    schedule, optimizer, lookahead = _create_optimizer(
      config, model, steps_per_epoch, lr_multiplier
    )
    ema = None
    if config.ema_decay:  # Its average lives in a second copy of the network.
      average_model = _create_model(config, num_classes, fused_batch_norm, image_size)
      ema = WeightAverage(model, average_model, config.ema_decay)
  train_steps = steps.make_train_steps(
    strategy,
    model,
    optimizer,
    global_batch_size=config.batch_size,
    num_classes=num_classes,
    label_smoothing=config.label_smoothing,
    weight_decay=config.weight_decay,
    batch_norm_weight_decay=config.batch_norm_weight_decay,
    batch_norm_lr_scale=config.batch_norm_lr_scale,
    lookahead=lookahead,
    ema=ema,
    jit_compile=config.jit_compile,
    input_normalization=input_normalization,
  )
  validated = ema.average_model if ema else model  # What validation and the export see.
  both = [model, validated] if ema else [model]
  return Training(
    model=model,
    schedule=schedule,
    optimizer=optimizer,
    train_steps=train_steps,
    predict_step=steps.make_predict_step(strategy, validated, input_normalization),
    average_moving_statistics=steps.make_average_moving_statistics(strategy, *both),
    lookahead=lookahead,
    ema=ema,
  )
