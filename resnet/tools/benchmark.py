r"""Throughput benchmark: our train step, input pipeline, end to end, evaluation, model.fit.

  python -m resnet.tools.benchmark --dataset=folder:../shared/data/cifar10-jpeg75
  taskset -c 0 python -m resnet.tools.benchmark --pipeline_only  # Per host core.
  python -m resnet.tools.benchmark --model=resnet20 --batch_size=128 --precisions=float32 \
    --steps=30 --repeats=5 --output=/tmp/benchmark.json
  python -m resnet.tools.benchmark --xla --nofit_baseline  # Also train.py --jit_compile's step.

Every figure is measured in this one process, on this machine, with the variants
alternated in each round (so that drift on a shared machine hits them alike), and
reported as the median and the spread (min-max) over `--repeats` rounds. Without
--dataset, random uint8 images stand in for the data (the arithmetic is the same).
It is a benchmark, not a test: run it on a quiet machine.
"""

import json
import os
import platform
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from data import augment, pipeline, sources
from resnet import config as config_lib
from resnet import machine, metrics, steps, train_lib
from resnet import model as model_lib


def _median_and_spread(values):
  return {
    "median": float(np.median(values)),
    "min": float(np.min(values)),
    "max": float(np.max(values)),
    "runs": [float(v) for v in values],
  }


def _timed(function):
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


def matmul_peak(dtype, size=2048, iterations=10):
  """FLOP/s of a square matmul chain in `dtype` (the machine's practical peak)."""
  a = tf.random.normal((size, size), dtype=tf.float32)
  a = tf.cast(a, dtype)

  @tf.function
  def chain(x):
    for _ in range(iterations):
      x = tf.matmul(x, a) * tf.cast(1e-3, dtype)  # Scaled: values stay finite.
    return tf.reduce_sum(tf.cast(x, tf.float32))

  chain(a).numpy()
  seconds = _timed(lambda: chain(a).numpy())
  return 2 * size**3 * iterations / seconds


def build_train_steps(
  strategy, model_name, num_classes, batch_size, precision, fused_batch_norm=True, jit_compile=False
):
  """(model, train_steps) as train.py builds them: Adam at a constant 1e-3, no L2 term;
  `jit_compile` as train.py's --jit_compile (the forward and backward pass compiled by XLA)."""
  keras.utils.set_random_seed(0)
  config = config_lib.Config(
    model=model_name,
    batch_size=batch_size,
    precision=precision,
    learning_rate=1e-3,
    lr_schedule="constant",
    warmup_epochs=0,
    weight_decay=0.0,
    jit_compile=jit_compile,
  )
  training = train_lib.create_training(
    config, strategy, num_classes, steps_per_epoch=1, fused_batch_norm=fused_batch_norm
  )
  return training.model, training.train_steps


def _evaluation_rate_function(strategy, model, images, labels, batch_size):
  """A function timing one evaluation pass (metrics.predict) -> images/s (warmed up first)."""
  predict_step = steps.make_predict_step(strategy, model)
  dataset = pipeline.distribute_eval_dataset(strategy, images, labels, global_batch_size=batch_size)
  metrics.predict(predict_step, dataset, len(labels))
  return lambda: len(labels) / _timed(lambda: metrics.predict(predict_step, dataset, len(labels)))


def _pipeline_rate_function(dataset, batches, batch_size):
  """A function timing `batches` batches of the input pipeline alone -> images/s."""
  iterator = iter(dataset)
  next(iterator)

  def take():
    for _ in range(batches):
      next(iterator)

  return lambda: batches * batch_size / _timed(take)


def one_batch_forever(dataset):
  """An iterator repeating `dataset`'s first batch, held in memory: only the step is timed."""
  return iter(tf.data.Dataset.from_tensors(next(iter(dataset))).repeat())


def rate_of(train_steps, iterator, steps, batch_size):
  """A function timing one call of `steps` steps on `iterator` -> images/s (traced first)."""
  train_steps(iterator, tf.constant(2))  # Trace and warm up.
  return lambda: steps * batch_size / _timed(lambda: train_steps(iterator, tf.constant(steps)))


class _StepTimes(keras.callbacks.Callback):
  """perf_counter() at the end of every training batch of a model.fit call."""

  def on_train_begin(self, logs=None):
    self.times = []

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter())


