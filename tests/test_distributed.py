"""One loop on one device, several replicas, several workers and in mixed precision:
the same results, proven rather than trusted."""

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.distribute import mirrored_run, mirrored_strategy
from tensorflow.python.distribute.failure_handling import failure_handling_util

import train
from data import augment
from resnet import (
  batch_norm,
  checkpointing,
  distribute,
  models,
  optimization,
  preemption,
  run_lock,
  run_record,
  steps,
  train_lib,
)
from resnet.lookahead import Lookahead
from tests.conftest import write_image_folder
from tests.test_train import REPO, checkpoint_weights, debug_config, final_weights
from tools.preemption_latency import free_ports

NUM_CLASSES = 3


def make_training(
  strategy, *, precision="float32", sync_batch_norm=False, jit_compile=False, sgd=False
):
  keras.utils.set_random_seed(1)
  with strategy.scope():
    model = models.create_model(
      "resnet8", NUM_CLASSES, precision=precision, sync_batch_norm=sync_batch_norm
    )
    if sgd:  # Plain SGD: unlike Adam, it does not hide a wrongly scaled gradient.
      optimizer = keras.optimizers.SGD(0.01)
    else:
      optimizer = optimization.create_optimizer(1e-3, precision)
    optimizer.build(model.trainable_variables)
  train_steps = steps.make_train_steps(
    strategy,
    model,
    optimizer,
    global_batch_size=16,
    num_classes=NUM_CLASSES,
    weight_decay=5e-4,
    jit_compile=jit_compile,
  )
  return model, optimizer, train_steps


def fixed_batch(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
  labels = (np.arange(16) % NUM_CLASSES).astype(np.int32)
  return images, labels


def split_across_replicas(strategy, images, labels):
  """An iterator repeating one global batch; replica k gets its k-th contiguous slice."""
  replicas = strategy.num_replicas_in_sync
  per_replica = (
    images.reshape(replicas, -1, *images.shape[1:]),
    labels.reshape(replicas, -1),
  )
  # One input pipeline here; its elements go to the local replicas in turn.
  return iter(
    strategy.distribute_datasets_from_function(
      lambda context: tf.data.Dataset.from_tensor_slices(per_replica).repeat()
    )
  )


def train_a_few_steps(strategy_name, num_steps=3, **options):
  """(model, optimizer, float sums) after `num_steps` steps on the fixed batch."""
  strategy = distribute.create_strategy(strategy_name)
  model, optimizer, train_steps = make_training(strategy, **options)
  sums = train_steps(split_across_replicas(strategy, *fixed_batch()), tf.constant(num_steps))
  return model, optimizer, {key: float(value) for key, value in sums.items()}


def assert_adam_runs_agree(expected, actual, learning_rate, num_steps):
  """Model weights of two Adam runs that should be equal up to float32 noise.

  Adam divides by the gradient's magnitude: float32 noise in a near-zero
  gradient can flip the sign of that weight's update, moving it by up to
  `learning_rate` per step. So a few weights may differ by up to
  2 x steps x rate, while the bulk agrees far more closely; a real
  difference (lost optimizer state, unaggregated gradients) moves the bulk by
  about the learning rate.
  """
  names = [name for name in expected if name.startswith("model/")]
  assert names and actual.keys() == expected.keys()
  differences = np.concatenate([np.abs(actual[n] - expected[n]).ravel() for n in names])
  print(f"weight differences: max {differences.max():.2e}, median {np.median(differences):.2e}")
  assert differences.max() <= 2 * num_steps * learning_rate
  assert np.median(differences) < learning_rate / 20


def assert_weights_close(model_a, model_b, atol):
  for a, b in zip(model_a.weights, model_b.weights, strict=True):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=atol, err_msg=a.path)


def test_small_per_replica_batch_norm_batches_are_warned_about_unless_synchronised():
  one, two = (types.SimpleNamespace(num_replicas_in_sync=n) for n in (1, 2))
  warning = distribute.small_batch_norm_warning(two, 32, sync_batch_norm=False)
  assert "over only 16 images" in warning and "--sync_batch_norm" in warning
  assert distribute.small_batch_norm_warning(two, 64, sync_batch_norm=False) is None
  assert distribute.small_batch_norm_warning(two, 32, sync_batch_norm=True) is None
  assert distribute.small_batch_norm_warning(one, 16, sync_batch_norm=False) is None


