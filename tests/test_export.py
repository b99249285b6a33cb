"""resnet.export and resnet.tools.predict: exports agree with the in-process model, bad input fails
cleanly."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import train
from data import augment, datasets, sources
from resnet import checkpointing, export, models, run_record
from resnet.tools import predict
from tests.conftest import CLASS_NAMES
from tests.test_train import debug_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh Python process: the .keras file must load with nothing of ours
# in memory but the ResNet class.
LOAD_KERAS_FILE = """
import sys
import keras
import numpy as np
from resnet.models import cifar_resnet  # Registers the networks for deserialisation.

classifier = keras.saving.load_model(sys.argv[1])
resnet = next(layer for layer in classifier.layers if isinstance(layer, cifar_resnet.ResNet))
np.savez(
  sys.argv[3],
  probabilities=classifier.predict(np.load(sys.argv[2]), verbose=0),
  **{f"weight{i}": weight.numpy() for i, weight in enumerate(resnet.weights)},
)
"""


@pytest.fixture(scope="module")
def model_dir(image_folder, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("exportrun"))
  train.train_and_evaluate(debug_config(image_folder, epochs=1, steps_per_epoch=4), directory)
  return directory


@pytest.fixture(scope="module")
def exported(model_dir):
  return export.export_best_model(model_dir)


@pytest.fixture(scope="module")
def restored(model_dir):
  """The best checkpoint restored into a fresh in-process model."""
  record = run_record.read_run_record(model_dir)
  model = models.create_model(record["config"]["model"], num_classes=len(CLASS_NAMES))
  checkpointing.restore_model(model, checkpointing.best_checkpoint_path(model_dir))
  return model


@pytest.fixture(scope="module")
def normalization(model_dir):
  """The run's input normalisation: its training images' own statistics (a folder)."""
  record = run_record.read_run_record(model_dir)
  assert record["input_normalization"] != datasets.CIFAR10.normalization
  return run_record.input_normalization(record)


def in_process_probabilities(model, images, normalization):
  return tf.nn.softmax(model(augment.normalize(images, **normalization), training=False)).numpy()


@pytest.fixture(scope="module")
def images(image_folder):
  """5 test images of all three classes, uint8 [5, 32, 32, 3]."""
  images, labels, _ = sources.load_split(f"folder:{image_folder}", "test")
  chosen = np.arange(0, len(labels), 4)[:5]
  assert len(set(labels[chosen])) == 3
  return images[chosen]


def run_module(module, *args, cwd=REPO):
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=cwd,
    env=dict(os.environ, PYTHONPATH=REPO),  # `cwd` need not be the repository.
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_saved_model_signature_agrees_with_the_in_process_model(
  exported, restored, images, normalization
):
  serve = tf.saved_model.load(exported["saved_model"]).signatures["serving_default"]
  spec = serve.structured_input_signature[1]["images"]
  assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
  expected = in_process_probabilities(restored, images, normalization)
  for batch_size in (1, 5):
    outputs = serve(images=tf.constant(images[:batch_size]))
    assert outputs["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(outputs["probabilities"], expected[:batch_size], atol=1e-5)
    assert [name.decode() for name in outputs["class_names"].numpy()] == CLASS_NAMES
    top = [CLASS_NAMES[i] for i in expected[:batch_size].argmax(axis=1)]
    assert [name.decode() for name in outputs["classes"].numpy()] == top


def test_keras_file_loads_in_a_fresh_process_with_the_same_weights(
  exported, restored, images, normalization, tmp_path
):
  np.save(tmp_path / "images.npy", images)
  output = tmp_path / "keras_outputs.npz"
  result = subprocess.run(
    [sys.executable, "-c", LOAD_KERAS_FILE, exported["keras"], tmp_path / "images.npy", output],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  loaded = np.load(output)
  # The same variables in the same order, bit for bit.
  assert len(loaded.files) == 1 + len(restored.weights)
  for i, weight in enumerate(restored.weights):
    np.testing.assert_array_equal(loaded[f"weight{i}"], weight.numpy(), err_msg=weight.path)
  expected = in_process_probabilities(restored, images, normalization)
  np.testing.assert_allclose(loaded["probabilities"], expected, atol=1e-5)


def test_failed_export_keeps_the_old_one_and_the_next_one_replaces_it(
  model_dir, exported, images, monkeypatch
):
  old_keras = open(exported["keras"], "rb").read()
  old_inode = os.stat(exported["saved_model"]).st_ino

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(keras.Model, "save", full_disk)
  with pytest.raises(OSError, match="No space"):
    export.export_best_model(model_dir)
  # The SavedModel was written (to its temporary name) before the failure: not in place.
  assert os.stat(exported["saved_model"]).st_ino == old_inode
  assert open(exported["keras"], "rb").read() == old_keras

  monkeypatch.undo()
  assert export.export_best_model(model_dir) == exported
  export_dir = os.path.dirname(exported["keras"])
  assert sorted(os.listdir(export_dir)) == ["model.keras", "saved_model"]  # No temporaries left.
  assert os.stat(exported["saved_model"]).st_ino != old_inode
  serve = tf.saved_model.load(exported["saved_model"]).signatures["serving_default"]
  assert serve(images=tf.constant(images))["probabilities"].shape == (5, len(CLASS_NAMES))


def test_predict_command_prints_the_top_classes_of_png_and_jpeg(
  model_dir, exported, restored, normalization, image_folder, tmp_path
):
  jpeg = os.path.join(image_folder, "test", "dog", "0001.jpg")  # 32x32, as in training.
  png = str(tmp_path / "wide.png")  # 64x48: resized by the command.
  wide = tf.image.resize(tf.io.decode_image(tf.io.read_file(jpeg)), [48, 64], method="nearest")
  tf.io.write_file(png, tf.io.encode_png(tf.cast(wide, tf.uint8)))

  # A file:// URL, as gs:// would be: read through gfile, not as a relative "file:" directory.
  work_dir = tmp_path / "cwd"
  work_dir.mkdir()
  result = run_module(
    "resnet.tools.predict", f"--model_dir=file://{model_dir}", "--top_k=2", png, jpeg, cwd=work_dir
  )
  assert result.returncode == 0, result.stderr
  assert os.listdir(work_dir) == []
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 2
  names = "|".join(CLASS_NAMES)
  for path, line in zip((png, jpeg), lines, strict=True):
    assert re.fullmatch(
      rf"{re.escape(path)}: ({names}) [01]\.\d{{3}}, ({names}) [01]\.\d{{3}}", line
    ), line

  # The library function: the same decoding and resize as the training pipeline, and the
  # probabilities of the in-process model.
  results = predict.predict_files(exported["saved_model"], [png, jpeg], top_k=5)
  assert predict.format_result({**results[0], "top": results[0]["top"][:2]}) == lines[0]
  decoded = [sources.decode_image(tf.io.read_file(p), (32, 32)).numpy() for p in (png, jpeg)]
  np.testing.assert_array_equal(predict.read_image(png), decoded[0])
  expected = in_process_probabilities(restored, np.stack(decoded), normalization)
  for result_of_file, row in zip(results, expected, strict=True):
    np.testing.assert_allclose(result_of_file["probabilities"], row, atol=1e-5)
    assert len(result_of_file["top"]) == len(CLASS_NAMES)  # top_k=5 is capped at 3 classes.
    assert result_of_file["top"][0] == (CLASS_NAMES[row.argmax()], pytest.approx(row.max()))


def test_commands_fail_with_one_line_naming_the_problem(
  model_dir, exported, image_folder, tmp_path
):
  good = os.path.join(image_folder, "test", "cat", "0000.png")
  missing = str(tmp_path / "missing.png")
  cases = {  # command line -> the message expected
    ("resnet.tools.predict", f"--model_dir={model_dir}", good, missing): (
      f"resnet.tools.predict: error: Cannot read the image {missing}: No such file"
    ),
    ("resnet.tools.predict", f"--model_dir={tmp_path}", good): (
      f"run `python -m resnet.tools.export --model_dir={tmp_path}` first"
    ),
    ("resnet.tools.export", f"--model_dir={tmp_path}"): (
      f"resnet.tools.export: error: {tmp_path} is not a training run: it has no run.json."
    ),
  }
  # Started together: each process spends most of its ~5 s importing TensorFlow.
  processes = {
    command: subprocess.Popen(
      [sys.executable, "-m", *command],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for command in cases
  }
  for command, process in processes.items():
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode != 0, command
    assert stdout == ""
    assert "Traceback" not in stderr
    messages = [line for line in stderr.splitlines() if line.startswith("resnet.")]
    assert len(messages) == 1 and cases[command] in messages[0], stderr


def test_export_refuses_a_directory_without_a_run_or_a_best_checkpoint(model_dir, tmp_path):
  with pytest.raises(checkpointing.CheckpointError, match="no run.json"):
    export.export_best_model(str(tmp_path))
  with open(os.path.join(model_dir, "run.json")) as source:
    (tmp_path / "run.json").write_text(source.read())
  with pytest.raises(checkpointing.CheckpointError, match="No best checkpoint"):
    export.export_best_model(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["run.json"]  # Nothing written.
