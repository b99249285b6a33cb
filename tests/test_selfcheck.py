"""python -m resnet.tools.selfcheck: the verdicts a GPU user runs first, here on logical CPU
devices."""

import tensorflow as tf

from resnet import accelerators, distribute
from resnet.tools import selfcheck


def test_the_self_check_passes_on_two_logical_cpu_devices():
  # In this process: tests/conftest.py splits the CPU in two, as --cpu_devices=2 does.
  verdicts = list(selfcheck.run_checks(model="resnet8", steps=2, per_replica_batch=16))
  assert {verdict.check: verdict.status for verdict in verdicts} == {
    "devices": "INFO",
    "all-reduce": "INFO",
    "replicas agree": "PASS",
    "precision float32": "PASS",
    "precision mixed_float16": "PASS",
    "precision mixed_bfloat16": "PASS",
    "speed": "INFO",
    "input pipeline": "PASS",
  }, "\n".join(map(str, verdicts))
  assert "2 replica(s); all-reduce: ReductionToOneDevice" in str(verdicts[1])


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


def test_nvidia_gpus_that_tensorflow_does_not_see_fail_the_devices_check(monkeypatch):
  # The driver shows a GPU, TensorFlow (here: no GPU) does not: training would run on the CPU.
  monkeypatch.setattr(accelerators, "nvidia_gpus", lambda: ["Tesla T4"])
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  devices = next(selfcheck.run_checks(model="resnet8"))  # The first verdict; nothing trains.
  assert devices.check == "devices" and devices.status == "FAIL", devices
  assert "NVIDIA GPU(s) (Tesla T4) but TensorFlow sees none" in devices.message
  monkeypatch.setattr(accelerators, "nvidia_gpus", lambda: [])
  assert next(selfcheck.run_checks(model="resnet8")).status == "INFO"
