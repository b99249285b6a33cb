"""resnet.tools.import_reference and --init_from: the reference's own logits, parameter counts, bad
input, and evaluation, prediction and fine-tuning of an imported run.

Tests that need the reference's published weights read them from ../shared/reference beside
the repository (or $RESNET_REFERENCE_DIR) and skip where it is absent (a user's clone).
"""

import dataclasses
import importlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
from data import augment, datasets, sources
from resnet import checkpointing, export, models, report, run_record
from resnet.tools import import_reference, predict, reference_weights
from resnet.tools.reference_weights import ImportReferenceError
from tests.conftest import write_image_folder
from tests.test_torch_format import write_legacy_file
from tests.test_train import debug_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
eval_main = importlib.import_module("eval")
REFERENCE_DIR = os.environ.get(
  "RESNET_REFERENCE_DIR", os.path.join(os.path.dirname(REPO), "shared", "reference")
)
needs_reference = pytest.mark.skipif(
  not os.path.isdir(REFERENCE_DIR), reason=f"no reference weights in {REFERENCE_DIR}"
)
# ResNet-20's logits by the reference's own code (tests/data/make_reference_logits.py).
GOLDEN = os.path.join(REPO, "tests", "data", "reference_resnet20_logits.npz")
# Trainable parameters of the reference's models (its README: 0.27M, 0.46M, 0.66M, 0.85M).
PARAMETERS = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018}
CIFAR10_CLASSES = import_reference.DATA_FACTS["class_names"]


def reference_file(model_name):
  return os.path.join(REFERENCE_DIR, import_reference.PUBLISHED[model_name][0])


def test_bad_sources_fail_naming_the_problem_and_write_nothing(tmp_path):
  model_dir = str(tmp_path / "out" / "imported")
  not_a_checkpoint = tmp_path / "notes.th"
  not_a_checkpoint.write_bytes(b"just some text, not a pickle\n" * 10)
  other_object = tmp_path / "other.th"
  write_legacy_file(other_object, {"weights": ("tensor", "k", 0, (2,), (1,))}, {"k": np.ones(2)})
  cases = {
    ("resnet99", None): "Unknown --model=resnet99; choose one of resnet20",
    ("resnet20", str(not_a_checkpoint)): "notes.th is not a reference checkpoint: it is not",
    ("resnet20", str(other_object)): "other.th is not a reference checkpoint: no state_dict",
    ("resnet20", str(tmp_path / "missing.th")): "Cannot read",
  }
  for (model_name, source), message in cases.items():
    with pytest.raises(ImportReferenceError, match=message):
      import_reference.import_reference(model_name, model_dir, source)
  assert not os.path.exists(os.path.dirname(model_dir))  # Not even the parent was created.

  (tmp_path / "used").mkdir()
  (tmp_path / "used" / "run.json").write_text("{}")
  with pytest.raises(ImportReferenceError, match="is not empty"):
    import_reference.import_reference("resnet20", str(tmp_path / "used"), str(other_object))
  assert os.listdir(tmp_path / "used") == ["run.json"]


def test_normalize_takes_the_runs_statistics_and_old_records_mean_cifar10():
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  reference = import_reference.REFERENCE_NORMALIZATION
  expected = (images / 255.0 - np.array(reference["mean"])) / np.array(reference["std"])
  np.testing.assert_allclose(augment.normalize(images, **reference), expected, atol=1e-5)
  assert run_record.input_normalization({}) == datasets.CIFAR10.normalization
  np.testing.assert_array_equal(
    augment.normalize(images, **datasets.CIFAR10.normalization), augment.normalize(images)
  )


