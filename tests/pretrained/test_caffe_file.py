"""Tests of the Caffe file reader on files in the real wire format.

The bytes are assembled here from Caffe's field numbers (caffe.proto) by a small encoder of
our own, not with the reader's schema, so that a wrong number in the schema fails a test.
"""

from __future__ import annotations

import numpy as np
import pytest

from cam_jax.pretrained import caffe_file
from cam_jax.pretrained.errors import WeightsFileError

from tests.pretrained.caffe_wire import (
    BLOB_CHANNELS, BLOB_DATA, BLOB_DIFF, BLOB_DOUBLE_DATA, BLOB_HEIGHT, BLOB_NUM,
    BLOB_SHAPE, BLOB_WIDTH, NET_INPUT, NET_INPUT_DIM, NET_LAYERS_V1, NET_NAME, SHAPE_DIM,
    V1_BLOBS_LR, V1_BOTTOM, V1_CONVOLUTION, V1_CONVOLUTION_PARAM, V1_INNER_PRODUCT,
    V1_LAYER_V0, V1_RELU, V1_SOFTMAX_LOSS, V1_TOP, V2_BOTTOM, V2_CONVOLUTION_PARAM,
    V2_PARAM, V2_PHASE, V2_TOP, blob, bytes_field, int_field, packed_f32, packed_f64,
    packed_varints, str_field, unpacked_f32, v1_layer, v2_layer)


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
  conv_param = int_field(1, 4) + int_field(4, 3)  # num_output, kernel_size: skipped by the reader
  return (
      str_field(NET_NAME, 'TinyNet') + str_field(NET_INPUT, 'data')
      + packed_varints(NET_INPUT_DIM, (1, 3, 8, 8))
      + v2_layer('conv1', 'Convolution', blob(_CONV_W), blob(_CONV_B),
                  extra=(str_field(V2_BOTTOM, 'data') + str_field(V2_TOP, 'conv1')
                         + bytes_field(V2_PARAM, packed_f32(3, [1.0]))
                         + int_field(V2_PHASE, 1) + bytes_field(V2_CONVOLUTION_PARAM, conv_param)))
      + v2_layer('fc', 'InnerProduct', blob(_FC_W), blob(_FC_B))
      + v2_layer('relu', 'ReLU', extra=str_field(V2_BOTTOM, 'fc') + str_field(V2_TOP, 'fc')))


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
      str_field(NET_NAME, 'OldNet')
      + v1_layer('conv1', V1_CONVOLUTION,
                  blob(_CONV_W, legacy=(4, 3, 3, 3), encoding='unpacked'),
                  blob(_CONV_B, legacy=(1, 1, 1, 4), encoding='packed'),
                  extra=(str_field(V1_BOTTOM, 'data') + str_field(V1_TOP, 'conv1')
                         + unpacked_f32(V1_BLOBS_LR, [1.0, 2.0])
                         + bytes_field(V1_CONVOLUTION_PARAM, int_field(1, 4))))
      + v1_layer('relu1', V1_RELU)
      + v1_layer('fc', V1_INNER_PRODUCT,
                  blob(fc_w, legacy=(1, 1, 10, 36), encoding='double'),
                  blob(_FC_B, legacy=(1, 1, 1, 10), encoding='unpacked'))
      + v1_layer('loss', V1_SOFTMAX_LOSS)
      + v1_layer('future', 99))
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
  blob = (bytes_field(BLOB_SHAPE, packed_varints(SHAPE_DIM, (2, 3)))
          + packed_f32(BLOB_DATA, [0, 1]) + unpacked_f32(BLOB_DATA, [2, 3])
          + packed_f32(BLOB_DATA, [4, 5]) + packed_f32(BLOB_DIFF, [9] * 6))
  net = caffe_file.read_caffemodel(
      _write(tmp_path, 'mixed.caffemodel', v2_layer('fc', 'InnerProduct', blob)))
  _assert_exact(net.layers[0].blobs[0], values)
  assert net.name == ''


