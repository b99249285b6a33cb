"""One worker of a real MultiWorkerMirroredStrategy cluster (TF_CONFIG): prints, as JSON, what
the train steps on the real training pipeline would launch across workers.

Run by tests/test_distributed.py as two processes. Only traced, never run: the
collectives are counted in the graph, as the local-devices test counts them,
but here the strategy is in multi-worker mode, which changes its input
iterator.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import resnet  # noqa: E402, F401 - first: TensorFlow's environment.

# isort: split
import json  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from data import pipeline  # noqa: E402
from resnet import distribute, optimization, steps  # noqa: E402

COLLECTIVE_OPS = {"CollectiveReduce", "CollectiveReduceV2", "CollectiveReduceV3", "NcclAllReduce"}
NUM_CLASSES = 3


def main():
  strategy = distribute.create_strategy("multi_worker")
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
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