def test_init_from_starts_a_new_run_from_the_best_weights_and_a_resume_ignores_it(
  image_folder, tmp_path
):
  source_dir, model_dir = str(tmp_path / "source"), str(tmp_path / "tuned")
  # "same" padding, not a new run's default: the new run must inherit it.
  train.train_and_evaluate(debug_config(image_folder, epochs=1, stride2_padding="same"), source_dir)
  config = debug_config(
    image_folder,
    epochs=1,
    init_from=source_dir,
    optimizer="sgd",
    momentum=0.0,
    learning_rate=1e-9,  # The weights stay the source's, to float precision.
    weight_decay=0.0,
    ema_decay=0.5,  # What the run exports, its average, starts at the source's weights too.
  )
  train.train_and_evaluate(config, model_dir)
  record = run_record.read_run_record(model_dir)
  assert record["config"]["init_from"] == source_dir
  assert record["config"]["stride2_padding"] == "same"
  source_record = run_record.read_run_record(source_dir)  # A folder run: its own statistics.
  assert record["input_normalization"] == source_record["input_normalization"]
  assert source_record["input_normalization"] != datasets.CIFAR10.normalization
  source, _, _ = run_record.load_trained_model(source_dir)
  tuned, _, _ = run_record.load_trained_model(model_dir)
  for ours, theirs in zip(tuned.trainable_variables, source.trainable_variables, strict=True):
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6, err_msg=ours.path)

  # A resume restores its own checkpoint: --init_from is not even read.
  resumed = dataclasses.replace(config, epochs=2, init_from=str(tmp_path / "missing"))
  assert train.train_and_evaluate(resumed, model_dir)["step"] == 6
  with pytest.raises(checkpointing.CheckpointError, match="has --model 'resnet8', this run"):
    train.train_and_evaluate(dataclasses.replace(config, model="resnet20"), str(tmp_path / "new"))
  with pytest.raises(checkpointing.CheckpointError, match="is not a training run"):
    train.train_and_evaluate(
      dataclasses.replace(config, init_from=str(tmp_path)), str(tmp_path / "new")
    )
  assert not os.path.exists(tmp_path / "new")


# --- The reference's published weights ----------------------------------------------------


