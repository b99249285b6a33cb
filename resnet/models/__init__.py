"""Every network, by name: MODELS maps a --model name to how to build it.

One file per family (cifar_resnet, resnet9, airbench, cifar_stem_resnet, preact_resnet); each
network is a common.Network (get_config written once, `prepare` for data-dependent set-up).
Adding a model is a builder in its family's file and one entry below: train.py, eval.py, the
run record, the export and the tools all go through create_model.
"""

import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf

from resnet.models import airbench, cifar_resnet, cifar_stem_resnet, preact_resnet, resnet9

# create_model's options that only some families take; an Entry lists those it takes.
# "whitening" is airbench's `prepare`, which --nowhitening skips.
OPTIONS = ("stride2_padding", "dropout", "whitening")


@dataclasses.dataclass(frozen=True)
class Entry:
  """How to build one registered model.

  `build(num_classes=, sync_batch_norm=, fused_batch_norm=, dtype=, name=, **options)`
  returns an unbuilt common.Network, `options` being those of OPTIONS named in `takes`.
  Images of `min_image_size` to `max_image_size` pixels a side (None: no bound) fit it.
  """

  build: object
  description: str
  takes: tuple = ()
  min_image_size: int = 1
  max_image_size: int | None = None


def _he(depth, parameters):
  return Entry(
    functools.partial(cifar_resnet.ResNet, depth),
    f"CIFAR ResNet-{depth} (He et al. 2016), {parameters}",
    takes=("stride2_padding",),
    min_image_size=cifar_resnet.MIN_IMAGE_SIZE,
  )


def _resnet9(name, description):
  build = functools.partial(resnet9.ResNet9, resnet9.WIDTHS[name])
  return Entry(build, description, min_image_size=resnet9.MIN_IMAGE_SIZE)


def _cifar_stem(variant, description):
  build = functools.partial(cifar_stem_resnet.CifarStemResNet, variant)
  return Entry(build, description, min_image_size=cifar_stem_resnet.MIN_IMAGE_SIZE)


def _wide(depth, widen_factor, description):
  build = functools.partial(preact_resnet.wide_resnet, depth, widen_factor)
  return Entry(build, description, ("dropout",), preact_resnet.WIDE_MIN_IMAGE_SIZE)


# Descriptions fit on one line of --helpfull (tested): what it is, its source, its size.
MODELS = {
  "resnet8": _he(8, "75K parameters; for tests"),
  "resnet20": _he(20, "0.27M parameters"),
  "resnet32": _he(32, "0.46M parameters"),
  "resnet44": _he(44, "0.66M parameters"),
  "resnet56": _he(56, "0.85M parameters"),
  "resnet110": _he(110, "1.7M parameters"),
  "resnet9": _resnet9("resnet9", "ResNet-9 (Page 2018, DAWNBench), 6.6M parameters"),
  "resnet9_half": _resnet9("resnet9_half", "ResNet-9 at half its widths, 1.6M parameters"),
  "airbench": Entry(
    functools.partial(airbench.Airbench, airbench.WIDTHS),
    "airbench94's network (Jordan 2024), 2.0M parameters",
    takes=("whitening",),
    min_image_size=airbench.MIN_IMAGE_SIZE,
    max_image_size=airbench.MAX_IMAGE_SIZE,
  ),
  "resnet18": _cifar_stem("resnet18", "ResNet-18, CIFAR stem (kuangliu/pytorch-cifar), 11.2M"),
  "resnet34": _cifar_stem("resnet34", "ResNet-34, CIFAR stem (kuangliu/pytorch-cifar), 21.3M"),
  "resnet50": _cifar_stem("resnet50", "ResNet-50, CIFAR stem (kuangliu/pytorch-cifar), 23.5M"),
  "preact_resnet18": Entry(
    preact_resnet.preact_resnet18,
    "PreAct-ResNet-18 (He et al. 2016b; kuangliu), 11.2M",
    min_image_size=preact_resnet.PREACT_MIN_IMAGE_SIZE,
  ),
  "wrn10_1": _wide(10, 1, "Wide ResNet WRN-10-1, 78K parameters; for tests"),
  "wrn16_8": _wide(16, 8, "Wide ResNet WRN-16-8 (Zagoruyko & Komodakis), 11.0M"),
  "wrn28_10": _wide(28, 10, "Wide ResNet WRN-28-10 (Zagoruyko & Komodakis), 36.5M"),
}
NAMES = tuple(MODELS)


