r"""Turns the reference implementation's published weights into an ordinary model directory.

  python -m resnet.tools.import_reference --model=resnet20 --model_dir=runs/reference_resnet20
  python -m resnet.tools.import_reference --model=resnet56 --model_dir=runs/reference_resnet56 \
      --checkpoint=../shared/reference/resnet56-4bfd9763.th      # offline: a local copy
  python eval.py --model_dir=runs/reference_resnet20 --dataset=cifar10

The reference is akamaster/pytorch_resnet_cifar10 (BSD-2-Clause), whose ResNet-20/32/44/56/110
are He et al.'s CIFAR networks; its weights are legacy torch.save files, read here without
PyTorch (resnet/torch_format.py). The model directory gets what train.py leaves behind: the
best checkpoint and best/best.json, run.json (with "imported_from": the source, its sha256,
the reference's commit and published test accuracy) and the export, so eval.py,
resnet.tools.predict, resnet.export and train.py --init_from work on it as on any run. Its models
pad stride-2 convolutions symmetrically and normalise inputs with ImageNet's mean and std:
run.json records both, and every step, evaluation and export of the run normalises so.
"""

import dataclasses
import os
import sys
import uuid

import tensorflow as tf
from absl import app, flags, logging

from data import datasets
from resnet import checkpointing, errors, export, files, models, run_record
from resnet import config as config_lib
from resnet.tools import reference_weights
from resnet.tools.reference_weights import ImportReferenceError

REPOSITORY = "https://github.com/akamaster/pytorch_resnet_cifar10"
REFERENCE_COMMIT = "d5489e8995e81e91ce6b1d69dcc98ad579b0b153"
# Model -> (the file the reference publishes, its published test error in % on CIFAR-10's
# official test set). The hex in a name is the start of the file's sha256.
PUBLISHED = {
  "resnet20": ("resnet20-12fca82f.th", 8.27),
  "resnet32": ("resnet32-d509ac18.th", 7.37),
  "resnet44": ("resnet44-014dd654.th", 6.90),
  "resnet56": ("resnet56-4bfd9763.th", 6.61),
  "resnet110": ("resnet110-1d1ed7c2.th", 6.32),
}
# The reference's transform: x / 255, then ImageNet's per-channel mean and std ([0, 1] units).
REFERENCE_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# What run.json says about the data the reference trained on: CIFAR-10's classes in label
# order (TFDS' and torchvision's alike), all 50,000 training images (the reference keeps the
# last partial batch: 391 steps per epoch), its best epoch chosen on the 10,000 test images.
DATA_FACTS = {
  "class_names": list(datasets.CIFAR10_CLASS_NAMES),
  "num_classes": len(datasets.CIFAR10_CLASS_NAMES),
  "num_train_examples": 50_000,
  "validation_source": "test split",
  "num_validation_examples": 10_000,
  "steps_per_epoch": 391,
}
# The reference's recipe (its trainer.py) in our flags, for run.json's config. It trained on
# all 50,000 training images and chose its best epoch on the test set: validation_size=0.
REFERENCE_RECIPE = dict(
  stride2_padding="symmetric",
  dataset="cifar10",
  validation_size=0,
  epochs=200,
  batch_size=128,
  optimizer="sgd",
  learning_rate=0.1,
  momentum=0.9,
  lr_schedule="piecewise",
  warmup_epochs=0.0,
  weight_decay=1e-4,
  batch_norm_weight_decay=True,
)


def _check_new_model_dir(model_dir):
  """Refuses a file or a non-empty directory: an import never mixes with another run."""
  if not tf.io.gfile.exists(model_dir):
    return
  if not tf.io.gfile.isdir(model_dir):
    raise ImportReferenceError(f"--model_dir={model_dir} is a file, not a directory.")
  if tf.io.gfile.listdir(model_dir):
    raise ImportReferenceError(f"--model_dir={model_dir} is not empty; choose a new directory.")


