"""resnet/torch_format.py: legacy torch.save files, written here without PyTorch, read back."""

import collections
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from resnet import torch_format


def write_legacy_file(path, obj_with_tensors, storages):
  """Writes `obj_with_tensors` as torch.save's legacy format does (see resnet/torch_format).

  Tensors are ("tensor", storage key, offset, size, stride) tuples; `storages` maps keys
  to flat float32 arrays. Pickled under stand-in `torch` modules, so that the pickles name
  torch._utils._rebuild_tensor_v2 and torch.FloatStorage as PyTorch's do.
  """
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")
  torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called while writing")

  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = (
    "torch._utils",
    "_rebuild_tensor_v2",
  )
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2

  class Tensor:
    def __init__(self, key, offset, size, stride):
      self.args = (("storage", key), offset, size, stride)

    def __reduce__(self):
      return _rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "storage":
        return ("storage", torch.FloatStorage, obj[1], "cpu", storages[obj[1]].size, None)
      return None

  def convert(value):
    if isinstance(value, tuple) and value[0] == "tensor":
      return Tensor(*value[1:])
    if isinstance(value, dict):
      return type(value)((k, convert(v)) for k, v in value.items())
    return value

  saved = {"torch": torch, "torch._utils": utils}
  previous = {name: sys.modules.get(name) for name in saved}
  sys.modules.update(saved)
  try:
    with open(path, "wb") as file:
      for header in (torch_format.MAGIC_NUMBER, torch_format.PROTOCOL_VERSION):
        pickle.dump(header, file, protocol=2)
      pickle.dump({"protocol_version": 1001, "little_endian": True}, file, protocol=2)
      Pickler(file, protocol=2).dump(convert(obj_with_tensors))
      pickle.dump(list(storages), file, protocol=2)
      for array in storages.values():
        file.write(struct.pack("<q", array.size) + array.astype("<f4").tobytes())
  finally:
    for name, module in previous.items():
      if module is None:
        del sys.modules[name]
      else:
        sys.modules[name] = module


def test_reader_reads_strided_and_shared_tensors_of_a_legacy_file(tmp_path):
  first, second = np.arange(12, dtype=np.float32), np.array([7.5, -1.0], np.float32)
  state = collections.OrderedDict(
    [
      ("module.a", ("tensor", "k1", 0, (3, 4), (4, 1))),
      ("module.a_transposed", ("tensor", "k1", 0, (4, 3), (1, 4))),  # A view of a's storage.
      ("module.tail", ("tensor", "k1", 10, (2,), (1,))),
      ("module.b", ("tensor", "k2", 0, (2,), (1,))),
    ]
  )
  path = tmp_path / "small.th"
  write_legacy_file(path, {"best_prec1": 12.5, "state_dict": state}, {"k1": first, "k2": second})
  loaded = torch_format.load(path.read_bytes())
  assert loaded["best_prec1"] == 12.5 and list(loaded["state_dict"]) == list(state)
  tensors = loaded["state_dict"]
  np.testing.assert_array_equal(tensors["module.a"], first.reshape(3, 4))
  np.testing.assert_array_equal(tensors["module.a_transposed"], first.reshape(3, 4).T)
  np.testing.assert_array_equal(tensors["module.tail"], [10, 11])
  np.testing.assert_array_equal(tensors["module.b"], second)
  assert tensors["module.a"].dtype == np.float32 and tensors["module.a"].flags.c_contiguous

  data = path.read_bytes()
  for cut in (len(data) - 3, len(data) // 2, 10):
    with pytest.raises(torch_format.FormatError, match="truncated"):
      torch_format.load(data[:cut])
  # Anything but tensors and containers is refused, never called.
  header = b"".join(pickle.dumps(v, protocol=2) for v in (torch_format.MAGIC_NUMBER, 1001, {}))
  with pytest.raises(torch_format.FormatError, match="getcwd"):
    torch_format.load(header + pickle.dumps(os.getcwd, protocol=2))
  with pytest.raises(torch_format.FormatError, match="zip format"):
    torch_format.load(b"PK\x03\x04" + data)