@needs_reference
@pytest.mark.parametrize("model_name", sorted(PARAMETERS))
def test_each_published_depth_maps_onto_ours_with_its_parameter_count(model_name):
  data = open(reference_file(model_name), "rb").read()
  reference_weights.check_published_hash(reference_file(model_name), data)
  state, _ = reference_weights.reference_state(model_name, data)
  parameters = sum(value.size for name, value in state.items() if "running_" not in name)
  assert parameters == PARAMETERS[model_name]
  model = models.create_model(model_name, stride2_padding="symmetric")
  reference_weights.assign_reference_weights(model, state)  # Every tensor used exactly once.
  np.testing.assert_array_equal(
    model.stem_conv.kernel.numpy(), state["conv1.weight"].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(model.classifier.kernel.numpy(), state["linear.weight"].T)


@needs_reference
def test_damaged_or_other_depth_files_are_refused(tmp_path):
  data = open(reference_file("resnet20"), "rb").read()
  (tmp_path / "resnet20-12fca82f.th").write_bytes(data[:-100])  # Its name promises a hash.
  (tmp_path / "cut.th").write_bytes(data[: len(data) // 2])
  cases = {
    ("resnet20", "resnet20-12fca82f.th"): "not the 12fca82f its name promises",
    ("resnet20", "cut.th"): "cut.th is not a reference checkpoint: it is truncated",
    ("resnet32", None): "holds 269,722 parameters, resnet32 has 464,154",
  }
  for (model_name, name), message in cases.items():
    source = str(tmp_path / name) if name else reference_file("resnet20")
    with pytest.raises(ImportReferenceError, match=message):
      import_reference.import_reference(model_name, str(tmp_path / "imported"), source)
  assert sorted(os.listdir(tmp_path)) == ["cut.th", "resnet20-12fca82f.th"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  if not os.path.isdir(REFERENCE_DIR):
    pytest.skip(f"no reference weights in {REFERENCE_DIR}")
  model_dir = str(tmp_path_factory.mktemp("reference") / "resnet20")
  import_reference.import_reference("resnet20", model_dir, reference_file("resnet20"))
  return model_dir


def test_imported_run_records_its_source_and_gives_the_references_logits(imported):
  record = run_record.read_run_record(imported)
  source = record["imported_from"]
  assert source["commit"] == import_reference.REFERENCE_COMMIT
  assert source["sha256"].startswith("12fca82f") and source["published_test_accuracy"] == 0.9173
  assert record["input_normalization"] == import_reference.REFERENCE_NORMALIZATION
  assert record["config"]["stride2_padding"] == "symmetric"
  assert record["class_names"] == CIFAR10_CLASSES
  best = checkpointing.best_checkpoint_path(imported)
  assert os.path.basename(best) == "best-0" and sorted(os.listdir(os.path.dirname(imported))) == [
    "resnet20"  # No temporary left beside it.
  ]

  golden = np.load(GOLDEN)
  images, logits = golden["images"], golden["logits"]
  model, _, _ = run_record.load_trained_model(imported)
  ours = model(augment.normalize(images, **run_record.input_normalization(record)), training=False)
  np.testing.assert_allclose(ours, logits, atol=1e-4)
  # The export: uint8 in, the reference's probabilities out (SavedModel and .keras).
  probabilities = tf.nn.softmax(logits).numpy()
  paths = export.export_paths(imported)
  serve = tf.saved_model.load(paths["saved_model"]).signatures["serving_default"]
  np.testing.assert_allclose(
    serve(images=tf.constant(images))["probabilities"], probabilities, atol=1e-5
  )
  classifier = keras.saving.load_model(paths["keras"])
  np.testing.assert_allclose(classifier.predict(images, verbose=0), probabilities, atol=1e-5)


def write_cifar10_folder(root, per_class=2, seed=0):
  """root/<split>/<CIFAR-10 class>/<i>.png for train and test: random uint8 images."""
  rng = np.random.default_rng(seed)
  for split in ("train", "test"):
    for name in CIFAR10_CLASSES:
      os.makedirs(os.path.join(root, split, name))
      for index in range(per_class):
        image = rng.integers(0, 256, (32, 32, 3), np.uint8)
        tf.io.write_file(os.path.join(root, split, name, f"{index}.png"), tf.io.encode_png(image))
  return root


def test_eval_and_predict_work_on_the_imported_run(imported, tmp_path):
  folder = write_cifar10_folder(str(tmp_path / "images"))
  metrics = eval_main.evaluate_model_dir(
    imported, dataset=f"folder:{folder}", strategy_name="default"
  )
  assert metrics["num_examples"] == 20 and metrics["model"] == "resnet20"
  # eval.py normalises as the export does: the same probabilities.
  images, labels, _ = sources.load_split(f"folder:{folder}", "test")
  saved_model = export.export_paths(imported)["saved_model"]
  serve = tf.saved_model.load(saved_model).signatures["serving_default"]
  expected = serve(images=tf.constant(images))["probabilities"].numpy()
  # Another dataset than the run's (cifar10): its own directory, eval/folder-images-<hash>/test.
  assert metrics["output_dir"] == f"eval/{report.dataset_slug(f'folder:{folder}')}/test"
  predictions = np.load(os.path.join(imported, metrics["output_dir"], "predictions.npz"))
  np.testing.assert_array_equal(predictions["labels"], labels)
  np.testing.assert_allclose(predictions["probabilities"], expected, atol=1e-5)
  png = os.path.join(folder, "test", "cat", "0.png")
  (result,) = predict.predict_files(saved_model, [png], top_k=10)
  assert sorted(name for name, _ in result["top"]) == CIFAR10_CLASSES


def test_fine_tuning_inherits_the_imported_normalisation_and_padding(imported, tmp_path):
  folder = write_cifar10_folder(str(tmp_path / "images"), per_class=3)
  config = debug_config(
    folder, model="resnet20", init_from=imported, validation_size=10, batch_size=10, epochs=1
  )
  config = dataclasses.replace(config, steps_per_epoch=1)
  model_dir = str(tmp_path / "fine_tuned")
  train.train_and_evaluate(config, model_dir)
  record = run_record.read_run_record(model_dir)
  assert record["input_normalization"] == import_reference.REFERENCE_NORMALIZATION
  assert record["config"]["stride2_padding"] == "symmetric"

  # Another number of classes: refused before anything is written. The imported directory
  # itself is no run to train on.
  three_classes = write_image_folder(str(tmp_path / "three"), {"train": 10, "test": 2})
  bad_config = dataclasses.replace(config, dataset=f"folder:{three_classes}", validation_size=6)
  with pytest.raises(checkpointing.CheckpointError, match="has classes 10, this run 3"):
    train.train_and_evaluate(bad_config, str(tmp_path / "refused"))
  assert not os.path.exists(tmp_path / "refused")
  with pytest.raises(checkpointing.CheckpointError, match="holds imported weights"):
    train.train_and_evaluate(dataclasses.replace(config, init_from=None), imported)


def test_import_command_fails_with_one_line(tmp_path):
  (tmp_path / "bad.th").write_bytes(b"\x80\x02not really")
  # One process (each spends seconds importing TensorFlow); the other refusals are above.
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "resnet.tools.import_reference",
      f"--checkpoint={tmp_path / 'bad.th'}",
      f"--model_dir={tmp_path / 'out'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0 and result.stdout == "" and "Traceback" not in result.stderr
  messages = [line for line in result.stderr.splitlines() if line.startswith("resnet.")]
  assert messages == [
    f"resnet.tools.import_reference: error: {tmp_path / 'bad.th'} is not a reference checkpoint: "
    "it is not a torch.save file (UnpicklingError)."
  ], result.stderr
  assert sorted(os.listdir(tmp_path)) == ["bad.th"]
