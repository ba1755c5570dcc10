"""Readers of PyTorch weight files that need no torch: `torch.save` zip archives and safetensors.

Both return `{name: array}` with fresh C-contiguous numpy arrays (copies, never views of
the file's bytes). bfloat16 becomes float32 (exact: a bfloat16 is the upper half of a
float32); every other dtype is kept, in the machine's byte order.

A `torch.save` file (torch >= 1.6) is a zip archive:

  <prefix>/data.pkl     the pickled object; each tensor is a call of
                        torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
                        and each storage a persistent id ('storage', torch.FloatStorage,
                        key, location, numel)
  <prefix>/data/<key>   the raw bytes of storage <key>
  <prefix>/byteorder    'little' or 'big' (absent in old files: little)
  <prefix>/version, .format_version, .storage_alignment, .data/serialization_id: unused

A pickle is a program, so data.pkl is run by an unpickler that resolves only the globals a
state_dict needs (OrderedDict, the tensor and parameter rebuilders, the typed storage
classes, dtypes) and refuses any other, naming it. What torch 2.x writes, seen in
tests/pretrained/fixtures: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
`torch._utils._rebuild_parameter`, `torch.<Dtype>Storage`; for the dtypes added in 2.x
(uint16/32/64) `torch._utils._rebuild_tensor_v3`, `torch.storage.UntypedStorage` and a
dtype global such as `torch.uint16`. Protocol 2 spells builtins `__builtin__`.

Missing files raise the usual OSError; every unusable file raises WeightsFileError naming
the file, the part (tensor, zip member, global) and what was expected.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

from cam_jax.pretrained.errors import WeightsFileError

_ZIP_MAGIC = b'PK\x03\x04'
# What zipfile raises for a damaged archive: besides BadZipFile, a garbled header can give
# an unknown version (NotImplementedError), a name that is not UTF-8 (UnicodeDecodeError, a
# ValueError), an 'encrypted' flag (RuntimeError), a bad seek (OSError).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
               NotImplementedError, RuntimeError)
_MAX_NESTING = 100  # a state_dict nests a few levels; deeper means a hostile pickle
_MAX_NDIM = 64  # numpy's limit
_MAX_ELEMENTS = 2**56  # numpy refuses arrays near 2**63 bytes, even empty ones
# A view with more elements than its storage repeats elements (stride 0, as expand() makes).
# Allowed up to this size, so that a few bytes of a hostile file cannot ask for terabytes.
_MAX_EXPANDED = 2**24
# Pickle opcodes whose argument is a memo index: CPython grows its memo table to the index.
_MEMO_OPS = frozenset({'GET', 'BINGET', 'LONG_BINGET', 'PUT', 'BINPUT', 'LONG_BINPUT'})

# torch dtype name -> (little-endian dtype of the stored elements, what the reader returns).
# bfloat16 is read as its bits and widened; bool is read as bytes and tested != 0.
_TORCH_DTYPES: dict[str, tuple[str, str]] = {
    'float64': ('<f8', 'float64'), 'float32': ('<f4', 'float32'),
    'float16': ('<f2', 'float16'), 'bfloat16': ('<u2', 'bfloat16'),
    'int64': ('<i8', 'int64'), 'int32': ('<i4', 'int32'), 'int16': ('<i2', 'int16'),
    'int8': ('i1', 'int8'), 'uint8': ('u1', 'uint8'), 'bool': ('u1', 'bool'),
    'uint16': ('<u2', 'uint16'), 'uint32': ('<u4', 'uint32'), 'uint64': ('<u8', 'uint64'),
}
# The torch aliases a dtype global may also be spelled with.
_DTYPE_ALIASES = {'float': 'float32', 'double': 'float64', 'half': 'float16',
                  'long': 'int64', 'int': 'int32', 'short': 'int16'}
# The legacy typed storage classes that name a storage's dtype in torch.save files.
_STORAGE_CLASSES = {
    'DoubleStorage': 'float64', 'FloatStorage': 'float32', 'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16', 'LongStorage': 'int64', 'IntStorage': 'int32',
    'ShortStorage': 'int16', 'CharStorage': 'int8', 'ByteStorage': 'uint8',
    'BoolStorage': 'bool',
}
# safetensors dtype -> torch dtype name.
_SAFETENSORS_DTYPES = {
    'F64': 'float64', 'F32': 'float32', 'F16': 'float16', 'BF16': 'bfloat16',
    'I64': 'int64', 'I32': 'int32', 'I16': 'int16', 'I8': 'int8', 'U8': 'uint8',
    'BOOL': 'bool', 'U16': 'uint16', 'U32': 'uint32', 'U64': 'uint64',
}


# ----------------------------------------------------------------------------------------
# Sniffing
# ----------------------------------------------------------------------------------------


def is_torch_zip(path: str | os.PathLike) -> bool:
  """Whether the file starts like a zip archive (what torch.save has written since 1.6)."""
  with open(path, 'rb') as f:
    return f.read(4) == _ZIP_MAGIC


def is_safetensors(path: str | os.PathLike) -> bool:
  """Whether the file starts like safetensors: a header length that fits, then '{'."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(9)
  if len(head) < 9:
    return False
  n = int.from_bytes(head[:8], 'little')
  return 2 <= n <= size - 8 and head[8:9] == b'{'


