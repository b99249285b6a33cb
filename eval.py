r"""Evaluates the best checkpoint of a training run on a whole split.

  python eval.py --model_dir=runs/resnet20                      # the test split
  python eval.py --model_dir=runs/resnet20 --split=validation   # the run's held-out examples
  python eval.py --model_dir=runs/resnet20 --dataset=folder:/data/heldout --split=test
  python eval.py --model_dir=runs/resnet20 --corruptions=all     # CIFAR-10-C
  python eval.py --model_dir=runs/resnet20 --corruptions=fog,snow --severities=1,5

The model is rebuilt from MODEL_DIR/run.json, not from training flags. Writes
MODEL_DIR/eval/<split>/ (the run's own dataset) or MODEL_DIR/eval/<dataset>/<split>/
(another: report.eval_dir names it): metrics.json, report.txt, predictions.npz and
pictures; TensorBoard summaries under MODEL_DIR/tensorboard/eval_<split> (or
eval_<dataset>_<split>). --corruptions writes MODEL_DIR/eval/corruptions/ and
tensorboard/eval_corruptions (docs/robustness.md).
"""

import resnet  # noqa: F401 - first: sets TensorFlow's environment (resnet/__init__.py).

# isort: split
import os
import sys

from absl import app, flags, logging

from data import augment, pipeline, sources
from data import corruptions as corruption_data
from resnet import corruptions, errors, evaluation, report
from resnet import metrics as metrics_lib
from resnet.config import ConfigError

SPLITS = ("test", "validation", "train")
EVAL_STRATEGIES = ("auto", "default", "one_device", "mirrored")  # One process, local devices.


def load_eval_split(record, split, dataset, tfds_data_dir):
  """Loads the examples of `split` as the training run defined them.

  For the run's own dataset, "train" and "validation" are the run's partition
  of the training split (validation_size=0 means validation is the test
  split). Any other dataset's split is read whole.

  Returns:
    (images uint8 [N, 32, 32, 3], labels int32 [N], description str).
  """
  config = record["config"]
  if dataset == config["dataset"] and split in ("train", "validation"):
    train, validation, class_names, source = sources.load_train_and_validation(
      dataset, config["validation_size"], tfds_data_dir
    )
    images, labels = train if split == "train" else validation
    description = f"{dataset} {split} ({source})" if split == "validation" else f"{dataset} train"
  else:
    images, labels, class_names = sources.load_split(dataset, split, tfds_data_dir)
    description = f"{dataset} {split} (whole split)"
  evaluation.check_classes(dataset, class_names, record)
  return images, labels, description


def evaluate_model_dir(
  model_dir,
  split="test",
  dataset=None,
  tfds_data_dir=None,
  checkpoint_path=None,
  batch_size=256,
  strategy_name="auto",
  tta="none",
):
  """Evaluates a checkpoint of the run in `model_dir` on every example of a split.

  Writes metrics.json, report.txt (the per-class table), predictions.npz,
  confusion_matrix.png, mistakes.png (the most confident mistakes) and
  reliability.png (calibration) to MODEL_DIR/eval/<split>/ for the run's own
  dataset, MODEL_DIR/eval/<dataset slug>/<split>/ for another
  (report.eval_dir); and the headline figures to TensorBoard (eval_<split>,
  eval_<slug>_<split>). Test-time augmentation figures of the same checkpoint
  written there before are kept (report.keep_earlier_tta).

  Args:
    model_dir: a train.py model directory (holds run.json and best/).
    split: "test", "validation" or "train".
    dataset: dataset to read (default: the run's); tfds_data_dir as in train.py.
    checkpoint_path: checkpoint to restore (default: the best one).
    batch_size: global evaluation batch size (see evaluation.predict).
    strategy_name: one of EVAL_STRATEGIES (see evaluation.restore_run).
    tta: also report test-time augmentation (augment.tta_views: "flip" or
      "flip_translate"), as "<tta>_tta", beside the plain metrics.

  Returns:
    The metrics dict that is also written to metrics.json.
  """
  restored = evaluation.restore_run(model_dir, checkpoint_path, strategy_name)
  config, class_names = restored.record["config"], restored.record["class_names"]
  dataset = dataset or config["dataset"]
  tfds_data_dir = tfds_data_dir or config["tfds_data_dir"]
  images, labels, description = load_eval_split(restored.record, split, dataset, tfds_data_dir)
  logging.info("Evaluating %s on %d examples of %s.", restored.checkpoint, len(labels), description)
  probabilities, seen_labels = evaluation.predict(restored, images, labels, batch_size)
  metrics = metrics_lib.compute_metrics(probabilities, seen_labels, class_names)
  if tta != "none":  # Views of the training augmentation (flips, translations), averaged.
    views = pipeline.distribute_eval_views(
      restored.strategy, images, labels, global_batch_size=batch_size, tta=tta
    )
    averaged, _ = metrics_lib.predict_views(restored.predict_step, views, len(labels))
    augmented = metrics_lib.compute_metrics(averaged, seen_labels, class_names)
    metrics[f"{tta}_tta"] = {
      key: augmented[key] for key in ("accuracy", "loss", "top_k_accuracy", "ece")
    }
  metrics.update(
    split=split,
    dataset=dataset,
    description=description,
    checkpoint=restored.checkpoint,
    model=config["model"],
  )
  metrics["output_dir"], metrics["tensorboard_run"] = report.eval_dir(
    config["dataset"], dataset, split
  )
  title = f"{config['model']} on {description}"
  report.write_report(model_dir, metrics, images, seen_labels, probabilities, class_names, title)
  return metrics


