r"""A two-minute check of this machine's devices: run it first on new hardware.

  python -m resnet.tools.selfcheck                    # every device TensorFlow sees
  python -m resnet.tools.selfcheck --cpu_devices=2    # no GPU: two logical CPU devices

Prints one verdict per line and exits with 1 if any check FAILs:
  devices         what TensorFlow sees (INFO); FAIL when the NVIDIA driver shows
                  GPUs that TensorFlow does not see (training would use the CPU)
  all-reduce      the strategy over all devices and its all-reduce (INFO)
  replicas agree  one device and all devices train to the same weights: a few SGD
                  steps on the same global batches, with synchronised BatchNorm, in
                  float32 (TF32 off); the largest weight difference must stay within
                  WEIGHT_TOLERANCE, while a gradient scaled wrongly by the replica
                  count moves the weights by ~1e-2
  precision P     a few steps in each precision on all devices, loss finite
  speed           the training step on all devices, images/s (INFO)
  input pipeline  the host's pipeline against that step: PASS when it is faster,
                  else how much of the step's rate it delivers
This is what turns the tests' CPU proofs (logical devices) into facts on GPUs.
"""

import resnet  # noqa: F401 - first: sets TensorFlow's environment (resnet/__init__.py).

# isort: split
import dataclasses
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from data import pipeline
from resnet import (
  accelerators,
  distribute,
  machine,
  optimization,
  precision,
  train_lib,
)
from resnet.config import Config
from resnet.tools import benchmark

WEIGHT_TOLERANCE = 1e-4  # Largest |difference| of any weight: float32 noise is ~1e-5.
NUM_CLASSES = 10


@dataclasses.dataclass
class Verdict:
  check: str
  status: str  # "PASS", "FAIL", "INFO" or "SKIP".
  message: str

  def __str__(self):
    return f"{self.status:4}  {self.check:<26}  {self.message}"


def _random_examples(count, seed=0):
  """uint8 [count, 32, 32, 3] images and int32 labels: the arithmetic of real ones."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
  return images, rng.integers(0, NUM_CLASSES, count).astype(np.int32)


def _train(strategy, config, steps, examples):
  """`steps` steps of `config` under `strategy` on the pipeline's global batches.

  Returns:
    (the model, the step sums): the batches are the same for any replica count.
  """
  images, labels = examples
  keras.utils.set_random_seed(config.seed)  # The same initial weights for every strategy.
  training = train_lib.create_training(
    config, strategy, NUM_CLASSES, steps_per_epoch=steps, train_images=images
  )
  batches = pipeline.distribute_train_dataset(
    strategy,
    images,
    labels,
    global_batch_size=config.batch_size,
    steps_per_epoch=len(labels) // config.batch_size,
    start_step=0,
    total_steps=steps,
    seed=config.seed,
  )
  sums = training.train_steps(iter(batches), tf.constant(steps))
  return training.model, {key: float(value) for key, value in sums.items()}


def check_replicas_agree(all_devices, model="resnet8", steps=3, per_replica_batch=8):
  """One device vs `all_devices` (a strategy): the same weights after `steps` SGD steps."""
  replicas = all_devices.num_replicas_in_sync
  if replicas == 1:
    return Verdict("replicas agree", "SKIP", "one device: nothing to compare with")
  config = Config(
    model=model,
    optimizer="sgd",
    learning_rate=0.01,
    lr_schedule="constant",
    warmup_epochs=0,
    batch_size=per_replica_batch * replicas,
    sync_batch_norm=True,  # Each replica normalises by the global batch, as one device does.
    precision="float32",
    strategy="mirrored",
  )
  examples = _random_examples(config.batch_size * steps)
  tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
  tf.config.experimental.enable_tensor_float_32_execution(False)  # Exact float32 on Ampere+.
  try:
    single, single_sums = _train(tf.distribute.get_strategy(), config, steps, examples)
    several, several_sums = _train(all_devices, config, steps, examples)
  finally:
    tf.config.experimental.enable_tensor_float_32_execution(tf32)
  difference = max(
    float(np.max(np.abs(a.numpy() - b.numpy())))
    for a, b in zip(single.weights, several.weights, strict=True)
  )
  loss_ratio = several_sums["loss_sum"] / single_sums["loss_sum"]
  message = (
    f"{steps} SGD steps of {model}, batch {config.batch_size}: largest weight difference "
    f"{difference:.1e} (tolerance {WEIGHT_TOLERANCE:.0e}); loss ratio {loss_ratio:.6f} "
    f"(1 device vs {replicas} replicas)"
  )
  return Verdict("replicas agree", "PASS" if difference <= WEIGHT_TOLERANCE else "FAIL", message)


def check_precision(strategy, precision, model="resnet8", steps=3, per_replica_batch=8):
  """A few steps in `precision` on `strategy`: it runs and the loss stays finite."""
  config = Config(
    model=model,
    batch_size=per_replica_batch * strategy.num_replicas_in_sync,
    precision=precision,
    warmup_epochs=0,
  )
  _, sums = _train(strategy, config, steps, _random_examples(config.batch_size * steps))
  mean_loss = sums["loss_sum"] / sums["count"]
  finite = np.isfinite(mean_loss)
  return Verdict(
    f"precision {precision}",
    "PASS" if finite else "FAIL",
    f"{steps} steps of {model}, mean loss {mean_loss:.3f}",
  )


def check_speed(strategy, model="resnet20", steps=10, per_replica_batch=128):
  """The step's images/s on all devices, and whether the input pipeline keeps up."""
  config = Config(
    model=model,
    batch_size=per_replica_batch * strategy.num_replicas_in_sync,
    warmup_epochs=0,
    # What a run gets by default: the step the input pipeline must keep up with.
    precision=precision.choose_for_this_machine(strategy)[0],
  )
  images, labels = _random_examples(max(4 * config.batch_size, 4096))
  training = train_lib.create_training(
    config, strategy, NUM_CLASSES, steps_per_epoch=steps, train_images=images
  )
  batch = (images[: config.batch_size], labels[: config.batch_size])
  # One global batch held in memory, so that only the step is timed.
  iterator = iter(
    strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat())
  )
  training.train_steps(iterator, tf.constant(2))  # Trace and warm up.
  start = time.perf_counter()
  training.train_steps(iterator, tf.constant(steps)).get("count").numpy()  # Waits for the end.
  step_rate = steps * config.batch_size / (time.perf_counter() - start)
  pipeline_rate = benchmark.run_pipeline_benchmark(
    config.batch_size, batches=max(20, 5 * steps), repeats=1
  )["augmentations"]["none"]["images_per_second"]["median"]
  speed = Verdict(
    "speed",
    "INFO",
    f"{model} training step: {step_rate:,.0f} images/s at batch {config.batch_size} "
    f"({strategy.num_replicas_in_sync} replicas, {config.precision})",
  )
  headroom = pipeline_rate / step_rate
  feeds = Verdict(
    "input pipeline",
    "PASS" if headroom >= 1 else "FAIL",
    f"{pipeline_rate:,.0f} images/s on {pipeline.host_cores()} host cores = {headroom:.1f}x the "
    + ("step" if headroom >= 1 else "step: it starves the step, which waits for data"),
  )
  return [speed, feeds]


