r"""Measures how long a two-worker run takes from a SIGTERM to its checkpoint.

A Google Cloud spot VM gets 30 s between its SIGTERM and the hard stop. This
starts two train.py workers on this machine (TF_CONFIG with two local ports,
each process sees the whole CPU), waits until the chief has logged
`--after_step`, waits `--delay` seconds more (so the signal lands inside a
call of the train steps), sends SIGTERM to worker 1 and prints the seconds
until the chief's checkpoint index appears, the step saved and the workers'
step time, hence about how many steps ran after the signal.

  python tools/preemption_latency.py --dataset=folder:../shared/data/cifar10-jpeg75
  python tools/preemption_latency.py --repo=/tmp/old ...   # Another checkout's train.py.
  python tools/preemption_latency.py ... -- --log_every_steps=10   # Flags for train.py.

With no flags after `--`, train.py runs with its defaults (resnet20, batch 128,
a log line every 50 steps). The figures depend on the machine's load: two
workers share its cores.
"""

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

# The console's log line: "... step 50/70200 (epoch 0.14): loss ... 103 img/s".
STEP_LINE = re.compile(r"step (\d+)/\d+ \(epoch [\d.]+\):.* (\d+) img/s")


def free_ports(count):
  """`count` TCP ports free on 127.0.0.1 a moment ago."""
  sockets = [socket.socket() for _ in range(count)]
  for sock in sockets:
    sock.bind(("127.0.0.1", 0))
  ports = [sock.getsockname()[1] for sock in sockets]
  for sock in sockets:
    sock.close()
  return ports


def start_workers(repo, model_dir, work_dir, train_flags):
  """Two train.py processes of one cluster; worker i logs to WORK_DIR/worker{i}.log."""
  cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
  command = [sys.executable, "train.py", f"--model_dir={model_dir}", "--strategy=multi_worker"]
  processes = []
  for index in range(2):
    env = dict(
      os.environ,
      TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
    )
    with open(os.path.join(work_dir, f"worker{index}.log"), "w") as log:
      processes.append(
        subprocess.Popen(
          command + train_flags, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT
        )
      )
  return processes


def step_lines(log_path):
  """[(step, images/s)] of the log lines so far."""
  with open(log_path) as log:
    return [(int(m[1]), int(m[2])) for m in STEP_LINE.finditer(log.read())]


def measure(repo, dataset, after_step, delay, train_flags, timeout, keep_dir=None):
  """Runs one preemption; returns a dict of its figures. Logs stay in `keep_dir` if given."""
  with contextlib.ExitStack() as stack:
    work_dir = keep_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="preemption-"))
    os.makedirs(work_dir, exist_ok=True)
    model_dir = os.path.join(work_dir, "run")
    index = os.path.join(model_dir, "checkpoints", "checkpoint")
    processes = start_workers(repo, model_dir, work_dir, [f"--dataset={dataset}", *train_flags])
    chief_log = os.path.join(work_dir, "worker0.log")
    seen = {}  # step -> when its log line was first seen.
    deadline = time.monotonic() + timeout
    try:
      while not any(step >= after_step for step in seen):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
          raise RuntimeError(f"no log line of step {after_step}:\n{open(chief_log).read()[-3000:]}")
        for step, _ in step_lines(chief_log):
          seen.setdefault(step, time.monotonic())
        time.sleep(0.05)
      if os.path.exists(index):
        raise RuntimeError("a checkpoint exists before the signal: pick an earlier --after_step")
      time.sleep(delay)
      processes[1].send_signal(signal.SIGTERM)
      signalled = time.monotonic()
      while not os.path.exists(index) and time.monotonic() < deadline:
        for step, _ in step_lines(chief_log):
          seen.setdefault(step, time.monotonic())
        time.sleep(0.05)
      saved = time.monotonic()
      codes = [process.wait(timeout=max(deadline - time.monotonic(), 1)) for process in processes]
      exited = time.monotonic()
    finally:
      for process in processes:
        if process.poll() is None:
          process.kill()
    logs = [open(os.path.join(work_dir, f"worker{i}.log")).read() for i in range(2)]
    stopped = re.findall(r"Stopped by SIGTERM at step (\d+)", logs[0])
    lines = step_lines(chief_log)
    steps, when = sorted(seen), [seen[s] for s in sorted(seen)]
    # Seconds per step between the first and the last log line seen (tracing excluded).
    per_step = (when[-1] - when[0]) / (steps[-1] - steps[0]) if len(steps) > 1 else float("nan")
    last = max(s for s in steps if seen[s] <= signalled)
    at_signal = last + (signalled - seen[last]) / per_step if per_step == per_step else last
    return {
      "exit_codes": codes,
      "seconds_to_saved": saved - signalled,
      "seconds_to_exit": exited - signalled,
      "saved_step": int(stopped[0]) if stopped else None,
      "seconds_per_step": per_step,
      "step_at_signal_estimate": at_signal,
      "images_per_second_logged": [rate for _, rate in lines],
    }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  parser.add_argument("--dataset", default="folder:../shared/data/cifar10-jpeg75")
  parser.add_argument(
    "--after_step",
    type=int,
    default=100,
    help="a step that gets a log line (two are needed for the step time)",
  )
  parser.add_argument("--delay", type=float, default=5.0, help="seconds after that line")
  parser.add_argument("--timeout", type=float, default=1800.0)
  parser.add_argument("--keep_dir", help="keep the workers' logs and model directory here")
  args, train_flags = parser.parse_known_args()
  train_flags = [flag for flag in train_flags if flag != "--"]
  dataset = args.dataset
  if dataset.startswith("folder:") and not os.path.isabs(dataset[7:]):  # Relative to here.
    dataset = "folder:" + os.path.abspath(dataset[7:])
  result = measure(
    os.path.abspath(args.repo),
    dataset,
    args.after_step,
    args.delay,
    train_flags,
    args.timeout,
    args.keep_dir,
  )
  steps_after = (result["saved_step"] or 0) - result["step_at_signal_estimate"]
  print(
    f"SIGTERM at step ~{result['step_at_signal_estimate']:.1f}; checkpoint of step "
    f"{result['saved_step']} after {result['seconds_to_saved']:.1f} s (~{steps_after:.1f} steps "
    f"at {result['seconds_per_step']:.2f} s/step); both workers exited after "
    f"{result['seconds_to_exit']:.1f} s with {result['exit_codes']}; logged img/s "
    f"{result['images_per_second_logged']}"
  )


if __name__ == "__main__":
  main()