def _fit_rate_function(model, dataset, steps, batch_size):
  """A function timing `steps` + 1 batches of model.fit: images/s between the first
  and the last batch's end, so fit()'s own set-up (iterator, callbacks) is not
  counted against it, as our loop's iterator is created before its timing."""

  def fit_rate():
    timer = _StepTimes()
    model.fit(
      dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, shuffle=False, callbacks=[timer]
    )
    return steps * batch_size / (timer.times[-1] - timer.times[0])

  return fit_rate


class _Variants:
  """Benchmarks registered by name, each a function (no arguments) -> images per second."""

  def __init__(self):
    self.functions = {}

  def add(self, name, function):
    self.functions[name] = function

  def run(self, repeats):
    results = {name: [] for name in self.functions}
    for round_index in range(repeats):
      for name, function in self.functions.items():  # Alternated within each round.
        results[name].append(function())
      logging.info("round %d/%d done", round_index + 1, repeats)
    return {name: _median_and_spread(values) for name, values in results.items()}


def run_benchmark(
  model_name="resnet20",
  batch_size=128,
  precisions=("float32",),
  steps=20,
  repeats=3,
  dataset=None,
  fit_baseline=True,
  matmul_size=2048,
  xla=False,
):
  """Measures everything listed in the module docstring; returns a JSON-ready dict.

  `matmul_size` is the side of the square matmuls that measure the peak (smaller is
  quicker and less exact: bfloat16 is emulated, ~10x slower, on CPUs without AVX-512 BF16).
  `xla` also times each precision's train step with --jit_compile ("train_step[P,xla]").
  """
  (images, labels), (val_images, val_labels), class_names = load_images(dataset, batch_size)
  num_classes = len(class_names)
  strategy = tf.distribute.get_strategy()  # What train.py's auto picks without GPUs.
  variants = _Variants()
  train_kwargs = train_dataset_kwargs(len(labels), batch_size)

  def train_dataset():
    return pipeline.make_train_dataset(images, labels, **train_kwargs)

  synthetic = one_batch_forever(train_dataset())
  flops = {}
  for precision in precisions:
    model, train_steps = build_train_steps(strategy, model_name, num_classes, batch_size, precision)
    flops[precision] = model_lib.forward_flops_per_image(model)
    variants.add(f"train_step[{precision}]", rate_of(train_steps, synthetic, steps, batch_size))
    if xla:
      _, xla_steps = build_train_steps(
        strategy, model_name, num_classes, batch_size, precision, jit_compile=True
      )
      variants.add(f"train_step[{precision},xla]", rate_of(xla_steps, synthetic, steps, batch_size))

    if precision == "float32":  # What the fused BatchNorm kernel buys.
      _, stock_steps = build_train_steps(
        strategy, model_name, num_classes, batch_size, precision, fused_batch_norm=False
      )
      variants.add(
        "train_step[float32,keras_batch_norm]",
        rate_of(stock_steps, synthetic, steps, batch_size),
      )

    if precision == precisions[0]:
      # End to end as train.py runs it: the pipeline feeding the steps.
      fed = iter(pipeline.distribute_train_dataset(strategy, images, labels, **train_kwargs))
      variants.add("end_to_end", rate_of(train_steps, fed, steps, batch_size))

      variants.add(
        "evaluation", _evaluation_rate_function(strategy, model, val_images, val_labels, batch_size)
      )
  variants.add("input_pipeline", _pipeline_rate_function(train_dataset(), steps * 5, batch_size))

  if fit_baseline:
    _add_fit_variants(variants, model_name, num_classes, train_dataset(), steps, batch_size)
  results = variants.run(repeats)
  settings = {
    "model": model_name,
    "batch_size": batch_size,
    "steps": steps,
    "repeats": repeats,
    "dataset": dataset or "random uint8 images",
  }
  return _report(results, flops, precisions, settings, matmul_size)


def load_images(dataset, batch_size):
  """((images, labels), (validation images, labels), class names) to benchmark on."""
  if dataset:
    train, validation, class_names, _ = sources.load_train_and_validation(dataset, 5000)
    return train, validation, class_names
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (max(4096, 4 * batch_size), 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, len(images)).astype(np.int32)
  return (images, labels), (images[:2048], labels[:2048]), [str(i) for i in range(10)]


def train_dataset_kwargs(num_examples, batch_size):
  """make_train_dataset's arguments as train.py builds it (one endless run of epochs)."""
  return dict(
    global_batch_size=batch_size,
    steps_per_epoch=num_examples // batch_size,
    start_step=0,
    total_steps=10**6,
    seed=0,
  )


