r"""A results table read from run directories, never typed by hand.

  python -m resnet.tools.results ~/runs/resnet20_paper_s0 ~/runs/resnet20_paper_s1 \
    ~/runs/resnet20_adam_s0

prints a Markdown table with one row per recipe: the config it matches (and
the flags that differ from it, e.g. a shortened schedule), model, optimizer,
steps trained of the total, seeds, training wall time, images/s, the machine,
precision, training FLOPs (3 x forward FLOPs x images trained), best validation
accuracy and, where `eval.py` was run on the run directory, validation accuracy
with test-time augmentation (--split=validation --tta=...) and test accuracy
with and without flip TTA (--split=test --tta=flip), each named by its dataset
(report.dataset_slug: the run's own from eval/test/, others from eval/<slug>/test/). Runs that
differ only in --seed collapse into mean ± standard deviation with n.
Unfinished runs say so.
"""

import dataclasses
import glob
import json
import os
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from data import augment
from resnet import checkpointing, errors, files, models, report, run_record
from resnet import config as config_lib
from resnet.tools import curves

# eval.py's metrics.json keys of test-time augmentation, the most thorough first.
VALIDATION_TTA_KEYS = tuple(f"{mode}_tta" for mode in augment.TTA_MODES[::-1] if mode != "none")
# The checkout's configs/, two levels above this file (resnet/tools/).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS_DIR = os.path.join(CHECKOUT, "configs")
# Flags that do not change what a run computes: runs differing only in these are one recipe.
NOT_RECIPE = {
  "seed",
  "dataset",
  "tfds_data_dir",
  "strategy",
  "tpu",
  "deterministic",
  "log_every_steps",
  "checkpoint_every_steps",
  "preemption_check_steps",
  "export",
  "on_nan",
  "nan_lr_factor",
}


def read_flagfile(path):
  """{flag: value} of the Config flags that the flagfile `path` sets, parsed by absl as
  train.py parses it: nested --flagfile lines included (their paths, as train.py reads
  them, relative to the working directory: the checkout)."""
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(["", f"--flagfile={path}"])
  names = [field.name for field in dataclasses.fields(config_lib.Config)]
  return {name: flag_values[name].value for name in names if flag_values[name].present}


def with_defaults(config, recorded=True):
  """`config` with every Config field it lacks at its default. A `recorded` config (a run's)
  gets the value runs recorded before the field existed had (run_record.RUN_KEY_DEFAULTS);
  a flagfile's, the Config default it asks for."""
  defaults = dataclasses.asdict(config_lib.Config())
  return {**defaults, **(run_record.RUN_KEY_DEFAULTS if recorded else {}), **config}


def match_config(config, configs_dir=CONFIGS_DIR):
  """The flagfile in `configs_dir` closest to `config`, and the flags that differ from it.

  Both sides are compared whole, flags not set at their defaults (with_defaults),
  so a flag the flagfile does not mention still counts (e.g. --nowhitening).

  Returns:
    (file name or "-", {flag: the run's value} for recipe flags that differ).
  """
  config = with_defaults(config)
  best = ("-", {key: value for key, value in config.items() if key not in NOT_RECIPE})
  best_rank = (len(best[1]), -1)  # A file must differ in fewer flags than none at all.
  default_dataset = config_lib.Config().dataset
  for path in sorted(glob.glob(os.path.join(configs_dir, "*.cfg"))):
    values = with_defaults(read_flagfile(path), recorded=False)
    file_dataset = values.get("dataset", default_dataset)
    # --dataset is not a recipe flag (a CIFAR-10 recipe runs on a folder of CIFAR-10 too),
    # but a file made for another dataset (resnet56_paper_cifar100.cfg) names that dataset:
    # it matches runs on it only, and wins over its base file there.
    if values.get("model") != config.get("model") or (
      file_dataset != default_dataset and file_dataset != config.get("dataset")
    ):
      continue
    differ = {
      key: config.get(key)
      for key, value in values.items()
      if key not in NOT_RECIPE and not _same_flag(key, config.get(key), value)
    }
    rank = (len(differ), file_dataset != config.get("dataset"))
    if rank < best_rank:
      best, best_rank = (os.path.basename(path), differ), rank
  return best


