"""train.py end to end: outputs, resume, refusals, and every config file."""

import dataclasses
import glob
import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from tensorboard.backend.event_processing import event_accumulator

import train
from data import augment, datasets, sources, training_data
from resnet import (
  checkpointing,
  export,
  files,
  machine,
  report,
  run_lock,
  run_record,
)
from resnet import config as config_lib
from resnet.models import airbench
from resnet.tools import curves, predict, results
from tests.conftest import CLASS_NAMES
from tests.test_run_lock import dead_pid, write_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
eval_main = importlib.import_module("eval")


def debug_config(image_folder, **overrides):
  config = config_lib.Config(
    model="resnet8",
    dataset=f"folder:{image_folder}",
    validation_size=24,
    epochs=2,
    batch_size=16,
    learning_rate=2e-3,
    lr_schedule="cosine",
    warmup_epochs=0.5,
    steps_per_epoch=3,
    log_every_steps=2,
    strategy="default",
    export=False,  # Tested once, with trained_run; it adds seconds to every run.
  )
  return dataclasses.replace(config, **overrides)


def event_tags(directory):
  accumulator = event_accumulator.EventAccumulator(
    directory, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.IMAGES: 0}
  )
  accumulator.Reload()
  return accumulator


def checkpoint_weights(path):
  """{name: value} of the model's and the optimizer's variables in the checkpoint at `path`."""
  reader = tf.compat.v1.train.NewCheckpointReader(path)  # As checkpointing.saved_step.
  return {
    name: reader.get_tensor(name)
    for name in reader.get_variable_to_shape_map()
    if name.startswith(("model/", "optimizer/"))
  }


def final_weights(model_dir):
  return checkpoint_weights(
    tf.train.latest_checkpoint(os.path.join(model_dir, checkpointing.LATEST_DIR))
  )


@pytest.fixture(scope="module")
def trained_run(image_folder, tmp_path_factory):
  """One short run, shared by the tests that only read its outputs."""
  model_dir = str(tmp_path_factory.mktemp("run"))
  result = train.train_and_evaluate(debug_config(image_folder, export=True), model_dir)
  return model_dir, result


def test_run_writes_checkpoints_best_records_and_summaries(trained_run):
  model_dir, result = trained_run
  assert result["step"] == 6 and result["epoch"] == 2
  assert result["validation"]["num_examples"] == 24
  assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-6")
  best = json.load(open(os.path.join(model_dir, "best", "best.json")))
  assert best["accuracy"] == pytest.approx(result["best_accuracy"])
  assert tf.train.latest_checkpoint(os.path.join(model_dir, "best")).endswith(best["checkpoint"])
  record = json.load(open(os.path.join(model_dir, "run.json")))
  assert record["config"]["model"] == "resnet8" and record["class_names"] == CLASS_NAMES
  assert record["num_train_examples"] == 120 - 24 and len(record["starts"]) == 1
  assert record["input_normalization"] == datasets.CIFAR10.normalization  # A new run's.
  assert os.path.getsize(os.path.join(model_dir, "class_samples.png")) > 1000
  assert os.path.exists(os.path.join(model_dir, "export", "saved_model", "saved_model.pb"))
  assert os.path.getsize(os.path.join(model_dir, "export", "model.keras")) > 10_000
  assert not os.path.exists(os.path.join(model_dir, run_lock.LOCK_FILE))  # Released at the end.

  train_events = event_tags(os.path.join(model_dir, "tensorboard", "train"))
  assert [e.step for e in train_events.Tensors("loss")] == [2, 3, 4, 6]  # Every 2, epoch ends.
  validation_events = event_tags(os.path.join(model_dir, "tensorboard", "validation"))
  accuracies = [
    float(tf.make_ndarray(e.tensor_proto)) for e in validation_events.Tensors("accuracy")
  ]
  assert [e.step for e in validation_events.Tensors("accuracy")] == [3, 6]
  assert max(accuracies) == pytest.approx(result["best_accuracy"])
  best_so_far = [
    float(tf.make_ndarray(e.tensor_proto)) for e in validation_events.Tensors("best_accuracy")
  ]
  assert best_so_far == pytest.approx(np.maximum.accumulate(accuracies))