def test_sync_batch_norm_makes_two_replicas_train_like_one_device():
  # Each replica sees its own half of the batch. With synchronised BatchNorm the
  # statistics are those of the whole batch, so 2 replicas = 1 device on 16.
  # The update goes through the same Keras apply (and all-reduce) as Adam's,
  # but SGD shows any error in the gradient's scale: a factor of 2 would move
  # the weights by ~1e-2, float32 noise moves them by ~1e-5. Adam divides by
  # the gradient's magnitude and turns float32 noise in near-zero gradients
  # into differences of up to its learning rate.
  single, _, single_sums = train_a_few_steps("default", sync_batch_norm=True, sgd=True)
  mirrored, _, mirrored_sums = train_a_few_steps("mirrored", sync_batch_norm=True, sgd=True)
  assert mirrored_sums["count"] == single_sums["count"] == 48
  assert mirrored_sums["correct"] == single_sums["correct"]
  assert mirrored_sums["loss_sum"] == pytest.approx(single_sums["loss_sum"], rel=1e-5)
  assert_weights_close(mirrored, single, atol=1e-4)
  # Evaluation (moving statistics) agrees too.
  images = augment.normalize(fixed_batch(seed=1)[0])
  np.testing.assert_allclose(
    mirrored(images, training=False), single(images, training=False), rtol=1e-3, atol=1e-3
  )


def test_per_replica_batch_norm_differs_from_one_device():
  # The control for the test above: without synchronisation each replica
  # normalises by its own half-batch statistics, so the two runs part ways.
  single, _, _ = train_a_few_steps("default", sgd=True)
  mirrored, _, _ = train_a_few_steps("mirrored", sgd=True)
  differences = [
    np.abs(a.numpy() - b.numpy()).max()
    for a, b in zip(single.trainable_weights, mirrored.trainable_weights, strict=True)
  ]
  assert max(differences) > 3e-4  # 3x the tolerance the synchronised run meets.


def test_moving_statistics_are_averaged_over_replicas():
  strategy = distribute.create_strategy("mirrored")
  model, _, train_steps = make_training(strategy, sgd=True)
  train_steps(split_across_replicas(strategy, *fixed_batch()), tf.constant(2))
  copies = [[c.numpy() for c in v.value.values] for v in model.non_trainable_variables]
  # Keras 3 lets each replica keep its own moving statistics ...
  assert max(np.abs(a - b).max() for a, b in copies) > 1e-4
  steps.make_average_moving_statistics(strategy, model)()
  for variable, (a, b) in zip(model.non_trainable_variables, copies, strict=True):
    for copy in variable.value.values:  # ... until they are set to their mean.
      np.testing.assert_allclose(copy.numpy(), (a + b) / 2, rtol=1e-6, atol=1e-7)


COLLECTIVE_OPS = {"CollectiveReduce", "CollectiveReduceV2", "CollectiveReduceV3", "NcclAllReduce"}


