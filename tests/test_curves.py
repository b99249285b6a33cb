"""resnet.tools.curves reads a run's TensorBoard events into the right table."""

import json

import pytest
import tensorflow as tf

from resnet.tools import curves


def _write_run(model_dir, steps_per_epoch=10):
  record = {"steps_per_epoch": steps_per_epoch, "config": {"model": "resnet20", "batch_size": 4}}
  (model_dir / "run.json").write_text(json.dumps(record))
  root = tf.summary.create_file_writer(str(model_dir / "tensorboard"))
  train = tf.summary.create_file_writer(str(model_dir / "tensorboard" / "train"))
  validation = tf.summary.create_file_writer(str(model_dir / "tensorboard" / "validation"))
  with root.as_default():
    tf.summary.text("config", "start", step=0)
  for step, accuracy in [(5, 0.25), (10, 0.5), (15, 0.625), (20, 0.75)]:
    with train.as_default():
      tf.summary.scalar("accuracy", accuracy, step=step)
  for step, accuracy in [(10, 0.375), (20, 0.875)]:
    with validation.as_default():
      tf.summary.scalar("accuracy", accuracy, step=step)
  for writer in (root, train, validation):
    writer.close()


def test_curve_rows_table_and_plot(tmp_path):
  _write_run(tmp_path)
  rows = curves.read_curve(str(tmp_path))
  assert [row["epoch"] for row in rows] == [1, 2]
  assert [row["train_accuracy"] for row in rows] == [0.5, 0.75]
  assert [row["validation_accuracy"] for row in rows] == [0.375, 0.875]
  assert all(0 <= row["minutes"] < 5 for row in rows)
  # 3 x ResNet-20's forward FLOPs x 4 images per step, at steps 10 and 20.
  assert [row["training_flops"] for row in rows] == [
    3 * 81_102_080 * 4 * 10,
    2 * 3 * 81_102_080 * 4 * 10,
  ]
  table = curves.markdown_table(rows).splitlines()
  assert len(table) == 4 and table[-1].endswith("| 75.0 | 87.50 |")
  curves.plot_curves({"run": rows}, str(tmp_path / "curves.png"))
  assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_directory_without_events_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="No TensorBoard validation events"):
    curves.read_curve(str(tmp_path))


def test_minutes_are_the_epochs_time_without_a_resumes_pause(tmp_path):
  _write_run(tmp_path)
  with tf.summary.create_file_writer(str(tmp_path / "tensorboard" / "train")).as_default():
    # Epoch 1 took 60 s; the run was cut off in epoch 2 and its resume logged epoch 1 again
    # (90 s, the last value counts), then epoch 2 in 120 s. Hours of waiting for the resume
    # between them do not count.
    for step, seconds in [(10, 60.0), (10, 90.0), (20, 120.0)]:
      tf.summary.scalar("epoch_seconds", seconds, step=step)
  rows = curves.read_curve(str(tmp_path))
  assert [row["minutes"] for row in rows] == [1.5, 3.5]
