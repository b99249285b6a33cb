r"""Where a train step's time goes: TensorFlow's profiler over a few steps, time by op.

  python -m resnet.tools.step_profile --model=resnet20 --precision=mixed_bfloat16
  python -m resnet.tools.step_profile --model=airbench --batch_size=1024 --steps=3 --by=name

Builds the train step as resnet.tools.benchmark does (one batch held in memory, so only the
step is measured), warms it up, times `--steps` steps without the profiler, then traces
the same number with it and prints the milliseconds per step spent in each op type's
kernels (or each op's, with --by=name). Op times are summed over TensorFlow's inter-op
threads, so they can add up to more than the step's wall time when ops overlap. The
trace stays in --logdir (TensorBoard's profile plugin reads it; this project does not
install it). Run it on a quiet machine. It is made for CPUs: on a GPU the host threads
record kernel launches, not the kernels' run time (read the trace in TensorBoard there).
"""

import collections
import glob
import os
import tempfile

import tensorflow as tf
from absl import app, flags

# The profiler's own trace format; TensorFlow 2.20 and 2.21 ship its protobuf here.
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from data import pipeline
from resnet import models, optimization
from resnet.tools import benchmark, timing

# Threads on which TensorFlow's executor runs op kernels (one event per kernel call).
_OP_THREAD_PREFIX = "tf_Compute"


def profile_train_steps(model_name, batch_size, precision, steps, logdir):
  """Traces `steps` train steps into `logdir`; returns the unprofiled seconds per step."""
  strategy = tf.distribute.get_strategy()
  (images, labels), _, class_names = benchmark.load_images(None, batch_size)
  kwargs = benchmark.train_dataset_kwargs(len(labels), batch_size)
  iterator = timing.one_batch_forever(pipeline.make_train_dataset(images, labels, **kwargs))
  _, train_steps = benchmark.build_train_steps(
    strategy, model_name, len(class_names), batch_size, precision
  )
  seconds_per_step = batch_size / timing.rate_of(train_steps, iterator, steps, batch_size)()
  tf.profiler.experimental.start(logdir)
  try:
    train_steps(iterator, tf.constant(steps))
  finally:
    tf.profiler.experimental.stop()
  return seconds_per_step


def op_times(logdir, by="type"):
  """{op type (or full op name with by="name"): (milliseconds, calls)} of the newest trace
  in `logdir`, over every kernel call the executor's threads recorded."""
  paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"No profiler trace (*.xplane.pb) under {logdir}.")
  space = xplane_pb2.XSpace()
  with open(max(paths, key=os.path.getmtime), "rb") as file:
    space.ParseFromString(file.read())
  milliseconds, calls = collections.Counter(), collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith(_OP_THREAD_PREFIX):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        # Kernel calls are named "op/name:OpType"; executor bookkeeping "Class::Method".
        if ":" not in name or "::" in name:
          continue
        key = name if by == "name" else name.rsplit(":", 1)[1]
        milliseconds[key] += event.duration_ps / 1e9
        calls[key] += 1
  return {key: (milliseconds[key], calls[key]) for key in milliseconds}


def format_op_table(times, steps, top=25):
  """Markdown table of the `top` ops by time: ms per step, share, calls per step."""
  total = sum(ms for ms, _ in times.values())
  rows = ["| op | ms per step | share | calls per step |", "| --- | ---: | ---: | ---: |"]
  for key, (ms, calls) in sorted(times.items(), key=lambda item: -item[1][0])[:top]:
    rows.append(f"| {key} | {ms / steps:.1f} | {100 * ms / total:.1f}% | {calls / steps:g} |")
  rows.append(f"| all ops | {total / steps:.1f} | 100% | |")
  return "\n".join(rows)


def main(argv):
  del argv
  logdir = FLAGS.logdir or tempfile.mkdtemp(prefix="step_profile_")
  seconds = profile_train_steps(FLAGS.model, FLAGS.batch_size, FLAGS.precision, FLAGS.steps, logdir)
  print(
    f"{FLAGS.model}, batch {FLAGS.batch_size}, {FLAGS.precision}: "
    f"{1e3 * seconds:.1f} ms per step unprofiled ({FLAGS.batch_size / seconds:.0f} images/s)"
  )
  print(format_op_table(op_times(logdir, FLAGS.by), FLAGS.steps, FLAGS.top))
  print(f"Trace: {logdir}")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_enum("model", "resnet20", models.NAMES, "Model:\n" + models.describe())
  flags.DEFINE_integer("batch_size", 128, "Global batch size.")
  flags.DEFINE_enum("precision", "float32", list(optimization.PRECISIONS), "Step precision.")
  flags.DEFINE_integer("steps", 10, "Steps timed, then the same number profiled.")
  flags.DEFINE_enum("by", "type", ["type", "name"], "Group kernel time by op type or op name.")
  flags.DEFINE_integer("top", 25, "Rows printed.")
  flags.DEFINE_string("logdir", None, "Where the trace goes (default: a new temporary directory).")
  app.run(main)
