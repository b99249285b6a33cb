"""What the train steps on the real training pipeline would launch across the workers of a
real MultiWorkerMirroredStrategy cluster.

Called by tests/collective_overflow.py in each of its two worker processes (one
TensorFlow start-up fewer than a script of its own). Only traced, never run: the
collectives are counted in the graph, as test_distributed's local-devices test
counts them, but here the strategy is in multi-worker mode, which changes its
input iterator.
"""

import keras
import numpy as np
import tensorflow as tf

from data import pipeline
from resnet import optimization, steps

COLLECTIVE_OPS = {"CollectiveReduce", "CollectiveReduceV2", "CollectiveReduceV3", "NcclAllReduce"}
NUM_CLASSES = 3


def count_collectives(strategy):
  """{workers, per_call, per_step, get_next_as_optional} of `strategy`'s cluster."""
  with strategy.scope():  # The local-devices test's model: two BatchNorm layers.
    layers = keras.layers
    model = keras.Sequential(
      [keras.Input((32, 32, 3)), layers.Conv2D(4, 3), layers.BatchNormalization()]
      + [layers.GlobalAveragePooling2D(), layers.Dense(NUM_CLASSES)]
    )
    optimizer = optimization.create_optimizer(1e-3, precision="mixed_float16")  # Loss scaling.
    optimizer.build(model.trainable_variables)
  train_steps = steps.make_train_steps(
    strategy, model, optimizer, global_batch_size=16, num_classes=NUM_CLASSES
  )
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(64) % NUM_CLASSES).astype(np.int32)
  dataset = pipeline.distribute_train_dataset(
    strategy,
    images,
    labels,
    global_batch_size=16,
    steps_per_epoch=4,
    start_step=0,
    total_steps=8,
    seed=0,
  )
  batches = iter(dataset)
  graph = train_steps.get_concrete_function(batches, tf.constant(3)).graph.as_graph_def()
  # One replica per worker: each all-reduce is one op in this worker's graph.
  per_call = sum(node.op in COLLECTIVE_OPS for node in graph.node)
  per_step = sum(
    node.op in COLLECTIVE_OPS for function in graph.library.function for node in function.node_def
  )
  result = {
    "workers": strategy.extended._num_workers,  # noqa: SLF001 - no public name.
    "per_call": per_call,
    "per_step": per_step,
    # Whether each next() asks every worker whether it still has data (private: no public name).
    "get_next_as_optional": batches._enable_get_next_as_optional,  # noqa: SLF001
  }
  return result