def all_reduces(function, *args):
  """(per call, per step) all-reduces in the graph `function(*args)` traces, per replica.

  Per call: those of the function's own graph; per step: those of the
  functions it calls (the loop over steps, and conditionals inside it).
  """
  graph = function.get_concrete_function(*args).graph.as_graph_def()
  per_call = sum(node.op in COLLECTIVE_OPS for node in graph.node)
  per_step = sum(
    node.op in COLLECTIVE_OPS for function in graph.library.function for node in function.node_def
  )
  replicas = 2  # Every all-reduce is one op on each replica's device.
  return per_call / replicas, per_step / replicas


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_a_call_of_the_steps_runs_few_all_reduces(jit_compile):
  # What a multi-worker run launches, each a network round trip: the same
  # strategy class and collective ops, over two local devices instead of two
  # machines. Only traced, never run: collective ops of several strategies in
  # one process collide (see distribute.create_strategy). With XLA the same ones,
  # none of them inside the compiled forward and backward pass.
  devices = [device.name for device in tf.config.list_logical_devices("CPU")]
  strategy = tf.distribute.MultiWorkerMirroredStrategy._from_local_devices(devices)
  with strategy.scope():  # Two BatchNorm layers; a ResNet traces slower, to the same counts.
    layers = keras.layers
    model = keras.Sequential(
      [keras.Input((32, 32, 3)), layers.Conv2D(4, 3), layers.BatchNormalization()]
      + [layers.Conv2D(4, 3), layers.BatchNormalization(), layers.GlobalAveragePooling2D()]
      + [layers.Dense(NUM_CLASSES)]
    )
    optimizer = optimization.create_optimizer(1e-3, precision="mixed_float16")  # Loss scaling.
    optimizer.build(model.trainable_variables)
  train_steps = steps.make_train_steps(
    strategy,
    model,
    optimizer,
    global_batch_size=16,
    num_classes=NUM_CLASSES,
    jit_compile=jit_compile,
  )
  batches = split_across_replicas(strategy, *fixed_batch())
  # One for the sums of every step (loss, correct, count, gradient norm); per step
  # one for the gradients (all of them in one pack) and, with loss scaling, one
  # for "did any replica overflow".
  assert all_reduces(train_steps, batches, tf.constant(3)) == (1, 2)
  compiled = compiled_functions(train_steps, batches, tf.constant(3))
  assert bool(compiled) == jit_compile
  assert not [node for f in compiled for node in f.node_def if node.op in COLLECTIVE_OPS]
  # The moving statistics of all BatchNorm layers (2 here, 19 in ResNet-20) in one.
  average = steps.make_average_moving_statistics(strategy, model)
  assert len(model.non_trainable_variables) == 4 and all_reduces(average) == (1, 0)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_master_weights(precision):
  model, optimizer, first = train_a_few_steps("default", num_steps=1, precision=precision)
  compute_dtype = precision.removeprefix("mixed_")
  assert model.stem_conv.compute_dtype == compute_dtype
  assert all(w.dtype == "float32" for w in model.weights)
  logits = model(augment.normalize(fixed_batch()[0]), training=False)
  assert logits.dtype == tf.float32
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == (
    precision == "mixed_float16"
  )
  assert np.isfinite(first["loss_sum"]) and first["count"] == 16


@pytest.mark.parametrize("strategy_name", ["default", "mirrored"])
def test_an_overflow_on_one_replica_is_skipped_on_every_replica(strategy_name, monkeypatch):
  # Float inputs, passed through as they are: uint8 images cannot overflow float16.
  monkeypatch.setattr(augment, "normalize", lambda images, **_: tf.cast(images, tf.float32))
  strategy = distribute.create_strategy(strategy_name)
  model, optimizer, train_steps = make_training(strategy, precision="mixed_float16")
  images, labels = fixed_batch()
  images = images.astype(np.float32)
  before = [w.numpy() for w in model.trainable_weights]
  scale = float(optimizer.dynamic_scale.numpy())
  poisoned = images.copy()
  poisoned[-1] = 1e6  # Overflows float16 in the last replica's slice only.
  train_steps(split_across_replicas(strategy, poisoned, labels), tf.constant(1))
  assert float(optimizer.dynamic_scale.numpy()) == scale / 2  # Skipped, scale lowered ...
  for old, new in zip(before, model.trainable_weights, strict=True):
    np.testing.assert_array_equal(new.numpy(), old)  # ... and no weight touched.
  sums = train_steps(split_across_replicas(strategy, images, labels), tf.constant(2))
  assert np.isfinite(float(sums["loss_sum"]))  # Clean batches train again.
  assert any(
    not np.array_equal(new.numpy(), old)
    for old, new in zip(before, model.trainable_weights, strict=True)
  )


def test_xla_compiled_step_matches_the_graph_step():
  plain, _, plain_sums = train_a_few_steps("default", sgd=True)
  compiled, _, compiled_sums = train_a_few_steps("default", jit_compile=True, sgd=True)
  assert compiled_sums["loss_sum"] == pytest.approx(plain_sums["loss_sum"], rel=1e-4)
  assert_weights_close(compiled, plain, atol=1e-4)


def test_xla_on_mirrored_replicas_trains_but_not_with_sync_batch_norm(image_folder, tmp_path):
  config = debug_config(
    image_folder, strategy="mirrored", jit_compile=True, precision="float32", epochs=1
  )
  refused = dataclasses.replace(config, sync_batch_norm=True)
  with pytest.raises(distribute.StrategyError, match="--jit_compile --sync_batch_norm does not"):
    train.train_and_evaluate(refused, str(tmp_path / "refused"))
  assert not os.path.exists(tmp_path / "refused")  # Refused before anything is written.
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 3 and np.isfinite(result["validation"]["loss"])