# ----------------------------------------------------------------------------------------
# Elements: bytes -> arrays
# ----------------------------------------------------------------------------------------


def _stored_dtype(dtype_name: str, big_endian: bool) -> np.dtype:
  """The numpy dtype of one stored element of a torch dtype, in the file's byte order."""
  dtype = np.dtype(_TORCH_DTYPES[dtype_name][0])
  return dtype.newbyteorder('>') if big_endian and dtype.itemsize > 1 else dtype


def _to_output(stored: np.ndarray, dtype_name: str) -> np.ndarray:
  """A fresh C-contiguous array in native byte order from stored elements (any layout)."""
  kind = _TORCH_DTYPES[dtype_name][1]
  if kind == 'bfloat16':
    # Exact widening: the 16 bits of a bfloat16 are the upper half of the float32.
    bits = stored.astype(np.uint32, order='C')
    np.left_shift(bits, 16, out=bits)
    return bits.view(np.float32)
  # astype copies (never a view into the file's buffer); to bool it tests != 0.
  return stored.astype(np.dtype(kind), order='C')


# ----------------------------------------------------------------------------------------
# torch.save zip archives
# ----------------------------------------------------------------------------------------


class _StorageClass:
  """What a storage global (torch.FloatStorage, torch.storage.UntypedStorage) unpickles to."""
  __slots__ = ('name', 'dtype_name')

  def __init__(self, name: str, dtype_name: str | None):
    self.name = name
    self.dtype_name = dtype_name  # None: untyped bytes, the tensor carries its dtype

  def __repr__(self) -> str:
    return f'torch.{self.name}'


class _DType:
  """What a dtype global (torch.uint16) unpickles to."""
  __slots__ = ('name',)

  def __init__(self, name: str):
    self.name = name


class _StorageRef:
  """A storage named by a persistent id; its bytes are read when a tensor needs them."""
  __slots__ = ('key', 'dtype_name', 'numel')

  def __init__(self, key: str, dtype_name: str | None, numel: int):
    self.key, self.dtype_name, self.numel = key, dtype_name, numel


