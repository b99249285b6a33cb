r"""Classifies image files with the SavedModel that resnet.export wrote for a run.

  python -m resnet.tools.export --model_dir=runs/resnet20      # once
  python -m resnet.tools.predict --model_dir=runs/resnet20 cat.png truck.jpg
  python -m resnet.tools.predict --model_dir=runs/resnet20 --top_k=5 photos/*.jpg

Prints one line per image with its most probable classes:

  cat.png: cat 0.912, dog 0.051, bird 0.020

Images are PNG or JPEG (GIF and BMP work too); greyscale becomes RGB and other
sizes are resized to the size the export takes (the run's), as the training pipeline
does with image folders.
"""

import re
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags

from data import sources
from resnet import errors, export

BATCH_SIZE = 256  # images per call of the model: bounds the memory a long file list needs


class PredictError(errors.UserError, ValueError):
  """A missing export or an unreadable image, with a message for the user."""


def read_image(path, size=(32, 32)):
  """PNG/JPEG file -> uint8 [H, W, 3], (H, W) = `size`, by data.sources.decode_image as
  training reads folders.

  Raises:
    PredictError: the file is missing or not a decodable image.
  """
  try:
    return sources.decode_image(tf.io.read_file(path), size)
  except tf.errors.OpError as error:
    # "{{function_node ...}} PATH; Is a directory [Op:ReadFile]" -> "Is a directory".
    message = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message).strip()
    message = message.removeprefix(f"{path}; ") or type(error).__name__
    raise PredictError(f"Cannot read the image {path}: {message}") from None


def predict_files(saved_model_dir, paths, top_k=3):
  """Classifies image files with an exported SavedModel.

  All images are read before the model runs, so a bad file fails the call
  before any work is done.

  Args:
    saved_model_dir: a SavedModel written by resnet.export (MODEL_DIR/export/saved_model).
    paths: image files.
    top_k: how many classes to report per image (at most the number of classes).

  Returns:
    One dict per path, in order: "path"; "top", a list of top_k
    (class name, probability) pairs, most probable first; "probabilities",
    float32 [C] for all classes.

  Raises:
    PredictError: no SavedModel in saved_model_dir, or an unreadable image.
  """
  if not tf.saved_model.contains_saved_model(saved_model_dir):
    raise PredictError(f"No exported model in {saved_model_dir}.")
  serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
  size = tuple(serve.structured_input_signature[1]["images"].shape[1:3])  # The run's.
  images = np.stack([read_image(path, size) for path in paths])
  batches = [
    serve(images=tf.constant(images[start : start + BATCH_SIZE]))
    for start in range(0, len(images), BATCH_SIZE)
  ]
  probabilities = np.concatenate([batch["probabilities"].numpy() for batch in batches])
  class_names = [name.decode() for name in batches[0]["class_names"].numpy()]
  results = []
  for path, row in zip(paths, probabilities, strict=True):
    best = np.argsort(-row, kind="stable")[:top_k]
    results.append(
      {
        "path": path,
        "top": [(class_names[i], float(row[i])) for i in best],
        "probabilities": row,
      }
    )
  return results


def format_result(result):
  """'path: cat 0.912, dog 0.051, bird 0.020' for one dict of predict_files."""
  classes = ", ".join(f"{name} {probability:.3f}" for name, probability in result["top"])
  return f"{result['path']}: {classes}"


def main(argv):
  """Prints the top classes of every image file given on the command line."""
  paths = argv[1:]
  if not paths:
    raise app.UsageError("Give one or more image files (PNG or JPEG).")
  model_dir = flags.FLAGS.model_dir
  saved_model_dir = export.export_paths(model_dir)["saved_model"]
  if not tf.saved_model.contains_saved_model(saved_model_dir):
    sys.exit(
      f"resnet.tools.predict: error: no exported model in {saved_model_dir}; "
      f"run `python -m resnet.tools.export --model_dir={model_dir}` first."
    )
  try:
    results = predict_files(saved_model_dir, paths, flags.FLAGS.top_k)
  except errors.UserError as error:
    sys.exit(f"resnet.tools.predict: error: {error}")
  for result in results:
    print(format_result(result))


if __name__ == "__main__":
  flags.DEFINE_string("model_dir", None, "Model directory holding an export.")
  flags.DEFINE_integer("top_k", 3, "Classes to print per image.", lower_bound=1)
  flags.mark_flag_as_required("model_dir")
  app.run(main)
