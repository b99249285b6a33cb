"""Two local worker processes: they restore the same state or all stop with one line;
NaN recovery and the export work on several workers."""

import dataclasses
import glob
import os
import shutil

import pytest

import train
from resnet import checkpointing, export
from resnet.tools import predict
from tests.conftest import CLASS_NAMES
from tests.test_distributed import finish, start_workers
from tests.test_run_lock import write_lock
from tests.test_train import debug_config

# A refusal must end every worker well within this (seconds); a hang never would.
REFUSAL_TIMEOUT = 240


def error_lines(log):
  return [line for line in log.splitlines() if line.startswith("train.py: error: ")]


@pytest.fixture(scope="module")
def one_process_epoch(image_folder, tmp_path_factory):
  """(config, the model directory of its first epoch in one process: ckpt-2 and ckpt-3)."""
  config = debug_config(image_folder, precision="float32", checkpoint_every_steps=2)
  model_dir = str(tmp_path_factory.mktemp("one_process"))
  train.train_and_evaluate(dataclasses.replace(config, epochs=1), model_dir)
  return config, model_dir


def test_workers_that_restore_different_checkpoints_stop_with_one_line_each(
  one_process_epoch, tmp_path
):
  # Each worker restores from its own --model_dir: without shared storage, or when one
  # worker cannot read the newest checkpoint (damaged in its copy only, as a failed read
  # of gs:// would leave it), they would train on from different steps, and their
  # collectives stop matching.
  config, one_process_dir = one_process_epoch
  chief_dir, other_dir = str(tmp_path / "chief"), str(tmp_path / "other")
  shutil.copytree(one_process_dir, chief_dir)
  shutil.copytree(one_process_dir, other_dir)
  (data_file,) = glob.glob(os.path.join(other_dir, checkpointing.LATEST_DIR, "ckpt-3.data-*"))
  with open(data_file, "r+b") as file:
    file.truncate(os.path.getsize(data_file) // 2)

  processes = start_workers(config, [chief_dir, other_dir], tmp_path)
  codes, logs = finish(processes, tmp_path, timeout=REFUSAL_TIMEOUT)
  assert codes == [1, 1], logs[0][-3000:] + logs[1][-3000:]
  for log in logs:
    (line,) = error_lines(log)
    assert "(worker 0: ckpt-3 at step 3; worker 1: ckpt-2 at step 2)" in line
    assert "Traceback" not in log


def test_a_refusal_on_the_chief_alone_stops_every_worker_with_one_line(image_folder, tmp_path):
  # Only the chief probes and locks the model directory: its refusal must reach the
  # other worker as an error, not leave it waiting for the chief in a collective.
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  write_lock(str(model_dir), started=1_700_000_000)  # A live run: this test's process.
  config = debug_config(image_folder, precision="float32")
  codes, logs = finish(
    start_workers(config, str(model_dir), tmp_path), tmp_path, timeout=REFUSAL_TIMEOUT
  )
  assert codes == [1, 1], logs[0][-3000:] + logs[1][-3000:]
  (chief_line,), (other_line,) = (error_lines(log) for log in logs)
  assert "is in use by another training run" in chief_line
  assert other_line.startswith("train.py: error: worker 0 stopped: ")
  assert chief_line.split("error: ")[1] in other_line
  assert "Traceback" not in logs[0] + logs[1]


def test_two_workers_recover_from_nan_to_a_one_process_checkpoint_and_export(
  one_process_epoch, image_folder, tmp_path
):
  # The preemption handler, created after the restore, attaches a variable of its own to
  # the checkpoint; a checkpoint saved by one process lacks it. The chief exports after
  # the other worker has left.
  config, one_process_dir = one_process_epoch
  model_dir = str(tmp_path / "run")
  shutil.copytree(one_process_dir, model_dir)
  # Step 4's loss is that of ckpt-3's weights; steps 5-6 diverge and go back to ckpt-3
  # (no checkpoint at step 4 in between).
  diverging = dataclasses.replace(
    config,
    learning_rate=1e30,
    on_nan="recover",
    nan_lr_factor=1e-32,
    checkpoint_every_steps=0,
    export=True,
  )
  codes, logs = finish(start_workers(diverging, model_dir, tmp_path), tmp_path)
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  for log in logs:
    assert f"Restored {model_dir}/checkpoints/ckpt-3 (step 3)" in log
    assert "Done at step 6" in log
  paths = export.export_paths(model_dir)
  image = os.path.join(image_folder, "test", "cat", "0000.png")
  (prediction,) = predict.predict_files(paths["saved_model"], [image])
  assert prediction["probabilities"].shape == (len(CLASS_NAMES),)
  assert os.path.getsize(paths["keras"]) > 10_000
