"""Layer maps and conversion: layouts against numpy, every map at full size (shapes only),
Caffe AlexNet's trunk against a numpy Caffe, bad files."""

import json
import os
import struct

import jax
import numpy as np
import pytest
from flax import nnx

from cam_jax import convert as convert_lib
from cam_jax import models
from cam_jax.data import conventions
from cam_jax.models import googlenet
from cam_jax.pretrained import layer_maps
from cam_jax.pretrained import weights
from cam_jax.pretrained.errors import WeightsFileError
from tests.pretrained import caffe_wire

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


# ---------------------------------------------------------------------------
# Writers of the real formats (no torch, no Caffe)
# ---------------------------------------------------------------------------

def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  """The safetensors layout: 8-byte header length, JSON header, float32 data."""
  header, offset, blobs = {}, 0, []
  for name, value in tensors.items():
    data = np.ascontiguousarray(value, '<f4').tobytes()
    header[name] = {'dtype': 'F32', 'shape': list(value.shape),
                    'data_offsets': [offset, offset + len(data)]}
    offset += len(data)
    blobs.append(data)
  text = json.dumps(header).encode()
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(text)) + text + b''.join(blobs))


def write_v1_caffemodel(path: str, name: str,
                        layers: list[tuple[str, int, list[np.ndarray]]]) -> None:
  """A NetParameter with V1 `layers`, each blob in the legacy num/channels/height/width
  form (shapes padded to 4-D with leading 1s)."""
  body = caffe_wire.str_field(caffe_wire.NET_NAME, name)
  for layer_name, kind, blobs in layers:
    body += caffe_wire.v1_layer(layer_name, kind, *[
        caffe_wire.blob(b, legacy=(1,) * (4 - b.ndim) + tuple(b.shape)) for b in blobs])
  with open(path, 'wb') as f:
    f.write(body)


# ---------------------------------------------------------------------------
# Layouts, against numpy
# ---------------------------------------------------------------------------

def _numpy_conv(x_NCHW, w_OIHW, b_O, stride=1, pad=0, groups=1):
  """Caffe's/torch's convolution, written out: cross-correlation, groups split channels."""
  x = np.pad(x_NCHW, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float64)
  out_c, in_per_group, kh, kw = w_OIHW.shape
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
  windows = windows[:, :, ::stride, ::stride]  # N, C, H', W', kh, kw
  per_out = out_c // groups
  outs = []
  n, _, h, w = windows.shape[:4]
  for g in range(groups):
    xs = windows[:, g * in_per_group:(g + 1) * in_per_group]  # N, c, H', W', kh, kw
    cols = xs.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, -1)  # im2col
    ws = w_OIHW[g * per_out:(g + 1) * per_out].reshape(per_out, -1).astype(np.float64)
    outs.append((cols @ ws.T).reshape(n, h, w, per_out).transpose(0, 3, 1, 2))
  return np.concatenate(outs, 1) + b_O[None, :, None, None]


