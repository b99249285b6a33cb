"""The benchmark runs and reports every figure (its numbers are for people, not asserts)."""

import json

import pytest

from resnet import machine
from resnet.tools import benchmark, benchmark_report, step_profile


def test_a_tiny_benchmark_reports_every_figure(tmp_path):
  # Without --xla: its variant is train_lib's --jit_compile step, which test_distributed
  # trains; compiling it here cost the suite 1-2 minutes on a 2-core CPU.
  report = benchmark.run_benchmark("resnet8", batch_size=16, steps=2, repeats=1, matmul_size=512)
  rates = report["images_per_second"]
  assert set(rates) == {
    "train_step[float32]",
    "train_step[float32,keras_batch_norm]",
    "end_to_end",
    "evaluation",
    "input_pipeline",
    "keras_model_fit",
    "keras_model_fit[keras_batch_norm]",
  }
  assert all(figures["median"] > 0 and len(figures["runs"]) == 1 for figures in rates.values())
  assert report["matmul_peak_flops"]["float32"] > 1e9
  assert 0 < report["train_step_flops"]["float32"]["fraction_of_peak"] < 1.5
  assert report["end_to_end_over_keras_fit"] > 0
  assert report["end_to_end_over_keras_fit_keras_batch_norm"] > 0
  (tmp_path / "report.json").write_text(json.dumps(report))  # JSON-ready.
  text = benchmark_report.format_report(report)
  assert "end to end / model.fit" in text and "matmul peak" in text
  assert report["machine"]["host_cores"] >= 1 and report["input_pipeline_per_core"] > 0
  assert "images/s per host core" in text
  memory = report["peak_memory_bytes"]
  assert 2**20 < memory["before_models"] <= memory["end"] and "peak resident memory" in text
  alone = benchmark.run_pipeline_benchmark(batch_size=16, batches=2, repeats=1)
  (figures,) = alone["augmentations"].values()
  assert figures["per_core"] == figures["images_per_second"]["median"] / alone["host_cores"] > 0


def test_the_pipeline_benchmark_measures_each_augmentation():
  names = ("none", "cutout", "mixup")
  report = benchmark.run_pipeline_benchmark(
    batch_size=16, batches=2, repeats=1, augmentations=names
  )
  assert tuple(report["augmentations"]) == names
  assert all(figures["per_core"] > 0 for figures in report["augmentations"].values())


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nflags\t: fpu\n")
  flags = machine.cpu_flags(str(cpuinfo))
  assert flags == {
    "avx512f": True,
    "avx512_bf16": True,
    "avx512_fp16": False,
    "amx_bf16": False,
    "amx_fp16": False,
  }
  assert machine.cpu_flags(str(tmp_path / "missing")) == {}
  cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n")
  assert machine.cpu_label(str(cpuinfo)) == "AMD EPYC (AVX2)"


def test_the_step_profile_counts_every_convolution_of_the_step(tmp_path):
  steps = 2
  seconds = step_profile.profile_train_steps("resnet8", 8, "float32", steps, str(tmp_path))
  times = step_profile.op_times(str(tmp_path))
  calls_per_step = {op: calls / steps for op, (_, calls) in times.items()}
  # ResNet-8: 7 convolutions, each run forward and backward w.r.t. its kernel once per step;
  # the stem's input gradient is never needed. Kernel names differ with oneDNN on or off.
  convolutions = {
    kind: sum(n for op, n in calls_per_step.items() if op.endswith(kind))
    for kind in ("Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput")
  }
  assert convolutions == {"Conv2D": 7, "Conv2DBackpropFilter": 7, "Conv2DBackpropInput": 6}
  assert seconds > 0
  by_name = step_profile.op_times(str(tmp_path), by="name")
  assert sum(ms for ms, _ in by_name.values()) == pytest.approx(sum(ms for ms, _ in times.values()))
  table = step_profile.format_op_table(times, steps)
  assert table.splitlines()[0] == "| op | ms per step | share | calls per step |"
  assert table.splitlines()[-1].startswith("| all ops |")
