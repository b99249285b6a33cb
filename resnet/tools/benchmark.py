r"""Throughput benchmark: our train step, input pipeline, end to end, evaluation, model.fit.

  python -m resnet.tools.benchmark --dataset=folder:../shared/data/cifar10-jpeg75
  taskset -c 0 python -m resnet.tools.benchmark --pipeline_only  # Per host core.
  python -m resnet.tools.benchmark --pipeline_only --augmentations=none,cutout,everything
  python -m resnet.tools.benchmark --model=resnet20 --batch_size=128 --precisions=float32 \
    --steps=30 --repeats=5 --output=/tmp/benchmark.json
  python -m resnet.tools.benchmark --xla --nofit_baseline  # Also train.py --jit_compile's step.
  python -m resnet.tools.benchmark --model=preact_resnet18 --precisions=mixed_bfloat16 \
    --nofit_baseline

Peak memory is this process's peak resident set (getrusage), so it covers every variant
measured: for one model in one precision, give one --precisions value and --nofit_baseline.

Every figure is measured in this one process, on this machine, with the variants
alternated in each round (so that drift on a shared machine hits them alike), and
reported as the median and the spread (min-max) over `--repeats` rounds. Without
--dataset, random uint8 images stand in for the data (the arithmetic is the same).
It is a benchmark, not a test: run it on a quiet machine.
"""

