"""Tests of the Caffe file reader on files in the real wire format.

The bytes are assembled here from Caffe's field numbers (caffe.proto) by a small encoder of
our own, not with the reader's schema, so that a wrong number in the schema fails a test.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from cam_jax.pretrained import caffe_file
from cam_jax.pretrained.errors import WeightsFileError

# ---------------------------------------------------------------------------------------
# A minimal protobuf encoder.
# ---------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # negative int32/int64 go on the wire as 10-byte two's complement
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _int(field: int, value: int) -> bytes:
  return _key(field, 0) + _varint(value)


def _bytes(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
  return _bytes(field, text.encode())


def _packed_varints(field: int, values) -> bytes:
  return _bytes(field, b''.join(_varint(int(v)) for v in values))


def _packed_f32(field: int, values) -> bytes:
  return _bytes(field, np.asarray(values, '<f4').tobytes())


def _unpacked_f32(field: int, values) -> bytes:
  # What old writers produced: one wire-type-5 field per float.
  return b''.join(_key(field, 5) + struct.pack('<f', v) for v in np.ravel(values))


def _packed_f64(field: int, values) -> bytes:
  return _bytes(field, np.asarray(values, '<f8').tobytes())


# caffe.proto field numbers, written out independently of the reader.
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_DIFF, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 6, 7, 8
_SHAPE_DIM = 1
_NET_NAME, _NET_LAYERS_V1, _NET_INPUT, _NET_INPUT_DIM, _NET_LAYER_V2 = 1, 2, 3, 4, 100
_V2_NAME, _V2_TYPE, _V2_BOTTOM, _V2_TOP, _V2_PARAM, _V2_BLOBS = 1, 2, 3, 4, 6, 7
_V2_PHASE, _V2_CONVOLUTION_PARAM = 10, 106
_V1_LAYER_V0, _V1_BOTTOM, _V1_TOP, _V1_NAME, _V1_TYPE, _V1_BLOBS = 1, 2, 3, 4, 5, 6
_V1_BLOBS_LR, _V1_CONVOLUTION_PARAM = 7, 10
_V1_CONVOLUTION, _V1_INNER_PRODUCT, _V1_RELU, _V1_SOFTMAX_LOSS = 4, 14, 18, 21


def _blob(values: np.ndarray, legacy: tuple[int, ...] | None = None,
          encoding: str = 'packed') -> bytes:
  """A BlobProto: shape as BlobShape (or the legacy 4 fields), data in `encoding`."""
  if legacy is None:
    out = _bytes(_BLOB_SHAPE, _packed_varints(_SHAPE_DIM, values.shape))
  else:
    out = b''.join(_int(f, d) for f, d in zip(
        (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH), legacy))
  if encoding == 'packed':
    out += _packed_f32(_BLOB_DATA, values.ravel())
  elif encoding == 'unpacked':
    out += _unpacked_f32(_BLOB_DATA, values)
  elif encoding == 'double':
    out += _packed_f64(_BLOB_DOUBLE_DATA, values.ravel())
  else:
    raise ValueError(encoding)
  return out


def _v2_layer(name: str, kind: str, *blobs: bytes, extra: bytes = b'') -> bytes:
  return _bytes(_NET_LAYER_V2, _str(_V2_NAME, name) + _str(_V2_TYPE, kind) + extra
                + b''.join(_bytes(_V2_BLOBS, b) for b in blobs))


def _v1_layer(name: str, kind: int, *blobs: bytes, extra: bytes = b'') -> bytes:
  return _bytes(_NET_LAYERS_V1, extra + _str(_V1_NAME, name) + _int(_V1_TYPE, kind)
                + b''.join(_bytes(_V1_BLOBS, b) for b in blobs))


def _write(tmp_path, name: str, content: bytes) -> str:
  path = tmp_path / name
  path.write_bytes(content)
  return str(path)


_RNG = np.random.default_rng(0)
_CONV_W = _RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
_CONV_B = _RNG.standard_normal(4).astype(np.float32)
_FC_W = _RNG.standard_normal((10, 36)).astype(np.float32)
_FC_B = _RNG.standard_normal(10).astype(np.float32)


def _v2_net() -> bytes:
  """A V2 net with unknown fields at every level: input, bottom/top, params, phase."""
  conv_param = _int(1, 4) + _int(4, 3)  # num_output, kernel_size: skipped by the reader
  return (
      _str(_NET_NAME, 'TinyNet') + _str(_NET_INPUT, 'data')
      + _packed_varints(_NET_INPUT_DIM, (1, 3, 8, 8))
      + _v2_layer('conv1', 'Convolution', _blob(_CONV_W), _blob(_CONV_B),
                  extra=(_str(_V2_BOTTOM, 'data') + _str(_V2_TOP, 'conv1')
                         + _bytes(_V2_PARAM, _packed_f32(3, [1.0]))
                         + _int(_V2_PHASE, 1) + _bytes(_V2_CONVOLUTION_PARAM, conv_param)))
      + _v2_layer('fc', 'InnerProduct', _blob(_FC_W), _blob(_FC_B))
      + _v2_layer('relu', 'ReLU', extra=_str(_V2_BOTTOM, 'fc') + _str(_V2_TOP, 'fc')))


def _assert_exact(actual: np.ndarray, expected: np.ndarray) -> None:
  assert actual.dtype == np.float32
  assert actual.shape == expected.shape
  np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------


def test_v2_net(tmp_path):
  net = caffe_file.read_caffemodel(_write(tmp_path, 'v2.caffemodel', _v2_net()))
  assert net.name == 'TinyNet'
  assert net.format == 'V2'
  assert [(l.name, l.type, len(l.blobs)) for l in net.layers] == [
      ('conv1', 'Convolution', 2), ('fc', 'InnerProduct', 2), ('relu', 'ReLU', 0)]
  assert net.layers[2].blobs == ()
  for actual, expected in zip(net.layers[0].blobs + net.layers[1].blobs,
                              (_CONV_W, _CONV_B, _FC_W, _FC_B)):
    _assert_exact(actual, expected)


def test_v1_net_legacy_shapes_and_every_data_encoding(tmp_path):
  fc_w = _FC_W.astype(np.float64) + 1e-9  # not a float32: read back rounded to one
  content = (
      _str(_NET_NAME, 'OldNet')
      + _v1_layer('conv1', _V1_CONVOLUTION,
                  _blob(_CONV_W, legacy=(4, 3, 3, 3), encoding='unpacked'),
                  _blob(_CONV_B, legacy=(1, 1, 1, 4), encoding='packed'),
                  extra=(_str(_V1_BOTTOM, 'data') + _str(_V1_TOP, 'conv1')
                         + _unpacked_f32(_V1_BLOBS_LR, [1.0, 2.0])
                         + _bytes(_V1_CONVOLUTION_PARAM, _int(1, 4))))
      + _v1_layer('relu1', _V1_RELU)
      + _v1_layer('fc', _V1_INNER_PRODUCT,
                  _blob(fc_w, legacy=(1, 1, 10, 36), encoding='double'),
                  _blob(_FC_B, legacy=(1, 1, 1, 10), encoding='unpacked'))
      + _v1_layer('loss', _V1_SOFTMAX_LOSS)
      + _v1_layer('future', 99))
  net = caffe_file.read_caffemodel(_write(tmp_path, 'v1.caffemodel', content))
  assert net.name == 'OldNet'
  assert net.format == 'V1'
  assert [(l.name, l.type) for l in net.layers] == [
      ('conv1', 'Convolution'), ('relu1', 'ReLU'), ('fc', 'InnerProduct'),
      ('loss', 'SoftmaxWithLoss'), ('future', 'V1:99')]
  conv_w, conv_b = net.layers[0].blobs
  _assert_exact(conv_w, _CONV_W)
  _assert_exact(conv_b, _CONV_B.reshape(1, 1, 1, 4))
  fc_w_read, fc_b = net.layers[2].blobs
  _assert_exact(fc_w_read, fc_w.astype(np.float32).reshape(1, 1, 10, 36))
  _assert_exact(fc_b, _FC_B.reshape(1, 1, 1, 10))
  assert net.layers[1].blobs == net.layers[3].blobs == ()


def test_data_split_in_packed_and_unpacked_runs_is_concatenated(tmp_path):
  # Parsers must accept a repeated field in any mix of packed and unpacked runs.
  values = np.arange(6, dtype=np.float32).reshape(2, 3)
  blob = (_bytes(_BLOB_SHAPE, _packed_varints(_SHAPE_DIM, (2, 3)))
          + _packed_f32(_BLOB_DATA, [0, 1]) + _unpacked_f32(_BLOB_DATA, [2, 3])
          + _packed_f32(_BLOB_DATA, [4, 5]) + _packed_f32(_BLOB_DIFF, [9] * 6))
  net = caffe_file.read_caffemodel(
      _write(tmp_path, 'mixed.caffemodel', _v2_layer('fc', 'InnerProduct', blob)))
  _assert_exact(net.layers[0].blobs[0], values)
  assert net.name == ''


def test_caffe_precedence_legacy_shape_and_double_data_win(tmp_path):
  # Blob::FromProto: any of num/channels/height/width set -> the legacy 4-D shape;
  # double_data not empty -> double_data.
  blob = (_bytes(_BLOB_SHAPE, _packed_varints(_SHAPE_DIM, (6,)))
          + _int(_BLOB_NUM, 1) + _int(_BLOB_CHANNELS, 1) + _int(_BLOB_HEIGHT, 2)
          + _int(_BLOB_WIDTH, 3) + _packed_f32(_BLOB_DATA, [0] * 6)
          + _packed_f64(_BLOB_DOUBLE_DATA, range(6)))
  net = caffe_file.read_caffemodel(
      _write(tmp_path, 'both.caffemodel', _v2_layer('fc', 'InnerProduct', blob)))
  _assert_exact(net.layers[0].blobs[0], np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3))


def test_read_blob_mean_file(tmp_path):
  mean = _RNG.uniform(0, 255, (1, 3, 4, 5)).astype(np.float32)
  path = _write(tmp_path, 'mean.binaryproto', _blob(mean, legacy=(1, 3, 4, 5)))
  _assert_exact(caffe_file.read_blob(path), mean)


def test_schema_is_built_once():
  assert caffe_file._messages() is caffe_file._messages()  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------
# Errors: each names the file, and the layer and blob where there is one.
# ---------------------------------------------------------------------------------------


def _error(read, path: str) -> str:
  with pytest.raises(WeightsFileError) as info:
    read(path)
  message = str(info.value)
  assert path in message
  return message


@pytest.mark.parametrize('cut', [0.5, 0.9, -1])
def test_truncated_file(tmp_path, cut):
  content = _v2_net()
  end = len(content) - 1 if cut == -1 else int(len(content) * cut)
  message = _error(caffe_file.read_caffemodel,
                   _write(tmp_path, 'cut.caffemodel', content[:end]))
  assert 'truncated' in message


def test_random_bytes(tmp_path):
  _error(caffe_file.read_caffemodel,
         _write(tmp_path, 'random.caffemodel', np.random.default_rng(1).bytes(4096)))


def test_text_prototxt(tmp_path):
  text = ('name: "CaffeNet"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n'
          '  bottom: "data"\n  top: "conv1"\n  convolution_param { num_output: 96 }\n}\n')
  _error(caffe_file.read_caffemodel, _write(tmp_path, 'deploy.prototxt', text.encode()))


@pytest.mark.parametrize('content', [
    b'', _str(_NET_NAME, 'Empty') + _str(_NET_INPUT, 'data'),
    _blob(np.zeros((1, 3, 2, 2), np.float32), legacy=(1, 3, 2, 2))],
    ids=['empty', 'name_only', 'binaryproto'])
def test_no_layers(tmp_path, content):
  message = _error(caffe_file.read_caffemodel, _write(tmp_path, 'x.caffemodel', content))
  assert 'not a .caffemodel' in message


def test_v0_file_is_refused_with_the_upgrade_command(tmp_path):
  v0_layer = _str(1, 'conv1') + _str(2, 'conv')  # V0LayerParameter name, type
  content = _str(_NET_NAME, 'Ancient') + _bytes(
      _NET_LAYERS_V1, _bytes(_V1_LAYER_V0, v0_layer) + _str(_V1_BOTTOM, 'data'))
  message = _error(caffe_file.read_caffemodel, _write(tmp_path, 'v0.caffemodel', content))
  assert 'V0' in message and 'upgrade_net_proto_binary' in message and 'conv1' in message


def test_v1_and_v2_layers_together_are_refused(tmp_path):
  content = _v1_layer('a', _V1_RELU) + _v2_layer('b', 'ReLU')
  message = _error(caffe_file.read_caffemodel, _write(tmp_path, 'both.caffemodel', content))
  assert 'both' in message


def test_blob_length_mismatch(tmp_path):
  bad = _bytes(_BLOB_SHAPE, _packed_varints(_SHAPE_DIM, (2, 3))) + _packed_f32(
      _BLOB_DATA, range(5))
  content = _v2_layer('conv1', 'Convolution', _blob(_CONV_W), bad)
  message = _error(caffe_file.read_caffemodel, _write(tmp_path, 'bad.caffemodel', content))
  assert "'conv1'" in message and 'blob 1' in message
  assert '(2, 3)' in message and '6' in message and '5' in message


def test_negative_dimension(tmp_path):
  bad = _bytes(_BLOB_SHAPE, _packed_varints(_SHAPE_DIM, (-2, -3))) + _packed_f32(
      _BLOB_DATA, range(6))
  message = _error(caffe_file.read_caffemodel,
                   _write(tmp_path, 'neg.caffemodel', _v2_layer('fc', 'InnerProduct', bad)))
  assert "'fc'" in message and 'negative' in message


def test_read_blob_errors(tmp_path):
  mismatch = _int(_BLOB_NUM, 1) + _int(_BLOB_CHANNELS, 3) + _packed_f32(_BLOB_DATA, [1, 2])
  message = _error(caffe_file.read_blob, _write(tmp_path, 'bad.binaryproto', mismatch))
  assert '(1, 3, 0, 0)' in message
  message = _error(caffe_file.read_blob, _write(tmp_path, 'net.caffemodel', _v2_net()))
  assert 'not a .binaryproto' in message
  _error(caffe_file.read_blob, _write(tmp_path, 'empty.binaryproto', b''))
  _error(caffe_file.read_blob, _write(tmp_path, 'cut.binaryproto',
                                      _blob(_CONV_W, legacy=(4, 3, 3, 3))[:-7]))