def tags_by_plugin(accumulator):
  """{plugin name ("scalars", "images", ...): tags}, as TensorBoard's dashboards see them."""
  tags = {}
  for tag in accumulator.Tags()["tensors"]:
    plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
    tags.setdefault(plugin, set()).add(tag)
  return tags


def test_tensorboard_has_every_dashboard(trained_run):
  model_dir, _ = trained_run
  root = os.path.join(model_dir, "tensorboard")
  train_tags = tags_by_plugin(event_tags(os.path.join(root, "train")))
  assert {
    "loss",
    "accuracy",
    "learning_rate",
    "images_per_second",
    "gradient_norm",
    "weight_norm",
    "epoch_seconds",
  } <= train_tags["scalars"]
  assert {"class_samples", "augmented_inputs"} <= train_tags["images"]
  assert "weights/stem_conv/kernel" in train_tags["histograms"]
  assert len(train_tags["histograms"]) == 7 + 7 * 2 + 2  # 7 convs, 7 BNs (gamma, beta), dense.

  validation_tags = tags_by_plugin(event_tags(os.path.join(root, "validation")))
  per_class = {f"accuracy_per_class/{name}" for name in CLASS_NAMES}
  assert {"loss", "accuracy", "best_accuracy", *per_class} <= validation_tags["scalars"]
  assert {"confusion_matrix", "most_confident_mistakes"} <= validation_tags["images"]
  assert len(validation_tags["hparams"]) == 2  # The experiment's config and this run's values.

  run_events = event_tags(root)
  run_tags = tags_by_plugin(run_events)
  assert {"config", "run_record"} <= run_tags["text"]
  config_text = tf.make_ndarray(run_events.Tensors("config")[0].tensor_proto).item().decode()
  assert "| --model | resnet8 |" in config_text

  # Images decode to the size their summaries announce.
  validation_events = event_tags(os.path.join(root, "validation"))
  for tag in ("confusion_matrix", "most_confident_mistakes"):
    width, height, png = tf.make_ndarray(validation_events.Tensors(tag)[-1].tensor_proto)
    decoded = tf.io.decode_png(png)
    assert decoded.shape[:2] == (int(height), int(width)) and int(width) > 200, tag


def test_resume_matches_an_uninterrupted_run_and_every_tool_works_on_a_ram_model_dir(
  image_folder, tmp_path, monkeypatch, caplog
):
  # The interrupted run lives in ram://, as it could in gs://: every read and write of the
  # training, the export, eval.py, prediction, results and curves must go through gfile.
  # Lookahead (from step 3 on) is on: its average and counter must resume exactly too.
  monkeypatch.chdir(tmp_path)  # Where a stray relative "ram:" directory would appear.
  straight = str(tmp_path / "straight")
  config = debug_config(image_folder, epochs=3, lookahead=True, lookahead_start_epochs=1)
  train.train_and_evaluate(config, straight)

  gfile, root = tf.io.gfile, f"ram://{tmp_path.name}"
  interrupted = f"{root}/interrupted"
  config = dataclasses.replace(config, checkpoint_every_steps=4, log_every_steps=1)
  first = train.train_and_evaluate(config, interrupted)
  assert first["step"] == 9
  # Pretend the run died after its mid-epoch checkpoint at step 8 (epoch 3 is steps 7-9).
  for path in gfile.glob(os.path.join(interrupted, "checkpoints", "ckpt-9*")):
    gfile.remove(path)
  # The manager's state as it was then. Its timestamps matter: a manager lists only the
  # checkpoints newer than last_preserved_timestamp. Not GFile(..., "w"): ram:// appends.
  files.write_bytes(
    os.path.join(interrupted, "checkpoints", "checkpoint"),
    b'model_checkpoint_path: "ckpt-8"\nall_model_checkpoint_paths: "ckpt-8"\n'
    b"all_model_checkpoint_timestamps: 2.0\nlast_preserved_timestamp: 1.0\n",
  )
  caplog.set_level(logging.INFO, logger="absl")  # Whatever verbosity another test left.
  resumed = train.train_and_evaluate(config, interrupted)
  assert resumed["step"] == 9
  assert f"Resumed from {interrupted}/checkpoints/ckpt-8 at step 8" in caplog.text
  assert len(files.read_json(os.path.join(interrupted, "run.json"))["starts"]) == 2

  expected, actual = final_weights(straight), final_weights(interrupted)
  assert expected.keys() == actual.keys() and len(expected) > 40
  for name in expected:
    np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)

  exported = export.export_best_model(interrupted)
  export_dir = os.path.dirname(exported["keras"])
  assert sorted(gfile.listdir(export_dir)) == ["model.keras", "saved_model"]  # No temporaries.
  image = os.path.join(image_folder, "test", "cat", "0000.png")
  (prediction,) = predict.predict_files(exported["saved_model"], [image])
  assert prediction["probabilities"].shape == (len(CLASS_NAMES),)
  metrics = eval_main.evaluate_model_dir(interrupted, "test", batch_size=8)
  assert files.read_json(os.path.join(interrupted, "eval", "test", "metrics.json")) == metrics
  assert gfile.exists(os.path.join(interrupted, "eval", "test", "confusion_matrix.png"))
  summary = results.summarize_run(interrupted)
  own = report.dataset_slug(config.dataset)
  assert summary["step"] == 9 and summary["test_accuracy"] == {own: metrics["accuracy"]}
  assert [row["epoch"] for row in curves.read_curve(interrupted)] == [1, 2, 3, 3]  # Resumed.
  assert os.listdir(tmp_path) == ["straight"]
  gfile.rmtree(root)


