"""Reads the tensors of a file written by PyTorch's legacy `torch.save`, without PyTorch.

Why not PyTorch: the only files we read this way are the reference implementation's
published weights (resnet/tools/import_reference.py), and PyTorch (hundreds of MB) is no
dependency of the project; training, evaluation and the tests must not need it. The
legacy format, which those 2018 files use, is plain pickle plus raw bytes:

  pickle  the magic number 0x1950a86a20f9469cfc6c
  pickle  the protocol version, 1001
  pickle  sys_info: {"little_endian": bool, "type_sizes": {...}, ...}
  pickle  the object; each tensor is a call of torch._utils._rebuild_tensor(_v2)(storage,
          offset, size, stride, ...), and each storage a persistent id
          ("storage", torch.<Type>Storage, key, location, number of elements, view or None)
  pickle  the storages' keys, in the order their data follows
  then, per key: the number of elements (int64), then their bytes

Unpickling runs only what this needs (find_class allows an OrderedDict, the tensor
rebuilders and the storage types; anything else is refused), so a file from elsewhere
cannot run code. PyTorch's zip format (torch >= 1.6 by default) is recognised and refused.
"""

import collections
import io
import pickle
import struct

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ZIP_SIGNATURE = b"PK\x03\x04"
# torch.<Type>Storage -> the numpy type of its elements.
STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class FormatError(ValueError):
  """The bytes are not a complete legacy torch.save file of tensors."""


class _Storage:
  """A storage whose bytes follow the pickles; `array` is set once they are read."""

  def __init__(self, dtype, numel):
    self.dtype, self.numel, self.array = np.dtype(dtype), numel, None


class _Tensor:
  """A tensor met while unpickling: a strided view of a storage not read yet."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self):
    """A C-contiguous copy of the view (element offset and strides, as PyTorch's)."""
    flat = self.storage.array
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
    if self.offset < 0 or (all(self.size) and last >= len(flat)):
      raise FormatError("a tensor reaches outside its storage")
    strides = [s * flat.itemsize for s in self.stride]
    view = np.lib.stride_tricks.as_strided(flat[self.offset :], self.size, strides)
    return np.ascontiguousarray(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  if not isinstance(storage, _Storage):
    raise FormatError("a tensor without a storage")
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(tensor, *unused):
  return tensor  # A Parameter is its tensor (requires_grad and hooks do not matter here).


class _Unpickler(pickle.Unpickler):
  """Unpickles the legacy format's pickles, allowing nothing but what tensors need."""

  ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }

  def __init__(self, file):
    super().__init__(file)
    self.storages = {}  # key -> _Storage

  def find_class(self, module, name):
    if module == "torch" and name in STORAGE_DTYPES:
      return STORAGE_DTYPES[name]
    if (module, name) not in self.ALLOWED:
      raise FormatError(f"it holds a {module}.{name}, not only tensors")
    return self.ALLOWED[module, name]

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
      raise FormatError(f"unknown persistent id {str(pid)[:60]}")
    _, dtype, key, _, numel, view = pid
    if not isinstance(dtype, type):
      raise FormatError("a storage of unknown type")
    storage = self.storages.setdefault(key, _Storage(dtype, numel))
    if view is None:
      return storage
    # A view (view key, element offset, elements) of the root storage `key`.
    _, offset, view_size = view
    return _View(storage, offset, view_size)


class _View(_Storage):
  """A legacy storage view: elements [offset, offset + numel) of a root storage."""

  def __init__(self, root, offset, numel):
    super().__init__(root.dtype, numel)
    self.root, self.offset = root, offset


def _read_storages(file, storages, keys, little_endian):
  """Reads each storage's element count and bytes, in the order of `keys`."""
  for key in keys:
    if key not in storages:
      raise FormatError(f"data of an unknown storage {key!r}")
    storage = storages[key]
    header = file.read(8)
    if len(header) < 8:
      raise FormatError("it is truncated (a storage is missing)")
    (numel,) = struct.unpack("<q" if little_endian else ">q", header)
    if numel != storage.numel:
      raise FormatError(f"storage {key!r} holds {numel} elements, {storage.numel} declared")
    data = file.read(numel * storage.dtype.itemsize)
    if len(data) < numel * storage.dtype.itemsize:
      raise FormatError("it is truncated (a storage is cut short)")
    dtype = storage.dtype.newbyteorder("<" if little_endian else ">")
    storage.array = np.frombuffer(data, dtype).astype(storage.dtype)


def _materialise(value):
  """`value` with every _Tensor replaced by its numpy array, through dicts, lists, tuples."""
  if isinstance(value, _Tensor):
    if isinstance(value.storage, _View):
      view = value.storage
      view.array = view.root.array[view.offset : view.offset + view.numel]
    return value.to_numpy()
  if isinstance(value, dict):
    return type(value)((key, _materialise(item)) for key, item in value.items())
  if isinstance(value, list | tuple):
    return type(value)(_materialise(item) for item in value)
  return value


def load(data):
  """The object a legacy torch.save wrote, with numpy arrays in place of tensors.

  Args:
    data: the file's bytes.

  Returns:
    The saved object (e.g. a dict holding an OrderedDict of arrays), each tensor a
    C-contiguous numpy array of its dtype and shape.

  Raises:
    FormatError: not a legacy torch.save file, truncated, or holding other objects
      than containers, numbers, strings and tensors.
  """
  if data[:4] == ZIP_SIGNATURE:
    raise FormatError("it is in PyTorch's zip format, not the legacy one this reader reads")
  file = io.BytesIO(data)
  unpickler = _Unpickler(file)
  try:
    if unpickler.load() != MAGIC_NUMBER:
      raise FormatError("it does not start with torch.save's magic number")
    if unpickler.load() != PROTOCOL_VERSION:
      raise FormatError("it has another torch.save protocol version")
    sys_info = unpickler.load()
    saved = unpickler.load()
    keys = unpickler.load()
    _read_storages(file, unpickler.storages, keys, sys_info.get("little_endian", True))
    return _materialise(saved)
  except FormatError:
    raise
  except Exception as error:  # noqa: BLE001 - damaged pickles raise many kinds of errors.
    if file.tell() >= len(data):  # The pickles ran past the end of the bytes.
      raise FormatError("it is truncated") from None
    raise FormatError(f"it is not a torch.save file ({type(error).__name__})") from None
