"""Makes tests/data/same_padding_run/: a tiny run trained before stride-2 convolutions
padded symmetrically (commit bdb11b7, Keras' "same" padding), for tests/test_model.py.

  git worktree add /tmp/old bdb11b7 && cd /tmp/old
  python /path/to/tests/data/make_same_padding_run.py /path/to/tests/data/same_padding_run

The run's images are made by `images()` below, which the test calls to rebuild them.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

CLASSES = ("a", "b", "c")
PER_CLASS = 24


def images(seed=0):
  """uint8 [len(CLASSES) * PER_CLASS, 32, 32, 3] random images, class by class."""
  return np.random.default_rng(seed).integers(
    0, 256, (len(CLASSES) * PER_CLASS, 32, 32, 3), np.uint8
  )


def write_folder(root):
  """Writes images() as PNG files to root/train/<class>/<index>.png."""
  for index, image in enumerate(images()):
    class_dir = os.path.join(root, "train", CLASSES[index // PER_CLASS])
    os.makedirs(class_dir, exist_ok=True)
    Image.fromarray(image).save(os.path.join(class_dir, f"{index % PER_CLASS:02d}.png"))


def main(output_dir):
  folder = "/tmp/same_padding_images"
  write_folder(folder)
  run_dir = "/tmp/same_padding_run"
  shutil.rmtree(run_dir, ignore_errors=True)
  subprocess.run(
    [
      sys.executable,
      "train.py",
      "--flagfile=configs/debug.cfg",
      f"--dataset=folder:{folder}",
      "--validation_size=12",
      "--batch_size=16",
      "--steps_per_epoch=3",
      "--epochs=1",
      "--optimizer=sgd",
      "--momentum=0",
      "--learning_rate=0.05",
      "--noexport",
      f"--model_dir={run_dir}",
    ],
    check=True,
  )
  from resnet import run_record  # The code of the commit this runs in.

  model, _, _ = run_record.load_trained_model(run_dir)
  probe = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), np.uint8)
  from data import augment

  logits = model(augment.normalize(probe), training=False).numpy()
  shutil.rmtree(output_dir, ignore_errors=True)
  os.makedirs(output_dir)
  for name in ("run.json", "best", "checkpoints"):
    source = os.path.join(run_dir, name)
    copy = shutil.copytree if os.path.isdir(source) else shutil.copy
    copy(source, os.path.join(output_dir, name))
  np.savez(os.path.join(output_dir, "probe_logits.npz"), images=probe, logits=logits)


if __name__ == "__main__":
  main(os.path.abspath(sys.argv[1]))