class _Tensor:
  """A tensor as the pickle describes it; made an array once its key is known, so that
  errors can name it. Slots, not a __dict__: a BUILD opcode cannot add attributes."""
  __slots__ = ('storage', 'offset', 'size', 'stride', 'dtype_name')

  def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...], dtype_name: str):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
    self.dtype_name = dtype_name


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _check_geometry(storage: Any, offset: Any, size: Any, stride: Any) -> None:
  # TypeError: the unpickler's caller turns it into a WeightsFileError naming data.pkl.
  if not isinstance(storage, _StorageRef):
    raise TypeError(f'a tensor rebuilt from {type(storage).__name__}, not a storage')
  if not (_is_int(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
          and len(size) == len(stride) and all(map(_is_int, size + stride))):
    raise TypeError(f'a tensor with offset {offset!r}, size {size!r} and stride {stride!r}; '
                    'expected an int and two tuples of ints of one length')


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _Tensor:
  """torch._utils._rebuild_tensor_v2: a view of a typed storage."""
  del requires_grad, backward_hooks, metadata  # autograd and hooks mean nothing here
  _check_geometry(storage, storage_offset, size, stride)
  if storage.dtype_name is None:
    raise TypeError('_rebuild_tensor_v2 of an untyped storage, which needs a dtype')
  return _Tensor(storage, storage_offset, size, stride, storage.dtype_name)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> _Tensor:
  """torch._utils._rebuild_tensor_v3: a view of an untyped storage with its own dtype."""
  del requires_grad, backward_hooks, metadata
  _check_geometry(storage, storage_offset, size, stride)
  if not isinstance(dtype, _DType):
    raise TypeError(f'_rebuild_tensor_v3 with dtype {dtype!r}, not a torch dtype')
  return _Tensor(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
  """torch._utils._rebuild_parameter: an nn.Parameter is its tensor."""
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any,
                                  state: Any) -> Any:
  """torch._utils._rebuild_parameter_with_state: the tensor; the Python state is dropped."""
  del requires_grad, backward_hooks, state
  return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
  """Every global a state_dict pickle may name, resolved to what stands for it here."""
  allowed: dict[tuple[str, str], Any] = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
      ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter_with_state,
      ('torch', 'UntypedStorage'): _StorageClass('UntypedStorage', None),
      ('torch.storage', 'UntypedStorage'): _StorageClass('UntypedStorage', None),
  }
  for name, dtype_name in _STORAGE_CLASSES.items():
    allowed['torch', name] = _StorageClass(name, dtype_name)
  for name in list(_TORCH_DTYPES) + list(_DTYPE_ALIASES):
    allowed['torch', name] = _DType(_DTYPE_ALIASES.get(name, name))
  # Plain containers; protocol 2 spells the module the Python 2 way.
  for module in ('builtins', '__builtin__'):
    for name, obj in (('set', set), ('frozenset', frozenset), ('tuple', tuple),
                      ('list', list), ('dict', dict)):
      allowed[module, name] = obj
  return allowed


_ALLOWED_GLOBALS = _allowed_globals()


def _check_shape(where: str, shape: tuple[int, ...]) -> None:
  """Refuses shapes numpy cannot make (even empty), before numpy raises its own error."""
  if len(shape) > _MAX_NDIM or math.prod(max(n, 1) for n in shape) > _MAX_ELEMENTS:
    raise WeightsFileError(
        f'{where}: shape {shape}; expected at most {_MAX_NDIM} dimensions and '
        f'2**{_MAX_ELEMENTS.bit_length() - 1} elements')


def _check_pickle(data: bytes, where: str) -> None:
  """Refuses, before unpickling, what CPython's unpickler would allocate unchecked: a
  counted bytes or bytearray longer than the pickle itself (it allocates the length before
  reading) and a memo index far beyond the number of opcodes (it grows its table to it)."""
  try:
    ops = list(pickletools.genops(data))  # checks every counted argument fits in data
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsFileError(
        f'{where}: cannot parse the pickle ({type(e).__name__}: {e}); expected a '
        'state_dict pickle') from e
  for op, arg, pos in ops:
    if ((op.name in _MEMO_OPS and arg > len(ops)) or
        (op.name == 'FRAME' and arg > len(data))):
      raise WeightsFileError(
          f'{where}: opcode {op.name} {arg} at byte {pos} points past the pickle; '
          'expected a state_dict pickle')


