"""Files under a model directory, through tf.io.gfile: a local path, file://, gs://, ram://, ...

Everything the project reads or writes under a model directory goes through
tf.io.gfile (here, or TensorFlow's own checkpoints, summaries and SavedModels),
never os, open or tempfile: those would take gs://bucket/run for a local
directory named "gs:".

What a reader can see half-written: on a local file system (a plain path or
file://) a rename is atomic, so write_bytes' readers see the old file or the
new one. Object stores (gs://, s3://) have no rename: TensorFlow copies, then
deletes. A single file still appears whole there (an object becomes visible
only once uploaded), but a directory is replaced file by file (replace_directory).
"""

import contextlib
import json
import os
import uuid

import tensorflow as tf


def _is_local(path):
  """Whether `path` is on the local file system (a plain path or file://): renames are atomic."""
  return "://" not in path or path.startswith("file://")


def write_bytes(path, data):
  """Writes `data` to `path` (creating its directory) under a temporary name in the same
  directory, then renames it into place: a reader sees the old file or the new one."""
  directory, name = os.path.split(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
  try:
    with tf.io.gfile.GFile(temporary, "wb") as file:
      file.write(data)
    tf.io.gfile.rename(temporary, path, overwrite=True)
  except BaseException:  # A full disk or Ctrl-C: leave no temporary behind.
    with contextlib.suppress(tf.errors.OpError):
      tf.io.gfile.remove(temporary)
    raise


def write_json(path, payload):
  """Writes JSON atomically (see write_bytes); numpy values become lists and numbers."""
  text = json.dumps(payload, indent=2, sort_keys=True, default=_to_builtin) + "\n"
  write_bytes(path, text.encode())


def read_json(path):
  """The JSON value in the file `path`, or None when there is no such file.

  Raises:
    json.JSONDecodeError or tf.errors.OpError: the file is not JSON or cannot be read.
  """
  try:
    with tf.io.gfile.GFile(path) as file:
      return json.load(file)
  except tf.errors.NotFoundError:
    return None


def replace_directory(temporary, final):
  """Moves the directory `temporary` to `final`, replacing an older `final`.

  Locally a directory cannot replace a non-empty one in one rename, so the old
  one is renamed aside first: `final` is always the old directory, the new one
  or (for an instant) absent, never half written. Object stores have no
  directories to rename: the old files are deleted, then the new ones are moved
  (copied, then deleted) one by one, so for the length of the copy a reader can
  find `final` missing or partial, and a kill then leaves it partial until the
  next replacement.
  """
  gfile = tf.io.gfile
  if _is_local(final):
    old = f"{temporary}.old"
    if gfile.exists(old):
      gfile.rmtree(old)
    if gfile.exists(final):
      gfile.rename(final, old)
    gfile.rename(temporary, final)
    if gfile.exists(old):
      gfile.rmtree(old)
    return
  if gfile.exists(final):
    gfile.rmtree(final)
  for directory, _, names in gfile.walk(temporary):
    target = final + directory[len(temporary) :]
    gfile.makedirs(target)
    for name in names:
      gfile.rename(os.path.join(directory, name), os.path.join(target, name), overwrite=True)
  gfile.rmtree(temporary)


def _to_builtin(value):
  """JSON fallback for numpy scalars and arrays."""
  return value.tolist() if hasattr(value, "tolist") else str(value)
