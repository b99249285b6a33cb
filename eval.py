r"""Evaluates the best checkpoint of a training run on a whole split.

  python eval.py --model_dir=runs/resnet20                      # the test split
  python eval.py --model_dir=runs/resnet20 --split=validation   # the run's held-out examples
  python eval.py --model_dir=runs/resnet20 --dataset=folder:/data/heldout --split=test

The model is rebuilt from MODEL_DIR/run.json, not from training flags. Writes
MODEL_DIR/eval/<split>/metrics.json, confusion_matrix.png and predictions.npz,
and TensorBoard summaries under MODEL_DIR/tensorboard/eval_<split>.
"""

import resnet  # noqa: F401 - first: sets TensorFlow's environment (resnet/__init__.py).

# isort: split
import os
import sys

from absl import app, flags, logging

from data import augment, pipeline, sources
from resnet import distribute, errors, report, run_record, steps
from resnet import metrics as metrics_lib
from resnet.config import ConfigError

SPLITS = ("test", "validation", "train")
EVAL_STRATEGIES = ("auto", "default", "one_device", "mirrored")  # One process, local devices.


def load_eval_split(record, split, dataset, tfds_data_dir):
  """Loads the examples of `split` as the training run defined them.

  For the run's own dataset, "train" and "validation" are the run's partition
  of its training split (validation_size=0 means validation is the test
  split), with the run's label feature. Any other dataset's split is read whole.
  Every image is at the run's size (run_record.image_size; others resized).

  Returns:
    (images uint8 [N, H, W, 3], labels int32 [N], description str).
  """
  config = {**run_record.RUN_KEY_DEFAULTS, **record["config"]}
  own = dataset == config["dataset"]
  load_args = dict(
    label_feature=config["label_feature"] if own else "label",
    image_size=run_record.image_size(record),
  )
  if own and split in ("train", "validation"):
    train, validation, class_names, source = sources.load_train_and_validation(
      dataset,
      config["validation_size"],
      tfds_data_dir,
      train_split=config["train_split"],
      **load_args,
    )
    images, labels = train if split == "train" else validation
    description = f"{dataset} {split} ({source})" if split == "validation" else f"{dataset} train"
  else:
    images, labels, class_names = sources.load_split(dataset, split, tfds_data_dir, **load_args)
    description = f"{dataset} {split} (whole split)"
  if list(class_names) != list(record["class_names"]):
    raise sources.DataError(
      f"{dataset} has classes {class_names}, but the model was trained on "
      f"{record['class_names']}: labels would not line up."
    )
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

  Writes MODEL_DIR/eval/<split>/: metrics.json, report.txt (the per-class
  table), predictions.npz, confusion_matrix.png, mistakes.png (the most
  confident mistakes) and reliability.png (calibration); and the headline
  figures to TensorBoard under eval_<split>.

  Args:
    model_dir: a train.py model directory (holds run.json and best/).
    split: "test", "validation" or "train".
    dataset: dataset to read (default: the run's); tfds_data_dir as in train.py.
    checkpoint_path: checkpoint to restore (default: the best one).
    batch_size: global evaluation batch size; rounded up to a multiple of the
      replicas (the padding is masked out, see pipeline.eval_batch_size).
    strategy_name: one of EVAL_STRATEGIES. Evaluation runs in one process:
      "auto" mirrors over several local GPUs and ignores TF_CONFIG.
    tta: also report test-time augmentation (augment.tta_views: "flip" or
      "flip_translate"), as "<tta>_tta", beside the plain metrics.

  Returns:
    The metrics dict that is also written to MODEL_DIR/eval/<split>/metrics.json.
  """
  strategy = distribute.create_strategy(strategy_name, single_process=True)
  with strategy.scope():
    model, record, checkpoint_path = run_record.load_trained_model(model_dir, checkpoint_path)
  config, class_names = record["config"], record["class_names"]
  dataset = dataset or config["dataset"]
  tfds_data_dir = tfds_data_dir or config["tfds_data_dir"]
  images, labels, description = load_eval_split(record, split, dataset, tfds_data_dir)
  logging.info("Evaluating %s on %d examples of %s.", checkpoint_path, len(labels), description)

  eval_dataset = pipeline.distribute_eval_dataset(
    strategy, images, labels, global_batch_size=batch_size
  )
  predict_step = steps.make_predict_step(strategy, model, run_record.input_normalization(record))
  probabilities, seen_labels = metrics_lib.predict(predict_step, eval_dataset, len(labels))
  metrics = metrics_lib.compute_metrics(probabilities, seen_labels, class_names)
  if tta != "none":  # Views of the training augmentation (flips, translations), averaged.
    views = pipeline.distribute_eval_views(
      strategy, images, labels, global_batch_size=batch_size, tta=tta
    )
    averaged, _ = metrics_lib.predict_views(predict_step, views, len(labels))
    augmented = metrics_lib.compute_metrics(averaged, seen_labels, class_names)
    metrics[f"{tta}_tta"] = {
      key: augmented[key] for key in ("accuracy", "loss", "top_k_accuracy", "ece")
    }
  metrics.update(
    split=split,
    dataset=dataset,
    description=description,
    checkpoint=checkpoint_path,
    model=config["model"],
  )

  title = f"{config['model']} on {description}"
  report.write_report(model_dir, metrics, images, seen_labels, probabilities, class_names, title)
  return metrics


def define_flags():
  """Defines the command-line flags."""
  flags.DEFINE_string("model_dir", None, "Model directory written by train.py.")
  flags.DEFINE_list("compare", [], "Model directories to evaluate alike and compare in one table.")
  flags.DEFINE_enum(
    "tta",
    "none",
    list(augment.TTA_MODES),
    "Also report test-time augmentation: flip (2 views) or flip_translate (6 views).",
  )
  flags.DEFINE_bool("tta_flip", False, "Shorthand for --tta=flip.")
  flags.DEFINE_enum("split", "test", list(SPLITS), "Split to evaluate, every example once.")
  flags.DEFINE_string(
    "dataset", None, "A TFDS dataset or folder:PATH (default: the run's dataset)."
  )
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (default: the run's).")
  flags.DEFINE_string("checkpoint", None, "Checkpoint to evaluate (default: MODEL_DIR/best).")
  flags.DEFINE_integer(
    "batch_size", 256, "Global evaluation batch size (any replica count).", lower_bound=1
  )
  flags.DEFINE_enum(
    "strategy", "auto", list(EVAL_STRATEGIES), "auto: mirrored over several GPUs, else default."
  )
  flags.register_validator(
    "model_dir",
    lambda value: value or flags.FLAGS.compare,
    message="--model_dir (or --compare=DIR,DIR,...) is required.",
  )


def tta_mode(tta, tta_flip):
  """--tta, with --tta_flip as its shorthand for "flip".

  Raises:
    ConfigError: the two ask for different augmentations.
  """
  if tta_flip and tta not in ("none", "flip"):
    raise ConfigError(f"--tta_flip means --tta=flip, which contradicts --tta={tta}.")
  return "flip" if tta_flip else tta


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  model_dirs = FLAGS.compare or [FLAGS.model_dir]
  rows = []
  try:
    for model_dir in model_dirs:
      metrics = evaluate_model_dir(
        model_dir,
        FLAGS.split,
        FLAGS.dataset,
        FLAGS.tfds_data_dir,
        FLAGS.checkpoint,
        FLAGS.batch_size,
        FLAGS.strategy,
        tta_mode(FLAGS.tta, FLAGS.tta_flip),
      )
      rows.append((model_dir, metrics))
  except errors.UserError as error:
    sys.exit(f"eval.py: error: {error}")
  if FLAGS.compare:
    print(f"{FLAGS.split} split of each run's dataset" if not FLAGS.dataset else FLAGS.dataset)
    print(report.format_comparison(rows))
    return
  print(f"{metrics['model']} ({metrics['checkpoint']}) on {metrics['description']}")
  print(report.format_table(metrics))
  print(
    f"Wrote {os.path.join(FLAGS.model_dir, 'eval', FLAGS.split)}/ (metrics.json, report.txt, ...)"
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
