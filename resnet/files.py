"""Files under a model directory: JSON written atomically."""

import json
import os
import tempfile


def write_json(path, payload):
  """Writes JSON atomically: a reader sees the old file or the new one, never half of one."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as file:
    json.dump(payload, file, indent=2, sort_keys=True, default=_to_builtin)
    file.write("\n")
  os.replace(file.name, path)


def _to_builtin(value):
  """JSON fallback for numpy scalars and arrays."""
  return value.tolist() if hasattr(value, "tolist") else str(value)
