"""The benchmark runs and reports every figure (its numbers are for people, not asserts)."""

import json

from resnet import benchmark, run_record
from resnet import model as model_lib


def test_forward_flops_match_the_known_count():
  # ResNet-20: 40.55M multiply-adds per 32x32 image (conv layers + classifier).
  assert benchmark.forward_flops_per_image(model_lib.create_model("resnet20")) == 81_102_080


def test_forward_flops_of_resnet9_count_each_convolution_at_its_resolution():
  # Page's ResNet-9, by hand: prep 3->64 at 32x32 (3.54M FLOPs); layer1 64->128
  # at 32x32 (pooled after the convolution), two 128->128 at 16x16, layer2
  # 128->256 at 16x16, layer3 256->512 at 8x8, two 512->512 at 4x4 (151.0M
  # each); classifier 512->10.
  big_convolution = 2 * 32 * 32 * 9 * 64 * 128
  expected = 2 * 32 * 32 * 9 * 3 * 64 + 5 * big_convolution + 2 * 512 * 10
  assert benchmark.forward_flops_per_image(model_lib.create_model("resnet9")) == expected


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
