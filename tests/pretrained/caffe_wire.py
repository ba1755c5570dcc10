"""A minimal protobuf encoder and Caffe's field numbers, written out independently of
cam_jax's reader (caffe_file builds its schema from the same numbers: a test that encodes
with its schema would test the schema against itself). Used by the Caffe tests and by
benchmarks/pretrained_parity.py to write files in Caffe's wire format.
"""

from __future__ import annotations

import struct

import numpy as np


def varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # negative int32/int64 go on the wire as 10-byte two's complement
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def key(field: int, wire_type: int) -> bytes:
  return varint(field << 3 | wire_type)


def int_field(field: int, value: int) -> bytes:
  return key(field, 0) + varint(value)


def bytes_field(field: int, payload: bytes) -> bytes:
  return key(field, 2) + varint(len(payload)) + payload


def str_field(field: int, text: str) -> bytes:
  return bytes_field(field, text.encode())


def packed_varints(field: int, values) -> bytes:
  return bytes_field(field, b''.join(varint(int(v)) for v in values))


def packed_f32(field: int, values) -> bytes:
  return bytes_field(field, np.asarray(values, '<f4').tobytes())


def unpacked_f32(field: int, values) -> bytes:
  # What old writers produced: one wire-type-5 field per float.
  return b''.join(key(field, 5) + struct.pack('<f', v) for v in np.ravel(values))


def packed_f64(field: int, values) -> bytes:
  return bytes_field(field, np.asarray(values, '<f8').tobytes())


# caffe.proto field numbers, written out independently of the reader.
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 6, 7, 8
SHAPE_DIM = 1
NET_NAME, NET_LAYERS_V1, NET_INPUT, NET_INPUT_DIM, NET_LAYER_V2 = 1, 2, 3, 4, 100
V2_NAME, V2_TYPE, V2_BOTTOM, V2_TOP, V2_PARAM, V2_BLOBS = 1, 2, 3, 4, 6, 7
V2_PHASE, V2_CONVOLUTION_PARAM = 10, 106
V1_LAYER_V0, V1_BOTTOM, V1_TOP, V1_NAME, V1_TYPE, V1_BLOBS = 1, 2, 3, 4, 5, 6
V1_BLOBS_LR, V1_CONVOLUTION_PARAM = 7, 10
V1_CONVOLUTION, V1_INNER_PRODUCT, V1_RELU, V1_SOFTMAX_LOSS = 4, 14, 18, 21


def blob(values: np.ndarray, legacy: tuple[int, ...] | None = None,
          encoding: str = 'packed') -> bytes:
  """A BlobProto: shape as BlobShape (or the legacy 4 fields), data in `encoding`."""
  if legacy is None:
    out = bytes_field(BLOB_SHAPE, packed_varints(SHAPE_DIM, values.shape))
  else:
    out = b''.join(int_field(f, d) for f, d in zip(
        (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH), legacy))
  if encoding == 'packed':
    out += packed_f32(BLOB_DATA, values.ravel())
  elif encoding == 'unpacked':
    out += unpacked_f32(BLOB_DATA, values)
  elif encoding == 'double':
    out += packed_f64(BLOB_DOUBLE_DATA, values.ravel())
  else:
    raise ValueError(encoding)
  return out


def v2_layer(name: str, kind: str, *blobs: bytes, extra: bytes = b'') -> bytes:
  return bytes_field(NET_LAYER_V2, str_field(V2_NAME, name) + str_field(V2_TYPE, kind) + extra
                + b''.join(bytes_field(V2_BLOBS, b) for b in blobs))


def v1_layer(name: str, kind: int, *blobs: bytes, extra: bytes = b'') -> bytes:
  return bytes_field(NET_LAYERS_V1, extra + str_field(V1_NAME, name) + int_field(V1_TYPE, kind)
                + b''.join(bytes_field(V1_BLOBS, b) for b in blobs))
