"""The benchmark's report: rates, the machine, FLOP/s against the measured matmul peaks,
and the table printed from it."""

import os
import platform

import keras
import tensorflow as tf

from data import pipeline
from resnet import machine
from resnet.tools import timing


def report(results, flops, precisions, settings, matmul_size):
  """The JSON-ready report: rates, the machine, FLOP/s against the measured matmul peaks."""
  peaks = {
    "float32": timing.matmul_peak(tf.float32, matmul_size),
    "bfloat16": timing.matmul_peak(tf.bfloat16, matmul_size),
  }
  report = {
    "machine": {
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "host_cores": pipeline.host_cores(),  # The ones this process may use.
      "cpu_flags": machine.cpu_flags(),
      "devices": [d.name for d in tf.config.list_logical_devices()],
      "tensorflow": tf.__version__,
      "keras": keras.__version__,
    },
    "settings": settings,
    "images_per_second": results,
    "forward_flops_per_image": flops[precisions[0]],
    "matmul_peak_flops": peaks,
  }
  for precision in precisions:
    rate = results[f"train_step[{precision}]"]["median"]
    achieved = 3 * flops[precision] * rate  # Forward + backward ~ 3x the forward.
    peak = peaks["bfloat16" if "bfloat16" in precision else "float32"]
    report.setdefault("train_step_flops", {})[precision] = {
      "achieved": achieved,
      "fraction_of_peak": achieved / peak,
    }
  report["input_pipeline_per_core"] = (
    results["input_pipeline"]["median"] / report["machine"]["host_cores"]
  )
  if "keras_model_fit" in results:
    report["end_to_end_over_keras_fit"] = (
      results["end_to_end"]["median"] / results["keras_model_fit"]["median"]
    )
    report["end_to_end_over_keras_fit_keras_batch_norm"] = (
      results["end_to_end"]["median"] / results["keras_model_fit[keras_batch_norm]"]["median"]
    )
  return report


def format_report(report):
  """The report as a table of medians and spreads."""
  width = max(len(name) for name in report["images_per_second"]) + 2
  lines = [f"{'images/s':<{width}} {'median':>9} {'min':>9} {'max':>9}"]
  for name, figures in report["images_per_second"].items():
    lines.append(
      f"{name:<{width}} {figures['median']:>9.0f} {figures['min']:>9.0f} {figures['max']:>9.0f}"
    )
  flags_present = report["machine"].get("cpu_flags", {})
  if flags_present:
    names = [flag for flag, present in flags_present.items() if present]
    lines.append(
      f"CPU {report['machine']['processor']}, {report['machine']['cpu_count']} cores; "
      f"reduced-precision features: {', '.join(names) or 'none (bfloat16/float16 emulated)'}"
    )
  lines.append(
    f"input pipeline: {report['input_pipeline_per_core']:.0f} images/s per host core "
    f"({report['machine']['host_cores']} cores)"
  )
  lines.append(f"forward GFLOP per image: {report['forward_flops_per_image'] / 1e9:.4f}")
  if "peak_memory_bytes" in report:  # The process's peak: every variant measured, at once.
    memory = {key: value / 2**30 for key, value in report["peak_memory_bytes"].items()}
    lines.append(
      f"peak resident memory: {memory['end']:.2f} GiB ({memory['before_models']:.2f} GiB "
      "before the models were built)"
    )
  peaks = report["matmul_peak_flops"]
  lines.append(
    f"matmul peak GFLOP/s: float32 {peaks['float32'] / 1e9:.0f}, "
    f"bfloat16 {peaks['bfloat16'] / 1e9:.0f}"
  )
  for precision, figures in report["train_step_flops"].items():
    lines.append(
      f"train step [{precision}]: {figures['achieved'] / 1e9:.0f} GFLOP/s "
      f"= {figures['fraction_of_peak']:.0%} of the matmul peak"
    )
  if "end_to_end_over_keras_fit" in report:
    lines.append(
      f"end to end / model.fit: {report['end_to_end_over_keras_fit']:.2f}x (same model), "
      f"{report['end_to_end_over_keras_fit_keras_batch_norm']:.2f}x (Keras BatchNormalization)"
    )
  return "\n".join(lines)
