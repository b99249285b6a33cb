"""eval.py and the command lines: metrics agree with scikit-learn, bad input fails cleanly."""

import glob
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from sklearn import metrics as sk_metrics

import train
from data import augment, sources
from resnet import checkpointing, files, models, report, run_record
from resnet import config as config_lib
from resnet import metrics as metrics_lib
from resnet.tools import results
from tests.conftest import CLASS_NAMES, TEST_PER_CLASS, write_image_folder
from tests.test_train import debug_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
eval_main = importlib.import_module("eval")


@pytest.fixture(scope="module")
def model_dir(image_folder, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("evalrun"))
  # float32, as eval.py evaluates: training validates in the run's precision, and the
  # default (auto) is mixed_bfloat16 on CPUs with bfloat16, float32 on others.
  config = debug_config(image_folder, epochs=1, steps_per_epoch=4, precision="float32")
  train.train_and_evaluate(config, directory)
  return directory


def run(script, *args, cwd=REPO):
  return subprocess.run(
    [sys.executable, os.path.join(REPO, script), *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=300,
  )


def snapshot(directory):
  return {path: os.path.getmtime(path) for path in glob.glob(f"{directory}/**", recursive=True)}


@pytest.mark.parametrize("strategy_name", ["default", "mirrored"])
def test_metrics_agree_with_scikit_learn_on_the_same_predictions(model_dir, strategy_name):
  metrics = eval_main.evaluate_model_dir(
    model_dir, "test", batch_size=8, strategy_name=strategy_name
  )
  output = os.path.join(model_dir, "eval", "test")
  saved = json.load(open(os.path.join(output, "metrics.json")))
  assert {"accuracy", "loss", "num_examples", "confusion_matrix", "per_class"} <= saved.keys()
  assert saved["num_examples"] == len(CLASS_NAMES) * TEST_PER_CLASS == 21
  predictions = np.load(os.path.join(output, "predictions.npz"))
  labels, probabilities = predictions["labels"], predictions["probabilities"]
  np.testing.assert_array_equal(np.bincount(labels), [TEST_PER_CLASS] * 3)
  predicted = probabilities.argmax(axis=1)
  assert saved["accuracy"] == pytest.approx(sk_metrics.accuracy_score(labels, predicted))
  assert saved["loss"] == pytest.approx(
    sk_metrics.log_loss(labels, probabilities, labels=[0, 1, 2])
  )
  assert saved["confusion_matrix"] == sk_metrics.confusion_matrix(labels, predicted).tolist()
  f1 = sk_metrics.f1_score(labels, predicted, average=None, labels=[0, 1, 2], zero_division=0)
  assert [saved["per_class"][name]["f1"] for name in CLASS_NAMES] == pytest.approx(f1)
  assert metrics == saved
  assert os.path.getsize(os.path.join(output, "confusion_matrix.png")) > 1000


def test_validation_split_is_the_runs_held_out_examples(model_dir):
  metrics = eval_main.evaluate_model_dir(model_dir, "validation", batch_size=8)
  assert metrics["num_examples"] == 24
  best = json.load(open(os.path.join(model_dir, "best", "best.json")))
  assert metrics["accuracy"] == pytest.approx(best["accuracy"])  # Same examples, same model.


def test_eval_command_prints_a_table_for_a_file_url(model_dir, tmp_path):
  # A file:// URL, as gs:// would be: read and written through gfile, never through a
  # relative "file:" directory in the working directory.
  url = f"file://{model_dir}"
  result = run("eval.py", f"--model_dir={url}", "--split=test", "--batch_size=8", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "precision" in result.stdout and "macro avg" in result.stdout
  for name in CLASS_NAMES:
    assert name in result.stdout
  saved = json.load(open(os.path.join(model_dir, "eval", "test", "metrics.json")))
  assert saved["checkpoint"].startswith(f"{url}/best/") and os.listdir(tmp_path) == []


def test_eval_on_a_folder_with_other_classes_is_refused(model_dir, tmp_path):
  other = str(tmp_path / "other")
  write_image_folder(other, {"test": 1})
  os.makedirs(os.path.join(other, "test", "zebra"))
  shutil.copy(os.path.join(other, "test", "cat", "0000.png"), os.path.join(other, "test", "zebra"))
  with pytest.raises(Exception, match="labels would not line up"):
    eval_main.evaluate_model_dir(model_dir, "test", dataset=f"folder:{other}")


def make_broken_inputs(root):
  """Folders and files that train.py and eval.py must refuse, under ROOT."""
  os.makedirs(os.path.join(root, "no_images", "train", "cat"))
  write_image_folder(os.path.join(root, "empty_class"), {"train": 2})
  os.makedirs(os.path.join(root, "empty_class", "train", "zebra"))
  write_image_folder(os.path.join(root, "corrupt"), {"train": 2})
  with open(os.path.join(root, "corrupt", "train", "cat", "bad.png"), "wb") as file:
    file.write(b"not a png")
  write_image_folder(os.path.join(root, "truncated"), {"train": 2})
  jpeg = os.path.join(root, "truncated", "train", "dog", "0001.jpg")
  with open(jpeg, "r+b") as file:
    file.truncate(os.path.getsize(jpeg) // 2)  # As an interrupted copy leaves it.
  with open(os.path.join(root, "bad.cfg"), "w") as file:
    file.write("--epochs=ten\n")
  with open(os.path.join(root, "a_file"), "w") as file:
    file.write("a user's file\n")
  with open(os.path.join(root, "garbage.index"), "wb") as file:
    file.write(b"\x00not a checkpoint")
  with open(os.path.join(root, "garbage.data-00000-of-00001"), "wb") as file:
    file.write(b"\x00")


# Bad command lines: (arguments, what the one-line message must contain). A few run as
# the user runs them (a subprocess: app.run's handling of flag errors, and the one-line
# exits of train.py's and eval.py's main); the others call train.main in this process,
# ~0.1 s instead of a TensorFlow start-up (~8 s).
BAD_COMMAND_LINES = {
  "unknown-flag": (
    ["train.py", "--no_such_flag=1", "--model_dir={tmp}/run"],
    "Unknown command line flag",
  ),
  "model-dir-is-a-file": (["train.py", "--model_dir={tmp}/a_file"], "is a file, not a directory"),
  "eval-without-run": (["eval.py", "--model_dir={tmp}"], "has no run.json"),
}
BAD_TRAIN_FLAGS = {
  "malformed-flagfile": (
    ["--flagfile={tmp}/bad.cfg", "--model_dir={tmp}/run"],
    "epochs",
  ),
  "corrupt-image": (
    ["--dataset=folder:{tmp}/corrupt", "--model_dir={tmp}/run"],
    "bad.png",
  ),
  "unknown-model": (["--model=resnet19", "--model_dir={tmp}/run"], "value should be one of"),
  "dropout-without-dropout": (
    ["--dropout=0.3", "--model_dir={tmp}/run"],
    "--dropout applies to --model=wrn10_1, wrn16_8, wrn28_10 only, not resnet20",
  ),
  "missing-flagfile": (["--flagfile={tmp}/missing.cfg", "--model_dir={tmp}/run"], "missing.cfg"),
  "zero-learning-rate": (["--learning_rate=0", "--model_dir={tmp}/run"], "--learning_rate must be"),
  "negative-learning-rate": (
    ["--learning_rate=-1", "--model_dir={tmp}/run"],
    "--learning_rate must be",
  ),
  "zero-batch": (["--batch_size=0", "--model_dir={tmp}/run"], "--batch_size must be positive"),
  "zero-epochs": (["--epochs=0", "--model_dir={tmp}/run"], "--epochs must be positive"),
  "unknown-optimizer": (["--optimizer=rmsprop", "--model_dir={tmp}/run"], "value should be one of"),
  "momentum-one": (["--momentum=1", "--model_dir={tmp}/run"], "--momentum must be in [0, 1)"),
  "batch-norm-lr-scale-with-adam": (
    ["--batch_norm_lr_scale=64", "--model_dir={tmp}/run"],
    "--batch_norm_lr_scale needs --optimizer=sgd",
  ),
  "nowhitening-without-airbench": (
    ["--nowhitening", "--model_dir={tmp}/run"],
    "--nowhitening applies to --model=airbench only",
  ),
  "nesterov-without-sgd": (
    ["--nesterov", "--model_dir={tmp}/run"],
    "--nesterov needs --optimizer=sgd",
  ),
  "missing-folder": (
    ["--dataset=folder:{tmp}/missing", "--model_dir={tmp}/run"],
    "not a directory",
  ),
  "folder-without-images": (
    ["--dataset=folder:{tmp}/no_images", "--model_dir={tmp}/run"],
    "holds no PNG or JPEG images",
  ),
  "empty-class-folder": (["--dataset=folder:{tmp}/empty_class", "--model_dir={tmp}/run"], "zebra"),
  "truncated-image": (["--dataset=folder:{tmp}/truncated", "--model_dir={tmp}/run"], "0001.jpg"),
}


def train_in_process(args):
  """train.py's command line, parsed and run here: (exit status, message)."""
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  try:
    train.main(train.parse_command_line(["train.py", *args], flag_values), flag_values)
  except flags.Error as error:  # app.run prints it and exits with 1.
    return 1, str(error)
  except SystemExit as exit:  # sys.exit("train.py: error: ...") exits with 1.
    return (1, exit.code) if isinstance(exit.code, str) else (exit.code, "")
  return 0, ""


@pytest.mark.parametrize("case", list(BAD_COMMAND_LINES))
def test_bad_command_lines_give_one_clear_message(tmp_path, model_dir, case):
  args, message = BAD_COMMAND_LINES[case]
  make_broken_inputs(str(tmp_path))
  args = [arg.format(tmp=tmp_path, run=model_dir) for arg in args]
  before = snapshot(tmp_path), snapshot(model_dir)
  result = run(*args)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert (snapshot(tmp_path), snapshot(model_dir)) == before  # Nothing written or touched.


@pytest.mark.parametrize("case", list(BAD_TRAIN_FLAGS))
def test_bad_train_flags_give_one_clear_message(tmp_path, case):
  args, message = BAD_TRAIN_FLAGS[case]
  make_broken_inputs(str(tmp_path))
  before = snapshot(tmp_path)
  status, printed = train_in_process([arg.format(tmp=tmp_path) for arg in args])
  assert status != 0 and message in printed  # Any other exception fails the test.
  assert snapshot(tmp_path) == before  # Nothing written or touched.


@pytest.mark.parametrize("checkpoint", ["missing", "garbage"])
def test_eval_of_a_missing_or_corrupt_checkpoint_is_one_clear_error(
  model_dir, tmp_path, checkpoint
):
  make_broken_inputs(str(tmp_path))  # garbage.index and garbage.data-00000-of-00001.
  with pytest.raises(checkpointing.CheckpointError, match="Cannot restore"):
    eval_main.evaluate_model_dir(model_dir, "test", checkpoint_path=str(tmp_path / checkpoint))


def test_eval_without_a_best_checkpoint_fails_cleanly(tmp_path):
  files.write_json(os.path.join(tmp_path, "run.json"), {"config": {}, "class_names": []})
  with pytest.raises(checkpointing.CheckpointError, match="No best checkpoint"):
    eval_main.evaluate_model_dir(str(tmp_path))


def test_eval_of_a_checkpoint_of_another_depth_is_refused(model_dir, tmp_path):
  other = models.create_model("resnet20", num_classes=3)
  path = tf.train.Checkpoint(model=other).write(str(tmp_path / "resnet20"))
  with pytest.raises(checkpointing.CheckpointError, match="Cannot restore resnet8"):
    eval_main.evaluate_model_dir(model_dir, "test", checkpoint_path=path)


def test_report_files_top_k_and_flip_test_time_augmentation(model_dir):
  metrics = eval_main.evaluate_model_dir(model_dir, "test", batch_size=8, tta="flip")
  output = os.path.join(model_dir, "eval", "test")
  predictions = np.load(os.path.join(output, "predictions.npz"))
  probabilities, labels = predictions["probabilities"], predictions["labels"]
  assert metrics["top_k_accuracy"]["1"] == pytest.approx(metrics["accuracy"])
  top2 = np.mean((np.argsort(-probabilities, axis=1)[:, :2] == labels[:, None]).any(axis=1))
  assert metrics["top_k_accuracy"]["2"] == pytest.approx(top2)  # 3 classes: top-1, top-2.
  assert metrics["ece"] == pytest.approx(metrics_lib.calibration(probabilities, labels)["ece"])

  # Flip TTA: the average of the model's probabilities on the images and their mirror.
  images, _, _ = sources.load_split(
    json.load(open(os.path.join(model_dir, "run.json")))["config"]["dataset"], "test"
  )
  record = run_record.read_run_record(model_dir)
  model = models.create_model(record["config"]["model"], num_classes=3)
  checkpointing.restore_model(model, checkpointing.best_checkpoint_path(model_dir))
  normalized = augment.normalize(images[:, :, ::-1], **run_record.input_normalization(record))
  flipped = tf.nn.softmax(model(normalized, training=False)).numpy()
  averaged = (probabilities + flipped) / 2
  assert metrics["flip_tta"]["accuracy"] == pytest.approx(
    np.mean(averaged.argmax(axis=1) == labels)
  )
  for name in ("report.txt", "mistakes.png", "reliability.png", "confusion_matrix.png"):
    assert os.path.getsize(os.path.join(output, name)) > 100, name
  report = open(os.path.join(output, "report.txt")).read()
  assert "macro avg" in report and "flip test-time augmentation" in report
  assert tf.io.decode_png(open(os.path.join(output, "reliability.png"), "rb").read()).shape[0] > 200


def test_compare_prints_one_table_of_several_runs(model_dir, tmp_path):
  other = str(tmp_path / "other_run")
  shutil.copytree(model_dir, other)
  result = run("eval.py", f"--compare={model_dir},{other}", "--split=test", "--batch_size=8")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  header = next(line for line in lines if line.startswith("model_dir"))
  assert "accuracy" in header and "top-2" in header and "ECE" in header
  rows = [line for line in lines if "resnet8" in line]
  assert len(rows) == 2 and rows[0].split()[2:] == rows[1].split()[2:]  # Same model, same figures.


def test_validation_tta_selects_by_what_eval_reports_with_the_same_tta(image_folder, tmp_path):
  # float32, as eval.py evaluates (see model_dir): in mixed_bfloat16 the losses differ by ~1e-3.
  config = debug_config(
    image_folder, validation_tta="flip_translate", epochs=1, precision="float32"
  )
  result = train.train_and_evaluate(config, str(tmp_path))
  metrics = eval_main.evaluate_model_dir(str(tmp_path), "validation", tta="flip_translate")
  assert metrics["num_examples"] == result["validation"]["num_examples"] == 24
  tta_accuracy = metrics["flip_translate_tta"]["accuracy"]
  assert result["best_accuracy"] == pytest.approx(tta_accuracy)
  assert result["validation"]["loss"] == pytest.approx(metrics["flip_translate_tta"]["loss"])


def test_tta_flip_is_shorthand_for_tta_flip_and_a_contradiction_is_refused():
  assert eval_main.tta_mode("none", tta_flip=True) == "flip"
  assert eval_main.tta_mode("flip_translate", tta_flip=False) == "flip_translate"
  with pytest.raises(config_lib.ConfigError, match="contradicts --tta=flip_translate"):
    eval_main.tta_mode("flip_translate", tta_flip=True)


def test_a_dataset_slug_is_readable_safe_and_one_per_folder(tmp_path, monkeypatch):
  assert report.dataset_slug("cifar10") == "cifar10"
  assert report.dataset_slug("cifar10_corrupted/fog_1:1.0.0") == "cifar10_corrupted-fog_1-1.0.0"
  first, second = tmp_path / "a" / "jpeg75", tmp_path / "b" / "jpeg75"
  digest = hashlib.sha256(str(first).encode()).hexdigest()[:8]
  assert report.dataset_slug(f"folder:{first}/") == f"folder-jpeg75-{digest}"
  assert report.dataset_slug(f"folder:{second}") != report.dataset_slug(f"folder:{first}")
  (tmp_path / "a").mkdir()
  monkeypatch.chdir(tmp_path / "a")
  assert report.dataset_slug("folder:jpeg75") == f"folder-jpeg75-{digest}"  # Relative: same.
  assert report.dataset_slug("folder:/data/my images (2)").startswith("folder-my_images_2_-")
  assert report.eval_dir("cifar10", "cifar10", "test") == ("eval/test", "eval_test")
  assert report.eval_dir("cifar10", f"folder:{first}", "validation") == (
    f"eval/folder-jpeg75-{digest}/validation",
    f"eval_folder-jpeg75-{digest}_validation",
  )


def test_evaluations_of_two_datasets_both_stay_and_both_show_in_the_results_table(
  model_dir, tmp_path
):
  other = write_image_folder(str(tmp_path / "heldout"), {"test": 2}, seed=1)  # 6 images.
  own = eval_main.evaluate_model_dir(model_dir, "test", batch_size=8, tta="flip")
  moved = eval_main.evaluate_model_dir(model_dir, "test", dataset=f"folder:{other}", batch_size=8)
  slug = report.dataset_slug(f"folder:{other}")
  own_slug = report.dataset_slug(run_record.read_run_record(model_dir)["config"]["dataset"])
  saved = files.read_json(os.path.join(model_dir, "eval", "test", "metrics.json"))
  assert saved == own and saved["num_examples"] == 21 and saved["output_dir"] == "eval/test"
  elsewhere = os.path.join(model_dir, "eval", slug, "test")
  assert files.read_json(os.path.join(elsewhere, "metrics.json")) == moved
  assert moved["num_examples"] == 6 and moved["output_dir"] == f"eval/{slug}/test"
  assert len(np.load(os.path.join(elsewhere, "predictions.npz"))["labels"]) == 6
  assert os.path.getsize(os.path.join(elsewhere, "confusion_matrix.png")) > 1000
  for run in ("eval_test", f"eval_{slug}_test"):
    assert glob.glob(os.path.join(model_dir, "tensorboard", run, "events.out.tfevents.*")), run

  summary = results.summarize_run(model_dir)
  assert summary["test_accuracy"] == {own_slug: own["accuracy"], slug: moved["accuracy"]}
  assert summary["test_accuracy_tta"] == {own_slug: own["flip_tta"]["accuracy"]}
  row = results.results_table([summary]).splitlines()[2]
  tests = f"{own_slug} {100 * own['accuracy']:.2f}; {slug} {100 * moved['accuracy']:.2f}"
  assert f"| {tests} | {own_slug} {100 * own['flip_tta']['accuracy']:.2f} |" in row


def test_earlier_tta_figures_are_kept_for_the_same_checkpoint_only(tmp_path):
  earlier = {"checkpoint": "run/best/best-3", "num_examples": 5, "flip_tta": {"accuracy": 0.4}}
  files.write_json(os.path.join(tmp_path, "metrics.json"), earlier)
  same = {"checkpoint": "run/best/best-3", "num_examples": 5}
  report.keep_earlier_tta(same, str(tmp_path))
  assert same["flip_tta"] == {"accuracy": 0.4}
  recomputed = dict(same, flip_tta={"accuracy": 0.6})
  report.keep_earlier_tta(recomputed, str(tmp_path))
  assert recomputed["flip_tta"] == {"accuracy": 0.6}  # This evaluation's own figure wins.
  newer = {"checkpoint": "run/best/best-6", "num_examples": 5}
  report.keep_earlier_tta(newer, str(tmp_path))
  assert "flip_tta" not in newer  # Another checkpoint's figure would be stale.


def test_a_run_evaluated_before_the_layout_shows_the_dataset_its_metrics_record(tmp_path):
  # eval/test/ of a run evaluated on another dataset before eval/<slug>/ existed.
  files.write_json(
    os.path.join(tmp_path, "eval", "test", "metrics.json"), {"dataset": "cifar10", "accuracy": 0.5}
  )
  files.write_json(
    os.path.join(tmp_path, "eval", "folder-x-0123abcd", "test", "metrics.json"), {"accuracy": 0.25}
  )
  found = results.test_evaluations(str(tmp_path), "folder:/data/x")
  assert {slug: metrics["accuracy"] for slug, metrics in found.items()} == {
    "cifar10": 0.5,
    "folder-x-0123abcd": 0.25,
  }
  assert list(found) == ["cifar10", "folder-x-0123abcd"]
