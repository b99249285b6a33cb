"""The training options: each option's default, range and help, in one place.

`define_flags` declares a command-line flag for every field of `Config` (the help
text and the choices come from here) and `config_from_flags` reads them back, parsed
by absl (flagfiles too); `validate` checks a Config against the ranges declared beside
each field. Defaults are configs/resnet20.cfg's.
"""

import dataclasses

from absl import flags

from data import augment
from resnet import distribute, errors, models, optimization
from resnet.models import cifar_resnet

ON_NAN = ("stop", "recover")
MAX_NAN_RECOVERIES = 3  # Then the run stops: the problem is not the learning rate.


class ConfigError(errors.UserError, ValueError):
  """An option value that cannot be used, with a message for the user."""


def _option(default, help_text, *, choices=None, low=None, high=None, closed=(True, True), unit=""):
  """A Config field: its default, its help, and the values it accepts.

  `choices` lists the accepted strings; `low`/`high` bound numbers, inclusive
  where `closed` (low side, high side) says so; `unit` names them in errors.
  """
  metadata = dict(help=help_text, choices=choices, low=low, high=high, closed=closed, unit=unit)
  return dataclasses.field(default=default, metadata=metadata)


POSITIVE = dict(low=0, closed=(False, True))
NON_NEGATIVE = dict(low=0)
FRACTION = dict(low=0, high=1, closed=(True, False))  # [0, 1)


