"""The reference's published weights (akamaster/pytorch_resnet_cifar10): read, checked, and
set on our ResNet. resnet/tools/import_reference.py turns them into a model directory.

Its weights are legacy torch.save files, read without PyTorch (resnet/torch_format.py);
every tensor is used exactly once, with its shape, and the parameter count must be ours.
"""

import hashlib
import re
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf

from resnet import errors, torch_format

# PyTorch BatchNorm2d's tensors -> Keras BatchNormalization's variables.
BATCH_NORM_NAMES = {
  "weight": "gamma",
  "bias": "beta",
  "running_mean": "moving_mean",
  "running_var": "moving_variance",
}


class ImportReferenceError(errors.UserError, ValueError):
  """A source that cannot be imported, with a message for the user."""


def read_source(source):
  """The bytes of a URL (http, https) or a file (any tf.io.gfile path)."""
  try:
    if re.match(r"https?://", source):
      with urllib.request.urlopen(source, timeout=60) as response:
        return response.read()
    with tf.io.gfile.GFile(source, "rb") as file:
      return file.read()
  except (OSError, urllib.error.URLError, tf.errors.OpError) as error:
    reason = getattr(error, "reason", None) or errors.one_line_message(error)
    raise ImportReferenceError(
      f"Cannot read {source}: {reason}. Offline, pass a local copy with --checkpoint=PATH."
    ) from None


def check_published_hash(source, data):
  """The file's sha256 (hex). Where its name carries a hex (name-1234abcd.th), the sha256
  must start with it: the reference names its files so."""
  sha256 = hashlib.sha256(data).hexdigest()
  match = re.search(r"-([0-9a-f]{8,64})\.th$", source)
  if match and not sha256.startswith(match.group(1)):
    raise ImportReferenceError(
      f"{source} has sha256 {sha256[:16]}..., not the {match.group(1)} its name promises: "
      "a damaged or different file."
    )
  return sha256


def reference_state(source, data):
  """(the checkpoint's tensors by name without "module.", its best_prec1) of a .th file."""
  try:
    saved = torch_format.load(data)
  except torch_format.FormatError as error:
    raise ImportReferenceError(f"{source} is not a reference checkpoint: {error}.") from None
  state = saved.get("state_dict") if isinstance(saved, dict) else None
  if not isinstance(state, dict) or not all(
    isinstance(key, str) and key.startswith("module.") and isinstance(value, np.ndarray)
    for key, value in state.items()
  ):
    raise ImportReferenceError(
      f"{source} is not a reference checkpoint: no state_dict of module.* tensors."
    )
  state = {key.removeprefix("module."): value for key, value in state.items()}
  return state, saved.get("best_prec1")


def our_variable_name(reference_name):
  """The path of our ResNet's variable (below the model's name) for a reference tensor, and
  how its values are laid out: "conv" (OIHW, ours HWIO), "dense" (out x in) or None (same).

  conv1/bn1 -> stem_conv/stem_bn; layer{s}.{i}.(conv|bn){1,2} -> stage{s}_block{i+1}/...;
  linear -> classifier. None for a name our network has no variable for.
  """
  match = re.fullmatch(r"(?:layer(\d)\.(\d+)\.)?(conv[12]|bn[12]|linear)\.(\w+)", reference_name)
  stage, index, layer, tensor = match.groups() if match else (None, None, None, None)
  prefix = f"stage{stage}_block{int(index) + 1}/" if stage else ""
  if not stage:
    layer = {"conv1": "stem_conv", "bn1": "stem_bn", "linear": "classifier"}.get(layer)
  if layer is None:
    return None, None
  if "bn" in layer:
    return f"{prefix}{layer}/{BATCH_NORM_NAMES.get(tensor)}", None
  if tensor == "weight":
    return f"{prefix}{layer}/kernel", "dense" if layer == "classifier" else "conv"
  return f"{prefix}{layer}/{tensor}", None


def assign_reference_weights(model, state, source="the checkpoint"):
  """Sets every variable of `model` (a models.cifar_resnet.ResNet) from the reference's tensors.

  Every reference tensor must map to exactly one of our variables with the same shape
  (conv kernels OIHW -> HWIO, the classifier's transposed), and every variable of ours
  must be set; the trainable parameters (all tensors but BatchNorm's running statistics)
  must be as many as the model's. BatchNorm's num_batches_tracked (PyTorch >= 0.4.1; a
  count of updates, which Keras does not keep) is skipped.

  Raises:
    ImportReferenceError: another depth or network, naming the first difference.
  """
  state = {name: value for name, value in state.items() if "num_batches_tracked" not in name}
  ours = {variable.path.split("/", 1)[1]: variable for variable in model.weights}
  expected = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  found = sum(value.size for name, value in state.items() if "running_" not in name)
  if found != expected:
    raise ImportReferenceError(
      f"{source} holds {found:,} parameters, {model.name} has {expected:,}: it is not a "
      f"{model.name}."
    )
  unused = dict(ours)
  for name, value in state.items():
    path, layout = our_variable_name(name)
    variable = unused.pop(path, None)
    if variable is None:
      raise ImportReferenceError(f"{source} holds {name}, which {model.name} has no variable for.")
    if layout == "conv":
      value = value.transpose(2, 3, 1, 0)
    elif layout == "dense":
      value = value.T
    if tuple(value.shape) != tuple(variable.shape):
      raise ImportReferenceError(
        f"{source}'s {name} has shape {value.shape}, {model.name}'s {path} {variable.shape}."
      )
    variable.assign(value.astype(variable.dtype))
  if unused:
    raise ImportReferenceError(
      f"{source} has no value for {model.name}'s {', '.join(sorted(unused))}."
    )
