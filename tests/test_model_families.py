"""The CIFAR baselines' building blocks: symmetric stride-2 padding, WRN dropout (their
parameter counts, checkpoints and .keras files: tests/test_model.py)."""

import numpy as np
import pytest

from resnet import models
from resnet.models import common, preact_resnet


@pytest.mark.parametrize("size", [32, 15])
def test_a_symmetric_convolution_at_stride_2_is_centred_on_the_even_pixels(size):
  images = np.random.default_rng(0).normal(size=(2, size, size, 4)).astype(np.float32)
  layer = common.conv(4, 3, strides=2)
  assert isinstance(layer, common.SymmetricConv2D)
  layer.build(images.shape)
  kernel = np.zeros((3, 3, 4, 4), np.float32)
  kernel[1, 1] = np.eye(4)
  layer.kernel.assign(kernel)
  np.testing.assert_array_equal(layer(images).numpy(), images[:, ::2, ::2, :])
  # The projection shortcut (1x1, stride 2) samples the same pixels.
  projection = common.conv(4, 1, strides=2)
  projection.build(images.shape)
  projection.kernel.assign(np.eye(4, dtype=np.float32)[None, None])
  np.testing.assert_array_equal(projection(images).numpy(), images[:, ::2, ::2, :])


def test_wide_resnet_dropout_acts_in_training_only_and_bad_depths_are_refused():
  model = preact_resnet.wide_resnet(10, 1, dropout=0.5)
  images = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype(np.float32)
  model(images)
  assert model.stage1_block1.dropout.rate == 0.5
  np.testing.assert_array_equal(model(images).numpy(), model(images).numpy())
  with pytest.raises(ValueError, match="6n \\+ 4"):
    preact_resnet.wide_resnet(27, 10)


def test_kuangliu_s_families_start_from_pytorch_s_initial_weights_and_wide_resnets_from_he():
  # PyTorch's Conv2d and Linear defaults: uniform in +-1/sqrt(fan_in) (variance 1/(3 fan_in)),
  # the Linear's bias too. With He-normal (6x the variance) PreAct-ResNet-18 diverged on its
  # source's recipe. Keras' He-normal is truncated at 2 std and rescaled: std sqrt(2/fan_in).
  expected = {  # name: (kernel std x sqrt(fan in), bound of the classifier's bias)
    "preact_resnet18": (1 / np.sqrt(3), 512**-0.5),
    "resnet18": (1 / np.sqrt(3), 512**-0.5),
    "wrn16_8": (np.sqrt(2), 0.0),  # Zero bias: Keras' default.
  }
  for name, (scaled_std, bias_bound) in expected.items():
    model = models.create_model(name, 10)
    model(np.zeros((1, 32, 32, 3), np.float32))
    kernel = model.stage2_block1.conv2.kernel.numpy()  # A 3x3 convolution of stage 2.
    fan_in = np.prod(kernel.shape[:3])
    assert kernel.std() * np.sqrt(fan_in) == pytest.approx(scaled_std, rel=0.02), name
    largest_bias = np.abs(model.classifier.bias.numpy()).max()
    assert largest_bias <= bias_bound and largest_bias >= 0.5 * bias_bound, name
  with pytest.raises(ValueError, match="Unknown initialisation 'glorot'"):
    common.kernel_init("glorot")