def modification_times(model_dir):
  """{path: mtime} of every file and directory under `model_dir`, not itself: the
  writability probe and run.lock of a refused start come and go there."""
  paths = glob.glob(f"{model_dir}/**", recursive=True)
  return {path: os.path.getmtime(path) for path in paths if path != f"{model_dir}/"}


def test_airbench_whitens_with_the_run_s_own_training_images(image_folder, tmp_path):
  # The whitening kernel in the checkpoint is computed from the training split (not the
  # validation images), and it stays frozen while the rest trains.
  config = debug_config(
    image_folder,
    model="airbench",
    optimizer="sgd",
    nesterov=True,
    batch_norm_weight_decay=True,
    batch_norm_lr_scale=64,
    epochs=1,
    steps_per_epoch=2,
  )
  model_dir = str(tmp_path / "run")
  assert train.train_and_evaluate(config, model_dir)["step"] == 2
  data = training_data.TrainingData.load(
    config.dataset, config.validation_size, epochs=1, global_batch_size=16, seed=0
  )
  expected = airbench.whitening_kernel(augment.normalize(data.train[0]))
  weights = final_weights(model_dir)
  (kernel,) = [value for name, value in weights.items() if "whitening/kernel" in name]
  np.testing.assert_allclose(kernel, expected, rtol=1e-6)
  (bias,) = [value for name, value in weights.items() if name.startswith("model/whitening/bias")]
  assert np.abs(bias).max() > 0  # Trained.


def test_resume_with_other_model_is_refused_and_changes_nothing(trained_run, image_folder):
  model_dir, _ = trained_run
  before = modification_times(model_dir)
  with pytest.raises(
    checkpointing.CheckpointError, match="--model='resnet8' there, 'resnet20' now"
  ):
    train.train_and_evaluate(debug_config(image_folder, model="resnet20"), model_dir)
  assert modification_times(model_dir) == before
  assert not os.path.exists(os.path.join(model_dir, run_lock.LOCK_FILE))


def test_resume_with_other_optimizer_is_refused_and_old_records_mean_adam(
  trained_run, image_folder
):
  model_dir, _ = trained_run
  with pytest.raises(checkpointing.CheckpointError, match="--optimizer='adam' there, 'sgd' now"):
    train.train_and_evaluate(debug_config(image_folder, optimizer="sgd"), model_dir)
  # A run recorded before --optimizer existed trained with Adam: it still resumes.
  record_path = os.path.join(model_dir, "run.json")
  with open(record_path) as file:
    record = json.load(file)
  del record["config"]["optimizer"]
  files.write_json(record_path, record)
  assert train.train_and_evaluate(debug_config(image_folder), model_dir)["step"] == 6
  with open(record_path) as file:
    record = json.load(file)
  assert record["config"]["optimizer"] == "adam"
  assert record["machines"][-1]["cpu"] == machine.cpu_label()