class _StateDictUnpickler(pickle.Unpickler):
  """Runs data.pkl with only the globals of a state_dict; storages become _StorageRefs."""

  def __init__(self, data: bytes, where: str):
    super().__init__(io.BytesIO(data))
    self._where = where  # '<path>: zip member <prefix>/data.pkl', for messages

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[module, name]
    except KeyError:
      pass
    hint = ''
    if module.startswith('__torch__'):
      hint = ('; this is a TorchScript archive (torch.jit.save): save its state_dict() '
              'with torch.save instead')
    elif module.startswith('torch.nn') or module.startswith('torchvision'):
      hint = '; this file pickles a whole model: save model.state_dict() instead'
    raise WeightsFileError(
        f"{self._where}: refusing to load global '{module}.{name}': a state_dict holds only "
        f'tensors and dicts (allowed: OrderedDict, tensor rebuilders, storage classes, '
        f'dtypes){hint}')

  def persistent_load(self, pid: Any) -> _StorageRef:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], _StorageClass) and isinstance(pid[2], str)
            and _is_int(pid[4]) and pid[4] >= 0):
      raise WeightsFileError(
          f'{self._where}: persistent id {repr(pid)[:200]}; expected '
          "('storage', <storage class>, key, location, numel)")
    _, storage_class, key, _, numel = pid  # location (cpu, cuda:0) does not matter here
    return _StorageRef(key, storage_class.dtype_name, numel)


class _TorchZip:
  """An open torch.save archive: its members, byte order and storages read so far."""

  def __init__(self, path: str, zf: zipfile.ZipFile):
    self.path, self.zf = path, zf
    names = zf.namelist()
    prefixes = [n[:-len('/data.pkl')] for n in names
                if n.endswith('/data.pkl') and n.count('/') == 1]
    if not prefixes:
      raise WeightsFileError(
          f"{path}: no zip member '<prefix>/data.pkl' among {names[:5]}...; expected an "
          'archive written by torch.save')
    self.prefix = prefixes[0]
    self.big_endian = False
    byteorder_name = f'{self.prefix}/byteorder'
    if byteorder_name in names:
      order = self.read_member(byteorder_name).decode('ascii', 'replace').strip()
      if order not in ('little', 'big'):
        raise WeightsFileError(
            f"{path}: zip member {byteorder_name} says {order!r}; expected 'little' or 'big'")
      self.big_endian = order == 'big'
    self._storages: dict[str, bytes] = {}

  def read_member(self, name: str, tensor_key: str | None = None) -> bytes:
    """The bytes of one member; a missing or corrupt one raises, naming it."""
    part = f"tensor '{tensor_key}': " if tensor_key is not None else ''
    try:
      return self.zf.read(name)
    except KeyError:
      raise WeightsFileError(
          f'{self.path}: {part}zip member {name} is missing; expected it in the archive '
          '(truncated or hand-edited file?)') from None
    except _ZIP_ERRORS as e:
      raise WeightsFileError(
          f'{self.path}: {part}zip member {name} cannot be read ({e}); the file is '
          'truncated or corrupt') from e

  def storage_bytes(self, ref: _StorageRef, itemsize: int, tensor_key: str) -> bytes:
    """The bytes of a storage, checked against the element count its pickle declared."""
    name = f'{self.prefix}/data/{ref.key}'
    if ref.key not in self._storages:
      self._storages[ref.key] = self.read_member(name, tensor_key)
    data = self._storages[ref.key]
    expected = ref.numel * (1 if ref.dtype_name is None else itemsize)
    if len(data) != expected:
      raise WeightsFileError(
          f"{self.path}: tensor '{tensor_key}': zip member {name} has {len(data)} bytes; "
          f'expected {expected} ({ref.numel} elements as the pickle says)')
    return data

  def to_array(self, t: _Tensor, key: str) -> np.ndarray:
    """The tensor as a fresh array: its view (offset, size, stride) of the storage."""
    if t.dtype_name not in _TORCH_DTYPES:
      raise WeightsFileError(
          f"{self.path}: tensor '{key}': dtype {t.dtype_name}; expected one of "
          f'{sorted(_TORCH_DTYPES)}')
    stored = _stored_dtype(t.dtype_name, self.big_endian)
    data = self.storage_bytes(t.storage, stored.itemsize, key)
    numel = len(data) // stored.itemsize
    geometry = f'offset {t.offset}, size {t.size}, stride {t.stride}'
    if t.offset < 0 or any(s < 0 for s in t.size + t.stride):
      raise WeightsFileError(
          f"{self.path}: tensor '{key}': {geometry}; expected no negative numbers")
    _check_shape(f"{self.path}: tensor '{key}'", t.size)
    if math.prod(t.size) > max(numel, _MAX_EXPANDED):
      raise WeightsFileError(
          f"{self.path}: tensor '{key}': {geometry} has {math.prod(t.size)} elements in a "
          f'storage of {numel}; expected at most {_MAX_EXPANDED} for a view that repeats '
          'elements (save it after .contiguous())')
    if math.prod(t.size) == 0:
      return _to_output(np.zeros(t.size, stored), t.dtype_name)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= numel:
      raise WeightsFileError(
          f"{self.path}: tensor '{key}': {geometry} reaches element {last} of storage "
          f'{t.storage.key}, which holds {numel}; expected the view inside its storage')
    flat = np.frombuffer(data, stored, count=numel - t.offset,
                         offset=t.offset * stored.itemsize)
    view = np.lib.stride_tricks.as_strided(
        flat, shape=t.size, writeable=False,
        # The stride of a length-1 dimension is never used, so may be any size; numpy's is
        # a C long.
        strides=tuple(0 if n == 1 else s * stored.itemsize for n, s in zip(t.size, t.stride)))
    return _to_output(view, t.dtype_name)