def _write_model_dir(directory, model, record_facts, accuracy):
  """Writes best/ (checkpoint and best.json), run.json and export/ into `directory`."""
  counters = checkpointing.create_counters()  # Step 0: nothing was trained here.
  counters["best_accuracy"].assign(accuracy)
  best_dir = os.path.join(directory, checkpointing.BEST_DIR)
  manager = tf.train.CheckpointManager(
    tf.train.Checkpoint(model=model, **counters), best_dir, max_to_keep=1, checkpoint_name="best"
  )
  path = manager.save(checkpoint_number=0)
  best = {"accuracy": accuracy, "loss": None, "epoch": 0, "step": 0}
  files.write_json(
    os.path.join(best_dir, "best.json"), {**best, "checkpoint": os.path.basename(path)}
  )
  config = config_lib.Config(model=model.name, **REFERENCE_RECIPE)
  run_record.start_run_record(directory, dataclasses.asdict(config), **record_facts)
  export.export_best_model(directory)


def import_reference(model_name, model_dir, source=None):
  """Imports the reference's published `model_name` into a new model directory.

  Everything is read and checked before anything is written, and the directory is
  written under a temporary sibling name, then renamed: on any error `model_dir` is left
  as it was.

  Args:
    model_name: one of PUBLISHED.
    model_dir: a new or empty directory (any tf.io.gfile path).
    source: the .th file's URL or path (default: the reference's URL for it).

  Returns:
    The run record written (run.json).

  Raises:
    ImportReferenceError: an unknown model, an unreadable, damaged, foreign or other-depth file,
      or a model directory in use.
  """
  if model_name not in PUBLISHED:
    raise ImportReferenceError(
      f"Unknown --model={model_name}; choose one of {', '.join(PUBLISHED)}."
    )
  _check_new_model_dir(model_dir)
  source = source or f"{REPOSITORY}/raw/master/pretrained_models/{PUBLISHED[model_name][0]}"
  data = reference_weights.read_source(source)
  sha256 = reference_weights.check_published_hash(source, data)
  state, best_prec1 = reference_weights.reference_state(source, data)
  model = models.create_model(model_name, DATA_FACTS["num_classes"], stride2_padding="symmetric")
  reference_weights.assign_reference_weights(model, state, os.path.basename(source))
  accuracy = round(1 - PUBLISHED[model_name][1] / 100, 4)
  imported_from = {
    "repository": REPOSITORY,
    "commit": REFERENCE_COMMIT,
    "source": source if "://" in source else os.path.abspath(source),
    "sha256": sha256,
    "published_test_accuracy": accuracy,
    "best_prec1": best_prec1,  # The file's own figure, in %.
    "note": "config: the reference's recipe (its trainer.py) in this project's flags",
  }
  facts = dict(DATA_FACTS, input_normalization=REFERENCE_NORMALIZATION, imported_from=imported_from)
  parent, name = os.path.split(model_dir.rstrip("/"))
  temporary = os.path.join(parent, f".{name}.{uuid.uuid4().hex}.tmp")
  try:
    _write_model_dir(temporary, model, facts, accuracy)
    files.replace_directory(temporary, model_dir)
  finally:
    if tf.io.gfile.exists(temporary):
      tf.io.gfile.rmtree(temporary)
  return run_record.read_run_record(model_dir)


def main(argv):
  """Imports --model from --checkpoint (or the reference's URL) into --model_dir."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # SavedModel's info lines are noise here.
  FLAGS = flags.FLAGS
  try:
    record = import_reference(FLAGS.model, FLAGS.model_dir, FLAGS.checkpoint)
  except (errors.UserError, OSError, tf.errors.OpError) as error:
    sys.exit(f"resnet.tools.import_reference: error: {errors.one_line_message(error)}")
  source = record["imported_from"]
  print(
    f"Imported {FLAGS.model} from {source['source']} (sha256 {source['sha256'][:16]}...) into "
    f"{FLAGS.model_dir}; published test accuracy {source['published_test_accuracy']:.2%}."
  )
  print(f"Evaluate it: python eval.py --model_dir={FLAGS.model_dir} --dataset=cifar10")


if __name__ == "__main__":
  flags.DEFINE_string("model", "resnet20", f"One of {', '.join(PUBLISHED)}.")
  flags.DEFINE_string("model_dir", None, "A new (or empty) model directory.")
  flags.DEFINE_string(
    "checkpoint", None, "The .th file: a URL or a path (default: the reference's URL)."
  )
  flags.mark_flag_as_required("model_dir")
  app.run(main)