def test_a_second_run_on_a_live_directory_is_refused_and_changes_nothing(trained_run, image_folder):
  model_dir, _ = trained_run
  write_lock(model_dir, started=1_700_000_000)  # A live run: this process.
  before, entries = modification_times(model_dir), os.listdir(model_dir)
  try:
    with pytest.raises(
      run_lock.RunLockedError,
      match=f"in use by another training run \\(host .*, pid {os.getpid()}, started 2023-11-14",
    ):
      train.train_and_evaluate(debug_config(image_folder), model_dir)
    assert modification_times(model_dir) == before  # Nothing of the live run touched.
    assert sorted(os.listdir(model_dir)) == sorted(entries)  # No file left behind.
  finally:
    os.remove(os.path.join(model_dir, run_lock.LOCK_FILE))


def test_finished_run_does_nothing_more(trained_run, image_folder):
  model_dir, first = trained_run
  write_lock(model_dir, pid=dead_pid())  # Left by a killed run: it does not block.
  again = train.train_and_evaluate(debug_config(image_folder), model_dir)
  assert again["step"] == 6 and again["best_accuracy"] == first["best_accuracy"]
  assert not os.path.exists(os.path.join(model_dir, run_lock.LOCK_FILE))


def test_auto_precision_is_chosen_from_the_cpu_and_recorded(image_folder, tmp_path, monkeypatch):
  monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx512_bf16": False, "amx_bf16": True})
  config = debug_config(image_folder, precision="auto", epochs=1, steps_per_epoch=1)
  train.train_and_evaluate(config, str(tmp_path))
  record = run_record.read_run_record(str(tmp_path))
  assert record["config"]["precision"] == "mixed_bfloat16"
  assert record["precision_choice"] == "auto: mixed_bfloat16 (CPU with AMX)"


def test_the_default_precision_is_auto_and_a_given_one_is_kept(image_folder, tmp_path, monkeypatch):
  # A CPU with bfloat16 (auto: mixed_bfloat16), whatever this machine has.
  monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx512_bf16": True, "amx_bf16": False})
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(["train.py", "--model_dir=unused"])
  assert config_lib.config_from_flags(flag_values).precision == "auto"
  default = debug_config(image_folder, epochs=1, steps_per_epoch=1)
  default = dataclasses.replace(default, precision=config_lib.Config().precision)

  def trained_in(model_dir, config):
    train.train_and_evaluate(config, model_dir)
    record = run_record.read_run_record(model_dir)
    return record["config"]["precision"], record["precision_choice"]

  new, given = str(tmp_path / "new"), str(tmp_path / "given")
  assert trained_in(new, default) == (
    "mixed_bfloat16",
    "auto: mixed_bfloat16 (CPU with AVX-512 BF16)",
  )
  assert trained_in(given, dataclasses.replace(default, precision="float32")) == ("float32", None)
  # Resumed with the default: a run begun with a precision given (or before auto was the
  # default) keeps it; a run begun with auto follows the machine it resumes on.
  monkeypatch.setattr(machine, "cpu_flags", lambda: {})
  more = dataclasses.replace(default, epochs=2)
  assert trained_in(given, more) == ("float32", "kept: float32 (begun with it given, not auto)")
  assert trained_in(given, dataclasses.replace(more, epochs=3))[0] == "float32"
  assert trained_in(new, more)[0] == "float32"  # This CPU has no bfloat16.


def test_tfds_cifar10_end_to_end_on_mock_data(mock_cifar10, tmp_path):
  config = config_lib.Config(
    model="resnet8",
    dataset="cifar10",
    validation_size=100,
    epochs=1,
    batch_size=32,
    steps_per_epoch=2,
    log_every_steps=1,
    strategy="default",
  )
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and result["validation"]["num_examples"] == 100


def test_two_replicas_train_to_the_end(image_folder, tmp_path, caplog):
  result = train.train_and_evaluate(debug_config(image_folder, strategy="mirrored"), str(tmp_path))
  assert result["step"] == 6 and result["validation"]["num_examples"] == 24
  # Batch 16 over 2 replicas: BatchNorm over 8 images each, said once at the start.
  warnings = [r.message for r in caplog.records if "BatchNorm over only 8 images" in r.message]
  assert len(warnings) == 1 and "--sync_batch_norm" in warnings[0]