def _same_flag(key, run_value, file_value):
  """Whether a run's recorded value is what the flagfile asks for: a flagfile's
  --precision=auto is whichever precision the machine chose (run.json records that), its
  --stride2_padding=auto what a new run gets (runs made before the option used "same")."""
  if key == "stride2_padding" and file_value == "auto":
    return run_value in ("auto", "symmetric")
  return run_value == file_value or (key == "precision" and file_value == "auto")


def summarize_run(model_dir):
  """One run's figures.

  Raises:
    checkpointing.CheckpointError: `model_dir` is not a training run.
  """
  record = run_record.trained_run_record(model_dir)
  config = with_defaults(record["config"])
  total_steps = config["epochs"] * record["steps_per_epoch"]
  train_events = os.path.join(model_dir, "tensorboard", "train")
  epoch_seconds = curves.last_per_step(curves.scalars(train_events, "epoch_seconds"))
  rates = curves.last_per_step(curves.scalars(train_events, "images_per_second"))
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, checkpointing.LATEST_DIR))
  step = checkpointing.saved_step(latest) if latest else 0
  best = files.read_json(os.path.join(model_dir, checkpointing.BEST_DIR, "best.json")) or {}
  tests = test_evaluations(model_dir, config["dataset"])
  validation = files.read_json(os.path.join(model_dir, "eval", "validation", "metrics.json"))
  # The most thorough test-time augmentation eval.py ran on the validation split, if any.
  tta_key = next((key for key in VALIDATION_TTA_KEYS if key in (validation or {})), None)
  machines = {machine["cpu"] for machine in record.get("machines", [])}
  gpus = {gpu for machine in record.get("machines", []) for gpu in machine.get("gpus", [])}
  return {
    "model_dir": model_dir,
    "config": config,
    "step": step,
    "total_steps": total_steps,
    "seconds": sum(epoch_seconds.values()),  # Epochs' wall time, validation included.
    "images_per_second": float(np.median(list(rates.values()))) if rates else None,
    "device": ", ".join(sorted(gpus or machines)) or "unknown",
    "training_flops": models.training_flops(config["model"], step * config["batch_size"]),
    "validation_accuracy": best.get("accuracy"),
    "validation_accuracy_tta": validation[tta_key]["accuracy"] if tta_key else None,
    "validation_tta": tta_key and tta_key.removesuffix("_tta"),
    # {dataset slug: accuracy}, the run's own dataset first.
    "test_accuracy": {slug: test["accuracy"] for slug, test in tests.items()},
    "test_accuracy_tta": {
      slug: test["flip_tta"]["accuracy"] for slug, test in tests.items() if "flip_tta" in test
    },
  }


def test_evaluations(model_dir, run_dataset):
  """{dataset slug: metrics.json} of eval.py's test-split evaluations of a run, its own
  dataset's (eval/test/) first, then the others' (eval/<slug>/test/, report.eval_dir) by
  name. eval/test/ is named by the dataset its metrics.json records: a run evaluated before
  eval/<slug>/ existed may hold another dataset's figures there."""
  found = {}
  own = files.read_json(os.path.join(model_dir, "eval", "test", "metrics.json"))
  if own:
    found[report.dataset_slug(own.get("dataset") or run_dataset)] = own
  for path in sorted(
    tf.io.gfile.glob(os.path.join(model_dir, "eval", "*", "test", "metrics.json"))
  ):
    found[os.path.basename(os.path.dirname(os.path.dirname(path)))] = files.read_json(path)
  return found


def mean_std(values):
  """'mean ± std' in percent of the values that exist, or '-'."""
  values = [value for value in values if value is not None]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{100 * values[0]:.2f}"
  return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"


