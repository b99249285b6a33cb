"""Distribution: which strategy, and which process writes.

Used by train.py and eval.py. Beyond the strategy itself, a multi-worker run needs
the chief (the one process that writes the model directory) and the scratch
directory of the other workers; stopping on a signal is resnet/preemption.py's.
"""

import contextlib
import json
import os
import tempfile

import tensorflow as tf
from absl import logging

from resnet import accelerators, errors

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")


class StrategyError(errors.UserError, ValueError):
  """A strategy that cannot be created or used as asked, with a message for the user."""


def cluster_workers_from_tf_config():
  """Number of workers ("chief" + "worker" tasks) that TF_CONFIG describes; 0 without it.

  Raises:
    StrategyError: TF_CONFIG is set but is not a JSON object.
  """
  raw = os.environ.get("TF_CONFIG", "")
  if not raw.strip():
    return 0
  try:
    cluster = json.loads(raw).get("cluster", {})
  except (ValueError, AttributeError) as error:
    raise StrategyError(f"TF_CONFIG is not a JSON object ({error}): {raw[:200]}") from None
  return sum(len(cluster.get(job, [])) for job in ("chief", "worker"))


def create_strategy(name, tpu_address="", single_process=False):
  """Returns the tf.distribute strategy called `name` (one of STRATEGIES).

  "auto" is "multi_worker" when TF_CONFIG names several workers (unless
  `single_process`, as for eval.py), "mirrored" over all GPUs when there are
  several, and otherwise the default strategy, which runs on the one device
  TensorFlow picks (GPU:0 if there is one). "one_device" pins that device
  explicitly; on the 2-core CPU machines here its distributed input iterator
  slowed the step down (docs/speed.md), hence not the automatic choice.
  "mirrored" without GPUs mirrors over the logical CPU devices (how tests get
  two replicas on one CPU). "multi_worker" is
  MultiWorkerMirroredStrategy configured by TF_CONFIG: all local GPUs (or the
  CPU) of every worker, all-reduce by multi_worker_implementation(). It must
  be created before anything else starts TensorFlow's runtime. "tpu" connects
  to the TPU at `tpu_address` ("" = this TPU VM, or the TPU that TPU_NAME
  names; accelerators.tpu_strategy).

  Raises:
    StrategyError: an unknown name, a malformed TF_CONFIG, or a TPU that cannot be started.
  """
  if warning := accelerators.missing_gpu_warning():  # Else a GPU VM trains on its CPU.
    logging.warning(warning)
  if name == "auto":
    if not single_process and cluster_workers_from_tf_config() > 1:
      name = "multi_worker"
    else:
      name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
  if name == "multi_worker":
    cluster_workers_from_tf_config()  # A clear error for malformed JSON.
    return tf.distribute.MultiWorkerMirroredStrategy(
      communication_options=tf.distribute.experimental.CommunicationOptions(
        implementation=multi_worker_implementation()
      )
    )
  if name == "tpu":
    try:
      return accelerators.tpu_strategy(tpu_address)
    except accelerators.AcceleratorError as error:
      raise StrategyError(str(error)) from None
  gpus = tf.config.list_logical_devices("GPU")
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    if gpus:
      return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])  # NCCL all-reduce.
    # Logical CPU devices: reduce on one device. The default collective ops
    # collide across several strategies in one process (as in the test suite).
    cpus = [cpu.name for cpu in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(
      cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
  raise StrategyError(f"Unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")


def create_for_training(config):
  """The strategy a resnet.config.Config asks for (--strategy, --tpu), checked against
  --jit_compile and described in the log, with a warning for small per-replica batches.

  Raises:
    StrategyError: as create_strategy and check_jit_compile.
  """
  strategy = create_strategy(config.strategy, config.tpu)
  if config.jit_compile:
    check_jit_compile(strategy, config.sync_batch_norm)
  logging.info(describe(strategy, config.strategy))
  if warning := small_batch_norm_warning(strategy, config.batch_size, config.sync_batch_norm):
    logging.warning(warning)
  return strategy


def multi_worker_implementation():
  """MultiWorkerMirroredStrategy's all-reduce: NCCL on a worker with GPUs, else RING.

  Asked for explicitly because AUTO does not mean NCCL: TensorFlow 2.21's
  runtime picks NcclReduce only for collectives whose communication hint is
  "nccl" (or, in TF1 graphs, with collective_nccl in the session config), and
  AUTO's hint is "auto", so AUTO runs ring all-reduce on GPUs too (C++
  CollectiveParamResolverLocal::AssignCollectiveType; Python
  cross_device_utils.CollectiveReplicaLauncher). Listing the physical devices
  does not start the runtime, so the strategy can still be created afterwards.
  """
  implementations = tf.distribute.experimental.CommunicationImplementation
  return implementations.NCCL if tf.config.list_physical_devices("GPU") else implementations.RING


def all_reduce_implementation(strategy):
  """How `strategy` sums across replicas, e.g. "NCCL (collective)" or "none (one device)"."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return "TPU (XLA all-reduce)"
  cross_device_ops = getattr(strategy.extended, "_cross_device_ops", None)  # No public API.
  if cross_device_ops is None:  # The default and one-device strategies.
    return "none (one device)"
  if type(cross_device_ops).__name__ == "CollectiveAllReduce":
    # What the strategy asked for; CollectiveAllReduce has no public name to test with.
    return f"{strategy.extended._communication_options.implementation.value} (collective)"
  return type(cross_device_ops).__name__  # ReductionToOneDevice for CPU devices.


def check_jit_compile(strategy, sync_batch_norm):
  """Raises StrategyError for what XLA cannot compile: synchronised BatchNorm, mirrored.

  --jit_compile compiles each replica's forward and backward pass
  (steps.make_train_steps); the optimizer and the all-reduce of the
  gradients run outside it, because Keras 3's optimizer counts its steps
  through a merge_call, which TensorFlow refuses inside a compiled replica
  function (keras#21366). Synchronised BatchNorm all-reduces inside the
  forward pass: under the mirrored strategies on CPUs TensorFlow does that
  with a merge_call too; on GPUs with a collective op inside the compiled
  function, which the CPU's XLA cannot compile, so it is untested here
  (tests/test_distributed.py forces TensorFlow's GPU path on CPU devices). One
  device needs no all-reduce and TPUs compile theirs, so neither is refused.

  Raises:
    StrategyError: `sync_batch_norm` under MirroredStrategy or MultiWorkerMirroredStrategy.
  """
  mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
  if sync_batch_norm and isinstance(strategy, mirrored):
    raise StrategyError(
      f"--jit_compile --sync_batch_norm does not work with {type(strategy).__name__}: the "
      "synchronised BatchNorm's all-reduce would run inside the XLA-compiled forward pass, "
      "where TensorFlow refuses it on CPUs and it is untested on GPUs. Drop one of the two."
    )


# Per-replica BatchNorm below this many images per step gets noisy statistics: Wu &
# He 2018 ("Group Normalization", figure 1) saw ImageNet error grow as the batch per
# GPU fell below 16 images; 32 leaves a margin.
SMALL_BATCH_NORM_BATCH = 32


def small_batch_norm_warning(strategy, global_batch_size, sync_batch_norm):
  """The warning to log when each replica's BatchNorm sees few images per step, else None."""
  replicas = strategy.num_replicas_in_sync
  per_replica = global_batch_size // replicas
  if sync_batch_norm or replicas == 1 or per_replica >= SMALL_BATCH_NORM_BATCH:
    return None
  return (
    f"Each of the {replicas} replicas normalises BatchNorm over only {per_replica} images "
    f"per step (under ~{SMALL_BATCH_NORM_BATCH} its statistics get noisy): consider "
    "--sync_batch_norm or a larger --batch_size."
  )


def describe(strategy, name):
  """One line naming the strategy, its replicas, its all-reduce and (multi-worker) this
  process's task."""
  task_type, task_id = worker_task(strategy)
  return (
    f"Strategy {type(strategy).__name__.lstrip('_')} (--strategy={name}) with "
    f"{strategy.num_replicas_in_sync} replica(s)"
    + (f"; this is {task_type} {task_id}" if task_type else "")
    + f"; all-reduce: {all_reduce_implementation(strategy)}."
  )


def worker_task(strategy):
  """(task_type, task_id) of this process in a multi-worker cluster, else (None, None)."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return None, None
  resolver = strategy.cluster_resolver
  return resolver.task_type, resolver.task_id


def is_chief(strategy):
  """Whether this process writes the run's files: every single-process run, and in a
  multi-worker cluster the "chief" task, or worker 0 when there is no chief."""
  task_type, task_id = worker_task(strategy)
  if task_type is None:
    return True
  has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
  return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


@contextlib.contextmanager
def scratch_directory(strategy):
  """Yields a temporary directory for a multi-worker process (None in a single process).

  Every worker of a multi-worker run must save checkpoints (saving runs
  collective ops); the non-chief ones save into this directory, which is
  removed however training ends.
  """
  task_type, task_id = worker_task(strategy)
  if task_type is None:
    yield None
    return
  with tempfile.TemporaryDirectory(prefix=f"resnet-{task_type}{task_id}-") as directory:
    yield directory
