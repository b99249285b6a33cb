"""The augmentation menu: Cutout, AutoAugment and RandAugment, MixUp and CutMix, each
operation exact, and their plans. Resume and replica invariance: tests/test_data.py."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import train
from data import augment, mixing, policies
from resnet import checkpointing, files, optimization, run_record
from resnet import config as config_lib
from tests import test_train
from tests.test_train import debug_config

FILL = (125, 123, 114)
KEY = tf.constant([7, 1], tf.int64)


def test_cutout_square_size_and_position_are_exact():
  images = np.full((4, 12, 12, 3), 255, np.uint8)
  centres = tf.constant([[6, 6], [0, 0], [11, 5], [3, 10]])
  out = augment.cutout(images, centres, 4, FILL).numpy()
  for image, (row, column) in zip(out, centres.numpy(), strict=True):
    expected = np.full((12, 12, 3), 255, np.uint8)
    # [centre - 2, centre + 2), clipped at the borders (DeVries & Taylor).
    expected[max(row - 2, 0) : row + 2, max(column - 2, 0) : column + 2] = FILL
    np.testing.assert_array_equal(image, expected)
  assert (out[0] != 255).all(axis=-1).sum() == 16  # Inside: the whole 4 x 4 square.
  assert (out[1] != 255).all(axis=-1).sum() == 4  # A corner: 2 x 2 of it.
  odd = augment.cutout(images[:1], centres[:1], 5, FILL).numpy()
  assert (odd[0] != 255).all(axis=-1).sum() == 25


def test_the_fill_is_the_colour_that_normalises_to_zero():
  mean = (0.4914, 0.4822, 0.4465)
  fill = augment.mean_colour(mean)
  assert fill == (125, 123, 114)
  normalised = augment.normalize(np.array(fill, np.uint8), mean, (0.25, 0.25, 0.25)).numpy()
  assert np.abs(normalised).max() < 0.5 / 255 / 0.25 + 1e-6  # Half a grey level at most.


def mixup_plan(weights):
  weights = tf.constant(weights)
  return {"box": tf.zeros([len(weights), 4], tf.int32), "weight": weights, "label_weight": weights}


def test_mixup_mixes_images_and_targets_with_the_planned_weight_exactly():
  rng = np.random.default_rng(0)
  # Multiples of 4: every mix below is exact in float32, and the rounding is what is tested.
  images, partners = rng.integers(0, 64, (2, 2, 8, 8, 3)).astype(np.uint8) * 4
  plan = mixup_plan([0.25, 0.5])
  mixed, targets = mixing.mix(images, partners, tf.constant([1, 3]), tf.constant([2, 3]), plan, 4)
  a, b = images.astype(np.float64), partners.astype(np.float64)
  np.testing.assert_array_equal(mixed[0], 0.25 * a[0] + 0.75 * b[0])
  np.testing.assert_array_equal(mixed[1], (a[1] + b[1]) / 2)
  np.testing.assert_array_equal(targets, [[0, 0.25, 0.75, 0], [0, 0, 0, 1]])
  halves, _ = mixing.mix(images + 1, partners, tf.constant([0, 0]), tf.constant([0, 0]), plan, 4)
  np.testing.assert_array_equal(halves[1], (a[1] + 1 + b[1]) / 2 + 0.5)  # x.5 rounds up.


def test_cutmix_takes_the_partner_inside_the_box():
  rng = np.random.default_rng(1)
  images, partners = rng.integers(0, 256, (2, 1, 8, 8, 3), dtype=np.uint8)
  plan = {
    "box": tf.constant([[2, 6, 1, 8]]),  # Rows [2, 6), columns [1, 8).
    "weight": tf.constant([1.0]),
    "label_weight": tf.constant([1 - 28 / 64]),
  }
  mixed, targets = mixing.mix(images, partners, tf.constant([0]), tf.constant([1]), plan, 2)
  expected = images.copy()
  expected[:, 2:6, 1:8] = partners[:, 2:6, 1:8]
  np.testing.assert_array_equal(mixed, expected)
  np.testing.assert_allclose(targets, [[36 / 64, 28 / 64]], rtol=1e-6)


def test_mixing_plan_pairs_within_each_global_batch_with_one_weight_per_batch():
  steps, batch = 400, 8
  plan = mixing.plan_mixing(KEY, steps, batch, 1.0, 1.0, (32, 32))
  for partners in plan["partner"].numpy():  # A permutation of the batch's positions.
    assert sorted(partners) == list(range(batch))
  for name in ("box", "weight", "label_weight"):
    value = plan[name].numpy()
    assert (value == value[:, :1]).all(), name  # Alike across each batch.
  box, weight, label_weight = (plan[name].numpy()[:, 0] for name in plan if name != "partner")
  cutmix = (box[:, 1] > box[:, 0]) & (box[:, 3] > box[:, 2])
  assert 120 < cutmix.sum() < 280  # Half the batches each (timm's switch_prob 0.5).
  assert (weight[cutmix] == 1).all() and (label_weight[~cutmix] == weight[~cutmix]).all()
  area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
  np.testing.assert_allclose(label_weight[cutmix], 1 - area[cutmix] / 1024, rtol=1e-6)
  assert ((box >= 0) & (box <= 32)).all()
  assert abs(weight[~cutmix].mean() - 0.5) < 0.06  # Beta(1, 1): uniform.
  skewed = mixing.plan_mixing(KEY, steps, batch, 0.2, 0.0, (32, 32))["weight"].numpy()[:, 0]
  assert ((skewed < 0.1) | (skewed > 0.9)).mean() > 0.5  # Beta(0.2, 0.2): near 0 or 1.
  boxes, _ = mixing._cutmix_boxes(KEY, tf.fill([200], 0.75), (32, 32))
  sides = boxes.numpy()[:, [1, 3]] - boxes.numpy()[:, [0, 2]]
  assert sides.max() == 16 and sides.min() < 16  # sqrt(1 - 0.75) * 32, clipped at borders.


def test_autoaugment_plan_draws_the_cifar10_sub_policies():
  ops, magnitudes = (value.numpy() for value in policies.plan_autoaugment(KEY, 3000))
  identity = policies.OPS.index("Identity")
  signed = np.isin(ops, [policies.OPS.index(op) for op in policies.SIGNED])
  allowed = []
  for pair in policies.CIFAR10_POLICY:
    allowed.append([(policies.OPS.index(op), (level or 0) / 9) for op, _, level in pair])
  for row_ops, row_magnitudes in zip(ops, np.abs(magnitudes), strict=True):
    assert any(
      all(
        op == identity or (op == table_op and np.isclose(m, level))
        for op, m, (table_op, level) in zip(row_ops, row_magnitudes, sub_policy, strict=True)
      )
      for sub_policy in allowed
    )
  assert (magnitudes[~signed] >= 0).all() and (magnitudes[signed] < 0).any()
  # ("Invert", 0.1) and ("Contrast", 0.2) of 25: about 0.4% of positions invert first.
  assert 0.001 < (ops[:, 0] == policies.OPS.index("Invert")).mean() < 0.01


def test_randaugment_plan_draws_n_operations_at_magnitude_m():
  ops, magnitudes = (value.numpy() for value in policies.plan_randaugment(KEY, 2000, 3, 9))
  assert ops.shape == (2000, 3) and set(np.unique(ops)) == set(range(14))
  np.testing.assert_allclose(np.abs(magnitudes), 9 / 30, rtol=1e-6)
  signed = np.isin(ops, [policies.OPS.index(op) for op in policies.SIGNED])
  assert (magnitudes[~signed] > 0).all() and 0.4 < (magnitudes[signed] < 0).mean() < 0.6


def _pil_reference(name, magnitude, image):
  """What torchvision's AutoAugment does to a PIL image (with our fill), by PIL itself."""
  image_module = pytest.importorskip("PIL.Image")
  from PIL import ImageEnhance, ImageOps

  pil = image_module.fromarray(image)
  affine = dict(
    ShearX=(1, 0.3 * magnitude, 0, 0, 1, 0),
    ShearY=(1, 0, 0, 0.3 * magnitude, 1, 0),
    TranslateX=(1, 0, int(150 / 331 * image.shape[1] * magnitude), 0, 1, 0),
    TranslateY=(1, 0, 0, 0, 1, int(150 / 331 * image.shape[0] * magnitude)),
  )
  if name in affine:
    return pil.transform(pil.size, image_module.AFFINE, affine[name], fillcolor=FILL)
  if name == "Rotate":
    return pil.rotate(30 * magnitude, fillcolor=FILL)
  if name in ("Brightness", "Color", "Contrast", "Sharpness"):
    return getattr(ImageEnhance, name)(pil).enhance(1 + 0.9 * magnitude)
  if name == "Posterize":
    return ImageOps.posterize(pil, 8 - round(4 * abs(magnitude)))
  if name == "Solarize":
    return ImageOps.solarize(pil, 255 * (1 - abs(magnitude)))
  return {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize}[name](pil)


