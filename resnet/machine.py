"""The machine a run's speed was measured on: its CPU (model, vector units) and GPUs.

run.json records it at every start (a resumed run may land on another machine), the
results table names it, and --precision=auto reads the CPU's features from it.
"""

import os
import platform

import tensorflow as tf


def cpu_model(cpuinfo_path="/proc/cpuinfo"):
  """The CPU's model name ("AMD EPYC", ...) from /proc/cpuinfo, else platform's guess."""
  try:
    with open(cpuinfo_path) as file:
      for line in file:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# CPU features that make reduced precision fast on x86 (oneDNN uses them);
# without them TensorFlow emulates bfloat16 and float16 arithmetic in float32.
REDUCED_PRECISION_CPU_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def _all_cpu_flags(cpuinfo_path):
  """The set of flags /proc/cpuinfo lists, or None where it is missing."""
  try:
    with open(cpuinfo_path) as file:
      present = set()
      for line in file:
        if line.startswith("flags"):
          present.update(line.split(":", 1)[1].split())
  except OSError:
    return None
  return present


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
  """Which of REDUCED_PRECISION_CPU_FLAGS this CPU has ({} where /proc/cpuinfo is missing)."""
  present = _all_cpu_flags(cpuinfo_path)
  if present is None:
    return {}
  return {flag: flag in present for flag in REDUCED_PRECISION_CPU_FLAGS}


# The CPU features that compute bfloat16 natively (else oneDNN emulates it, far slower:
# docs/speed.md), best first, with the names cpu_label and --precision=auto give them.
NATIVE_BFLOAT16_CPU_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"))


def cpu_label(cpuinfo_path="/proc/cpuinfo"):
  """The CPU's model and its widest vector unit, e.g. "AMD EPYC (AVX2)": the same model
  name covers CPUs whose speed differs 2.5x here (AVX2 only, AVX-512 BF16, AMX)."""
  present = _all_cpu_flags(cpuinfo_path) or set()
  for flag, name in (*NATIVE_BFLOAT16_CPU_FLAGS, ("avx512f", "AVX-512"), ("avx2", "AVX2")):
    if flag in present:
      return f"{cpu_model(cpuinfo_path)} ({name})"
  return cpu_model(cpuinfo_path)


def machine_description():
  """{"host", "cpu" (cpu_label), "cpu_count", "gpus"}: what a run's speed was measured on."""
  gpus = []
  for device in tf.config.list_physical_devices("GPU"):
    details = tf.config.experimental.get_device_details(device)
    gpus.append(details.get("device_name", device.name))
  return {"host": platform.node(), "cpu": cpu_label(), "cpu_count": os.cpu_count(), "gpus": gpus}