@pytest.mark.parametrize("crop_padding", [-1, 17])
def test_crop_padding_out_of_range_is_refused_before_anything_is_written(
  image_folder, tmp_path, crop_padding
):
  with pytest.raises(config_lib.ConfigError, match=r"--crop_padding must be in \[0, 16\] pixels"):
    train.train_and_evaluate(debug_config(image_folder, crop_padding=crop_padding), str(tmp_path))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.cfg")), ids=os.path.basename)
def test_every_config_parses(path):
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(["train.py", f"--flagfile={path}", "--model_dir=/tmp/unused"])
  config = config_lib.config_from_flags(flag_values)
  with open(path) as file:
    header = file.read()
  assert header.startswith("#") and "python train.py" in header and "untime" in header
  assert config.epochs > 0 and config.batch_size > 0


def test_without_model_dir_the_flagfile_names_the_run_and_the_same_command_resumes(
  image_folder, tmp_path, monkeypatch, caplog
):
  monkeypatch.chdir(tmp_path)  # runs/ is relative to where the command runs.
  config = debug_config(image_folder, epochs=1)
  flagfile = tmp_path / "tiny.cfg"
  values = {key: value for key, value in dataclasses.asdict(config).items() if value is not None}
  flagfile.write_text("".join(f"--{key}={value}\n" for key, value in values.items()))

  def run_the_command():
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    argv = train.parse_command_line(["train.py", "--flagfile", str(flagfile)], flag_values)
    train.main(argv, flag_values)

  with caplog.at_level(logging.INFO, logger="absl"):  # Whatever verbosity a test left.
    run_the_command()
    assert "Model directory: runs/tiny (the default for this command)." in caplog.text
    run_the_command()
    assert "Resumed from runs/tiny/checkpoints/ckpt-3 at step 3" in caplog.text
  assert len(run_record.read_run_record("runs/tiny")["starts"]) == 2
  assert os.listdir("runs") == ["tiny"]
  assert train.default_model_dir(["train.py", "--flagfile=configs/fast.cfg"], "x") == "runs/fast"
  assert train.default_model_dir(["train.py", "--model=resnet8"], "resnet8") == "runs/resnet8"


def test_ctrl_c_while_the_data_loads_is_one_line_and_exit_130(
  image_folder, tmp_path, monkeypatch, capsys
):
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(["train.py", f"--dataset=folder:{image_folder}", f"--model_dir={tmp_path}/run"])

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(training_data.TrainingData, "load", interrupted)
  with pytest.raises(SystemExit) as exit_info:
    train.main(["train.py"], flag_values)
  assert exit_info.value.code == 130  # As a Ctrl-C during training: 128 + SIGINT.
  assert capsys.readouterr().err == (
    "Stopped by SIGINT outside the training loop; what was saved before is intact; run the "
    "same command again to resume.\n"
  )
  assert os.listdir(tmp_path) == []


def test_non_finite_loss_stops_without_saving_and_keeps_the_best(trained_run, image_folder):
  model_dir, _ = trained_run
  before = {path: os.path.getmtime(path) for path in glob.glob(f"{model_dir}/best/*")}
  config = debug_config(image_folder, epochs=4, learning_rate=1e30, log_every_steps=1)
  with pytest.raises(
    checkpointing.DivergedError, match=r"loss became (nan|inf).*Last good checkpoint: .*ckpt-6"
  ):
    train.train_and_evaluate(config, model_dir)
  assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-6")
  assert {path: os.path.getmtime(path) for path in glob.glob(f"{model_dir}/best/*")} == before