def test_caffe_precedence_legacy_shape_and_double_data_win(tmp_path):
  # Blob::FromProto: any of num/channels/height/width set -> the legacy 4-D shape;
  # double_data not empty -> double_data.
  blob = (bytes_field(BLOB_SHAPE, packed_varints(SHAPE_DIM, (6,)))
          + int_field(BLOB_NUM, 1) + int_field(BLOB_CHANNELS, 1) + int_field(BLOB_HEIGHT, 2)
          + int_field(BLOB_WIDTH, 3) + packed_f32(BLOB_DATA, [0] * 6)
          + packed_f64(BLOB_DOUBLE_DATA, range(6)))
  net = caffe_file.read_caffemodel(
      _write(tmp_path, 'both.caffemodel', v2_layer('fc', 'InnerProduct', blob)))
  _assert_exact(net.layers[0].blobs[0], np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3))


def test_read_blob_mean_file(tmp_path):
  mean = _RNG.uniform(0, 255, (1, 3, 4, 5)).astype(np.float32)
  path = _write(tmp_path, 'mean.binaryproto', blob(mean, legacy=(1, 3, 4, 5)))
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
    b'', str_field(NET_NAME, 'Empty') + str_field(NET_INPUT, 'data'),
    blob(np.zeros((1, 3, 2, 2), np.float32), legacy=(1, 3, 2, 2))],
    ids=['empty', 'name_only', 'binaryproto'])
def test_no_layers(tmp_path, content):
  message = _error(caffe_file.read_caffemodel, _write(tmp_path, 'x.caffemodel', content))
  assert 'not a .caffemodel' in message


def test_v0_file_is_refused_with_the_upgrade_command(tmp_path):
  v0_layer = str_field(1, 'conv1') + str_field(2, 'conv')  # V0LayerParameter name, type
  content = str_field(NET_NAME, 'Ancient') + bytes_field(
      NET_LAYERS_V1, bytes_field(V1_LAYER_V0, v0_layer) + str_field(V1_BOTTOM, 'data'))
  message = _error(caffe_file.read_caffemodel, _write(tmp_path, 'v0.caffemodel', content))
  assert 'V0' in message and 'upgrade_net_proto_binary' in message and 'conv1' in message


def test_v1_and_v2_layers_together_are_refused(tmp_path):
  content = v1_layer('a', V1_RELU) + v2_layer('b', 'ReLU')
  message = _error(caffe_file.read_caffemodel, _write(tmp_path, 'both.caffemodel', content))
  assert 'both' in message


def test_blob_length_mismatch(tmp_path):
  bad = bytes_field(BLOB_SHAPE, packed_varints(SHAPE_DIM, (2, 3))) + packed_f32(
      BLOB_DATA, range(5))
  content = v2_layer('conv1', 'Convolution', blob(_CONV_W), bad)
  message = _error(caffe_file.read_caffemodel, _write(tmp_path, 'bad.caffemodel', content))
  assert "'conv1'" in message and 'blob 1' in message
  assert '(2, 3)' in message and '6' in message and '5' in message


def test_negative_dimension(tmp_path):
  bad = bytes_field(BLOB_SHAPE, packed_varints(SHAPE_DIM, (-2, -3))) + packed_f32(
      BLOB_DATA, range(6))
  message = _error(caffe_file.read_caffemodel,
                   _write(tmp_path, 'neg.caffemodel', v2_layer('fc', 'InnerProduct', bad)))
  assert "'fc'" in message and 'negative' in message


def test_read_blob_errors(tmp_path):
  mismatch = int_field(BLOB_NUM, 1) + int_field(BLOB_CHANNELS, 3) + packed_f32(BLOB_DATA, [1, 2])
  message = _error(caffe_file.read_blob, _write(tmp_path, 'bad.binaryproto', mismatch))
  assert '(1, 3, 0, 0)' in message
  message = _error(caffe_file.read_blob, _write(tmp_path, 'net.caffemodel', _v2_net()))
  assert 'not a .binaryproto' in message
  _error(caffe_file.read_blob, _write(tmp_path, 'empty.binaryproto', b''))
  _error(caffe_file.read_blob, _write(tmp_path, 'cut.binaryproto',
                                      blob(_CONV_W, legacy=(4, 3, 3, 3))[:-7]))
