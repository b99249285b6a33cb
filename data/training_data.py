"""A training run's data: its examples in memory, the length of its epochs, and the
datasets data/pipeline.py makes of them, from any step."""

import dataclasses

from absl import logging

from data import augment, pipeline, sources


@dataclasses.dataclass
class TrainingData:
  """A run's examples in memory, the length of its epochs, and the datasets made of them."""

  train: tuple  # (images uint8 [N, H, W, 3], labels int32 [N])
  validation: tuple  # The same, for model selection.
  class_names: list
  validation_source: str  # Where the validation examples come from (for the run record).
  global_batch_size: int
  steps_per_epoch: int
  total_steps: int
  seed: int
  augmentation: augment.Augmentation = augment.CROPS_AND_FLIPS
  # The run's {"mean", "std"} (set_input_normalization); None: CIFAR-10's.
  input_normalization: dict | None = None

  @classmethod
  def load(
    cls,
    dataset,
    validation_size,
    tfds_data_dir=None,
    *,
    epochs,
    steps_per_epoch=0,
    global_batch_size,
    seed,
    augmentation=augment.CROPS_AND_FLIPS,
    **load_args,
  ):
    """Loads the training and validation examples (see sources) and sizes the epochs.

    `steps_per_epoch` 0 is a full pass over the training examples; `augmentation` an
    augment.Augmentation (its `fill`: set_input_normalization); `load_args` (train_split,
    label_feature, image_size) are sources.load_train_and_validation's.

    Raises:
      sources.DataError: unreadable data, or an epoch that does not fit the examples.
    """
    train, validation, class_names, validation_source = sources.load_train_and_validation(
      dataset, validation_size, tfds_data_dir, **load_args
    )
    num_train = len(train[1])
    steps_per_epoch = steps_per_epoch or num_train // global_batch_size
    if not 0 < steps_per_epoch * global_batch_size <= num_train:
      raise sources.DataError(
        f"An epoch of {steps_per_epoch} steps x --batch_size={global_batch_size} does not fit "
        f"the {num_train} training examples: lower --batch_size or --steps_per_epoch."
      )
    if validation_size == 0:
      logging.warning(
        "--validation_size=0: validating and selecting the best checkpoint on the "
        "TEST split, so test accuracy of the best checkpoint is optimistic."
      )
    logging.info(
      "%d training examples, %d validation examples (%s), %d steps per epoch.",
      num_train,
      len(validation[1]),
      validation_source,
      steps_per_epoch,
    )
    return cls(
      train,
      validation,
      list(class_names),
      validation_source,
      global_batch_size,
      steps_per_epoch,
      epochs * steps_per_epoch,
      seed,
      augmentation,
    )

  @classmethod
  def load_for(cls, config):
    """load() with the arguments a resnet.config.Config gives."""
    return cls.load(
      config.dataset,
      config.validation_size,
      config.tfds_data_dir,
      epochs=config.epochs,
      steps_per_epoch=config.steps_per_epoch,
      global_batch_size=config.batch_size,
      seed=config.seed,
      augmentation=augment.Augmentation(
        crop_padding=config.crop_padding,
        flips=config.flips,
        cutout=config.cutout,
        randaugment=augment.parse_randaugment(config.randaugment),
        autoaugment=config.autoaugment,
        mixup=config.mixup,
        cutmix=config.cutmix,
      ),
      train_split=config.train_split,
      label_feature=config.label_feature,
      image_size=config.image_size or None,
    )

  @property
  def image_size(self):
    """(height, width) of the run's images."""
    return tuple(int(size) for size in self.train[0].shape[1:3])

  def set_input_normalization(self, input_normalization):
    """Records the run's {"mean", "std"} (run_record.resolve_model_facts'), and fills
    Cutout's square and the pixels the policies uncover with its mean colour."""
    self.input_normalization = input_normalization
    fill = augment.mean_colour(input_normalization["mean"])
    self.augmentation = dataclasses.replace(self.augmentation, fill=fill)

  def _train_dataset_args(self):
    return dict(
      global_batch_size=self.global_batch_size,
      steps_per_epoch=self.steps_per_epoch,
      total_steps=self.total_steps,
      seed=self.seed,
      augmentation=self.augmentation,
      num_classes=len(self.class_names),
    )

  def distribute_train(self, strategy, start_step):
    """The training batches from `start_step` on: the exact data order from any step."""
    return pipeline.distribute_train_dataset(
      strategy, *self.train, start_step=start_step, **self._train_dataset_args()
    )

  def augmented_batch(self, step):
    """Global batch `step`, (images, labels), as the model sees it: for pictures. Labels
    are int32 [B], or with MixUp or CutMix soft targets float32 [B, classes]."""
    args = dict(self._train_dataset_args(), total_steps=step + 1)
    return next(iter(pipeline.make_train_dataset(*self.train, start_step=step, **args)))

  def distribute_validation(self, strategy, tta="none"):
    """distribute_eval_views of the validation examples, at the training's global batch."""
    return pipeline.distribute_eval_views(
      strategy, *self.validation, global_batch_size=self.global_batch_size, tta=tta
    )

  def facts(self):
    """What the run record says about the data."""
    return dict(
      class_names=self.class_names,
      num_classes=len(self.class_names),
      image_size=list(self.image_size),
      num_train_examples=len(self.train[1]),
      validation_source=self.validation_source,
      num_validation_examples=len(self.validation[1]),
      steps_per_epoch=self.steps_per_epoch,
    )