@dataclasses.dataclass(frozen=True)
class Config:
  """Resolved training configuration: the flags of train.py, as plain data."""

  # --- Model and data ---
  model: str = _option(
    "resnet20", "Model (resnet/models/):\n" + models.describe(), choices=models.NAMES
  )
  stride2_padding: str = _option(
    "auto",
    "How the ResNet-6n+2 models' stride-2 convolutions pad: symmetric (1 pixel each side, as "
    "the paper's code) or same (Keras' 0 before, 1 after; runs made before this option). "
    "auto: symmetric for a new run; a resumed run keeps what it was built with.",
    choices=("auto", *cifar_resnet.STRIDE2_PADDINGS),
  )
  dropout: float = _option(
    0.0,
    "Dropout rate between a block's two convolutions, in [0, 1), for the models with dropout "
    "(the Wide ResNets; Zagoruyko & Komodakis: 0.3).",
    **FRACTION,
  )
  init_from: str | None = _option(
    None,
    "A new run starts from the weights (not the optimizer) of this run directory's best "
    "checkpoint, with its --stride2_padding and input normalisation; same --model and "
    "classes. Ignored when the run resumes from its own checkpoint.",
  )
  whitening: bool = _option(
    True,
    "--model=airbench: its frozen first convolution whitens 2x2 patches of the training "
    "images (Jordan 2024); --nowhitening: random (for ablations).",
  )
  dataset: str = _option(
    "cifar10",
    "A TFDS image-classification dataset (cifar10, cifar100, svhn_cropped, ...) or "
    "folder:PATH with PATH/<split>/<class>/<image> (docs/datasets.md).",
  )
  label_feature: str = _option(
    "label", "The TFDS class-label feature to learn (cifar100: label, or coarse_label)."
  )
  train_split: str = _option(
    "train", "The split to train on, TFDS split syntax (svhn_cropped: train+extra)."
  )
  image_size: int = _option(0, "Resize images to this many pixels a side; 0: as they are.", low=0)
  tfds_data_dir: str | None = _option(None, "TFDS data directory.")
  validation_size: int = _option(
    5000, "Examples held out of --train_split for validation; 0 validates on the test split.", low=0
  )
  # --- Optimisation ---
  epochs: int = _option(200, "Epochs to train for in total.", **POSITIVE)
  batch_size: int = _option(128, "Global batch size (all replicas).", **POSITIVE)
  optimizer: str = _option(
    "adam", "adam, or sgd with momentum (the paper's).", choices=optimization.OPTIMIZERS
  )
  momentum: float = _option(0.9, "SGD's momentum, in [0, 1).", **FRACTION)
  nesterov: bool = _option(False, "SGD with Nesterov momentum.")
  learning_rate: float = _option(1e-3, "Peak learning rate.", **POSITIVE)
  lr_schedule: str = _option(
    "cosine",
    "Decay after the warm-up: constant, cosine, piecewise (x --lr_drop_factor at each of "
    "--lr_drops), or linear (to zero at the end).",
    choices=optimization.LR_SCHEDULES,
  )
  lr_drops: str = _option(
    "0.5,0.75",
    "--lr_schedule=piecewise: the fractions of the post-warm-up steps at which the rate drops "
    "(He et al.: 0.5,0.75; Wide ResNets: 0.3,0.6,0.8).",
  )
  lr_drop_factor: float = _option(
    0.1,
    "--lr_schedule=piecewise: what each drop multiplies the rate by, in (0, 1].",
    low=0,
    high=1,
    closed=(False, True),
  )
  warmup_epochs: float = _option(2.0, "Linear warm-up, in epochs.", **NON_NEGATIVE)
  weight_decay: float = _option(
    2e-4, "L2 on kernels: the loss gains this * sum(w^2) / 2 (gradient this * w).", **NON_NEGATIVE
  )
  decoupled_weight_decay: float = _option(
    0.0,
    "Decoupled (AdamW-style) decay of kernels: each step multiplies them by "
    "1 - learning rate * this. Use instead of --weight_decay, e.g. 0.1.",
    **NON_NEGATIVE,
  )
  batch_norm_weight_decay: bool = _option(
    False,
    "--weight_decay also on BatchNorm scales and offsets (kernels only by default; the "
    "paper's Caffe/Torch code decays them too); divided by --batch_norm_lr_scale, so that "
    "they decay as much per step.",
  )
  batch_norm_lr_scale: float = _option(
    1.0,
    "SGD: BatchNorm scales and offsets learn with this times the learning rate (airbench: 64).",
    **POSITIVE,
  )
  lookahead: bool = _option(
    False,
    "Lookahead on a moving average of the weights, as airbench (resnet/lookahead.py): from "
    "--lookahead_start_epochs on, every 5 steps the weights move to their average.",
  )
  lookahead_start_epochs: float = _option(3.0, "See --lookahead.", **NON_NEGATIVE)
  ema_decay: float = _option(
    0.0,
    "Decay in (0, 1) of a moving average of the weights and BatchNorm statistics "
    "(resnet/ema.py) that validation, the best checkpoint and the export use; 0: none.",
    **FRACTION,
  )
  label_smoothing: float = _option(0.0, "Label smoothing, in [0, 1).", **FRACTION)
  crop_padding: int = _option(
    4, "Augmentation: random translations of up to N pixels.", low=0, high=16, unit=" pixels"
  )
  flips: str = _option(
    "random",
    "Augmentation: flip each image at random every epoch, alternating (a random half "
    "first, then every image the other way round each epoch), or none.",
    choices=augment.FLIP_MODES,
  )
  # More augmentation and regularisation (docs/augmentation.md); 0, "" or False: off.
  cutout: int = _option(0, "Cutout: a square of this side (pixels) per image, mean colour.", low=0)
  randaugment: str = _option("", "RandAugment's N,M: N operations per image at magnitude M/30.")
  autoaugment: bool = _option(False, "AutoAugment's CIFAR-10 policy (Cubuk et al. 2019).")
  mixup: float = _option(0.0, "MixUp's alpha (lambda ~ Beta(alpha, alpha) per batch).", low=0)
  cutmix: float = _option(0.0, "CutMix's alpha; with --mixup, half the batches each.", low=0)
  validation_tta: str = _option(
    "none",
    "Test-time augmentation of validation, which selects the best checkpoint: flip (2 views) "
    "or flip_translate (6: flips and 1-pixel translations, as airbench).",
    choices=augment.TTA_MODES,
  )
  seed: int = _option(0, "Seed of initial weights, data order and augmentation.")
  deterministic: bool = _option(
    False,
    "Deterministic ops: the same seed gives bit-identical weights on the same hardware "
    "(slower on GPUs).",
  )
  lr_reference_batch_size: int = _option(
    0,
    "If > 0, the peak learning rate is --learning_rate x --batch_size / this (linear "
    "scaling when moving to more replicas).",
    **NON_NEGATIVE,
  )
  # --- Hardware ---
  strategy: str = _option(
    "auto",
    "auto: multi_worker if TF_CONFIG names several workers, mirrored over several GPUs, "
    "else the default device. multi_worker is configured by TF_CONFIG.",
    choices=distribute.STRATEGIES,
  )
  tpu: str = _option(
    "", "--strategy=tpu: TPU name or grpc:// address; '' = this TPU VM (or $TPU_NAME's TPU)."
  )
  precision: str = _option(
    "auto",
    "Keras dtype policy: mixed_float16 for GPUs with tensor cores (with loss scaling), "
    "mixed_bfloat16 for TPUs, Ampere+ GPUs and CPUs with AMX or AVX-512 BF16, float32. "
    "auto picks one of these for this machine (resnet/precision.py); a resumed run begun "
    "with a precision given keeps it.",
    choices=(*optimization.PRECISIONS, "auto"),
  )
  jit_compile: bool = _option(
    False,
    "Compile each replica's forward and backward pass with XLA; the optimizer runs outside "
    "(any strategy; under the mirrored ones not with --sync_batch_norm).",
  )
  sync_batch_norm: bool = _option(
    False, "BatchNorm statistics over the global batch instead of each replica's batch."
  )
  # --- Loop and outputs ---
  steps_per_epoch: int = _option(
    0,
    "Steps per epoch; 0 is a full pass over the training examples (smaller for smoke runs).",
    **NON_NEGATIVE,
  )
  log_every_steps: int = _option(50, "Steps between log lines.", **POSITIVE)
  checkpoint_every_steps: int = _option(
    0, "Steps between mid-epoch checkpoints; 0 saves only at the end of each epoch.", low=0
  )
  preemption_check_steps: int = _option(
    5,
    "Several workers: at most this many steps per call of the train steps, between which "
    "the workers check for a preemption (SIGTERM or Ctrl-C to any of them); all save within "
    "about 3 x this many steps of the signal (plus up to 1 s, and a validation under way). "
    "Larger: fewer host round trips.",
    **POSITIVE,
  )
  export: bool = _option(
    True, "When training ends, export the best model (SavedModel and .keras) to MODEL_DIR/export."
  )
  on_nan: str = _option(
    "stop",
    "On a non-finite training loss: stop, or recover (restore the latest checkpoint and "
    f"multiply the learning rate by --nan_lr_factor, at most {MAX_NAN_RECOVERIES} times).",
    choices=ON_NAN,
  )
  nan_lr_factor: float = _option(
    0.5, "See --on_nan; in (0, 1).", low=0, high=1, closed=(False, False)
  )

  @property
  def max_nan_recoveries(self):
    """Recoveries from a non-finite loss the run may make: 0 unless --on_nan=recover."""
    return MAX_NAN_RECOVERIES if self.on_nan == "recover" else 0

  @property
  def lr_drop_fractions(self):
    """--lr_drops as increasing floats in (0, 1).

    Raises:
      ConfigError: a value that is not a number in (0, 1), or not increasing.
    """
    try:
      fractions = [float(value) for value in self.lr_drops.split(",")]
    except ValueError:
      fractions = []
    increasing = fractions == sorted(set(fractions))
    if not (fractions and increasing and 0 < fractions[0] and fractions[-1] < 1):
      raise ConfigError(
        f"--lr_drops must be increasing fractions in (0, 1), e.g. 0.5,0.75; got {self.lr_drops!r}."
      )
    return tuple(fractions)

  @property
  def peak_learning_rate(self):
    """--learning_rate, scaled linearly with the global batch when
    --lr_reference_batch_size is set (Goyal et al. 2017: k times the batch,
    k times the rate, with a warm-up)."""
    if not self.lr_reference_batch_size:
      return self.learning_rate
    return self.learning_rate * self.batch_size / self.lr_reference_batch_size


# --- Flags: one per Config field, with its help and choices --------------------------


def define_flags(flag_values):
  """Defines --model_dir (default None) and a flag for every Config field in `flag_values`."""
  define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}
  for field in dataclasses.fields(Config):
    name, default, meta = field.name, field.default, field.metadata
    if meta["choices"] is not None:
      flags.DEFINE_enum(name, default, list(meta["choices"]), meta["help"], flag_values=flag_values)
    else:
      define.get(field.type, flags.DEFINE_string)(
        name, default, meta["help"], flag_values=flag_values
      )
  flags.DEFINE_string(
    "model_dir",
    None,
    "Directory for checkpoints, summaries, records. train.py's default: runs/<name of the "
    "first --flagfile> (runs/resnet20 for --flagfile=configs/resnet20.cfg), else "
    "runs/<--model>; the same command run again resumes the run there.",
    flag_values=flag_values,
  )


def config_from_flags(flag_values):
  """The Config whose fields are the parsed flags of the same names."""
  fields = dataclasses.fields(Config)
  return Config(**{field.name: flag_values[field.name].value for field in fields})