def small_model(precision):
  """Convolution, our BatchNorm, classifier: every kind of weight the step treats apart
  (kernels, BatchNorm parameters and statistics, a bias), compiled far faster than a ResNet."""
  layers = keras.layers
  return keras.Sequential(
    [keras.Input((32, 32, 3)), layers.Conv2D(8, 3, strides=2, dtype=precision)]
    + [batch_norm.create(False, dtype=precision), layers.ReLU(dtype=precision)]
    + [layers.GlobalAveragePooling2D(dtype=precision), layers.Dense(NUM_CLASSES, dtype=precision)]
  )


def compiled_functions(train_steps, *args):
  """The functions XLA compiles in the graph `train_steps(*args)` traces."""
  graph = train_steps.get_concrete_function(*args).graph.as_graph_def()
  return [f for f in graph.library.function if f.attr["_XlaMustCompile"].b]


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_the_xla_step_on_mirrored_gpus_trains_as_the_plain_step(precision, monkeypatch):
  # TensorFlow takes its GPU path when these two checks say GPU: inside a compiled
  # function, cross-replica sums go without merge_call. Forced on the CPU devices,
  # compiling the whole replica step failed as on GPUs (keras#21366: Keras' optimizer
  # counts its steps through a merge_call). Only the forward and backward pass is
  # compiled now; every option that touches the gradients or weights is on.
  monkeypatch.setattr(mirrored_run, "_is_gpu_device", lambda device: True)
  monkeypatch.setattr(mirrored_strategy, "_is_gpu_device", lambda device: True)
  runs = {}
  for jit_compile in (False, True):
    strategy = distribute.create_strategy("mirrored")
    keras.utils.set_random_seed(1)
    with strategy.scope():
      model = small_model(precision)
      optimizer = optimization.create_optimizer(1e-2, precision, name="sgd")
      optimizer.build(model.trainable_variables)
      lookahead = Lookahead(model, 1, total_steps=3, start_epochs=0, every_steps=1)
    train_steps = steps.make_train_steps(
      strategy,
      model,
      optimizer,
      global_batch_size=16,
      num_classes=NUM_CLASSES,
      weight_decay=5e-4,
      batch_norm_weight_decay=True,
      batch_norm_lr_scale=8.0,
      lookahead=lookahead,
      jit_compile=jit_compile,
    )
    batches = split_across_replicas(strategy, *fixed_batch())
    compiled = compiled_functions(train_steps, batches, tf.constant(3))
    assert len(compiled) == (2 if jit_compile else 0)  # One trace per replica.
    sums = train_steps(batches, tf.constant(3))
    runs[jit_compile] = sums, model.weights, optimizer.variables
  (plain_sums, plain, plain_state), (xla_sums, xla, xla_state) = runs[False], runs[True]
  # float16 rounds differently when XLA fuses the ops; a gradient left scaled by the
  # loss scale (2^15), or a lost weight decay or BatchNorm rate, is far outside that.
  tolerance = 1e-5 if precision == "float32" else 1e-3
  assert float(xla_sums["loss_sum"]) == pytest.approx(float(plain_sums["loss_sum"]), rel=tolerance)
  assert float(xla_sums["correct"]) == float(plain_sums["correct"])
  for a, b in zip(xla + xla_state, plain + plain_state, strict=True):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tolerance, atol=tolerance, err_msg=a.path)