def define_flags(flag_values=flags.FLAGS):
  """Defines the command-line flags in `flag_values`."""
  define = dict(flag_values=flag_values)
  flags.DEFINE_string("model_dir", None, "Model directory written by train.py.", **define)
  flags.DEFINE_list(
    "compare", [], "Model directories to evaluate alike and compare in one table.", **define
  )
  flags.DEFINE_enum(
    "tta",
    "none",
    list(augment.TTA_MODES),
    "Also report test-time augmentation: flip (2 views) or flip_translate (6 views).",
    **define,
  )
  flags.DEFINE_bool("tta_flip", False, "Shorthand for --tta=flip.", **define)
  flags.DEFINE_enum(
    "split", "test", list(SPLITS), "Split to evaluate, every example once.", **define
  )
  flags.DEFINE_string(
    "dataset", None, "cifar10 or folder:PATH (default: the run's dataset).", **define
  )
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (default: the run's).", **define)
  flags.DEFINE_string(
    "checkpoint", None, "Checkpoint to evaluate (default: MODEL_DIR/best).", **define
  )
  flags.DEFINE_integer(
    "batch_size", 256, "Global evaluation batch size (any replica count).", lower_bound=1, **define
  )
  flags.DEFINE_enum(
    "strategy",
    "auto",
    list(EVAL_STRATEGIES),
    "auto: mirrored over several GPUs, else default.",
    **define,
  )
  flags.DEFINE_list(
    "corruptions",
    [],
    "Evaluate on CIFAR-10-C instead of a split: all (its 19 corruptions) or NAME,NAME,... "
    "(docs/robustness.md).",
    **define,
  )
  flags.DEFINE_list(
    "severities", ["1", "2", "3", "4", "5"], "With --corruptions: of 1..5.", **define
  )
  flags.register_validator(
    "model_dir",
    lambda value: value or flag_values.compare,
    message="--model_dir (or --compare=DIR,DIR,...) is required.",
    flag_values=flag_values,
  )


def tta_mode(tta, tta_flip):
  """--tta, with --tta_flip as its shorthand for "flip".

  Raises:
    ConfigError: the two ask for different augmentations.
  """
  if tta_flip and tta not in ("none", "flip"):
    raise ConfigError(f"--tta_flip means --tta=flip, which contradicts --tta={tta}.")
  return "flip" if tta_flip else tta


def evaluate_corruptions(flag_values):
  """eval.py --corruptions: --model_dir's report on CIFAR-10-C (resnet/corruptions.py).

  Raises:
    ConfigError: a flag of split evaluation was given too, or --severities alone.
  """
  if not flag_values.corruptions:
    raise ConfigError("--severities applies with --corruptions only.")
  given = ("compare", "dataset", "split", "tta", "tta_flip")
  other = next((f"--{name}" for name in given if flag_values[name].present), None)
  if other:
    raise ConfigError(
      f"--corruptions evaluates CIFAR-10-C and the cifar10 test split; {other} does not apply."
    )
  names, levels = corruption_data.select(flag_values.corruptions, flag_values.severities)
  metrics = corruptions.evaluate_corruptions(
    flag_values.model_dir,
    names,
    levels,
    flag_values.tfds_data_dir,
    flag_values.checkpoint,
    flag_values.batch_size,
    flag_values.strategy,
  )
  print(f"{metrics['model']} ({metrics['checkpoint']}) on CIFAR-10-C")
  print(corruptions.format_table(metrics))
  print(f"Wrote {os.path.join(flag_values.model_dir, corruptions.OUTPUT_DIR)}/ (metrics.json, ...)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  if FLAGS.corruptions or FLAGS["severities"].present:
    try:
      return evaluate_corruptions(FLAGS)
    except errors.UserError as error:
      sys.exit(f"eval.py: error: {error}")
  model_dirs = FLAGS.compare or [FLAGS.model_dir]
  rows = []
  try:
    tta = tta_mode(FLAGS.tta, FLAGS.tta_flip)
    for model_dir in model_dirs:
      metrics = evaluate_model_dir(
        model_dir,
        FLAGS.split,
        FLAGS.dataset,
        FLAGS.tfds_data_dir,
        FLAGS.checkpoint,
        FLAGS.batch_size,
        FLAGS.strategy,
        tta,
      )
      rows.append((model_dir, metrics))
  except errors.UserError as error:
    sys.exit(f"eval.py: error: {error}")
  if FLAGS.compare:
    print(f"{FLAGS.split} split of each run's dataset" if not FLAGS.dataset else FLAGS.dataset)
    print(report.format_comparison(rows, tta))
    return
  print(f"{metrics['model']} ({metrics['checkpoint']}) on {metrics['description']}")
  print(report.format_table(metrics))
  print(f"Wrote {os.path.join(FLAGS.model_dir, metrics['output_dir'])}/ (metrics.json, ...)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