@pytest.mark.parametrize("name", [op for op in policies.OPS if op not in ("Identity", "Invert")])
def test_each_operation_is_pils(name):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  images[1] = rng.integers(40, 90, (16, 16, 3))  # Low contrast.
  images[2] = 77  # One value: AutoContrast and Equalize leave it.
  images[3, :, :, 0] = rng.choice([3, 200], (16, 16))  # Two values in a channel.
  for magnitude in (0.5, -0.7):
    ours = policies.apply_op(name, tf.constant(images), tf.fill([4], magnitude), FILL).numpy()
    expected = [np.asarray(_pil_reference(name, magnitude, image)) for image in images]
    np.testing.assert_array_equal(ours, np.stack(expected), err_msg=f"{name} {magnitude}")


def test_slots_apply_in_turn():
  image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(1, 16, 16, 3)
  translate, invert = policies.OPS.index("TranslateX"), policies.OPS.index("Invert")
  magnitudes = tf.constant([[0.5, 0.5]])
  moved = policies.apply_op("TranslateX", image, magnitudes[:, 0], FILL).numpy()
  assert (moved == FILL).all(axis=-1).sum() == 3 * 16  # 3 columns uncovered, filled.
  first = policies.apply_ops(image, tf.constant([[translate, invert]]), magnitudes, FILL)
  np.testing.assert_array_equal(first, 255 - moved)  # The fill inverted too.
  second = policies.apply_ops(image, tf.constant([[invert, translate]]), magnitudes, FILL)
  expected = policies.apply_op("TranslateX", 255 - image, magnitudes[:, 0], FILL)
  np.testing.assert_array_equal(second, expected)