def run_checks(model="resnet20", steps=10, per_replica_batch=128):
  """Every check on this machine's devices; yields Verdicts as they finish."""
  gpus = machine.machine_description()["gpus"]
  cpus = len(tf.config.list_logical_devices("CPU"))
  devices = (
    f"{len(gpus)} GPU(s) {', '.join(gpus)}; {cpus} logical CPU device(s); CPU "
    f"{machine.cpu_label()}; TensorFlow {tf.__version__}"
  )
  missing_gpus = accelerators.missing_gpu_warning()  # NVIDIA GPUs that TensorFlow cannot use.
  yield Verdict("devices", "FAIL" if missing_gpus else "INFO", missing_gpus or devices)
  strategy = distribute.create_strategy("mirrored")  # GPUs, or else logical CPU devices.
  yield Verdict("all-reduce", "INFO", distribute.describe(strategy, "mirrored"))
  checks = [("replicas agree", lambda: [check_replicas_agree(strategy)])]
  checks += [
    (f"precision {p}", lambda p=p: [check_precision(strategy, p)]) for p in optimization.PRECISIONS
  ]
  checks += [("speed", lambda: check_speed(strategy, model, steps, per_replica_batch))]
  for name, check in checks:
    try:
      yield from check()
    except Exception as error:  # A failing check is a verdict, not the end of the others.
      message = str(error).strip().splitlines()[0] if str(error).strip() else ""
      yield Verdict(name, "FAIL", f"{type(error).__name__}: {message}")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  logging.set_verbosity(logging.WARNING)
  tf.get_logger().setLevel("ERROR")  # Strategy and retracing chatter between the verdicts.
  if FLAGS.cpu_devices > 1:  # Before anything initialises TensorFlow's runtime.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpu_devices
    )
  failed = False
  for verdict in run_checks(FLAGS.model, FLAGS.steps, FLAGS.per_replica_batch):
    print(verdict, flush=True)
    failed |= verdict.status == "FAIL"
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  flags.DEFINE_integer(
    "cpu_devices", 1, "Without GPUs: split the CPU into this many logical devices."
  )
  flags.DEFINE_string("model", "resnet20", "Model whose step speed is measured.")
  flags.DEFINE_integer("steps", 10, "Steps timed for the speed check.")
  flags.DEFINE_integer("per_replica_batch", 128, "Per-replica batch of the speed check.")
  app.run(main)
