r"""Exports a run's best model (or any of its checkpoints) again; see resnet/export.py.

  python -m resnet.tools.export --model_dir=runs/resnet20
  python -m resnet.tools.export --model_dir=runs/resnet20 \
    --checkpoint=runs/resnet20/checkpoints/ckpt-7800
"""

import sys

import tensorflow as tf
from absl import app, flags, logging

from resnet import errors, export


def main(argv):
  """Exports --model_dir's best (or --checkpoint) model and prints the paths written."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # SavedModel saving logs info lines ("Writing fingerprint to ...") through absl: noise here.
  logging.set_verbosity(logging.WARNING)
  try:
    paths = export.export_best_model(flags.FLAGS.model_dir, flags.FLAGS.checkpoint)
  except (errors.UserError, OSError, tf.errors.OpError) as error:
    sys.exit(f"resnet.tools.export: error: {errors.one_line_message(error)}")
  print(f"Wrote {paths['saved_model']}")
  print(f"Wrote {paths['keras']}")


if __name__ == "__main__":
  flags.DEFINE_string("model_dir", None, "Model directory written by train.py.")
  flags.DEFINE_string("checkpoint", None, "Checkpoint to export (default: MODEL_DIR/best).")
  flags.mark_flag_as_required("model_dir")
  app.run(main)