# A run whose epochs took this many times its images / its median images/s was paused
# (SIGSTOP) or shared the CPU for part of its wall time; validation adds only a few percent.
INTERRUPTED_RATIO = 1.5
INTERRUPTED_NOTE = (
  f"† Wall time over {INTERRUPTED_RATIO}x the images trained / the median images/s: "
  "the run was paused or shared its CPU for part of it."
)


def _hours(seconds):
  return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _wall_time(run):
  """The run's epochs' wall time, marked † if it was paused or shared its CPU."""
  images = run["step"] * run["config"]["batch_size"]
  rate = run["images_per_second"]
  interrupted = rate and run["seconds"] > INTERRUPTED_RATIO * images / rate
  return _hours(run["seconds"]) + (" †" if interrupted else "")


def results_table(runs, configs_dir=CONFIGS_DIR):
  """A Markdown table of summarize_run results, seeds of one recipe on one row."""
  groups = {}
  for run in runs:
    recipe = {k: v for k, v in run["config"].items() if k not in NOT_RECIPE}
    groups.setdefault(json.dumps(recipe, sort_keys=True), []).append(run)
  header = (
    "| config | model | optimizer | steps trained | seeds (n) | epochs' time | images/s | device | "
    "precision | training FLOPs | best val acc % | val acc, TTA % | test acc % | "
    "test acc, flip TTA % |"
  )
  lines = [header, "|" + " --- |" * 14]
  for group in groups.values():
    config = group[0]["config"]
    name, differ = match_config(config, configs_dir)
    if differ:
      name += " with " + " ".join(f"--{key}={value}" for key, value in sorted(differ.items()))
    steps = [
      f"{run['step']:,} of {run['total_steps']:,}"
      + ("" if run["step"] >= run["total_steps"] else " (unfinished)")
      for run in group
    ]
    seeds = ", ".join(str(run["config"]["seed"]) for run in group)
    rates = [run["images_per_second"] for run in group if run["images_per_second"]]
    lines.append(
      f"| {name} | {config['model']} | {config['optimizer']} | {'; '.join(steps)} | "
      f"{seeds} ({len(group)}) | {', '.join(_wall_time(run) for run in group)} | "
      f"{f'{np.median(rates):.0f}' if rates else '-'} | "
      f"{'; '.join(sorted({run['device'] for run in group}))} | {config['precision']} | "
      f"{np.mean([run['training_flops'] for run in group]):.2e} | "
      f"{mean_std([run['validation_accuracy'] for run in group])} | "
      f"{_validation_tta(group)} | "
      f"{_by_dataset(group, 'test_accuracy')} | {_by_dataset(group, 'test_accuracy_tta')} |"
    )
  if any("†" in line for line in lines[2:]):
    lines += ["", INTERRUPTED_NOTE]
  return "\n".join(lines)


def _by_dataset(group, key):
  """'<dataset> mean ± std; <dataset> ...' of the runs' {dataset slug: accuracy} under
  `key`, datasets in the order the runs list them (each run's own first), or '-'."""
  slugs = dict.fromkeys(slug for run in group for slug in run[key])
  cells = [f"{slug} {mean_std([run[key].get(slug) for run in group])}" for slug in slugs]
  return "; ".join(cells) or "-"


def _validation_tta(group):
  """'mean ± std (mode)' of the runs' validation accuracy with test-time augmentation."""
  modes = sorted({run["validation_tta"] for run in group if run["validation_tta"]})
  accuracy = mean_std([run["validation_accuracy_tta"] for run in group])
  return f"{accuracy} ({', '.join(modes)})" if modes else accuracy


def main(argv):
  if len(argv) < 2:
    sys.exit("Usage: python -m resnet.tools.results RUN_DIR [RUN_DIR ...]")
  logging.set_verbosity(logging.WARNING)  # TensorBoard's loader logs every file it reads.
  try:
    runs = [summarize_run(model_dir) for model_dir in argv[1:]]
  except errors.UserError as error:
    sys.exit(f"resnet.tools.results: error: {error}")
  print(results_table(runs))


if __name__ == "__main__":
  app.run(main)
