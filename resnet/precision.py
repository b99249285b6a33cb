"""--precision=auto: the precision this machine's devices run fastest without losing accuracy.

bfloat16 keeps float32's exponent range (no loss scaling) but is only fast where
the hardware computes in it: TPUs, NVIDIA GPUs from compute capability 8.0
(Ampere), and CPUs with AMX or AVX-512 BF16. Elsewhere on CPUs it is emulated,
far slower than float32 (docs/speed.md). Older
NVIDIA GPUs with tensor cores (Volta, Turing: 7.x) get float16 with loss
scaling. Those without (Pascal and before) get float32: compute capability 6.1
(P4, P40, GTX 10x0) runs float16 at a small fraction of its float32 rate, and
on a P100 (6.0) TensorFlow's guide expects no arithmetic gain, only memory
traffic saved, against loss scaling's cost and skipped steps.
"""

import dataclasses

import tensorflow as tf
from absl import logging

from resnet import machine, run_record

VOLTA = (7, 0)  # First NVIDIA compute capability with (float16) tensor cores.
AMPERE = (8, 0)  # First NVIDIA compute capability with bfloat16 tensor cores.


def choose(cpu_flags, gpu_compute_capabilities, tpu=False):
  """The precision for these devices, and why.

  Args:
    cpu_flags: {flag: present} as machine.cpu_flags() returns it.
    gpu_compute_capabilities: [(major, minor), or None where TensorFlow does not say]
      of the GPUs the run uses ([] for none).
    tpu: whether the run is on a TPU.

  Returns:
    (one of optimization.PRECISIONS, a reason for the log and the run record).
  """
  if tpu:
    return "mixed_bfloat16", "TPU"
  if gpu_compute_capabilities:  # The GPUs run the step, whatever the CPU can do.
    if None in gpu_compute_capabilities:
      return "float32", "GPU of unknown compute capability: no tensor cores assumed"
    oldest = min(gpu_compute_capabilities)  # Every replica waits for the slowest.
    name = f"GPU compute capability {oldest[0]}.{oldest[1]}"
    if oldest >= AMPERE:
      return "mixed_bfloat16", f"{name}: bfloat16 tensor cores"
    if oldest >= VOLTA:
      return "mixed_float16", f"{name}: float16 tensor cores, with loss scaling"
    return "float32", f"{name}: before 7.0, no tensor cores"
  for flag, name in machine.NATIVE_BFLOAT16_CPU_FLAGS:
    if cpu_flags.get(flag):
      return "mixed_bfloat16", f"CPU with {name}"
  return "float32", "CPU without AMX or AVX-512 BF16: bfloat16 would be emulated"


def gpu_compute_capabilities():
  """[(major, minor), or None where TensorFlow reports none] of this machine's GPUs."""
  capabilities = []
  for device in tf.config.list_physical_devices("GPU"):
    capability = tf.config.experimental.get_device_details(device).get("compute_capability")
    capabilities.append(tuple(capability) if capability else None)
  return capabilities


def choose_for_this_machine(strategy):
  """choose() for the devices `strategy` runs on."""
  tpu = isinstance(strategy, tf.distribute.TPUStrategy)
  return choose(machine.cpu_flags(), gpu_compute_capabilities(), tpu=tpu)


def resolve_auto(model_dir, strategy):
  """--precision=auto (the default) for the run in `model_dir` under `strategy`.

  A new run, and a run begun with auto, get this machine's choice (a resumed run
  follows the hardware it lands on). A run begun with a precision given, or
  before auto was the default (float32 then), keeps it: the same command resumes
  it as it was trained; an explicit --precision changes it.

  Args:
    model_dir: the run's directory (its run.json, if any, says how the run began).
    strategy: the strategy the run trains under (choose_for_this_machine).

  Returns:
    (the precision, what run.json records as precision_choice: "auto: P (why)" or
    "kept: P (...)").
  """
  record = run_record.read_run_record(model_dir)
  if record is not None and not (record.get("precision_choice") or "").startswith("auto:"):
    kept = record["config"]["precision"]
    return kept, f"kept: {kept} (begun with it given, not auto)"
  chosen, reason = choose_for_this_machine(strategy)
  return chosen, f"auto: {chosen} ({reason})"


def resolve(config, strategy, model_dir):
  """(`config` with --precision=auto resolved by resolve_auto, logged; the choice and its
  reason for run.json's precision_choice, or None when --precision was given)."""
  if config.precision != "auto":
    return config, None
  chosen, choice = resolve_auto(model_dir, strategy)
  logging.info("--precision=auto: %s.", choice)
  return dataclasses.replace(config, precision=chosen), choice