def test_conv_layout_grouped_against_numpy():
  rng = np.random.default_rng(0)
  w_OIHW = rng.normal(size=(6, 2, 3, 3)).astype(np.float32)  # 4 inputs in 2 groups
  b_O = rng.normal(size=(6,)).astype(np.float32)
  x_NCHW = rng.normal(size=(2, 4, 7, 7)).astype(np.float32)
  conv = nnx.Conv(4, 6, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=2,
                  rngs=nnx.Rngs(0))
  conv.kernel[...] = layer_maps.convert(w_OIHW, layer_maps.Entry('w', 'k', 'conv'))
  conv.bias[...] = layer_maps.convert(b_O[None, None, None], layer_maps.Entry('b', 'b',
                                                                              'vector'))
  ours = np.asarray(conv(x_NCHW.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(ours, _numpy_conv(x_NCHW, w_OIHW, b_O, pad=1, groups=2),
                             rtol=1e-5, atol=1e-5)


def test_first_fully_connected_layer_reads_nchw_flattening():
  rng = np.random.default_rng(1)
  c, h, w = 3, 2, 4
  weight = rng.normal(size=(5, c * h * w)).astype(np.float32)
  x_CHW = rng.normal(size=(c, h, w)).astype(np.float32)
  theirs = weight @ x_CHW.reshape(-1)  # torch/Caffe: flatten C, H, W
  entry = layer_maps.Entry('w', 'k', 'linear_chw', chw=(c, h, w))
  kernel = layer_maps.convert(weight, entry)
  ours = x_CHW.transpose(1, 2, 0).reshape(-1) @ kernel  # ours: flatten H, W, C
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
  # Caffe's legacy 4-D forms of a weight and a bias.
  legacy = layer_maps.convert(weight[None, None], entry)
  np.testing.assert_array_equal(legacy, kernel)
  bias = np.arange(5, dtype=np.float32)
  np.testing.assert_array_equal(
      layer_maps.convert(bias.reshape(1, 1, 1, 5), layer_maps.Entry('b', 'b', 'vector')), bias)
  with pytest.raises(ValueError, match='3×2×4 = 24 inputs'):
    layer_maps.convert(weight[:, :20], entry)


# ---------------------------------------------------------------------------
# Every map at full size, from shapes
# ---------------------------------------------------------------------------

def _our_shapes(network: str, **kwargs) -> dict[str, tuple[int, ...]]:
  model = nnx.eval_shape(lambda: models.get_model(network, num_classes=1000,
                                                  rngs=nnx.Rngs(0), **kwargs))
  return {k: tuple(v.shape) for k, v in weights.model_parameters(model).items()}


def _torchvision_shapes(name: str) -> dict[str, tuple[int, ...]]:
  with open(os.path.join(FIXTURES, 'torchvision_shapes.json'), encoding='utf-8') as f:
    return {k: tuple(v) for k, v in json.load(f)['shapes'][name].items()}


@pytest.mark.parametrize('name,network', [
    ('googlenet', 'googlenet'), ('googlenet', 'googlenet_gap'), ('googlenet', 'googlenet_gmp'),
    ('vgg16', 'vgg16'), ('vgg16', 'vgg16_gap'), ('alexnet', 'alexnet'),
    ('alexnet', 'alexnet_gap'), ('alexnet', 'alexnet_star_gap')])
def test_torchvision_maps_fit_full_size(name, network):
  tensors = _torchvision_shapes(name)
  source = layer_maps.SOURCES[f'torchvision_{name}']
  ours = _our_shapes(network, **source.model_kwargs)
  plan = weights.plan(network, ours, tensors, source)
  if network == name:  # the classification network: every parameter from the file
    assert plan.fresh == []
  else:  # the GAP networks: the backbone loads, the added layers start fresh
    assert plan.fresh and all(not k.startswith('trunk/') for k in plan.fresh)
    assert {k.split('/')[0] for k in plan.fresh} <= {'cam_conv', 'head', 'conv6', 'conv7'}
  if name == 'googlenet':
    assert any(k.startswith('aux1.') for k in plan.unused)  # listed, never loaded
    assert ('fc.weight' in plan.unused) == (network != 'googlenet')
  assert len(plan.loads) + len(plan.fresh) == len(ours)


def _caffe_shapes(net: str) -> dict[str, tuple[int, ...]]:
  """Blob shapes as the Caffe prototxts declare them (num_output, input channels per
  group, kernel), written out here from the released prototxts."""
  def conv(name, out, inp, k, groups=1):
    return {f'{name}.weight': (out, inp // groups, k, k), f'{name}.bias': (out,)}

  def fc(name, out, inp):
    return {f'{name}.weight': (out, inp), f'{name}.bias': (out,)}

  alexnet = {**conv('conv1', 96, 3, 11), **conv('conv2', 256, 96, 5, 2),
             **conv('conv3', 384, 256, 3), **conv('conv4', 384, 384, 3, 2)}
  if net == 'alexnet':
    return {**alexnet, **conv('conv5', 256, 384, 3, 2), **fc('fc6', 4096, 9216),
            **fc('fc7', 4096, 4096), **fc('fc8', 1000, 4096)}
  if net == 'alexnetplus_cam':  # deploy_alexnetplusCAM_imagenet.prototxt
    return {**alexnet, **conv('conv5', 384, 384, 3, 2), **conv('conv6', 512, 384, 3, 2),
            **conv('conv7', 512, 512, 3, 2), **fc('fc9', 1000, 512)}
  if net in ('vgg16', 'vgg16_cam'):
    shapes, inp = {}, 3
    for stage, (width, count) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3),
                                            (512, 3)), 1):
      for i in range(1, count + 1):
        shapes.update(conv(f'conv{stage}_{i}', width, inp, 3))
        inp = width
    if net == 'vgg16':
      return {**shapes, **fc('fc6', 4096, 25088), **fc('fc7', 4096, 4096),
              **fc('fc8', 1000, 4096)}
    return {**shapes, **conv('CAM_conv', 1024, 512, 3, 2), **fc('CAM_fc', 1000, 1024)}
  if net == 'nin':
    return {**conv('conv1', 96, 3, 11), **conv('cccp1', 96, 96, 1), **conv('cccp2', 96, 96, 1),
            **conv('conv2', 256, 96, 5), **conv('cccp3', 256, 256, 1),
            **conv('cccp4', 256, 256, 1), **conv('conv3', 384, 256, 3),
            **conv('cccp5', 384, 384, 1), **conv('cccp6', 384, 384, 1),
            **conv('conv4-1024', 1024, 384, 3), **conv('cccp7-1024', 1024, 1024, 1),
            **conv('cccp8-1024', 1000, 1024, 1)}
  # bvlc_googlenet and GoogLeNet-CAM: the inception table of the paper (Table 1).
  shapes = {**conv('conv1/7x7_s2', 64, 3, 7), **conv('conv2/3x3_reduce', 64, 64, 1),
            **conv('conv2/3x3', 192, 64, 3)}
  blocks = list(googlenet.INCEPTION_CFG.items())
  if net == 'googlenet_cam':
    blocks = blocks[:7]  # through inception_4e
  for block, (inp, c1, r3, c3, r5, c5, proj) in blocks:
    p = f'inception_{block}/'
    shapes.update({**conv(p + '1x1', c1, inp, 1), **conv(p + '3x3_reduce', r3, inp, 1),
                   **conv(p + '3x3', c3, r3, 3), **conv(p + '5x5_reduce', r5, inp, 1),
                   **conv(p + '5x5', c5, r5, 5), **conv(p + 'pool_proj', proj, inp, 1)})
  if net == 'googlenet_cam':
    return {**shapes, **conv('CAM_conv', 1024, 832, 3, 2), **fc('CAM_fc', 1000, 1024)}
  return {**shapes, **fc('loss3/classifier', 1000, 1024), **conv('loss1/conv', 128, 512, 1)}


@pytest.mark.parametrize('net,network,source_name,fresh', [
    ('googlenet_cam', 'googlenet_gap', 'cam_googlenet', ()),
    ('vgg16_cam', 'vgg16_gap', 'cam_vgg16', ()),
    ('alexnetplus_cam', 'alexnet_star_gap_official', 'cam_alexnetplus', ()),
    ('googlenet', 'googlenet', 'caffe_googlenet', ()),
    ('googlenet', 'googlenet_gap', 'caffe_googlenet', ('cam_conv', 'head')),
    ('vgg16', 'vgg16', 'caffe_vgg16', ()),
    ('vgg16', 'vgg16_gap', 'caffe_vgg16', ('cam_conv', 'head')),
    ('alexnet', 'alexnet', 'caffe_alexnet', ()),
    ('alexnet', 'alexnet_star_gap', 'caffe_alexnet', ('cam_conv', 'conv6', 'conv7', 'head')),
    ('nin', 'nin', 'caffe_nin', ()),
])
def test_caffe_maps_fit_full_size(net, network, source_name, fresh):
  shapes = _caffe_shapes(net)
  file = weights.WeightsFile('x.caffemodel', 'caffe',
                             {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()})
  source = weights.choose_source(network, file, weights.default_variant(network))
  assert source.name == source_name
  ours = _our_shapes(network, **source.model_kwargs)
  plan = weights.plan(network, ours, shapes, source)
  assert {k.split('/')[0] for k in plan.fresh} == set(fresh)


def test_caffenet_is_told_from_alexnet_by_the_file_name():
  shapes = _caffe_shapes('alexnet')
  tensors = {k: np.zeros(1) for k in shapes}
  caffenet = weights.WeightsFile('c.caffemodel', 'caffe', tensors, 'CaffeNet')
  assert weights.choose_source('alexnet', caffenet).model_kwargs == {'variant': 'caffenet'}
  alexnet = weights.WeightsFile('a.caffemodel', 'caffe', tensors, 'AlexNet')
  assert weights.choose_source('alexnet', alexnet).name == 'caffe_alexnet'
  with pytest.raises(ValueError, match="variant 'caffe' or 'caffenet', not 'torchvision'"):
    weights.choose_source('alexnet', alexnet, 'torchvision')


# ---------------------------------------------------------------------------
# Caffe AlexNet's trunk against a numpy Caffe, from a V1 .caffemodel
# ---------------------------------------------------------------------------

def _numpy_lrn(x_NCHW, size=5, alpha=1e-4, beta=0.75, k=1.0):
  """Caffe's ACROSS_CHANNELS LRN: the window of `size` channels centred on each."""
  sq = np.pad(x_NCHW ** 2, ((0, 0), (size // 2, size // 2), (0, 0), (0, 0)))
  window = sum(sq[:, i:i + x_NCHW.shape[1]] for i in range(size))
  return x_NCHW / (k + alpha / size * window) ** beta


def _numpy_caffe_max_pool(x_NCHW, k=3, s=2):
  """Caffe's pooled size: ceil((H - k) / s) + 1; the last window clipped to the input."""
  n, c, h, w = x_NCHW.shape
  oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
  out = np.empty((n, c, oh, ow), x_NCHW.dtype)
  for i in range(oh):
    for j in range(ow):
      out[:, :, i, j] = x_NCHW[:, :, i * s:min(i * s + k, h), j * s:min(j * s + k, w)].max((2, 3))
  return out


@pytest.fixture(scope='module')
def caffe_alexnet_file(tmp_path_factory):
  rng = np.random.default_rng(3)
  spec = {'conv1': (96, 3, 11, 11), 'conv2': (256, 48, 5, 5), 'conv3': (384, 256, 3, 3),
          'conv4': (384, 192, 3, 3), 'conv5': (256, 192, 3, 3)}
  blobs = {k: [rng.normal(0, 0.02, s).astype(np.float32),
               rng.normal(0, 0.1, s[0]).astype(np.float32)] for k, s in spec.items()}
  path = str(tmp_path_factory.mktemp('caffe') / 'bvlc_alexnet.caffemodel')
  layers = []
  for name in spec:
    layers += [(name, caffe_wire.V1_CONVOLUTION, blobs[name]),
               (f'relu{name[-1]}', caffe_wire.V1_RELU, [])]
  layers.append(('fc8', caffe_wire.V1_INNER_PRODUCT,
                 [rng.normal(size=(10, 9216)).astype(np.float32), np.zeros(10, np.float32)]))
  write_v1_caffemodel(path, 'AlexNet', layers)
  return path, blobs


def test_caffe_alexnet_trunk_matches_numpy_caffe(caffe_alexnet_file):
  path, blobs = caffe_alexnet_file
  model = models.get_model('alexnet_gap', num_classes=10, rngs=nnx.Rngs(0))
  file = weights.read(path)
  assert file.framework == 'caffe' and file.net_name == 'AlexNet'
  source = weights.choose_source('alexnet_gap', file, 'caffe')
  converted = weights.convert(model, 'alexnet_gap', file, source)
  assert converted.unused == ['fc8.bias', 'fc8.weight']
  assert {k.split('/')[0] for k in converted.fresh} == {'cam_conv', 'head'}
  weights.load_into(model, converted)
  assert converted.convention.name == 'caffe_ilsvrc_mean'
  assert converted.convention.image_size == 227

  pixels = np.random.default_rng(4).integers(0, 256, (1, 227, 227, 3), np.uint8)
  ours = model.trunk(converted.convention.normalize(pixels[0])[None], train=False)

  mean = np.float64([104.00699, 116.66877, 122.67891])
  x = (pixels[..., ::-1] - mean).transpose(0, 3, 1, 2)  # BGR minus the mean, NCHW
  relu = lambda y: np.maximum(y, 0)  # pylint: disable=unnecessary-lambda-assignment
  b = lambda k: blobs[k]  # pylint: disable=unnecessary-lambda-assignment
  x = _numpy_caffe_max_pool(_numpy_lrn(relu(_numpy_conv(x, *b('conv1'), stride=4))))
  x = _numpy_caffe_max_pool(_numpy_lrn(relu(_numpy_conv(x, *b('conv2'), pad=2, groups=2))))
  x = relu(_numpy_conv(x, *b('conv3'), pad=1))
  x = relu(_numpy_conv(x, *b('conv4'), pad=1, groups=2))
  x = relu(_numpy_conv(x, *b('conv5'), pad=1, groups=2))
  want = x.transpose(0, 2, 3, 1)
  assert ours.shape == want.shape == (1, 13, 13, 256)
  np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-4,
                             atol=1e-4 * np.abs(want).max())


# ---------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------

def test_a_file_of_another_network_is_refused(caffe_alexnet_file):
  path, _ = caffe_alexnet_file
  with pytest.raises(WeightsFileError, match=r'bvlc_alexnet.caffemodel: not caffe weights of '
                     r"a network that maps to 'vgg16_gap'.*lacks conv1_1"):
    weights.choose_source('vgg16_gap', weights.read(path))


def test_shape_mismatch_names_file_tensor_and_both_shapes(tmp_path):
  spec = _caffe_shapes('alexnet')
  spec['conv3.weight'] = (384, 128, 3, 3)  # grouped where bvlc_alexnet is not
  tensors = {k: s for k, s in spec.items()}
  source = layer_maps.SOURCES['caffe_alexnet']
  ours = _our_shapes('alexnet_gap')
  with pytest.raises(WeightsFileError, match=r"f.caffemodel: 'conv3.weight' has shape "
                     r'\(384, 128, 3, 3\) \(\(3, 3, 128, 384\) in our layout\), but '
                     r'alexnet_gap expects \(3, 3, 256, 384\) for trunk/convs/2/conv/kernel'):
    weights.plan('alexnet_gap', ours, tensors, source, path='f.caffemodel')


def test_a_missing_layer_is_named():
  spec = _caffe_shapes('alexnet')
  del spec['conv3.bias']
  ours = _our_shapes('alexnet_gap')
  with pytest.raises(WeightsFileError, match=r"f.caffemodel: no tensor 'conv3.bias'.*"
                     r'trunk/convs/2/conv/bias'):
    weights.plan('alexnet_gap', ours, spec, layer_maps.SOURCES['caffe_alexnet'],
                 path='f.caffemodel')


def test_a_failed_conversion_writes_nothing(tmp_path, caffe_alexnet_file):
  path, _ = caffe_alexnet_file
  out = tmp_path / 'out'
  with pytest.raises(WeightsFileError):
    convert_lib.convert('vgg16_gap', path, str(out))
  assert not out.exists()
  bad = tmp_path / 'truncated.caffemodel'
  bad.write_bytes(open(path, 'rb').read()[:1000])
  with pytest.raises(WeightsFileError, match='truncated.caffemodel'):
    convert_lib.convert('alexnet_gap', str(bad), str(out))
  assert not out.exists()


def test_mean_image_is_centre_cropped(tmp_path):
  image_CHW = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
  np.save(tmp_path / 'mean.npy', image_CHW)
  got = weights.read_mean_image(str(tmp_path / 'mean.npy'), 6)
  np.testing.assert_array_equal(got, image_CHW[:, 1:7, 1:7].transpose(1, 2, 0))
  conv = conventions.InputConvention('caffe_ilsvrc_mean', 'BGR', (0.0, 0.0, 0.0),
                                     image_size=6, mean_image=got)
  pixels = np.full((6, 6, 3), 200, np.uint8)
  np.testing.assert_array_equal(conv.normalize(pixels), 200 - got)
  assert conventions.from_meta(conv.to_meta()).same_as(conv)


def test_tiny_torch_network_matches_torchs_outputs():
  """state_dict.pt (a conv, BatchNorm and linear net saved by torch.save) read, converted
  layer by layer and run in flax: torch's outputs (tiny_outputs.npz, made by torch)."""
  from cam_jax.pretrained import torch_file  # pylint: disable=import-outside-toplevel
  tensors = torch_file.read_torch(os.path.join(FIXTURES, 'state_dict.pt'))
  want = np.load(os.path.join(FIXTURES, 'tiny_outputs.npz'))
  get = lambda name, layout: layer_maps.convert(  # pylint: disable=unnecessary-lambda-assignment
      tensors[name], layer_maps.Entry(name, name, layout))
  rngs = nnx.Rngs(0)
  conv = nnx.Conv(3, 4, (3, 3), padding='VALID', rngs=rngs)
  bn = nnx.BatchNorm(4, epsilon=1e-5, rngs=rngs)  # torch's BatchNorm2d default
  fc = nnx.Linear(4, 3, rngs=rngs)
  conv.kernel[...], conv.bias[...] = get('conv.weight', 'conv'), get('conv.bias', 'vector')
  bn.scale[...], bn.bias[...] = get('bn.weight', 'vector'), get('bn.bias', 'vector')
  bn.mean[...], bn.var[...] = get('bn.running_mean', 'vector'), get('bn.running_var', 'vector')
  fc.kernel[...], fc.bias[...] = get('fc.weight', 'linear'), get('fc.bias', 'vector')
  features = bn(conv(want['input_NCHW'].transpose(0, 2, 3, 1)), use_running_average=True)
  np.testing.assert_allclose(np.asarray(features),
                             want['features_NCHW'].transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(fc(features.mean((1, 2)))), want['logits'], rtol=1e-5,
                             atol=1e-6)
