"""What the network families share: convolutions that pad as their references do, and
the keras.Model base whose get_config is written once."""

import keras
from keras import layers

from resnet import batch_norm


@keras.saving.register_keras_serializable(package="resnet")
class SymmetricConv2D(layers.Conv2D):
  """A Conv2D that pads (kernel_size - 1) / 2 zeros on every side, then convolves "valid".

  PyTorch's Conv2d(padding=1) and the papers' Torch/Caffe code pad a 3x3 convolution 1 pixel
  on every side at any stride; Keras' "same" at stride 2 pads 0 before and 1 after, which
  centres output pixel i on input pixel 2i + 1 instead of 2i, one pixel off a stride-2
  shortcut. Variables and their names are those of a Conv2D.
  """

  def __init__(self, filters, kernel_size, **kwargs):
    kwargs["padding"] = "valid"
    super().__init__(filters, kernel_size, **kwargs)

  def call(self, inputs):
    pad_h, pad_w = ((size - 1) // 2 for size in self.kernel_size)
    padded = keras.ops.pad(inputs, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    return super().call(padded)


# A family's initial weights, as its source draws them: "he_normal" (Keras' He-normal, fan in,
# for convolutions; Keras' Glorot-uniform kernel and zero bias for the classifier) or "torch"
# (PyTorch's defaults for Conv2d and Linear, for sources that keep them).
INITS = ("he_normal", "torch")


def kernel_init(init):
  """The convolutions' kernel initializer of `init` (one of INITS).

  "torch" is PyTorch's kaiming_uniform_(a=sqrt(5)): uniform in +-1/sqrt(fan_in), a variance
  of 1/(3 fan_in), a sixth of He-normal's 2/fan_in.
  """
  if init not in INITS:
    raise ValueError(f"Unknown initialisation {init!r}; choose one of {', '.join(INITS)}.")
  if init == "torch":
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")
  return "he_normal"


def classifier(num_classes, init, fan_in):
  """The float32 dense classifier; with init "torch" as PyTorch's nn.Linear (kernel as
  kernel_init("torch"), bias uniform in +-1/sqrt(fan_in))."""
  if init == "he_normal":
    return layers.Dense(num_classes, dtype="float32", name="classifier")
  bound = fan_in**-0.5
  return layers.Dense(
    num_classes,
    kernel_initializer=kernel_init(init),  # Refuses a name not in INITS.
    bias_initializer=keras.initializers.RandomUniform(-bound, bound),
    dtype="float32",
    name="classifier",
  )


def conv(
  filters, kernel_size, strides=1, dtype=None, name=None, use_bias=False, kernel_init="he_normal"
):
  """A bias-free convolution (He-normal unless `kernel_init` says otherwise) that pads like
  PyTorch's Conv2d(padding=k // 2).

  At stride 1 with an odd kernel, Keras' "same" already pads symmetrically (and costs no
  separate pad op); a 1x1 kernel at stride 2 needs no padding ("valid" samples 2i); a
  larger kernel at stride 2 pads explicitly (SymmetricConv2D).
  """
  arguments = dict(
    strides=strides, use_bias=use_bias, kernel_initializer=kernel_init, dtype=dtype, name=name
  )
  if strides == 1:
    return layers.Conv2D(filters, kernel_size, padding="same", **arguments)
  if kernel_size == 1:
    return layers.Conv2D(filters, kernel_size, padding="valid", **arguments)
  return SymmetricConv2D(filters, kernel_size, **arguments)


def norm(model_options, dtype, name):
  """The family's BatchNorm: fused or stock, per replica or synchronised (model_options)."""
  return batch_norm.create(
    model_options["sync_batch_norm"], model_options["fused_batch_norm"], dtype, name=name
  )


class Network(keras.Model):
  """Base of the registered networks: [B, H, W, 3] images -> [B, num_classes] float32 logits.

  A subclass passes its constructor arguments to `super().__init__` as `options`;
  get_config returns them, so a .keras file rebuilds the same network. `prepare` is the
  data-dependent set-up some networks need before training (airbench's whitening); the
  others have none.
  """

  def __init__(self, options, **kwargs):
    super().__init__(**kwargs)
    self.options = dict(options)
    self.num_classes = options["num_classes"]

  def get_config(self):
    return {**super().get_config(), **self.options}

  def prepare(self, train_images, normalize):  # noqa: B027 - a no-op unless overridden.
    """Sets up the network from the run's training split before training; none here.

    Args:
      train_images: uint8 [N, H, W, 3], the run's training split.
      normalize: uint8 images -> the float32 images the model sees.
    """
