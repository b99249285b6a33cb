"""python -m resnet.selfcheck: the verdicts a GPU user runs first, here on logical CPU devices."""

import re
import subprocess
import sys

import tensorflow as tf

from resnet import distribute, selfcheck
from tests.test_train import REPO


def test_the_self_check_passes_on_two_logical_cpu_devices():
  result = subprocess.run(
    [sys.executable, "-m", "resnet.selfcheck", "--cpu_devices=2", "--model=resnet8"]
    + ["--steps=2", "--per_replica_batch=16"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  lines = [re.split(r"\s{2,}", line, maxsplit=2) for line in result.stdout.splitlines()]
  verdicts = {check: status for status, check, _ in lines}
  assert verdicts == {
    "devices": "INFO",
    "all-reduce": "INFO",
    "replicas agree": "PASS",
    "precision float32": "PASS",
    "precision mixed_float16": "PASS",
    "precision mixed_bfloat16": "PASS",
    "speed": "INFO",
    "input pipeline": "PASS",
  }, result.stdout
  assert "2 replica(s); all-reduce: ReductionToOneDevice" in result.stdout


def test_replicas_that_scale_the_gradient_wrongly_fail_the_check(monkeypatch):
  # The classic bug: each replica averages its loss over its own batch, not the
  # global one, so the summed gradient is the replica count times too large.
  def per_replica_mean(per_example_loss, global_batch_size=None):
    del global_batch_size
    return tf.reduce_mean(per_example_loss)

  monkeypatch.setattr(tf.nn, "compute_average_loss", per_replica_mean)
  verdict = selfcheck.check_replicas_agree(
    distribute.create_strategy("mirrored"), steps=2, per_replica_batch=4
  )
  assert verdict.status == "FAIL", verdict
  assert float(verdict.message.split("difference ")[1].split()[0]) > 1e-3
