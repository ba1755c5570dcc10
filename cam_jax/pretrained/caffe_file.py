"""Reader of Caffe `.caffemodel` (a NetParameter) and `.binaryproto` (a BlobProto) files,
with no Caffe and no protoc.

The few messages and fields read are declared below as a FileDescriptorProto and made into
message classes at run time, in a private descriptor pool under the package
`cam_jax_caffe`, so they never clash with a real `caffe_pb2` imported in the same process.
Every other field of a file (layer parameters, bottoms and tops, diffs) is skipped as an
unknown field. Field numbers are Caffe's own, from src/caffe/proto/caffe.proto (BVLC/caffe
at 9b89154, 2020).

Where the files can be read two ways, the reader does what Caffe does:
- layers: `layer` (100, V2, type a string) or `layers` (2, V1, type an enum, mapped to the
  V2 names as `UpgradeV1LayerType` in src/caffe/util/upgrade_proto.cpp maps them). A file
  with both is refused, as Caffe's `UpgradeV1Net` refuses it. A V0 file (pre-2014: the V1
  message holds a V0 `layer`, field 1) is refused with the command that upgrades it.
- blob shape (`Blob::FromProto` in src/caffe/blob.cpp): the legacy (num, channels, height,
  width) when any of those four is set, else `shape.dim`; the 4-D shape is kept as it is
  (an InnerProduct weight (1, 1, out, in)), callers squeeze.
- blob values: `double_data` (made float32) when it is not empty, else `data`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message as message_lib
from google.protobuf import message_factory

from cam_jax.pretrained.errors import WeightsFileError

_PACKAGE = 'cam_jax_caffe'

# V1LayerParameter.LayerType number -> V2 type name, as upgrade_proto.cpp's
# UpgradeV1LayerType (every value of the enum; NONE becomes '' there too).
V1_LAYER_TYPES: dict[int, str] = {
    0: '', 35: 'AbsVal', 1: 'Accuracy', 30: 'ArgMax', 2: 'BNLL', 3: 'Concat',
    37: 'ContrastiveLoss', 4: 'Convolution', 39: 'Deconvolution', 5: 'Data', 6: 'Dropout',
    32: 'DummyData', 7: 'EuclideanLoss', 25: 'Eltwise', 38: 'Exp', 8: 'Flatten',
    9: 'HDF5Data', 10: 'HDF5Output', 28: 'HingeLoss', 11: 'Im2col', 12: 'ImageData',
    13: 'InfogainLoss', 14: 'InnerProduct', 15: 'LRN', 29: 'MemoryData',
    16: 'MultinomialLogisticLoss', 34: 'MVN', 17: 'Pooling', 26: 'Power', 18: 'ReLU',
    19: 'Sigmoid', 27: 'SigmoidCrossEntropyLoss', 36: 'Silence', 20: 'Softmax',
    21: 'SoftmaxWithLoss', 22: 'Split', 33: 'Slice', 23: 'TanH', 24: 'WindowData',
    31: 'Threshold',
}

_LEGACY_DIMS = ('num', 'channels', 'height', 'width')
# Caffe's kProtoReadBytesLimit (src/caffe/util/io.cpp): INT_MAX.
_CAFFE_MAX_BYTES = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class CaffeLayer:
  """One layer: its name, V2 type name and parameter blobs (float32, file shapes)."""
  name: str
  type: str
  blobs: tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True)
class CaffeNet:
  """A `.caffemodel`: the net's name, its layers in file order, and 'V1' or 'V2'."""
  name: str
  layers: tuple[CaffeLayer, ...]
  format: str