def test_a_malformed_tf_config_is_named(image_folder, tmp_path, monkeypatch):
  monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["host1:1234"')
  with pytest.raises(distribute.StrategyError, match="TF_CONFIG is not a JSON object"):
    train.train_and_evaluate(debug_config(image_folder, strategy="auto"), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("gpus, expected", [(2, "NCCL"), (0, "RING")])
def test_multi_worker_asks_for_nccl_on_gpu_workers_and_ring_on_cpu_workers(
  monkeypatch, gpus, expected
):
  list_physical_devices = tf.config.list_physical_devices
  fake_gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(gpus)]
  monkeypatch.setattr(
    tf.config,
    "list_physical_devices",
    lambda kind=None: fake_gpus if kind == "GPU" else list_physical_devices(kind),
  )
  requested = []

  class RecordingStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    def __init__(self, **kwargs):
      requested.append(kwargs["communication_options"].implementation.value)
      super().__init__(**kwargs)  # One local worker (no TF_CONFIG) on the CPU.

  monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", RecordingStrategy)
  strategy = distribute.create_strategy("multi_worker")
  assert requested == [expected]
  assert distribute.all_reduce_implementation(strategy) == f"{expected} (collective)"
  assert f"all-reduce: {expected} (collective)." in distribute.describe(strategy, "multi_worker")


def test_linear_learning_rate_scaling_is_recorded(image_folder, tmp_path):
  config = debug_config(image_folder, learning_rate=1e-3, lr_reference_batch_size=8, epochs=1)
  assert config.peak_learning_rate == pytest.approx(2e-3)  # Batch 16 = 2 x 8.
  train.train_and_evaluate(config, str(tmp_path))
  record = json.load(open(tmp_path / run_record.RUN_RECORD))
  assert record["peak_learning_rate"] == pytest.approx(2e-3)


def test_a_run_saved_on_two_replicas_resumes_on_one(image_folder, tmp_path, monkeypatch):
  config = debug_config(image_folder)
  model_dir = str(tmp_path)
  train.train_and_evaluate(dataclasses.replace(config, strategy="mirrored", epochs=1), model_dir)
  saved = final_weights(model_dir)  # ckpt-3, written by 2 replicas.

  restored = {}
  original_restore = checkpointing.Checkpoints.restore

  def restore_and_capture(self):
    path = original_restore(self)
    restored["stem_kernel"] = self.checkpoint.model.stem_conv.kernel.numpy()
    restored["iterations"] = int(self.checkpoint.optimizer.iterations.numpy())
    return path

  monkeypatch.setattr(checkpointing.Checkpoints, "restore", restore_and_capture)
  resumed = train.train_and_evaluate(config, model_dir)  # One device.
  assert resumed["step"] == 6 and np.isfinite(resumed["validation"]["loss"])
  assert restored["iterations"] == 3  # Adam's state carried over, not restarted ...
  kernel = saved["model/stem_conv/_kernel/.ATTRIBUTES/VARIABLE_VALUE"]
  np.testing.assert_array_equal(restored["stem_kernel"], kernel)  # ... nor the weights.
  assert (
    int(
      tf.train.load_variable(
        tf.train.latest_checkpoint(os.path.join(model_dir, checkpointing.LATEST_DIR)),
        "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
      )
    )
    == 6
  )


def run_checkpoints(image_folder, precision, model_dir):
  """The Checkpoints of a one-device debug_config run in `precision`, as train.py makes
  them (fresh random weights; nothing restored yet)."""
  config = debug_config(image_folder, precision=precision)
  strategy = tf.distribute.get_strategy()
  with strategy.scope():
    counters = checkpointing.create_counters()
  run = train_lib.create_training(config, strategy, NUM_CLASSES, 3, counters["lr_multiplier"])
  return checkpointing.Checkpoints(model_dir, run.model, run.optimizer, counters)


@pytest.mark.parametrize("resumed", optimization.PRECISIONS)
@pytest.mark.parametrize("saved", optimization.PRECISIONS)
def test_a_checkpoint_restores_in_every_precision(image_folder, tmp_path, saved, resumed):
  # A spot VM can come back on other hardware, where --precision=auto picks another
  # precision. Weights and the optimizer's state carry over; the loss scale only from
  # mixed_float16 to mixed_float16: it starts afresh when the checkpoint has none, and
  # is left unread when the new run has no loss scaling.
  before = run_checkpoints(image_folder, saved, str(tmp_path))
  before.counters["step"].assign(7)
  before.checkpoint.optimizer.iterations.assign(7)
  if saved == "mixed_float16":  # A loss scale that has moved since the start.
    before.checkpoint.loss_scale_optimizer.dynamic_scale.assign(4.0)
    before.checkpoint.loss_scale_optimizer.step_counter.assign(5)
  before.save_latest()

  after = run_checkpoints(image_folder, resumed, str(tmp_path))
  assert after.restore().endswith("ckpt-7") and after.step == 7
  assert int(after.checkpoint.optimizer.iterations.numpy()) == 7
  for old, new in zip(before.checkpoint.model.weights, after.checkpoint.model.weights, strict=True):
    np.testing.assert_array_equal(new.numpy(), old.numpy())  # Not the new random weights.
  if resumed == "mixed_float16":
    loss_scale = after.checkpoint.loss_scale_optimizer
    expected = (4.0, 5) if saved == "mixed_float16" else (2.0**15, 0)  # Carried, or fresh.
    assert (
      float(loss_scale.dynamic_scale.numpy()),
      int(loss_scale.step_counter.numpy()),
    ) == expected


def test_a_mixed_bfloat16_run_resumes_in_mixed_float16(image_folder, tmp_path):
  # From an A100 (or this CPU) to a V100: the whole resumed run, not only its restore.
  config = debug_config(image_folder, precision="mixed_bfloat16", epochs=1, steps_per_epoch=1)
  train.train_and_evaluate(config, str(tmp_path))
  config = dataclasses.replace(config, precision="mixed_float16", epochs=2)
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and np.isfinite(result["validation"]["loss"])
  path = tf.train.latest_checkpoint(str(tmp_path / checkpointing.LATEST_DIR))
  assert tf.train.load_variable(path, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 2


@pytest.mark.parametrize(
  ("platform", "signal_name"), [("GCE_GPU", "SIGTERM"), ("GCE_CPU", "SIGINT")]
)
def test_a_signal_saves_whatever_platform_the_preemption_handler_detects(
  tmp_path, monkeypatch, platform, signal_name
):
  # TF's handler, left to itself, watches GCE's maintenance notice on a Cloud GPU VM
  # (with an hour's grace) and does nothing on a Cloud CPU VM: a SIGTERM would not save.
  monkeypatch.setattr(
    failure_handling_util, "detect_platform", lambda: failure_handling_util.PlatformDevice[platform]
  )
  saves = []
  stop = preemption.StopSignals(coordinated=True)
  one_worker = types.SimpleNamespace(
    cluster_resolver=tf.distribute.cluster_resolver.SimpleClusterResolver(tf.train.ClusterSpec({}))
  )
  handler = preemption.create_handler(
    one_worker, tf.train.Checkpoint(), str(tmp_path), lambda: saves.append(1), stop
  )
  with stop:
    handler.save_checkpoint_if_preempted()
    os.kill(os.getpid(), signal.Signals[signal_name])  # A preemption, or a Ctrl-C.
    deadline = time.monotonic() + 10  # The handler polls stop.signalled every second.
    while not stop.received and time.monotonic() < deadline:
      time.sleep(0.1)
      handler.save_checkpoint_if_preempted()  # As the loop calls it after its steps.
  assert stop.received == signal_name and saves == [1]


# --- Several worker processes on this machine ---------------------------------------------


def start_workers(config, model_dir, work_dir, num_workers=2, signal_at_step=None):
  """`num_workers` train.py processes of one cluster, TF_CONFIG as a launcher sets it.

  `model_dir` is every worker's --model_dir, or a list of one per worker (hosts
  that do not share storage). Worker i logs to WORK_DIR/worker{i}.log and has
  WORK_DIR/tmp{i} as TMPDIR. With `signal_at_step`, worker 1 sends itself SIGTERM
  from inside that step (signal_at_step.py).
  """
  cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(num_workers)]}
  model_dirs = model_dir if isinstance(model_dir, list) else [model_dir] * num_workers
  command = ["--strategy=multi_worker"]
  command += [
    f"--{key}={value}"
    for key, value in dataclasses.asdict(config).items()
    if value is not None and key != "strategy"
  ]
  processes = []
  for index in range(num_workers):
    scratch = os.path.join(work_dir, f"tmp{index}")
    os.makedirs(scratch, exist_ok=True)
    env = dict(
      os.environ,
      TMPDIR=scratch,
      TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
    )
    script = "train.py"
    if signal_at_step and index == 1:
      script, env["SIGNAL_AT_STEP"] = "tests/signal_at_step.py", str(signal_at_step)
    with open(os.path.join(work_dir, f"worker{index}.log"), "w") as log:
      processes.append(
        subprocess.Popen(
          [sys.executable, script, *command, f"--model_dir={model_dirs[index]}"],
          cwd=REPO,
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
  return processes


def finish(processes, work_dir, timeout=300):
  """(exit codes, logs) once every worker has exited; after `timeout` seconds the
  workers still running are killed and their code is "hung"."""
  deadline = time.monotonic() + timeout
  codes = []
  for process in processes:
    try:
      codes.append(process.wait(timeout=max(0.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
      process.kill()  # Waiting in a collective for a peer that left: it would never end.
      process.wait()
      codes.append("hung")
  logs = []
  for index in range(len(processes)):
    with open(os.path.join(work_dir, f"worker{index}.log")) as log:
      logs.append(log.read())
  return codes, logs


def wait_for_line(path, text, process, timeout=120):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and process.poll() is None:
    with open(path) as log:
      if text in log.read():
        return
    time.sleep(0.2)
  raise AssertionError(f"{text!r} never appeared in {path}")


def files_under(directory):
  return sorted(
    os.path.relpath(os.path.join(root, name), directory)
    for root, _, names in os.walk(directory)
    for name in names
    if "events.out" not in name  # Named after the host and process id.
  )


def test_two_workers_train_like_two_replicas_in_one_process(image_folder, tmp_path):
  # Epoch 1 in one process on two replicas (checkpoints at steps 2 and 3) starts both runs.
  # The workers' copy has its ckpt-3 damaged: they fall back to ckpt-2 together, and
  # both must run the moving-statistics collective when saving a good ckpt-3 again.
  # A constant rate after the warm-up: --epochs=1 then --epochs=2 trains as --epochs=2 does.
  config = debug_config(
    image_folder, log_every_steps=3, checkpoint_every_steps=2, lr_schedule="constant"
  )
  model_dir, single_dir = str(tmp_path / "workers"), str(tmp_path / "single")
  mirrored = dataclasses.replace(config, strategy="mirrored")
  train.train_and_evaluate(dataclasses.replace(mirrored, epochs=1), single_dir)
  shutil.copytree(single_dir, model_dir)
  (data_file,) = glob.glob(os.path.join(model_dir, checkpointing.LATEST_DIR, "ckpt-3.data-*"))
  with open(data_file, "r+b") as file:
    file.truncate(os.path.getsize(data_file) // 2)  # As a kill during the write leaves it.

  codes, logs = finish(start_workers(config, model_dir, tmp_path), tmp_path)
  assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert "2 replica(s); this is worker 0" in logs[0] and "this is worker 1" in logs[1]
  assert "all-reduce: RING (collective)." in logs[0]  # CPU-only workers.
  for log in logs:
    assert "Cannot restore" in log and "ckpt-3 (" in log and "ckpt-2 at step 2" in log
  train.train_and_evaluate(mirrored, single_dir)

  # The chief wrote what a single process writes; the other worker wrote
  # nothing there, and its temporary checkpoints are gone.
  assert files_under(model_dir) == files_under(single_dir)
  assert not os.path.exists(os.path.join(model_dir, run_lock.LOCK_FILE))
  for worker_tmp in ("tmp0", "tmp1"):  # (TFDS leaves a tmp*tfds directory of its own.)
    assert not [name for name in os.listdir(tmp_path / worker_tmp) if name.startswith("resnet-")]
  for summaries in ("train", "validation"):  # One file per start.
    assert len(os.listdir(os.path.join(model_dir, "tensorboard", summaries))) == 2

  best, single_best = (
    json.load(open(os.path.join(directory, "best", "best.json")))
    for directory in (model_dir, single_dir)
  )
  assert best["step"] == single_best["step"] and best["accuracy"] == single_best["accuracy"]
  assert best["loss"] == pytest.approx(single_best["loss"], rel=1e-5)
  assert_adam_runs_agree(final_weights(single_dir), final_weights(model_dir), 2e-3, num_steps=6)
  # The ckpt-3 saved over the damaged one reads back whole, with the model of step 3.
  assert_adam_runs_agree(
    checkpoint_weights(os.path.join(single_dir, checkpointing.LATEST_DIR, "ckpt-3")),
    checkpoint_weights(os.path.join(model_dir, checkpointing.LATEST_DIR, "ckpt-3")),
    2e-3,
    num_steps=3,
  )


def test_an_overflow_is_skipped_on_every_replica_under_collective_all_reduce():
  # GPUs all-reduce with collectives (NCCL), not with the ReductionToOneDevice of our
  # CPU "mirrored": tests/collective_overflow.py runs the overflow test above on
  # MirroredStrategy's default collectives (one process, 2 logical devices) and on two
  # local workers, mixed_float16 both, all three processes at once.
  # The workers also count what their train steps launch: the test of the all-reduces
  # above builds the strategy from local devices, where it is not in multi-worker mode.
  # Two processes of a real cluster are: there an input of unknown length would make
  # every next() sum across workers whether any still has data, one more round trip a step.
  script = os.path.join(REPO, "tests", "collective_overflow.py")
  cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
  runs = {"mirrored": {}}
  for index in range(2):
    task = {"type": "worker", "index": index}
    runs[f"worker{index}"] = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
  processes = {
    name: subprocess.Popen(
      [sys.executable, script, "multi_worker" if env else "mirrored"],
      env=dict(os.environ, **env),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for name, env in runs.items()
  }
  outputs = {name: process.communicate(timeout=300)[0] for name, process in processes.items()}
  reports = {}
  for name, process in processes.items():
    assert process.returncode == 0, f"{name}:\n{outputs[name][-3000:]}"
    reports[name] = json.loads(outputs[name].strip().splitlines()[-1])
  for report in reports.values():  # Each asserted the skip and the training after it.
    assert report["all_reduce"] == "RING (collective)" and report["replicas"] == 2
    assert report["scale"] == [32768.0, 16384.0] and report["trained_after"]
  for name in ("worker0", "worker1"):
    collectives = reports[name]["collectives"]
    # Per call, per step: as counted on local devices; and no "has any worker data left?".
    facts = [
      collectives[key] for key in ("workers", "per_call", "per_step", "get_next_as_optional")
    ]
    assert facts == [2, 1, 2, False], collectives
  checksums = [report["weights_checksum"] for report in reports.values()]
  assert checksums == pytest.approx([checksums[0]] * 3, rel=1e-6)  # Workers stayed in step.


def test_sigterm_to_one_worker_saves_on_all_within_a_few_steps_and_the_run_resumes_exactly(
  tmp_path, monkeypatch
):
  # Calls of the train steps run to the next log line or epoch end (16 steps here) unless
  # several workers cut them at --preemption_check_steps (2): the handler's check after
  # the call under way learns of the signal; the workers save at the check after it.
  images = write_image_folder(str(tmp_path / "images"), {"train": 200, "test": 7})
  # --on_nan=recover: the first start's step-0 save runs on both workers (its collectives
  # would hang one worker that ran them alone).
  config = debug_config(
    images,
    epochs=2,
    steps_per_epoch=16,
    log_every_steps=16,
    preemption_check_steps=2,
    on_nan="recover",
  )
  config = dataclasses.replace(config, optimizer="sgd", momentum=0.9, learning_rate=0.02)
  model_dir, signal_step = str(tmp_path / "run"), 4
  processes = start_workers(config, model_dir, tmp_path, signal_at_step=signal_step)
  codes, logs = finish(processes, tmp_path)
  assert codes == [128 + signal.SIGTERM] * 2, logs[0][-3000:] + logs[1][-3000:]
  stopped = [int(log.split("Stopped by SIGTERM at step ")[1].split()[0]) for log in logs]
  print(f"SIGTERM in step {signal_step}; saved at step {stopped[0]}")
  # The call under way and two more (3 x 2 steps), and 2 steps of the handler's 1-s poll.
  assert stopped[0] == stopped[1] and signal_step <= stopped[0] <= signal_step + 3 * 2 + 2
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, checkpointing.LATEST_DIR))
  assert latest.endswith(f"ckpt-{stopped[0]}")

  # Resumed exactly where it stopped, here in one process on two replicas (workers resuming
  # together is test_two_workers_train_like_two_replicas_in_one_process's): it ends with the
  # weights of an uninterrupted run on two replicas in one process.
  mirrored, single_dir = dataclasses.replace(config, strategy="mirrored"), str(tmp_path / "single")
  logged = []
  monkeypatch.setattr(checkpointing.logging, "info", lambda text, *args: logged.append(text % args))
  assert train.train_and_evaluate(mirrored, model_dir)["step"] == 32
  assert any(line.startswith(f"Resumed from {latest} at step {stopped[0]} ") for line in logged)
  train.train_and_evaluate(mirrored, single_dir)
  expected, actual = final_weights(single_dir), final_weights(model_dir)
  for name in expected:
    np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
