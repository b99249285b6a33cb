"""Every registered network: parameter counts against their sources, complete checkpoints
and .keras files, outputs, FLOPs, and what each family adds."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnet import models
from resnet.models import airbench, cifar_resnet
from tests.test_padding import asymmetric_convolutions

# Trainable parameters at 10 classes, each against its source:
# - He et al. 2016, Table 6 (0.27M ... 1.7M), option-A shortcuts; resnet8 is ours (n = 1).
# - Page's ResNet-9 (6.57M at widths 64-512); resnet9_half a quarter of its convolutions.
# - airbench94: its PyTorch code's trained parameters (the whitening kernel is frozen).
# - kuangliu/pytorch-cifar's ResNet18/34/50 and PreActResNet18, as PyTorch counts them.
# - Wide ResNets: the authors' Torch code and xternalz's port (36.5M for WRN-28-10); WRN-10-1
#   is ours, for tests.
EXPECTED_PARAMETERS = {
  "resnet8": 75_290,
  "resnet20": 269_722,
  "resnet32": 464_154,
  "resnet44": 658_586,
  "resnet56": 853_018,
  "resnet110": 1_727_962,
  "resnet9": 6_573_130,
  "resnet9_half": 1_646_122,
  "airbench": 1_971_352,
  "resnet18": 11_173_962,
  "resnet34": 21_282_122,
  "resnet50": 23_520_842,
  "preact_resnet18": 11_171_146,
  "wrn10_1": 77_850,
  "wrn16_8": 10_961_370,
  "wrn28_10": 36_479_194,
}


def test_every_registered_model_has_a_pinned_count_and_a_one_line_description():
  assert set(EXPECTED_PARAMETERS) == set(models.MODELS)
  lines = models.describe().splitlines()
  assert [line.split()[0] for line in lines] == list(models.MODELS)
  # absl's --helpfull indents help by 4 and wraps at 80 columns: one line each.
  assert all(len(line) <= 76 and line.split(None, 1)[1] for line in lines)


# One model per class and block kind round-trips a .keras file; the deeper He et al. and
# wide ones are the same classes (and would add a minute to the suite).
ROUND_TRIPPED = (
  "resnet20", "resnet9_half", "airbench", "resnet18", "resnet50", "preact_resnet18", "wrn10_1"
)  # fmt: skip


@pytest.mark.parametrize("name", list(models.MODELS))
def test_each_model_counts_as_its_source_and_round_trips_checkpoints_and_keras_files(
  name, tmp_path
):
  model = models.create_model(name)
  assert model.name == name
  assert models.count_parameters(model) == EXPECTED_PARAMETERS[name]
  assert asymmetric_convolutions(model) == []  # As the paper's code pads (tests/test_padding.py).
  # Every variable is in the checkpoint's object graph (Keras 3 layers in a plain list
  # would be silently left out).
  checkpoint = tf.train.Checkpoint(model=model)
  checkpointed = {id(node) for node in tf.train.TrackableView(checkpoint).descendants()}
  assert all(id(variable) in checkpointed for variable in model.variables)
  if name not in ROUND_TRIPPED:
    return
  images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  for variable in model.variables:  # Not the initial values, so a missed one shows.
    variable.assign(variable + tf.random.normal(variable.shape, stddev=0.01) + 0.01)
  expected = model(images, training=False).numpy()
  model.save(tmp_path / "model.keras")  # resnet/export.py writes .keras files.
  loaded = keras.saving.load_model(tmp_path / "model.keras")
  assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
  np.testing.assert_allclose(loaded(images, training=False).numpy(), expected, atol=1e-5)


def test_a_checkpoint_restores_every_variable(tmp_path):
  model = models.create_model("resnet9_half", num_classes=3, precision="mixed_bfloat16")
  images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[1, 2])
  model(images, training=True)  # Moves the BN statistics away from their initial values.
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("model/")]
  assert len(saved) == len(model.variables) == 8 * 5 + 2  # Kernel + 4 BN variables per block.
  restored = models.create_model("resnet9_half", num_classes=3, precision="mixed_bfloat16")
  tf.train.Checkpoint(model=restored).read(path).assert_existing_objects_matched()
  np.testing.assert_array_equal(restored(images), model(images))


def test_resnet20_has_19_convolutions_and_resnet9_8():
  for name, convolutions in (("resnet20", 19), ("resnet9_half", 8)):
    kernels = [v for v in models.create_model(name).trainable_variables if v.name == "kernel"]
    assert len(kernels) == convolutions + 1  # Plus the classifier.


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("size", [32, 7])
def test_option_a_shortcut_subsamples_and_zero_pads_exactly(dtype, size):
  images = np.random.default_rng(0).normal(size=(2, size, size, 16)).astype(np.float32)
  inputs = tf.cast(images, dtype)
  with tf.GradientTape() as tape:
    tape.watch(inputs)
    shortcut = cifar_resnet.option_a_shortcut(inputs, filters=32, strides=2)
    loss = tf.reduce_sum(tf.cast(shortcut, tf.float32) * np.arange(32, dtype=np.float32))
  subsampled = tf.cast(inputs, tf.float32).numpy()[:, ::2, ::2, :]
  expected = np.pad(subsampled, [(0, 0), (0, 0), (0, 0), (8, 8)])
  assert shortcut.dtype == dtype and shortcut.shape == expected.shape
  np.testing.assert_array_equal(tf.cast(shortcut, tf.float32).numpy(), expected)
  # The gradient reaches the subsampled pixels only, with the weight of their channel.
  expected_gradient = np.zeros(images.shape, np.float32)
  expected_gradient[:, ::2, ::2, :] = np.arange(8, 24, dtype=np.float32)
  np.testing.assert_array_equal(tf.cast(tape.gradient(loss, inputs), tf.float32), expected_gradient)


def test_forward_flops_match_the_known_count():
  # ResNet-20: 40.55M multiply-adds per 32x32 image (conv layers + classifier).
  assert models.forward_flops_per_image(models.create_model("resnet20")) == 81_102_080


def test_forward_flops_of_resnet9_count_each_convolution_at_its_resolution():
  # Page's ResNet-9, by hand: prep 3->64 at 32x32 (3.54M FLOPs); layer1 64->128
  # at 32x32 (pooled after the convolution), two 128->128 at 16x16, layer2
  # 128->256 at 16x16, layer3 256->512 at 8x8, two 512->512 at 4x4 (151.0M
  # each); classifier 512->10.
  big_convolution = 2 * 32 * 32 * 9 * 64 * 128
  expected = 2 * 32 * 32 * 9 * 3 * 64 + 5 * big_convolution + 2 * 512 * 10
  assert models.forward_flops_per_image(models.create_model("resnet9")) == expected


def test_forward_flops_of_airbench_count_the_whitening_and_each_group_at_its_resolution():
  # By hand: whitening 3->24 (2x2) at 31x31; group1 24->64 at 31x31, 64->64 at 15x15;
  # group2 64->256 at 15x15, 256->256 at 7x7; group3 256->256 at 7x7 and 3x3; 256->10.
  by_resolution = [
    (31, 2 * 2 * 3 * 24),
    (31, 9 * 24 * 64),
    (15, 9 * 64 * 64),
    (15, 9 * 64 * 256),
    (7, 9 * 256 * 256),
    (7, 9 * 256 * 256),
    (3, 9 * 256 * 256),
  ]
  expected = sum(2 * size * size * weights for size, weights in by_resolution) + 2 * 256 * 10
  assert expected == 236_294_720
  assert models.forward_flops_per_image(models.create_model("airbench")) == expected


def test_airbench_parameter_count_and_identity_initialised_convolutions():
  model = models.create_model("airbench")
  assert models.count_parameters(model) == 1_971_352  # The whitening kernel is frozen.
  moving_statistics = 2 * (2 * 64 + 4 * 256)  # Mean and variance per BatchNorm channel.
  frozen = sum(int(np.prod(v.shape)) for v in model.non_trainable_variables)
  assert frozen == 2 * 2 * 3 * 24 + moving_statistics
  assert {v.name for v in model.trainable_variables} == {"kernel", "beta", "bias"}  # No gamma.
  # Each convolution's first C_in filters pass their input channel through (Dirac).
  kernel = model.group2.conv1.kernel.numpy()  # [3, 3, 64, 256]
  identity = np.zeros([3, 3, 64, 64])
  identity[1, 1, np.arange(64), np.arange(64)] = 1
  np.testing.assert_array_equal(kernel[..., :64], identity)
  assert 0 < np.abs(kernel[..., 64:]).max() <= 1 / np.sqrt(9 * 64)


def test_the_whitening_kernel_decorrelates_2x2_patches():
  # Correlated channels and neighbouring pixels in, unit-variance uncorrelated
  # directions out: the first 12 filters' outputs have the covariance
  # eigenvalue / (eigenvalue + epsilon), the other 12 are their negatives.
  rng = np.random.default_rng(0)
  smooth = rng.normal(size=(200, 33, 33, 1))
  images = smooth[:, 1:, 1:] + 0.5 * smooth[:, :-1, :-1] + 0.2 * rng.normal(size=(200, 32, 32, 3))
  kernel = airbench.whitening_kernel(images)
  assert kernel.shape == (2, 2, 3, 24) and kernel.dtype == np.float32
  outputs = tf.nn.conv2d(images.astype(np.float32), kernel, 1, "VALID").numpy().reshape(-1, 24)
  covariance = outputs[:, :12].T @ outputs[:, :12] / len(outputs)
  patches = np.stack(
    [images[:, i : i + 31, j : j + 31] for i in (0, 1) for j in (0, 1)], axis=3
  ).reshape(-1, 12)
  eigenvalues = np.linalg.eigvalsh(patches.T @ patches / len(patches))[::-1]
  np.testing.assert_allclose(
    covariance, np.diag(eigenvalues / (eigenvalues + airbench.WHITENING_EPSILON)), atol=1e-3
  )
  np.testing.assert_array_equal(outputs[:, 12:], -outputs[:, :12])
  # Each direction's sign is fixed (largest component positive): the same kernel on every
  # worker, whatever sign its LAPACK gives an eigenvector.
  flat = kernel.reshape(12, 24)[:, :12]
  assert np.all(flat[np.argmax(np.abs(flat), axis=0), np.arange(12)] > 0)


def test_logits_shape_and_dtype():
  model = models.create_model("resnet8", num_classes=7)
  logits = model(tf.zeros([3, 32, 32, 3]), training=False)
  assert logits.shape == (3, 7)
  assert logits.dtype == tf.float32


def test_bad_names_depths_and_dropout_are_refused():
  with pytest.raises(
    ValueError, match="Unknown model 'resnet19'; choose one of resnet8, .*wrn28_10"
  ):
    models.create_model("resnet19")
  with pytest.raises(ValueError, match="6n \\+ 2"):
    cifar_resnet.ResNet(21)
  with pytest.raises(ValueError, match="resnet20 has no dropout; these do: wrn10_1, wrn16_8"):
    models.create_model("resnet20", dropout=0.3)
  assert models.create_model("wrn10_1", dropout=0.3).stage1_block1.dropout.rate == 0.3


@pytest.mark.parametrize(
  "name, shape, classes, problem",
  [
    ("airbench", (24, 24), 10, "takes images of 25 to 48 pixels a side; the dataset's are 24x24"),
    ("airbench", (49, 49), 10, "25 to 48 pixels"),
    ("resnet9", (32, 7), 10, "at least 8 pixels a side; the dataset's are 32x7"),
    ("resnet20", (32, 32), 1, "classifies into 2 or more classes; the dataset has 1"),
    ("wrn16_8", (4, 4), 100, None),
  ],
)
def test_models_say_which_images_and_classes_they_take(name, shape, classes, problem):
  found = models.input_problem(name, shape, classes)
  assert found == problem if problem is None else problem in found
  if name == "airbench":  # The bounds are where its final 3x3 pooling leaves one pixel.
    for size in (25, 48):
      model = models.create_model(name, image_size=size)
      assert model(np.zeros((1, size, size, 3), np.float32)).shape == (1, 10)
