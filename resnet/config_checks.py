"""Checks of a training Config: each option against the choices and range declared beside
it in resnet/config.py, the combinations, and the model against the dataset."""

import dataclasses
import math

from data import augment
from resnet import models
from resnet.config import ConfigError


def _range_error(name, value, meta):
  """The message for a number outside its declared range, or None."""
  low, high, (low_closed, high_closed) = meta["low"], meta["high"], meta["closed"]
  too_low = low is not None and (value < low if low_closed else value <= low)
  too_high = high is not None and (value > high if high_closed else value >= high)
  if not (too_low or too_high or (isinstance(value, float) and math.isnan(value))):
    return None
  if high is None:
    return f"--{name} must {'not be negative' if low_closed else 'be positive'}, got {value}."
  interval = f"{'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
  return f"--{name} must be in {interval}{meta['unit']}, got {value}."


def validate(config):
  """Checks every option against its declared choices and range, and the combinations.

  Raises:
    ConfigError: the first problem found, naming the flag.
  """
  for field in dataclasses.fields(config):
    value, meta = getattr(config, field.name), field.metadata
    if meta["choices"] is not None and value not in meta["choices"]:
      raise ConfigError(
        f"--{field.name} must be one of {', '.join(meta['choices'])}, got {value!r}."
      )
    if meta["low"] is not None or meta["high"] is not None:
      message = _range_error(field.name, value, meta)
      if message:
        raise ConfigError(message)
  if config.nesterov and not (config.optimizer == "sgd" and config.momentum > 0):
    raise ConfigError("--nesterov needs --optimizer=sgd with a --momentum above 0.")
  # Options only some models have: (what models.Entry.takes calls it, in use?, the flag).
  for option, used, flag in (
    ("dropout", config.dropout > 0, "--dropout"),
    ("whitening", not config.whitening, "--nowhitening"),
  ):
    if used and option not in models.MODELS[config.model].takes:
      names = ", ".join(models.takers(option))
      raise ConfigError(f"{flag} applies to --model={names} only, not {config.model}.")
  if config.batch_norm_lr_scale != 1 and config.optimizer != "sgd":
    raise ConfigError(
      "--batch_norm_lr_scale needs --optimizer=sgd: Adam's steps do not grow with the gradient."
    )
  config.lr_drop_fractions  # noqa: B018 - raises ConfigError for a malformed --lr_drops.
  try:
    randaugment = augment.parse_randaugment(config.randaugment)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  if randaugment and config.autoaugment:
    raise ConfigError("--randaugment and --autoaugment are two policies: choose one.")


def check_model_input(config, image_shape, num_classes):
  """Checks that --model takes the dataset's images (height, width) and number of classes,
  and that --cutout's square fits in the images.

  Raises:
    ConfigError: it does not; the message names the model, what it takes and what it got,
      or the cutout and the image size.
  """
  problem = models.input_problem(config.model, tuple(image_shape), num_classes)
  if problem:
    raise ConfigError(problem)
  if config.cutout > min(image_shape):
    height, width = image_shape
    raise ConfigError(
      f"--cutout={config.cutout} is larger than the {height}x{width} images: at most "
      f"{min(image_shape)} pixels."
    )