def run_pipeline_benchmark(batch_size=128, batches=200, repeats=3, dataset=None):
  """The input pipeline alone (gather, crop, flip: what the host does per image).

  Returns:
    {"images_per_second": {"median", "min", "max", "runs"}, "host_cores": the cores
     this process may use (set with `taskset`), "per_core": the median per core}.
  """
  (images, labels), _, _ = load_images(dataset, batch_size)
  dataset = pipeline.make_train_dataset(
    images, labels, **train_dataset_kwargs(len(labels), batch_size)
  )
  variants = _Variants()
  variants.add("input_pipeline", _pipeline_rate_function(dataset, batches, batch_size))
  rate = variants.run(repeats)["input_pipeline"]
  cores = pipeline.host_cores()
  return {"images_per_second": rate, "host_cores": cores, "per_core": rate["median"] / cores}


def _add_fit_variants(variants, model_name, num_classes, train_dataset, steps, batch_size):
  """Keras model.fit on the same input, with our fused and with stock Keras BatchNorm."""
  # Keras defaults otherwise (jit_compile="auto", i.e. off on CPUs; steps_per_execution=1).
  # A fit user normalises in the pipeline (our steps do it on the device, see train_lib).
  one_hot = train_dataset.map(
    lambda x, y: (augment.normalize(x), tf.one_hot(y, num_classes))
  ).repeat()
  for name, fused in (("keras_model_fit", True), ("keras_model_fit[keras_batch_norm]", False)):
    keras.utils.set_random_seed(0)
    fit_model = model_lib.create_model(model_name, num_classes, fused_batch_norm=fused)
    fit_model.compile(
      optimizer=keras.optimizers.Adam(1e-3),
      loss=keras.losses.CategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"],
    )
    fit_model.fit(one_hot, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # Warm up.
    variants.add(name, _fit_rate_function(fit_model, one_hot, steps, batch_size))


def _report(results, flops, precisions, settings, matmul_size):
  """The JSON-ready report: rates, the machine, FLOP/s against the measured matmul peaks."""
  peaks = {
    "float32": matmul_peak(tf.float32, matmul_size),
    "bfloat16": matmul_peak(tf.bfloat16, matmul_size),
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


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  if FLAGS.pipeline_only:
    report = run_pipeline_benchmark(
      FLAGS.batch_size, 10 * FLAGS.steps, FLAGS.repeats, FLAGS.dataset
    )
    rate = report["images_per_second"]
    print(
      f"input pipeline: {rate['median']:.0f} images/s (min {rate['min']:.0f}, max "
      f"{rate['max']:.0f}) on {report['host_cores']} host cores: {report['per_core']:.0f} per core"
    )
    return
  report = run_benchmark(
    FLAGS.model,
    FLAGS.batch_size,
    tuple(FLAGS.precisions),
    FLAGS.steps,
    FLAGS.repeats,
    FLAGS.dataset,
    FLAGS.fit_baseline,
    xla=FLAGS.xla,
  )
  print(format_report(report))
  if FLAGS.output:
    with open(FLAGS.output, "w") as file:
      json.dump(report, file, indent=2)
    print(f"Wrote {FLAGS.output}", file=sys.stderr)


if __name__ == "__main__":
  flags.DEFINE_enum("model", "resnet20", list(model_lib.MODEL_NAMES), "Model (resnet/model.py).")
  flags.DEFINE_integer("batch_size", 128, "Global batch size.")
  flags.DEFINE_list("precisions", ["float32"], "Train-step precisions to measure.")
  flags.DEFINE_integer("steps", 20, "Steps (batches) per measurement.")
  flags.DEFINE_integer("repeats", 3, "Rounds; each figure is the median over them.")
  flags.DEFINE_string("dataset", None, "cifar10 or folder:PATH; default random images.")
  flags.DEFINE_bool("fit_baseline", True, "Also time keras model.fit on the same pipeline.")
  flags.DEFINE_bool(
    "xla", False, "Also time each precision's train step as train.py --jit_compile runs it."
  )
  flags.DEFINE_string("output", None, "JSON file to write.")
  flags.DEFINE_bool(
    "pipeline_only", False, "Only the input pipeline (10 x --steps batches per round), per core."
  )
  app.run(main)
