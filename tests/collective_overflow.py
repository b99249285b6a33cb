"""test_an_overflow_on_one_replica_is_skipped_on_every_replica, under collective all-reduce.

In a process of its own, because collective ops of several strategies in one process
collide (see distribute.create_strategy). tests/test_distributed.py starts it as

  python tests/collective_overflow.py mirrored       # 2 logical CPU devices, one process
  TF_CONFIG=... python tests/collective_overflow.py multi_worker   # on each of 2 workers

"mirrored" is MirroredStrategy with its default cross-device ops, as on GPUs
(CollectiveAllReduce; NCCL there, ring on CPU devices); "multi_worker" is
MultiWorkerMirroredStrategy as train.py creates it, one CPU replica per worker.
Both train ResNet-8 in mixed_float16 with loss scaling. One step on a global
batch whose last example overflows float16 (so only the last replica's
gradients do) must be skipped on every replica; then clean steps must train.
Each worker then also counts the collectives of the train steps on the real training
pipeline (tests/multi_worker_collectives.py). Prints one JSON line of what it saw and
exits 0; an assertion fails otherwise.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import resnet  # noqa: E402, F401 - sets TensorFlow's environment first.

# isort: split
import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data import augment  # noqa: E402
from resnet import distribute, models, optimization, steps  # noqa: E402
from tests import multi_worker_collectives  # noqa: E402

GLOBAL_BATCH = 16
NUM_CLASSES = 3


def create_strategy(kind):
  """The collective strategy of `kind` ("mirrored" or "multi_worker")."""
  if kind == "multi_worker":
    return distribute.create_strategy("multi_worker")
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  devices = [device.name for device in tf.config.list_logical_devices("CPU")]
  return tf.distribute.MirroredStrategy(devices)  # Default cross-device ops: collective.


def batches(strategy, images, labels):
  """Repeats one global batch; replica k (on whichever worker) gets its k-th slice."""
  replicas = strategy.num_replicas_in_sync
  per_replica = (images.reshape(replicas, -1, *images.shape[1:]), labels.reshape(replicas, -1))

  def dataset(context):  # A worker's pipeline holds its own replicas' slices, in turn.
    slices = tf.data.Dataset.from_tensor_slices(per_replica)
    return slices.shard(context.num_input_pipelines, context.input_pipeline_id).repeat()

  return iter(strategy.distribute_datasets_from_function(dataset))


def main(kind):
  strategy = create_strategy(kind)
  # Float inputs, passed through as they are: uint8 images cannot overflow float16.
  augment.normalize = lambda images, **_: tf.cast(images, tf.float32)
  keras.utils.set_random_seed(1)
  with strategy.scope():
    model = models.create_model("resnet8", NUM_CLASSES, precision="mixed_float16")
    optimizer = optimization.create_optimizer(1e-3, "mixed_float16")
    optimizer.build(model.trainable_variables)
  train_steps = steps.make_train_steps(
    strategy,
    model,
    optimizer,
    global_batch_size=GLOBAL_BATCH,
    num_classes=NUM_CLASSES,
    weight_decay=5e-4,
  )
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(GLOBAL_BATCH, 32, 32, 3)).astype(np.float32)
  labels = (np.arange(GLOBAL_BATCH) % NUM_CLASSES).astype(np.int32)
  before = [w.numpy() for w in model.trainable_weights]
  scale = float(optimizer.dynamic_scale.numpy())
  poisoned = images.copy()
  poisoned[-1] = 1e6  # Overflows float16 in the last replica's slice only.
  skipped = train_steps(batches(strategy, poisoned, labels), tf.constant(1))
  new_scale = float(optimizer.dynamic_scale.numpy())
  weights = model.trainable_weights
  untouched = all(np.array_equal(w.numpy(), old) for old, w in zip(before, weights, strict=True))
  sums = train_steps(batches(strategy, images, labels), tf.constant(2))
  trained = any(not np.array_equal(w.numpy(), old) for old, w in zip(before, weights, strict=True))
  report = {
    "all_reduce": distribute.all_reduce_implementation(strategy),
    "replicas": strategy.num_replicas_in_sync,
    "skipped_loss_sum": float(skipped["loss_sum"]),
    "scale": [scale, new_scale],
    "weights_untouched_by_the_overflow": untouched,
    "clean_loss_sum": float(sums["loss_sum"]),
    "trained_after": trained,
    # Equal on every worker if they stayed in step (float64 sum of the trained weights).
    # Not of the BatchNorm moving statistics: the overflowing replica's forward pass
    # made its own copy NaN, as any non-finite loss does (train.py's --on_nan handles those).
    "weights_checksum": float(
      sum(np.sum(w.numpy(), dtype=np.float64) for w in model.trainable_weights)
    ),
  }
  if kind == "multi_worker":
    report["collectives"] = multi_worker_collectives.count_collectives(strategy)
  print(json.dumps(report), flush=True)
  assert new_scale == scale / 2 and untouched, report  # Skipped, scale lowered, no weight moved.
  assert np.isfinite(report["clean_loss_sum"]) and trained, report  # Clean batches train again.


if __name__ == "__main__":
  main(sys.argv[1])