def test_soft_targets_in_the_loss_and_the_accuracy():
  logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.1, 0.3]])
  hard = tf.constant([0, 2])
  soft = tf.constant([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
  one_hot = tf.one_hot(hard, 3)
  for smoothing in (0.0, 0.1):
    np.testing.assert_allclose(
      optimization.cross_entropy(one_hot, logits, 3, smoothing),
      optimization.cross_entropy(hard, logits, 3, smoothing),
      rtol=1e-6,
    )
    # Mixed targets: the same mix of the two classes' losses, with smoothing too.
    mixed = optimization.cross_entropy(soft, logits, 3, smoothing).numpy()
    parts = [optimization.cross_entropy(tf.fill([2], c), logits, 3, smoothing) for c in range(3)]
    expected = tf.reduce_sum(soft * tf.stack(parts, axis=1), axis=1)
    np.testing.assert_allclose(mixed, expected, rtol=1e-5)
  assert optimization.dominant_labels(soft).numpy().tolist() == [0, 2]
  assert optimization.dominant_labels(hard) is hard


# --- Options: bad input, the run record, one run with everything on ---------------------


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(cutout=-1), "--cutout must not be negative, got -1."),
    (dict(cutout=33), "--cutout=33 is larger than the 32x32 images: at most 32 pixels."),
    (dict(randaugment="2"), "--randaugment must be N,M .* got '2'."),
    (dict(randaugment="0,9"), "--randaugment must be N,M .* got '0,9'."),
    (dict(randaugment="2,31"), "--randaugment must be N,M .*30.* got '2,31'."),
    (dict(randaugment="2,9", autoaugment=True), "--randaugment and --autoaugment are two"),
    (dict(mixup=-0.5), "--mixup must not be negative"),
  ],
)
def test_bad_augmentation_options_are_refused_before_anything_is_written(
  image_folder, tmp_path, overrides, message
):
  model_dir = tmp_path / "run"
  with pytest.raises(config_lib.ConfigError, match=f"^{message}"):
    train.train_and_evaluate(debug_config(image_folder, **overrides), str(model_dir))
  assert not model_dir.exists()


def test_a_run_with_every_option_trains_and_refuses_a_resume_that_changes_one(
  image_folder, tmp_path
):
  options = dict(cutout=8, autoaugment=True, mixup=0.4, cutmix=1.0, label_smoothing=0.1)
  config = debug_config(image_folder, epochs=1, steps_per_epoch=2, **options)
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and np.isfinite(result["validation"]["loss"])
  record = run_record.read_run_record(str(tmp_path))
  assert {key: record["config"][key] for key in options} == options
  before = test_train.modification_times(str(tmp_path))
  with pytest.raises(checkpointing.CheckpointError, match="--mixup=0.4 there, 0.2 now"):
    train.train_and_evaluate(dataclasses.replace(config, mixup=0.2), str(tmp_path))
  assert test_train.modification_times(str(tmp_path)) == before


def test_runs_recorded_before_the_options_resume_without_them(tmp_path):
  config = dataclasses.asdict(config_lib.Config())
  added = ("cutout", "randaugment", "autoaugment", "mixup", "cutmix")
  old = {key: value for key, value in config.items() if key not in added}
  files.write_json(str(tmp_path / "run.json"), {"config": old, "starts": []})
  run_record.start_run_record(str(tmp_path), config, write=False)  # No error.
  for key, value in dict(cutout=8, randaugment="2,9", autoaugment=True, cutmix=1.0).items():
    with pytest.raises(checkpointing.CheckpointError, match=f"--{key}=.* there, {value!r} now"):
      run_record.start_run_record(str(tmp_path), dict(config, **{key: value}), write=False)