import json
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from data import augment, pipeline, sources
from resnet import config as config_lib
from resnet import metrics, models, steps, train_lib
from resnet.tools import benchmark_report, timing


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
  return lambda: (
    len(labels) / timing.timed(lambda: metrics.predict(predict_step, dataset, len(labels)))
  )


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
  quicker and less exact: bfloat16 is emulated, far slower, on CPUs without AVX-512 BF16).
  `xla` also times each precision's train step with --jit_compile ("train_step[P,xla]").
  """
  (images, labels), (val_images, val_labels), class_names = load_images(dataset, batch_size)
  num_classes = len(class_names)
  strategy = tf.distribute.get_strategy()  # What train.py's auto picks without GPUs.
  variants = timing.Variants()
  train_kwargs = train_dataset_kwargs(len(labels), batch_size)

  def train_dataset():
    return pipeline.make_train_dataset(images, labels, **train_kwargs)

  synthetic = timing.one_batch_forever(train_dataset())
  memory_before_models = timing.peak_memory_bytes()  # TensorFlow, the images, the pipeline.
  flops = {}
  for precision in precisions:
    model, train_steps = build_train_steps(strategy, model_name, num_classes, batch_size, precision)
    flops[precision] = models.forward_flops_per_image(model)
    variants.add(
      f"train_step[{precision}]", timing.rate_of(train_steps, synthetic, steps, batch_size)
    )
    if xla:
      _, xla_steps = build_train_steps(
        strategy, model_name, num_classes, batch_size, precision, jit_compile=True
      )
      variants.add(
        f"train_step[{precision},xla]", timing.rate_of(xla_steps, synthetic, steps, batch_size)
      )

    if precision == "float32":  # What the fused BatchNorm kernel buys.
      _, stock_steps = build_train_steps(
        strategy, model_name, num_classes, batch_size, precision, fused_batch_norm=False
      )
      variants.add(
        "train_step[float32,keras_batch_norm]",
        timing.rate_of(stock_steps, synthetic, steps, batch_size),
      )

    if precision == precisions[0]:
      # End to end as train.py runs it: the pipeline feeding the steps.
      fed = iter(pipeline.distribute_train_dataset(strategy, images, labels, **train_kwargs))
      variants.add("end_to_end", timing.rate_of(train_steps, fed, steps, batch_size))

      variants.add(
        "evaluation", _evaluation_rate_function(strategy, model, val_images, val_labels, batch_size)
      )
  variants.add(
    "input_pipeline", timing.pipeline_rate_function(train_dataset(), steps * 5, batch_size)
  )

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
  report = benchmark_report.report(results, flops, precisions, settings, matmul_size)
  report["peak_memory_bytes"] = {
    "before_models": memory_before_models,
    "end": timing.peak_memory_bytes(),
  }
  return report


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


# Option sets for --pipeline_only --augmentations: train.py's options of the same names,
# at their usual settings (docs/augmentation.md).
AUGMENTATIONS = {
  "none": augment.CROPS_AND_FLIPS,  # Crops and flips only, as every run.
  "cutout": augment.Augmentation(cutout=16),
  "randaugment": augment.Augmentation(randaugment=(2, 9)),
  "autoaugment": augment.Augmentation(autoaugment=True),
  "mixup": augment.Augmentation(mixup=1.0),
  "cutmix": augment.Augmentation(cutmix=1.0),
  "everything": augment.Augmentation(cutout=16, autoaugment=True, mixup=1.0, cutmix=1.0),
}


def run_pipeline_benchmark(
  batch_size=128, batches=200, repeats=3, dataset=None, augmentations=("none",)
):
  """The input pipeline alone (gather, augment: what the host does per image), with each
  of `augmentations` (names of AUGMENTATIONS), alternated in every round.

  Returns:
    {"host_cores": the cores this process may use (set with `taskset`), "augmentations":
     {name: {"images_per_second": {"median", "min", "max", "runs"}, "per_core": the
     median per core}}}.
  """
  (images, labels), _, class_names = load_images(dataset, batch_size)
  variants = timing.Variants()
  for name in augmentations:
    kwargs = train_dataset_kwargs(len(labels), batch_size)
    kwargs.update(augmentation=AUGMENTATIONS[name], num_classes=len(class_names))
    pipeline_dataset = pipeline.make_train_dataset(images, labels, **kwargs)
    variants.add(name, timing.pipeline_rate_function(pipeline_dataset, batches, batch_size))
  rates = variants.run(repeats)
  cores = pipeline.host_cores()
  return {
    "host_cores": cores,
    "augmentations": {
      name: {"images_per_second": rate, "per_core": rate["median"] / cores}
      for name, rate in rates.items()
    },
  }


def _add_fit_variants(variants, model_name, num_classes, train_dataset, steps, batch_size):
  """Keras model.fit on the same input, with our fused and with stock Keras BatchNorm."""
  # Keras defaults otherwise (jit_compile="auto", i.e. off on CPUs; steps_per_execution=1).
  # A fit user normalises in the pipeline (our steps do it on the device, see train_lib).
  one_hot = train_dataset.map(
    lambda x, y: (augment.normalize(x), tf.one_hot(y, num_classes))
  ).repeat()
  for name, fused in (("keras_model_fit", True), ("keras_model_fit[keras_batch_norm]", False)):
    keras.utils.set_random_seed(0)
    fit_model = models.create_model(model_name, num_classes, fused_batch_norm=fused)
    fit_model.compile(
      optimizer=keras.optimizers.Adam(1e-3),
      loss=keras.losses.CategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"],
    )
    fit_model.fit(one_hot, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)  # Warm up.
    variants.add(name, timing.fit_rate_function(fit_model, one_hot, steps, batch_size))


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  if FLAGS.pipeline_only:
    report = run_pipeline_benchmark(
      FLAGS.batch_size, 10 * FLAGS.steps, FLAGS.repeats, FLAGS.dataset, FLAGS.augmentations
    )
    for name, figures in report["augmentations"].items():
      rate = figures["images_per_second"]
      print(
        f"input pipeline [{name}]: {rate['median']:.0f} images/s (min {rate['min']:.0f}, max "
        f"{rate['max']:.0f}) on {report['host_cores']} host cores: "
        f"{figures['per_core']:.0f} per core"
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
  print(benchmark_report.format_report(report))
  if FLAGS.output:
    with open(FLAGS.output, "w") as file:
      json.dump(report, file, indent=2)
    print(f"Wrote {FLAGS.output}", file=sys.stderr)


if __name__ == "__main__":
  flags.DEFINE_enum("model", "resnet20", models.NAMES, "Model:\n" + models.describe())
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
  flags.DEFINE_list(
    "augmentations",
    ["none"],
    f"--pipeline_only: the option sets to measure, of {', '.join(AUGMENTATIONS)}.",
  )
  app.run(main)