def _flatten(obj: Any, prefix: str, out: dict[str, _Tensor], path: str,
             open_containers: set[int]) -> None:
  """Collects the tensors of nested dicts (and lists) under dot-joined keys."""
  if isinstance(obj, _Tensor):
    if prefix in out:
      raise WeightsFileError(f"{path}: tensor '{prefix}' twice; expected unique keys")
    out[prefix] = obj
    return
  if isinstance(obj, dict):
    items = [(str(k), v) for k, v in obj.items()]
  elif isinstance(obj, (list, tuple)):
    items = [(str(i), v) for i, v in enumerate(obj)]
  else:
    return  # ints, floats, strings, None: an epoch, a version, not weights
  if id(obj) in open_containers or len(open_containers) >= _MAX_NESTING:
    raise WeightsFileError(
        f"{path}: entry '{prefix}' contains itself or nests over {_MAX_NESTING} levels; "
        'expected a tree of dicts')
  open_containers.add(id(obj))
  for k, v in items:
    _flatten(v, f'{prefix}.{k}' if prefix else k, out, path, open_containers)
  open_containers.discard(id(obj))


def read_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a torch.save zip file as {'a.b.c': array}: nested dicts flattened,
  keys joined with '.', non-tensor entries (epoch, _metadata) left out. A bare tensor
  comes back under the key ''."""
  path = os.fspath(path)
  with open(path, 'rb') as f:
    head = f.read(4)
  if head[:1] == b'\x80':  # a pickle's PROTO opcode: torch.save before 1.6
    raise WeightsFileError(
        f'{path}: the legacy (pre-1.6, non-zip) torch.save format; expected a zip archive: '
        're-save it on torch >= 1.6 with torch.save(torch.load(f), g)')
  if head != _ZIP_MAGIC:
    raise WeightsFileError(
        f'{path}: starts with {head!r}; expected a zip archive (PK\\x03\\x04) written by '
        'torch.save')
  try:
    zf = zipfile.ZipFile(path)
  except _ZIP_ERRORS as e:
    raise WeightsFileError(
        f'{path}: zip central directory unreadable ({e}); the file is truncated or '
        'corrupt') from e
  with zf:
    archive = _TorchZip(path, zf)
    member = f'{archive.prefix}/data.pkl'
    where = f'{path}: zip member {member}'
    try:
      data = archive.read_member(member)
      _check_pickle(data, where)
      obj = _StateDictUnpickler(data, where).load()
    except WeightsFileError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # A corrupt pickle can fail in any way (UnpicklingError, EOFError, TypeError...).
      raise WeightsFileError(
          f'{where}: cannot unpickle ({type(e).__name__}: {e}); expected a state_dict '
          'pickle') from e
    tensors: dict[str, _Tensor] = {}
    _flatten(obj, '', tensors, path, set())
    return {key: archive.to_array(t, key) for key, t in tensors.items()}


# ----------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  keys = [k for k, _ in pairs]
  if len(set(keys)) != len(keys):
    raise ValueError(f'duplicate keys {sorted(k for k in set(keys) if keys.count(k) > 1)}')
  return dict(pairs)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a safetensors file, in header order; `__metadata__` is left out."""
  path = os.fspath(path)
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      raise WeightsFileError(
          f'{path}: {size} bytes; expected at least the 8-byte header length of safetensors')
    n = struct.unpack('<Q', head)[0]
    if n > size - 8:
      raise WeightsFileError(
          f'{path}: header length {n} runs past the end of the file ({size} bytes); '
          'expected a safetensors file (truncated?)')
    try:
      header = json.loads(f.read(n).decode('utf-8'), object_pairs_hook=_unique_keys)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
      raise WeightsFileError(
          f'{path}: header is not valid JSON ({e}); expected a safetensors header') from e
    if not isinstance(header, dict):
      raise WeightsFileError(
          f'{path}: header is a JSON {type(header).__name__}; expected an object')
    data_start, data_len = 8 + n, size - 8 - n

    entries = []
    for name, info in header.items():
      if name == '__metadata__':
        continue  # free-form strings, e.g. {'format': 'pt'}
      entries.append((name, *_check_entry(path, name, info, data_len)))

    out = {}
    for name, dtype_name, shape, begin, end in entries:
      stored = np.empty(shape, np.dtype(_TORCH_DTYPES[dtype_name][0]))
      f.seek(data_start + begin)
      got = f.readinto(stored.reshape(-1).view(np.uint8))
      if got != end - begin:
        raise WeightsFileError(
            f"{path}: tensor '{name}': read {got} of {end - begin} bytes; the file shrank")
      # safetensors is little-endian; _to_output makes it native (and widens bfloat16).
      if dtype_name in ('bool', 'bfloat16'):
        out[name] = _to_output(stored, dtype_name)
      else:  # already a fresh array: only a big-endian machine needs another copy
        out[name] = stored.astype(stored.dtype.newbyteorder('='), copy=False)
  return out