@functools.cache
def _messages() -> dict[str, Any]:
  """Message classes of the subset of caffe.proto read here, built once.

  A private pool, not the default one: adding the same file twice to one pool raises, and
  the default pool is shared with whatever else the process imports.
  """
  fdp = descriptor_pb2.FieldDescriptorProto
  file_proto = descriptor_pb2.FileDescriptorProto(
      name=f'{_PACKAGE}/caffe_subset.proto', package=_PACKAGE, syntax='proto2')

  def add(message: str, fields: list[tuple[str, int, int, int, str | None]]) -> None:
    msg = file_proto.message_type.add(name=message)
    for name, number, label, ftype, type_name in fields:
      field = msg.field.add(name=name, number=number, label=label, type=ftype)
      if type_name:
        field.type_name = f'.{_PACKAGE}.{type_name}'
      if label == fdp.LABEL_REPEATED and ftype not in (fdp.TYPE_MESSAGE, fdp.TYPE_BYTES):
        # As caffe.proto declares them; parsing accepts packed and unpacked alike.
        field.options.packed = True

  opt, rep = fdp.LABEL_OPTIONAL, fdp.LABEL_REPEATED
  # Names are read as bytes, not strings, so that a damaged name decodes with
  # replacement characters instead of failing the whole file.
  add('BlobShape', [('dim', 1, rep, fdp.TYPE_INT64, None)])
  add('BlobProto', [
      ('num', 1, opt, fdp.TYPE_INT32, None),
      ('channels', 2, opt, fdp.TYPE_INT32, None),
      ('height', 3, opt, fdp.TYPE_INT32, None),
      ('width', 4, opt, fdp.TYPE_INT32, None),
      ('data', 5, rep, fdp.TYPE_FLOAT, None),
      ('shape', 7, opt, fdp.TYPE_MESSAGE, 'BlobShape'),
      ('double_data', 8, rep, fdp.TYPE_DOUBLE, None),
  ])
  add('V0LayerParameter', [
      ('name', 1, opt, fdp.TYPE_BYTES, None),
      ('type', 2, opt, fdp.TYPE_BYTES, None),
  ])
  add('LayerParameter', [
      ('name', 1, opt, fdp.TYPE_BYTES, None),
      ('type', 2, opt, fdp.TYPE_BYTES, None),
      ('blobs', 7, rep, fdp.TYPE_MESSAGE, 'BlobProto'),
  ])
  # `type` is an int32, not the enum: proto2 enums are closed, and a number missing from
  # the enum would be dropped to the unknown fields and read back as NONE.
  add('V1LayerParameter', [
      ('layer', 1, opt, fdp.TYPE_MESSAGE, 'V0LayerParameter'),
      ('name', 4, opt, fdp.TYPE_BYTES, None),
      ('type', 5, opt, fdp.TYPE_INT32, None),
      ('blobs', 6, rep, fdp.TYPE_MESSAGE, 'BlobProto'),
  ])
  add('NetParameter', [
      ('name', 1, opt, fdp.TYPE_BYTES, None),
      ('layers', 2, rep, fdp.TYPE_MESSAGE, 'V1LayerParameter'),
      ('layer', 100, rep, fdp.TYPE_MESSAGE, 'LayerParameter'),
  ])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file_proto)
  return {m.name: message_factory.GetMessageClass(
      pool.FindMessageTypeByName(f'{_PACKAGE}.{m.name}')) for m in file_proto.message_type}


def _parse(path: str, message: str, what: str) -> Any:
  """Reads `path` once and parses it, whole, as the message `message`."""
  with open(path, 'rb') as f:
    raw = f.read()
  parsed = _messages()[message]()
  try:
    parsed.ParseFromString(raw)
  except message_lib.DecodeError as e:
    if len(raw) > _CAFFE_MAX_BYTES:
      # upb fails some files over 2 GiB with 'Wire format was corrupt'; say why instead.
      raise WeightsFileError(
          f'{path}: {len(raw)} bytes, over the 2 GiB that protobuf parses reliably and that '
          f'Caffe itself reads or writes, so it cannot be parsed as a {message} ({e}).') from e
    raise WeightsFileError(
        f'{path}: cannot be parsed as a Caffe {message} ({what}): it is truncated or not a '
        f'binary protobuf ({e}).') from e
  return parsed


def _text(value: bytes) -> str:
  return value.decode('utf-8', errors='replace')


