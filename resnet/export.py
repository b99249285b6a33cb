r"""Exports the best model of a training run for serving, as a SavedModel and a .keras file.

train.py calls `export_best_model` when a run finishes; for any run or checkpoint later:

  python -m resnet.tools.export --model_dir=runs/resnet20
  python -m resnet.tools.export --model_dir=runs/resnet20 \
    --checkpoint=runs/resnet20/checkpoints/ckpt-7800

Writes (replacing an older export):
  MODEL_DIR/export/saved_model/  TensorFlow SavedModel. Its "serving_default" signature takes
                                 `images` uint8 [B, H, W, 3] (any B; H x W the run's image
                                 size, run.json's `image_size`) and returns
                                 `probabilities` float32 [B, C], `classes` string [B] (the top
                                 class) and `class_names` string [C].
  MODEL_DIR/export/model.keras   Keras model, uint8 [B, H, W, 3] -> probabilities [B, C]; load
                                 it with `import resnet.models` then `keras.saving.load_model`.

Both normalise the images themselves, with the per-channel mean and std the run recorded
(run_record.input_normalization; data.augment.normalize), and compute in float32, whatever
precision the run trained in.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from data import augment, datasets
from resnet import files, run_record

EXPORT_DIR = "export"


def export_paths(model_dir):
  """{"saved_model": MODEL_DIR/export/saved_model, "keras": MODEL_DIR/export/model.keras}."""
  export_dir = os.path.join(model_dir, EXPORT_DIR)
  return {
    "saved_model": os.path.join(export_dir, "saved_model"),
    "keras": os.path.join(export_dir, "model.keras"),
  }


class _Serving(tf.Module):
  """The SavedModel's root object: the ResNet, the class names and the serving function."""

  def __init__(self, model, class_names, input_normalization):
    super().__init__()
    self.model = model
    self.class_names = tf.constant(class_names)
    # Per-channel [3] constants of the serving graph, [0, 1] pixel units.
    self.mean = tuple(input_normalization["mean"])
    self.std = tuple(input_normalization["std"])

  @tf.function  # Traced for the run's image size by export_best_model.
  def serve(self, images):
    logits = self.model(augment.normalize(images, self.mean, self.std), training=False)
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
    return {
      "probabilities": probabilities,
      "classes": tf.gather(self.class_names, tf.argmax(probabilities, axis=1)),
      "class_names": self.class_names,
    }


def keras_classifier(model, input_normalization=None, image_size=(32, 32)):
  """Wraps a ResNet into a functional keras.Model: uint8 [B, H, W, 3] -> probabilities [B, C],
  (H, W) = `image_size`.

  The input is normalised by Rescaling and Normalization layers (the maths of
  augment.normalize with `input_normalization`, the run's {"mean", "std"}, CIFAR-10's
  if None, up to float rounding), so the .keras file needs no code of ours beyond
  the ResNet class.
  """
  normalization = input_normalization or datasets.CIFAR10.normalization
  images = keras.Input((*image_size, 3), dtype="uint8", name="images")
  # Explicit float32 layers: a global mixed-precision policy must not leak into the export.
  x = keras.layers.Rescaling(1.0 / 255.0, dtype="float32")(images)
  x = keras.layers.Normalization(
    mean=normalization["mean"], variance=np.square(normalization["std"]), dtype="float32"
  )(x)
  probabilities = keras.layers.Softmax(dtype="float32", name="probabilities")(model(x))
  return keras.Model(images, probabilities, name=f"{model.name}_classifier")


def export_best_model(model_dir, checkpoint_path=None):
  """Writes the SavedModel and the .keras file of a run's best checkpoint (see the module doc).

  Both are written under temporary names in MODEL_DIR/export and renamed into
  place only when complete, so a failed write (a kill, a full disk) never
  leaves a partial export where an older good one was. The renames are atomic
  on a local file system; on object stores (gs://) the SavedModel directory is
  moved file by file (see files.replace_directory).

  Args:
    model_dir: a train.py model directory (holds run.json and best/).
    checkpoint_path: checkpoint to export (default: the best one).

  Returns:
    export_paths(model_dir): the paths written.

  Raises:
    CheckpointError: no run.json, no best checkpoint, or a checkpoint of another model.
    OSError or tf.errors.OpError: MODEL_DIR/export cannot be written (the older export is
      then left as it was).
  """
  model, record, _ = run_record.load_trained_model(model_dir, checkpoint_path)
  class_names = record["class_names"]
  normalization = run_record.input_normalization(record)
  image_size = run_record.image_size(record)

  paths = export_paths(model_dir)
  export_dir = os.path.dirname(paths["saved_model"])
  tf.io.gfile.makedirs(export_dir)
  # Fixed temporary names: leftovers of a killed export are removed by the next one.
  temporary = {
    "saved_model": os.path.join(export_dir, ".saved_model.tmp"),
    "keras": os.path.join(export_dir, ".model.tmp.keras"),  # Keras insists on the suffix.
  }
  if tf.io.gfile.exists(temporary["saved_model"]):
    tf.io.gfile.rmtree(temporary["saved_model"])
  serving = _Serving(model, class_names, normalization)
  spec = tf.TensorSpec([None, *image_size, 3], tf.uint8, name="images")
  signature = serving.serve.get_concrete_function(spec)
  tf.saved_model.save(serving, temporary["saved_model"], signatures={"serving_default": signature})
  keras_classifier(model, normalization, image_size).save(temporary["keras"])
  files.replace_directory(temporary["saved_model"], paths["saved_model"])
  tf.io.gfile.rename(temporary["keras"], paths["keras"], overwrite=True)
  return paths