def describe():
  """One line per registered model, "name: description", for --help texts."""
  width = max(len(name) for name in MODELS)
  return "\n".join(f"{name:<{width}}  {entry.description}" for name, entry in MODELS.items())


def lookup(name):
  """The Entry of `name`.

  Raises:
    ValueError: an unregistered name; the message lists the registered ones.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODELS)}.")
  return MODELS[name]


def takers(option):
  """The registered names whose Entry takes `option` (one of OPTIONS)."""
  return [name for name, entry in MODELS.items() if option in entry.takes]


def input_problem(name, image_shape, num_classes):
  """Why model `name` cannot take images of `image_shape` (height, width) or `num_classes`
  classes, as a sentence naming both; None when it can."""
  entry = lookup(name)
  low, high = entry.min_image_size, entry.max_image_size
  if any(size < low or (high is not None and size > high) for size in image_shape):
    sizes = f"{low} to {high} pixels" if high else f"at least {low} pixels"
    shape = "x".join(str(size) for size in image_shape)
    return f"--model={name} takes images of {sizes} a side; the dataset's are {shape}."
  if num_classes < 2:
    return f"--model={name} classifies into 2 or more classes; the dataset has {num_classes}."
  return None


def create_model(
  name,
  num_classes=10,
  precision="float32",
  sync_batch_norm=False,
  fused_batch_norm=True,
  stride2_padding="symmetric",
  dropout=0.0,
  image_size=32,
):
  """Builds the registered model `name` with its weights created.

  Args:
    name: a key of MODELS.
    num_classes: classifier outputs.
    precision: the Keras dtype policy of its layers (float32 logits whatever it is).
    sync_batch_norm: BatchNorm statistics over all replicas' batches.
    fused_batch_norm: False uses stock keras.layers.BatchNormalization (the same variables
      and results, slower; for comparisons).
    stride2_padding: cifar_resnet.STRIDE2_PADDINGS, for the models that take it (the
      ResNet-6n+2); the others pad symmetrically or downsample by pooling.
    dropout: rate for the models that take it (the Wide ResNets); 0 for the others.
    image_size: the images the weights are created for: pixels a side, or (height, width)
      (every model pools globally, so its weights fit any size input_problem accepts).

  Returns:
    A common.Network named `name`.

  Raises:
    ValueError: an unknown name, or dropout on a model without it.
  """
  entry = lookup(name)
  if dropout and "dropout" not in entry.takes:
    raise ValueError(f"{name} has no dropout; these do: {', '.join(takers('dropout'))}.")
  given = {"stride2_padding": stride2_padding, "dropout": dropout}
  model = entry.build(
    num_classes=num_classes,
    sync_batch_norm=sync_batch_norm,
    fused_batch_norm=fused_batch_norm,
    dtype=precision,
    name=name,
    **{option: value for option, value in given.items() if option in entry.takes},
  )
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  model(keras.ops.zeros((1, height, width, 3)))  # A subclassed model has no build().
  return model


def count_parameters(model):
  """Trainable parameters of `model`, as the papers count them (BatchNorm's moving statistics
  and airbench's frozen whitening kernel left out)."""
  return sum(int(np.prod(variable.shape)) for variable in model.trainable_variables)


def forward_flops_per_image(model, image_size=32):
  """2 x multiply-adds of one forward pass of one image: convolutions and dense layers.

  Read off the model's traced graph (each Conv2D and MatMul op with its shapes), so it
  holds for every registered model; BatchNorm, activations, pooling and the shortcuts
  (under 1%) are left out. Training costs about 3x this per image (forward, and backward
  for activations and weights).
  """
  graph = (
    tf.function(lambda images: model(images, training=False))
    .get_concrete_function(tf.TensorSpec([1, image_size, image_size, 3], tf.float32))
    .graph
  )
  flops = 0
  for op in graph.get_operations():
    if op.type == "Conv2D":  # Output [1, H, W, C_out]; kernel [kh, kw, C_in, C_out].
      _, height, width, _ = op.outputs[0].shape
      flops += 2 * height * width * int(np.prod(op.inputs[1].shape))
    elif op.type == "MatMul":  # One image: kernel [C_in, C_out].
      flops += 2 * int(np.prod(op.inputs[1].shape))
  return flops


@functools.cache
def forward_flops(name):
  """forward_flops_per_image of the model called `name` at 32x32 (built once per process)."""
  return forward_flops_per_image(create_model(name))


def training_flops(name, images):
  """FLOPs of training the model called `name` on `images` 32x32 images: 3 x forward FLOPs
  each (the forward pass, and the backward pass for activations and for weights)."""
  return 3 * forward_flops(name) * images