def _blob_array(blob: Any, path: str, where: str) -> np.ndarray:
  """A BlobProto as a float32 array of its shape, checked against its length."""
  if any(blob.HasField(d) for d in _LEGACY_DIMS):
    shape = tuple(getattr(blob, d) for d in _LEGACY_DIMS)
  else:
    shape = tuple(blob.shape.dim)
  if any(d < 0 for d in shape):
    raise WeightsFileError(f'{path}: {where} has a negative dimension in its shape {shape}.')
  # np.asarray on upb's repeated fields is a bulk copy (their __array__), no Python loop.
  if len(blob.double_data):
    field, values = 'double_data', np.asarray(blob.double_data, np.float64).astype(np.float32)
  else:
    field, values = 'data', np.asarray(blob.data, np.float32)
  count = math.prod(shape)
  if values.size != count:
    raise WeightsFileError(
        f'{path}: {where} has shape {shape}, which holds {count} values, but its {field} '
        f'has {values.size}.')
  return values.reshape(shape)


def _layer_label(index: int, name: str, kind: str) -> str:
  return f'layer {index} {name!r} ({kind})' if name else f'layer {index} ({kind})'


def read_caffemodel(path: str) -> CaffeNet:
  """The layers and blobs of a `.caffemodel` file (V1 or V2 format); see the module doc."""
  net = _parse(path, 'NetParameter', 'a .caffemodel')
  v1, v2 = net.layers, net.layer
  for i, layer in enumerate(v1):
    if layer.HasField('layer'):
      name = _text(layer.layer.name)
      raise WeightsFileError(
          f'{path}: {_layer_label(i, name, "V0")} is in Caffe\'s V0 format (before 2014), '
          'which this reader does not read. Upgrade the file with Caffe\'s tool: '
          f'`upgrade_net_proto_binary {path} upgraded.caffemodel`.')
  if len(v1) and len(v2):
    raise WeightsFileError(
        f'{path}: holds both V1 `layers` ({len(v1)}) and V2 `layer` ({len(v2)}) fields; '
        'Caffe refuses such a net too (UpgradeV1Net). Expected one or the other.')
  if not len(v1) and not len(v2):
    raise WeightsFileError(
        f'{path}: parses as a protobuf but holds no layers, so it is not a .caffemodel '
        '(a text .prototxt, a .binaryproto blob or another protobuf?). Expected a '
        'NetParameter with `layer` (field 100) or `layers` (field 2).')
  layers = []
  if len(v2):
    fmt = 'V2'
    for i, layer in enumerate(v2):
      name, kind = _text(layer.name), _text(layer.type)
      label = _layer_label(i, name, kind)
      blobs = tuple(_blob_array(b, path, f'{label} blob {j}') for j, b in enumerate(layer.blobs))
      layers.append(CaffeLayer(name, kind, blobs))
  else:
    fmt = 'V1'
    for i, layer in enumerate(v1):
      name = _text(layer.name)
      kind = V1_LAYER_TYPES.get(layer.type, f'V1:{layer.type}')
      label = _layer_label(i, name, kind)
      blobs = tuple(_blob_array(b, path, f'{label} blob {j}') for j, b in enumerate(layer.blobs))
      layers.append(CaffeLayer(name, kind, blobs))
  return CaffeNet(_text(net.name), tuple(layers), fmt)


def read_blob(path: str) -> np.ndarray:
  """The one BlobProto of a `.binaryproto` file (Caffe's mean file: (1, 3, H, W), BGR)."""
  blob = _parse(path, 'BlobProto', 'a .binaryproto blob')
  if (not any(blob.HasField(d) for d in _LEGACY_DIMS) and not blob.HasField('shape')
      and not len(blob.data) and not len(blob.double_data)):
    raise WeightsFileError(
        f'{path}: holds no blob (no shape and no data), so it is not a .binaryproto '
        '(a .caffemodel or another file?). Expected a BlobProto.')
  return _blob_array(blob, path, 'the blob')
