"""Tests for cam_jax.pretrained.torch_file: torch.save zip files and safetensors, no torch.

The fixtures were written by real torch (fixtures/make_torch_fixtures.py); the bad files
are made here, by corrupting them or by writing torch's zip layout by hand (a few pickle
opcodes), which also pins the format independently of the torch that made the fixtures.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest

from cam_jax.pretrained import torch_file
from cam_jax.pretrained.errors import WeightsFileError

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


@pytest.fixture(scope='module')
def expected() -> dict[str, np.ndarray]:
  with np.load(FIXTURES / 'expected.npz') as npz:
    return dict(npz)


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
  """Same keys, dtypes, shapes and bits (NaN equal to NaN); fresh C-contiguous arrays."""
  assert sorted(got) == sorted(want)
  for key, w in want.items():
    g = got[key]
    assert (g.dtype, g.shape) == (w.dtype, w.shape), key
    np.testing.assert_array_equal(g, w, err_msg=key, strict=True)
    if w.dtype.kind == 'f':  # -0.0 == 0.0, so also compare the bits
      np.testing.assert_array_equal(g.view(f'u{w.itemsize}'), w.view(f'u{w.itemsize}'))
    assert g.flags.c_contiguous and g.flags.writeable, key


# ----------------------------------------------------------------------------------------
# Files written by torch
# ----------------------------------------------------------------------------------------


def test_state_dict_matches_torch(expected):
  want = {k: v for k, v in expected.items() if not k.startswith('new_dtypes/')}
  _assert_same(torch_file.read_torch(FIXTURES / 'state_dict.pt'), want)


def test_state_dict_golden_values():
  """The layouts that are easy to get wrong, checked against values known by hand."""
  sd = torch_file.read_torch(str(FIXTURES / 'state_dict.pt'))
  # arange(12).reshape(3, 4).t(): a view with stride (1, 4).
  np.testing.assert_array_equal(sd['extra.transposed'],
                                np.arange(12, dtype=np.float32).reshape(3, 4).T)
  # Two slices of one storage arange(10) * 1.5: [2:5] and [5:10:2].
  np.testing.assert_array_equal(sd['extra.shared_a'], [3.0, 4.5, 6.0])
  np.testing.assert_array_equal(sd['extra.shared_b'], [7.5, 10.5, 13.5])
  assert sd['extra.scalar'].shape == () and sd['extra.scalar'] == 3.25
  assert sd['extra.bfloat16'].dtype == np.float32
  # [1.5, -0.0, 3e38 (rounded to bfloat16), 1e-39, inf, -inf, nan, 0.1 (rounded)]
  np.testing.assert_array_equal(sd['extra.bfloat16'][[0, 1, 4, 5, 6]],
                                [1.5, -0.0, np.inf, -np.inf, np.nan])
  assert sd['bn.num_batches_tracked'].dtype == np.int64 and sd['bn.num_batches_tracked'] == 1
  assert sd['conv.weight'].shape == (4, 3, 3, 3)
  # Copies, not views: writing one slice leaves its storage-sharing sibling alone.
  sd['extra.shared_a'][:] = -1
  np.testing.assert_array_equal(sd['extra.shared_b'], [7.5, 10.5, 13.5])


def test_nested_checkpoint_keys_are_joined(expected):
  got = torch_file.read_torch(FIXTURES / 'nested.pt')
  # 'epoch' (an int) and the OrderedDict's _metadata are not tensors: left out.
  want = {f'state_dict.{k}': v for k, v in expected.items() if not k.startswith('new_')}
  _assert_same(got, want)


def test_dtypes_new_in_torch_2_use_rebuild_tensor_v3(expected):
  """uint16/uint32 come as an UntypedStorage plus a dtype global (torch.uint16)."""
  want = {k.split('/')[1]: v for k, v in expected.items() if k.startswith('new_dtypes/')}
  _assert_same(torch_file.read_torch(FIXTURES / 'new_dtypes.pt'), want)


def test_safetensors_written_by_the_safetensors_package(expected):
  want = {k: v for k, v in expected.items() if not k.startswith('new_dtypes/')}
  _assert_same(torch_file.read_safetensors(FIXTURES / 'state_dict.safetensors'), want)


def test_whole_model_refused_naming_the_global():
  path = str(FIXTURES / 'foreign_global.pt')
  with pytest.raises(WeightsFileError) as e:
    torch_file.read_torch(path)
  msg = str(e.value)
  assert path in msg and "'torch.nn.modules.linear.Linear'" in msg
  assert 'refusing' in msg and 'state_dict()' in msg


def test_legacy_format_refused_with_the_fix():
  path = str(FIXTURES / 'legacy.pt')
  with pytest.raises(WeightsFileError, match='legacy') as e:
    torch_file.read_torch(path)
  assert path in str(e.value) and 'torch.save(torch.load(f), g)' in str(e.value)


@pytest.mark.parametrize('keep', [0.5, 0.99])
def test_truncated_file_refused(tmp_path, keep):
  data = (FIXTURES / 'state_dict.pt').read_bytes()
  path = tmp_path / 'cut.pt'
  path.write_bytes(data[:int(len(data) * keep)])
  with pytest.raises(WeightsFileError, match='truncated or corrupt') as e:
    torch_file.read_torch(path)
  assert str(path) in str(e.value)


def test_corrupt_storage_refused_naming_member_and_tensor(tmp_path):
  data = bytearray((FIXTURES / 'state_dict.pt').read_bytes())
  with zipfile.ZipFile(FIXTURES / 'state_dict.pt') as zf:
    info = zf.getinfo('state_dict/data/0')
  # Local file header: 30 fixed bytes, then the name and extra field, then the data.
  name_len, extra_len = struct.unpack('<HH', data[info.header_offset + 26:][:4])
  data[info.header_offset + 30 + name_len + extra_len] ^= 0xFF
  path = tmp_path / 'flipped.pt'
  path.write_bytes(bytes(data))
  with pytest.raises(WeightsFileError, match='CRC') as e:
    torch_file.read_torch(path)
  msg = str(e.value)
  assert str(path) in msg and 'state_dict/data/0' in msg and "tensor '" in msg


def test_not_a_zip_refused(tmp_path):
  path = tmp_path / 'weights.pt'
  path.write_bytes(b'\x00\x01not a torch file')
  with pytest.raises(WeightsFileError, match='expected a zip archive') as e:
    torch_file.read_torch(path)
  assert str(path) in str(e.value)


# ----------------------------------------------------------------------------------------
# torch's zip layout written by hand: protocol-2 pickle opcodes plus raw storages
# ----------------------------------------------------------------------------------------


def _glob(module: str, name: str) -> bytes:
  return b'c' + f'{module}\n{name}\n'.encode()


def _str(text: str) -> bytes:
  raw = text.encode()
  return b'X' + struct.pack('<I', len(raw)) + raw


def _int(n: int) -> bytes:
  if -2**31 <= n < 2**31:
    return b'J' + struct.pack('<i', n)  # BININT
  raw = pickle.encode_long(n)
  return b'\x8a' + bytes([len(raw)]) + raw  # LONG1


def _tuple(*items: bytes) -> bytes:
  return b'(' + b''.join(items) + b't'


def _dict(entries: dict[str, bytes]) -> bytes:
  return b'}(' + b''.join(_str(k) + v for k, v in entries.items()) + b'u'


def _tensor(storage_class: str, key: str, numel: int, offset: int,
            size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
  """_rebuild_tensor_v2(<persistent storage>, offset, size, stride, False, OrderedDict())."""
  pid = _tuple(_str('storage'), _glob('torch', storage_class), _str(key), _str('cpu'),
               _int(numel)) + b'Q'
  hooks = _glob('collections', 'OrderedDict') + b')R'
  args = _tuple(pid, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                b'\x89', hooks)
  return _glob('torch._utils', '_rebuild_tensor_v2') + args + b'R'


def _pickle(body: bytes) -> bytes:
  return b'\x80\x02' + body + b'.'


def _write_torch_zip(path: pathlib.Path, pkl: bytes, storages: dict[str, bytes],
                     byteorder: str | None = 'little') -> pathlib.Path:
  with zipfile.ZipFile(path, 'w') as zf:  # stored, not compressed, as torch writes
    zf.writestr('archive/data.pkl', pkl)
    if byteorder is not None:
      zf.writestr('archive/byteorder', byteorder)
    for key, raw in storages.items():
      zf.writestr(f'archive/data/{key}', raw)
    zf.writestr('archive/version', '3\n')
  return path


@pytest.mark.parametrize('byteorder', ['little', 'big', None])
def test_handmade_torch_zip(tmp_path, byteorder):
  """Every storage kind in either byte order; no byteorder member means little."""
  e = '>' if byteorder == 'big' else '<'
  floats = np.arange(6, dtype=f'{e}f4').tobytes()
  bf16_bits = np.array([0x3FC0, 0xC000, 0x0001], dtype=f'{e}u2').tobytes()  # 1.5, -2, tiny
  storages = {
      '0': floats,
      '1': np.array([7, -(2**40)], dtype=f'{e}i8').tobytes(),
      '2': bf16_bits,
      '3': bytes([0, 1, 2]),
      '4': np.array([0.5, -1.0], dtype=f'{e}f2').tobytes(),
      '5': np.array([-2, 3], dtype=f'{e}i2').tobytes(),
  }
  body = _dict({
      'block': _dict({
          'w': _tensor('FloatStorage', '0', 6, 0, (3, 2), (1, 3)),  # a transposed view
          'scalar': _tensor('FloatStorage', '0', 6, 5, (), ()),  # same storage, offset 5
          # A length-1 dimension's stride is never used: torch lets it be anything.
          'row': _tensor('FloatStorage', '0', 6, 1, (1, 2), (2**64, 1)),
      }),
      'n': _tensor('LongStorage', '1', 2, 0, (2,), (1,)),
      'bf': _tensor('BFloat16Storage', '2', 3, 0, (3,), (1,)),
      'flags': _tensor('BoolStorage', '3', 3, 0, (3,), (1,)),
      'half': _tensor('HalfStorage', '4', 2, 0, (2,), (1,)),
      'short': _tensor('ShortStorage', '5', 2, 1, (1,), (1,)),
      'epoch': _int(3),
  })
  path = _write_torch_zip(tmp_path / 'hand.pt', _pickle(body), storages, byteorder)
  _assert_same(torch_file.read_torch(path), {
      'block.w': np.arange(6, dtype=np.float32).reshape(2, 3).T,
      'block.scalar': np.array(5.0, np.float32),
      'block.row': np.array([[1.0, 2.0]], np.float32),
      'n': np.array([7, -(2**40)], np.int64),
      'bf': np.array([1.5, -2.0, 2.0**-133], np.float32),  # bits 0x0001: a subnormal
      'flags': np.array([False, True, True]),  # any nonzero byte is True
      'half': np.array([0.5, -1.0], np.float16),
      'short': np.array([3], np.int16),
  })


def _one_tensor_zip(tmp_path: pathlib.Path, tensor: bytes, storages: dict[str, bytes],
                    **kwargs) -> pathlib.Path:
  return _write_torch_zip(tmp_path / 'one.pt', _pickle(_dict({'layer.w': tensor})),
                          storages, **kwargs)


def test_missing_storage_member_refused(tmp_path):
  path = _one_tensor_zip(tmp_path, _tensor('FloatStorage', '7', 2, 0, (2,), (1,)), {})
  with pytest.raises(WeightsFileError, match='missing') as e:
    torch_file.read_torch(path)
  assert str(path) in str(e.value) and "'layer.w'" in str(e.value)
  assert 'archive/data/7' in str(e.value)


@pytest.mark.parametrize('offset,size,stride', [
    (0, (5,), (1,)),  # one past the end
    (3, (2,), (1,)),  # the offset pushes it past the end
    (0, (2, 2), (3, 1)),  # the last row starts inside but ends outside
])
def test_view_past_the_end_of_its_storage_refused(tmp_path, offset, size, stride):
  floats = np.zeros(4, '<f4').tobytes()
  path = _one_tensor_zip(tmp_path, _tensor('FloatStorage', '0', 4, offset, size, stride),
                         {'0': floats})
  with pytest.raises(WeightsFileError, match='expected the view inside its storage') as e:
    torch_file.read_torch(path)
  assert str(path) in str(e.value) and "'layer.w'" in str(e.value)


def test_huge_expanded_view_refused(tmp_path):
  """Stride 0 repeats one element: allowed up to 2**24 elements, refused beyond."""
  path = _one_tensor_zip(tmp_path, _tensor('FloatStorage', '0', 1, 0, (4, 3), (0, 0)),
                         {'0': np.array([2.5], '<f4').tobytes()})
  np.testing.assert_array_equal(torch_file.read_torch(path)['layer.w'], np.full((4, 3), 2.5))
  path = _one_tensor_zip(tmp_path, _tensor('FloatStorage', '0', 1, 0, (2**20, 2**20), (0, 0)),
                         {'0': np.array([2.5], '<f4').tobytes()})
  with pytest.raises(WeightsFileError, match='repeats elements') as e:
    torch_file.read_torch(path)
  assert "'layer.w'" in str(e.value)


def test_storage_shorter_than_declared_refused(tmp_path):
  path = _one_tensor_zip(tmp_path, _tensor('FloatStorage', '0', 4, 0, (2,), (1,)),
                         {'0': b'\x00' * 12})
  with pytest.raises(WeightsFileError, match='has 12 bytes; expected 16') as e:
    torch_file.read_torch(path)
  assert "'layer.w'" in str(e.value)


def test_empty_tensor(tmp_path):
  path = _one_tensor_zip(tmp_path, _tensor('FloatStorage', '0', 0, 0, (0, 3), (3, 1)),
                         {'0': b''})
  got = torch_file.read_torch(path)['layer.w']
  assert got.shape == (0, 3) and got.dtype == np.float32


@pytest.mark.parametrize('module,name', [('os', 'system'), ('builtins', 'eval'),
                                         ('torch', 'load'), ('numpy', 'ndarray')])
def test_any_other_global_refused_and_never_called(tmp_path, monkeypatch, module, name):
  calls = []
  monkeypatch.setattr(os, 'system', lambda cmd: calls.append(cmd))
  body = _glob(module, name) + _tuple(_str('echo pwned')) + b'R'
  path = _write_torch_zip(tmp_path / 'evil.pt', _pickle(body), {})
  with pytest.raises(WeightsFileError, match='refusing') as e:
    torch_file.read_torch(path)
  assert f"'{module}.{name}'" in str(e.value) and str(path) in str(e.value)
  assert 'archive/data.pkl' in str(e.value)
  assert not calls


@pytest.mark.parametrize('pkl,match', [
    (b'\x80\x02}(X', 'cannot parse'),  # cut off mid-opcode
    # CPython's unpickler would allocate 2**40 bytes, or a 2**31-entry memo, unchecked.
    (b'\x80\x02\x96' + struct.pack('<Q', 2**40) + b'.', 'cannot parse'),
    (_pickle(b'}r' + struct.pack('<I', 2**31)), 'LONG_BINPUT 2147483648 at byte 3'),
    (_pickle(_tuple(_str('storage')) + b'Q'), 'persistent id'),
    (_pickle(_glob('torch._utils', '_rebuild_tensor_v2') + _tuple(_int(1)) + b'R'),
     'cannot unpickle'),  # a tensor rebuilt from too few arguments
    (_pickle(b']q\x00h\x00a'), 'contains itself'),  # a list holding itself
])
def test_malformed_pickle_refused(tmp_path, pkl, match):
  path = _write_torch_zip(tmp_path / 'bad.pt', pkl, {})
  with pytest.raises(WeightsFileError, match=match) as e:
    torch_file.read_torch(path)
  assert str(path) in str(e.value)


def test_bad_byteorder_refused(tmp_path):
  path = _write_torch_zip(tmp_path / 'bo.pt', _pickle(_dict({})), {}, byteorder='middle')
  with pytest.raises(WeightsFileError, match="archive/byteorder says 'middle'"):
    torch_file.read_torch(path)


def test_zip_without_data_pkl_refused(tmp_path):
  path = tmp_path / 'other.zip'
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('readme.txt', 'hello')
  with pytest.raises(WeightsFileError, match='data.pkl') as e:
    torch_file.read_torch(path)
  assert str(path) in str(e.value)


def test_bare_tensor_comes_back_under_empty_key(tmp_path):
  body = _tensor('IntStorage', '0', 2, 0, (2,), (1,))
  path = _write_torch_zip(tmp_path / 't.pt', _pickle(body),
                          {'0': np.array([1, 2], '<i4').tobytes()})
  _assert_same(torch_file.read_torch(path), {'': np.array([1, 2], np.int32)})


# ----------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------


def _write_safetensors(path: pathlib.Path, header: dict, data: bytes,
                       header_len: int | None = None) -> pathlib.Path:
  raw = json.dumps(header).encode()
  n = len(raw) if header_len is None else header_len
  path.write_bytes(struct.pack('<Q', n) + raw + data)
  return path


def _safetensors_of(tensors: dict[str, tuple[str, np.ndarray]],
                    metadata: dict[str, str] | None = None) -> tuple[dict, bytes]:
  """Header and data section for {name: (safetensors dtype, little-endian array)}."""
  header: dict = {'__metadata__': metadata} if metadata else {}
  data = b''
  for name, (dtype, array) in tensors.items():
    raw = np.ascontiguousarray(array).tobytes()
    header[name] = {'dtype': dtype, 'shape': list(array.shape),
                    'data_offsets': [len(data), len(data) + len(raw)]}
    data += raw
  return header, data


def test_safetensors_round_trip_all_dtypes(tmp_path):
  rng = np.random.default_rng(0)
  want = {
      'f64': rng.normal(size=(2, 3)), 'f32': rng.normal(size=(4,)).astype(np.float32),
      'f16': np.array([[0.5, -0.0], [65504.0, 6e-8]], np.float16),
      'i64': np.array([-(2**62), 5], np.int64), 'i32': np.array([[-7]], np.int32),
      'i16': np.array([-32768, 1], np.int16), 'i8': np.array([-128, 127], np.int8),
      'u8': np.array([0, 255], np.uint8), 'bool': np.array([True, False, True]),
      'u16': np.array([65535], np.uint16), 'u32': np.array([2**32 - 1], np.uint32),
      'u64': np.array([2**64 - 1], np.uint64),
      'scalar': np.array(2.5, np.float32), 'empty': np.zeros((0, 5), np.float32),
  }
  names = {'f64': 'F64', 'f32': 'F32', 'f16': 'F16', 'i64': 'I64', 'i32': 'I32',
           'i16': 'I16', 'i8': 'I8', 'u8': 'U8', 'bool': 'BOOL', 'u16': 'U16',
           'u32': 'U32', 'u64': 'U64', 'scalar': 'F32', 'empty': 'F32'}
  tensors = {k: (names[k], v.astype(v.dtype.newbyteorder('<'))) for k, v in want.items()}
  # bfloat16 given as its bits: 1.5, -inf, the smallest subnormal; widened to float32.
  tensors['bf16'] = ('BF16', np.array([[0x3FC0, 0xFF80, 0x0001]], '<u2'))
  want['bf16'] = np.array([[1.5, -np.inf, 2.0**-133]], np.float32)
  header, data = _safetensors_of(tensors, metadata={'format': 'pt', 'note': 'x'})
  path = _write_safetensors(tmp_path / 'all.safetensors', header, data)
  got = torch_file.read_safetensors(path)
  assert list(got) == list(tensors)  # header order; __metadata__ left out
  _assert_same(got, want)


def _good_header() -> tuple[dict, bytes]:
  return _safetensors_of({'conv.weight': ('F32', np.ones((2, 3), '<f4'))})


@pytest.mark.parametrize('edit,match', [
    (lambda h: h['conv.weight'].update(dtype='F8_E4M3'), "unknown dtype 'F8_E4M3'"),
    (lambda h: h['conv.weight'].update(data_offsets=[0, 48]), r'data_offsets \[0, 48\]'),
    (lambda h: h['conv.weight'].update(data_offsets=[8, 4]), 'begin <= end'),
    (lambda h: h['conv.weight'].update(shape=[2, 2]), 'span 24 bytes; expected 16'),
    (lambda h: h['conv.weight'].update(shape=[2, -3]), 'list of ints >= 0'),
    (lambda h: h['conv.weight'].pop('dtype'), 'header entry'),
    (lambda h: h['conv.weight'].update(shape=[0, 2**62]), 'expected at most 64 dimensions'),
])
def test_safetensors_bad_entry_names_file_and_tensor(tmp_path, edit, match):
  header, data = _good_header()
  edit(header)
  path = _write_safetensors(tmp_path / 'bad.safetensors', header, data)
  with pytest.raises(WeightsFileError, match=match) as e:
    torch_file.read_safetensors(path)
  assert str(path) in str(e.value) and "tensor 'conv.weight'" in str(e.value)


def test_safetensors_header_length_past_the_end(tmp_path):
  header, data = _good_header()
  path = _write_safetensors(tmp_path / 'long.safetensors', header, data, header_len=10**6)
  with pytest.raises(WeightsFileError, match='header length 1000000 runs past the end') as e:
    torch_file.read_safetensors(path)
  assert str(path) in str(e.value)


@pytest.mark.parametrize('raw,match', [
    (b'{"a": ', 'not valid JSON'),
    (b'\xff\xfe', 'not valid JSON'),
    (b'[1, 2]', 'JSON list; expected an object'),
    (b'{"a": {}, "a": {}}', 'duplicate keys'),
])
def test_safetensors_bad_header(tmp_path, raw, match):
  path = tmp_path / 'bad.safetensors'
  path.write_bytes(struct.pack('<Q', len(raw)) + raw)
  with pytest.raises(WeightsFileError, match=match) as e:
    torch_file.read_safetensors(path)
  assert str(path) in str(e.value)


def test_safetensors_shorter_than_the_length_field(tmp_path):
  path = tmp_path / 'tiny.safetensors'
  path.write_bytes(b'\x01\x00')
  with pytest.raises(WeightsFileError, match='8-byte header length'):
    torch_file.read_safetensors(path)


# ----------------------------------------------------------------------------------------
# Sniffing
# ----------------------------------------------------------------------------------------


def test_sniffing(tmp_path):
  empty = tmp_path / 'empty'
  empty.write_bytes(b'')
  cases = {  # file: (is_torch_zip, is_safetensors)
      FIXTURES / 'state_dict.pt': (True, False),
      FIXTURES / 'state_dict.safetensors': (False, True),
      FIXTURES / 'legacy.pt': (False, False),
      FIXTURES / 'expected.npz': (True, False),  # also a zip: the magic is all it checks
      empty: (False, False),
  }
  for path, (is_zip, is_st) in cases.items():
    assert torch_file.is_torch_zip(str(path)) == is_zip, path
    assert torch_file.is_safetensors(str(path)) == is_st, path
  # A length that would fit but a body that is not JSON; and a length past the end.
  (tmp_path / 'a').write_bytes(struct.pack('<Q', 4) + b'abcd')
  (tmp_path / 'b').write_bytes(struct.pack('<Q', 99) + b'{}')
  assert not torch_file.is_safetensors(tmp_path / 'a')
  assert not torch_file.is_safetensors(tmp_path / 'b')