def test_sigterm_saves_at_the_current_step_and_the_same_command_resumes(image_folder, tmp_path):
  # The model directory is a file:// URL, as gs:// would be: train.py and the resumed run
  # with its export must reach it through gfile, never through a relative "file:" directory.
  # (tests/test_eval.py and test_export.py run eval.py and resnet.tools.predict on file:// too.)
  model_dir, work_dir = f"file://{tmp_path}/run", tmp_path / "cwd"
  work_dir.mkdir()
  env = dict(os.environ, PYTHONPATH=REPO)  # The working directory is not the repository.
  config = debug_config(image_folder, epochs=50, steps_per_epoch=5, log_every_steps=1)
  command = [sys.executable, os.path.join(REPO, "train.py"), f"--model_dir={model_dir}"] + [
    f"--{key}={value}" for key, value in dataclasses.asdict(config).items() if value is not None
  ]
  process = subprocess.Popen(command, cwd=work_dir, env=env, stderr=subprocess.PIPE, text=True)
  for line in process.stderr:  # Wait until training is under way (log lines go to stderr).
    if "step 2/250" in line:
      process.send_signal(signal.SIGTERM)
      break
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM
  stopped_at = int(re.search(r"Stopped by SIGTERM at step (\d+)", stderr).group(1))
  assert 2 <= stopped_at < 250 and "Traceback" not in stderr
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  assert latest.endswith(f"ckpt-{stopped_at}")

  resumed = train.train_and_evaluate(dataclasses.replace(config, epochs=1, export=True), model_dir)
  assert resumed["step"] == max(stopped_at, 5)  # Resumed, not restarted: nothing left to do
  # when the stop came after epoch 1; otherwise epoch 1 is finished from the saved step.

  run_dir = tmp_path / "run"  # The same directory, as a local path.
  assert len(json.loads((run_dir / "run.json").read_text())["starts"]) == 2
  assert (run_dir / "class_samples.png").stat().st_size > 1000
  assert (run_dir / "export" / "saved_model" / "saved_model.pb").exists()
  assert os.listdir(work_dir) == [] and not os.path.exists(os.path.join(REPO, "file:"))


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(image_folder, tmp_path):
  model_dir = str(tmp_path)
  config = debug_config(image_folder, checkpoint_every_steps=2)
  train.train_and_evaluate(config, model_dir)  # Checkpoints kept: steps 3, 4 and 6.
  (data_file,) = glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-6.data-*"))
  with open(data_file, "r+b") as file:
    file.truncate(os.path.getsize(data_file) // 2)  # As a kill during the write would leave it.
  resumed = train.train_and_evaluate(dataclasses.replace(config, epochs=3), model_dir)
  assert resumed["step"] == 9
  record = json.load(open(os.path.join(model_dir, "run.json")))
  assert len(record["starts"]) == 2
  # Step 6 was saved again, over the damaged file, and now restores (not skipped because
  # the manager already listed a ckpt-6).
  saved_again = os.path.join(model_dir, "checkpoints", "ckpt-6")
  assert tf.train.load_variable(saved_again, "step/.ATTRIBUTES/VARIABLE_VALUE") == 6

  for path in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index")):
    open(path, "wb").close()  # Every checkpoint damaged: refuse rather than start afresh.
  with pytest.raises(checkpointing.CheckpointError, match="can be restored"):
    train.train_and_evaluate(dataclasses.replace(config, epochs=4), model_dir)


def test_a_batch_larger_than_the_training_split_is_refused(image_folder, tmp_path):
  with pytest.raises(sources.DataError, match="does not fit the 96 training examples"):
    train.train_and_evaluate(
      debug_config(image_folder, batch_size=128, steps_per_epoch=0), str(tmp_path / "run")
    )
  assert not os.path.exists(tmp_path / "run")


def test_sigkill_at_random_steps_then_the_same_command_ends_bit_identical(image_folder, tmp_path):
  # With --deterministic, a run killed twice without warning ends with the weights of an
  # uninterrupted run, bit for bit: exact resume, and op determinism across processes
  # (subprocesses: op determinism, once enabled, stays on for the whole process).
  config = debug_config(image_folder, epochs=3, log_every_steps=1, checkpoint_every_steps=1)
  command = [sys.executable, "train.py", "--deterministic"] + [
    f"--{key}={value}"
    for key, value in dataclasses.asdict(config).items()
    if value is not None and key != "deterministic"
  ]
  straight = subprocess.run(
    command + [f"--model_dir={tmp_path / 'straight'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert straight.returncode == 0, straight.stderr[-2000:]

  interrupted = [*command, f"--model_dir={tmp_path / 'interrupted'}"]
  kill_steps = sorted(np.random.default_rng(0).choice(np.arange(1, 9), size=2, replace=False))
  for kill_step in kill_steps:  # Killed mid-epoch or at an epoch end, without warning.
    process = subprocess.Popen(interrupted, cwd=REPO, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
      if f"step {kill_step}/9 " in line or "Already trained" in line:
        process.kill()
        break
    process.communicate(timeout=120)
  final = subprocess.run(interrupted, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert final.returncode == 0, final.stderr[-2000:]
  assert "Resumed from" in final.stderr

  expected, actual = (
    final_weights(str(tmp_path / "straight")),
    final_weights(str(tmp_path / "interrupted")),
  )
  assert expected.keys() == actual.keys() and len(expected) > 40
  for name in expected:
    np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_on_nan_recover_restores_and_lowers_the_learning_rate(image_folder, tmp_path):
  # 1e30 diverges at once; one recovery at 1e30 x 1e-32 = 1e-2 trains to the end.
  config = debug_config(
    image_folder, learning_rate=1e30, on_nan="recover", nan_lr_factor=1e-32, log_every_steps=1
  )
  result = train.train_and_evaluate(config, str(tmp_path / "recovers"))
  assert result["step"] == 6 and np.isfinite(result["validation"]["loss"])
  path = tf.train.latest_checkpoint(str(tmp_path / "recovers" / "checkpoints"))
  assert tf.train.load_variable(path, "lr_multiplier/.ATTRIBUTES/VARIABLE_VALUE") == np.float32(
    1e-32
  )
  assert tf.train.load_variable(path, "nan_recoveries/.ATTRIBUTES/VARIABLE_VALUE") == 1

  # Halving a rate of 1e30 never helps: three recoveries, then a clear stop,
  # and no non-finite model was ever saved as best.
  stubborn = dataclasses.replace(config, nan_lr_factor=0.5)
  with pytest.raises(checkpointing.DivergedError, match="Stopped after 3 recoveries"):
    train.train_and_evaluate(stubborn, str(tmp_path / "stops"))
  assert not os.path.exists(tmp_path / "stops" / "best")


@pytest.fixture
def read_only_dir(tmp_path):
  """A directory nobody can write to, not even root (chmod alone does not stop root)."""
  directory = tmp_path / "read_only"
  directory.mkdir()
  (directory / "notes.txt").write_text("a user's notes\n")
  directory.chmod(0o555)
  immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(directory)]).returncode == 0
  yield directory
  if immutable:
    subprocess.run(["chattr", "-i", str(directory)], check=True)
  directory.chmod(0o755)


def test_a_read_only_model_dir_is_refused_before_training(image_folder, read_only_dir):
  model_dir = read_only_dir / "run"
  with pytest.raises(
    checkpointing.CheckpointError, match="Cannot write to --model_dir=.*(denied|ermitted)"
  ):
    train.train_and_evaluate(debug_config(image_folder), str(model_dir))
  assert os.listdir(read_only_dir) == ["notes.txt"]
  with pytest.raises(checkpointing.CheckpointError, match="Cannot write to --model_dir"):
    train.train_and_evaluate(debug_config(image_folder), str(read_only_dir))
  assert os.listdir(read_only_dir) == ["notes.txt"]


def test_a_disk_full_during_a_save_stops_cleanly_and_keeps_what_was_saved(
  image_folder, tmp_path, monkeypatch
):
  model_dir = str(tmp_path)
  config = debug_config(image_folder, epochs=3)
  train.train_and_evaluate(dataclasses.replace(config, epochs=1), model_dir)

  def saved():  # Every checkpoint file, latest and best, with its modification time.
    paths = glob.glob(f"{model_dir}/checkpoints/*") + glob.glob(f"{model_dir}/best/*")
    return {path: os.path.getmtime(path) for path in paths}

  before = saved()

  def disk_full(self, *args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

  monkeypatch.setattr(tf.train.CheckpointManager, "save", disk_full)
  with pytest.raises(
    checkpointing.CheckpointError, match="No space left on device.*ckpt-3.*same command"
  ):
    train.train_and_evaluate(config, model_dir)
  assert saved() == before and len(before) > 6
  monkeypatch.undo()  # Space freed: the same command resumes from ckpt-3.
  assert train.train_and_evaluate(config, model_dir)["step"] == 9


def test_a_batch_that_does_not_divide_across_replicas_is_refused(image_folder, tmp_path):
  config = debug_config(image_folder, strategy="mirrored", batch_size=15)
  with pytest.raises(
    sources.DataError, match="does not divide over 2 replicas; nearest that do: 14 or 16"
  ):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
