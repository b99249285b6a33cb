"""The benchmark runs and reports every figure (its numbers are for people, not asserts)."""

import json

from resnet import benchmark, run_record


def test_a_tiny_benchmark_reports_every_figure(tmp_path):
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
  text = benchmark.format_report(report)
  assert "end to end / model.fit" in text and "matmul peak" in text
  assert report["machine"]["host_cores"] >= 1 and report["input_pipeline_per_core"] > 0
  assert "images/s per host core" in text
  alone = benchmark.run_pipeline_benchmark(batch_size=16, batches=2, repeats=1)
  assert alone["per_core"] == alone["images_per_second"]["median"] / alone["host_cores"] > 0


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nflags\t: fpu\n")
  flags = run_record.cpu_flags(str(cpuinfo))
  assert flags == {
    "avx512f": True,
    "avx512_bf16": True,
    "avx512_fp16": False,
    "amx_bf16": False,
    "amx_fp16": False,
  }
  assert run_record.cpu_flags(str(tmp_path / "missing")) == {}
  cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n")
  assert run_record.cpu_label(str(cpuinfo)) == "AMD EPYC (AVX2)"
