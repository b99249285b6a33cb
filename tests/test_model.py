"""The network: the paper's parameter counts, outputs, and complete checkpoints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from resnet import airbench, batch_norm
from resnet import model as model_lib

# Trainable parameters with option-A (parameter-free) shortcuts. The paper's
# Table 6 rounds them to 0.27M, 0.46M, 0.66M, 0.85M and 1.7M.
EXPECTED_PARAMETERS = {
  "resnet8": 75_290,
  "resnet20": 269_722,
  "resnet32": 464_154,
  "resnet44": 658_586,
  "resnet56": 853_018,
  "resnet110": 1_727_962,
}


def count_parameters(variables):
  return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_parameter_counts_match_the_paper(name):
  model = model_lib.create_model(name)
  assert count_parameters(model.trainable_variables) == EXPECTED_PARAMETERS[name]
  depth = model_lib.DEPTHS[name]
  convolutions = [v for v in model.trainable_variables if v.name == "kernel"]
  assert len(convolutions) == depth - 1 + 1  # depth - 1 convolutions plus the dense layer.


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("size", [32, 7])
def test_option_a_shortcut_subsamples_and_zero_pads_exactly(dtype, size):
  images = np.random.default_rng(0).normal(size=(2, size, size, 16)).astype(np.float32)
  inputs = tf.cast(images, dtype)
  with tf.GradientTape() as tape:
    tape.watch(inputs)
    shortcut = model_lib.option_a_shortcut(inputs, filters=32, strides=2)
    loss = tf.reduce_sum(tf.cast(shortcut, tf.float32) * np.arange(32, dtype=np.float32))
  subsampled = tf.cast(inputs, tf.float32).numpy()[:, ::2, ::2, :]
  expected = np.pad(subsampled, [(0, 0), (0, 0), (0, 0), (8, 8)])
  assert shortcut.dtype == dtype and shortcut.shape == expected.shape
  np.testing.assert_array_equal(tf.cast(shortcut, tf.float32).numpy(), expected)
  # The gradient reaches the subsampled pixels only, with the weight of their channel.
  expected_gradient = np.zeros(images.shape, np.float32)
  expected_gradient[:, ::2, ::2, :] = np.arange(8, 24, dtype=np.float32)
  np.testing.assert_array_equal(tf.cast(tape.gradient(loss, inputs), tf.float32), expected_gradient)


# Page's ResNet-9: 6.57M parameters at his widths (64, 128, 256, 512); the
# half-width CPU variant has a quarter of the convolution weights.
RESNET9_PARAMETERS = {"resnet9": 6_573_130, "resnet9_half": 1_646_122}


@pytest.mark.parametrize("name", sorted(RESNET9_PARAMETERS))
def test_resnet9_parameter_counts(name):
  model = model_lib.create_model(name)
  assert count_parameters(model.trainable_variables) == RESNET9_PARAMETERS[name]
  convolutions = [v for v in model.trainable_variables if v.name == "kernel"]
  assert len(convolutions) == 8 + 1  # Eight convolutions plus the classifier.


def test_forward_flops_match_the_known_count():
  # ResNet-20: 40.55M multiply-adds per 32x32 image (conv layers + classifier).
  assert model_lib.forward_flops_per_image(model_lib.create_model("resnet20")) == 81_102_080


def test_forward_flops_of_resnet9_count_each_convolution_at_its_resolution():
  # Page's ResNet-9, by hand: prep 3->64 at 32x32 (3.54M FLOPs); layer1 64->128
  # at 32x32 (pooled after the convolution), two 128->128 at 16x16, layer2
  # 128->256 at 16x16, layer3 256->512 at 8x8, two 512->512 at 4x4 (151.0M
  # each); classifier 512->10.
  big_convolution = 2 * 32 * 32 * 9 * 64 * 128
  expected = 2 * 32 * 32 * 9 * 3 * 64 + 5 * big_convolution + 2 * 512 * 10
  assert model_lib.forward_flops_per_image(model_lib.create_model("resnet9")) == expected


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
  assert model_lib.forward_flops_per_image(model_lib.create_model("airbench")) == expected


def test_airbench_parameter_count_and_identity_initialised_convolutions():
  model = model_lib.create_model("airbench")
  assert count_parameters(model.trainable_variables) == 1_971_352  # Whitening kernel frozen.
  moving_statistics = 2 * (2 * 64 + 4 * 256)  # Mean and variance per BatchNorm channel.
  assert count_parameters(model.non_trainable_variables) == 2 * 2 * 3 * 24 + moving_statistics
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


def test_resnet9_checkpoint_holds_every_variable_and_restores_the_logits(tmp_path):
  model = model_lib.create_model("resnet9_half", num_classes=3)
  images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[1, 2])
  model(images, training=True)  # Moves the BN statistics away from their initial values.
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("model/")]
  assert len(saved) == len(model.variables) == 8 * 5 + 2  # Kernel + 4 BN variables per block.

  restored = model_lib.create_model("resnet9_half", num_classes=3)
  tf.train.Checkpoint(model=restored).read(path).assert_existing_objects_matched()
  np.testing.assert_array_equal(restored(images), model(images))


def test_logits_shape_and_dtype():
  model = model_lib.create_model("resnet8", num_classes=7)
  logits = model(tf.zeros([3, 32, 32, 3]), training=False)
  assert logits.shape == (3, 7)
  assert logits.dtype == tf.float32


def test_bad_names_and_depths_are_refused():
  with pytest.raises(ValueError, match="Unknown model 'resnet18'"):
    model_lib.create_model("resnet18")
  with pytest.raises(ValueError, match="6n \\+ 2"):
    model_lib.create_model(21)


def test_checkpoint_holds_every_variable(tmp_path):
  # Keras 3 layers kept in a Python list are invisible to tf.train.Checkpoint;
  # this fails if any block's weights are left out of the checkpoint.
  model = model_lib.create_model("resnet20")
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("model/")]
  assert len(saved) == len(model.variables) == 97

  restored = model_lib.create_model("resnet20")
  tf.train.Checkpoint(model=restored).read(path).assert_existing_objects_matched()
  for original, copy in zip(model.variables, restored.variables, strict=True):
    np.testing.assert_array_equal(original.numpy(), copy.numpy())


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_fused_batch_norm_equals_keras_batch_norm(policy):
  # Same outputs, same moving statistics (biased variance) after two training
  # calls, same inference outputs: checkpoints of either layer are interchangeable.
  import keras

  images = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 4, 4, 5)).astype(np.float32)
  reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy)
  fused = batch_norm.FusedBatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy)
  for layer in (reference, fused):
    layer.build(images.shape)
    layer.gamma.assign(np.linspace(0.5, 1.5, 5))
    layer.beta.assign(np.linspace(-1.0, 1.0, 5))
  tolerance = 1e-5 if policy == "float32" else 2e-2
  for _ in range(2):
    expected, actual = reference(images, training=True), fused(images, training=True)
    assert actual.dtype == expected.dtype
    np.testing.assert_allclose(np.float32(actual), np.float32(expected), atol=tolerance)
  for name in ("moving_mean", "moving_variance"):
    np.testing.assert_allclose(
      getattr(fused, name).numpy(), getattr(reference, name).numpy(), rtol=1e-5
    )
  np.testing.assert_allclose(
    np.float32(fused(images, training=False)),
    np.float32(reference(images, training=False)),
    atol=tolerance,
  )
  # Gradients through the fused kernel (inputs, gamma, beta) equal Keras'.
  if policy == "float32":
    images = tf.constant(images)
    gradients = []
    for layer in (reference, fused):
      with tf.GradientTape() as tape:
        tape.watch(images)
        loss = tf.reduce_sum(tf.square(layer(images, training=True)) * tf.range(5.0))
      gradients.append(tape.gradient(loss, [images, layer.gamma, layer.beta]))
    for expected, actual in zip(*gradients, strict=True):
      np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_fused_and_stock_batch_norm_models_share_checkpoints_and_outputs(tmp_path):
  fused = model_lib.create_model("resnet8")
  stock = model_lib.create_model("resnet8", fused_batch_norm=False)
  assert isinstance(fused.stem_bn, batch_norm.FusedBatchNormalization)
  assert not isinstance(stock.stem_bn, batch_norm.FusedBatchNormalization)
  path = tf.train.Checkpoint(model=fused).write(str(tmp_path / "ckpt"))
  tf.train.Checkpoint(model=stock).read(path).assert_existing_objects_matched()
  images = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
  for training in (True, False):
    np.testing.assert_allclose(
      stock(images, training=training).numpy(),
      fused(images, training=training).numpy(),
      atol=1e-4,
    )


@pytest.mark.parametrize(
  "kwargs", [{"axis": 1}, {"axis": 1, "scale": False}, {"scale": False}, {"center": False}]
)
def test_fused_batch_norm_equals_keras_without_scale_or_channels_last(kwargs):
  # A scale-less layer (airbench's) runs the fused kernel with a scale of ones;
  # channels-first and offset-less layers go through Keras' own implementation.
  images = np.random.default_rng(2).normal(1.0, 2.0, size=(4, 3, 5, 5)).astype(np.float32)
  reference = keras.layers.BatchNormalization(**kwargs)
  fused = batch_norm.FusedBatchNormalization(**kwargs)
  for training in (True, False):
    np.testing.assert_allclose(
      fused(images, training=training).numpy(),
      reference(images, training=training).numpy(),
      atol=1e-5,
    )


@pytest.mark.parametrize(
  "name, widths", [("resnet9_half", (32, 64, 128, 256)), ("airbench", airbench.WIDTHS)]
)
def test_resnet9_and_airbench_save_and_load_as_keras_files(tmp_path, name, widths):
  # resnet/export.py writes .keras files; the models must rebuild from their configs.
  model = model_lib.create_model(name, num_classes=4, precision="mixed_bfloat16")
  path = str(tmp_path / "model.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.widths == widths
  assert loaded.dtype_policy.name == "mixed_bfloat16"
  images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[3, 4])
  np.testing.assert_array_equal(loaded(images), model(images))