def _check_entry(path: str, name: str, info: Any,
                 data_len: int) -> tuple[str, tuple[int, ...], int, int]:
  """(torch dtype name, shape, begin, end) of one header entry, all checked."""
  where = f"{path}: tensor '{name}'"
  if not (isinstance(info, dict) and {'dtype', 'shape', 'data_offsets'} <= set(info)):
    raise WeightsFileError(
        f'{where}: header entry {info!r}; expected {{"dtype", "shape", "data_offsets"}}')
  dtype, shape, offsets = info['dtype'], info['shape'], info['data_offsets']
  if not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
    raise WeightsFileError(
        f'{where}: unknown dtype {dtype!r}; expected one of {sorted(_SAFETENSORS_DTYPES)}')
  if not (isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape)):
    raise WeightsFileError(f'{where}: shape {shape!r}; expected a list of ints >= 0')
  if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))
          and 0 <= offsets[0] <= offsets[1] <= data_len):
    raise WeightsFileError(
        f'{where}: data_offsets {offsets!r}; expected [begin, end] with '
        f'0 <= begin <= end <= {data_len} (the size of the data section)')
  _check_shape(where, tuple(shape))
  dtype_name = _SAFETENSORS_DTYPES[dtype]
  begin, end = offsets
  nbytes = math.prod(shape) * np.dtype(_TORCH_DTYPES[dtype_name][0]).itemsize
  if end - begin != nbytes:
    raise WeightsFileError(
        f'{where}: data_offsets {offsets!r} span {end - begin} bytes; expected {nbytes} '
        f'for shape {shape} of {dtype}')
  return dtype_name, tuple(shape), begin, end
