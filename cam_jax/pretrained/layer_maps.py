"""Which tensor of a torchvision or Caffe file becomes which parameter of our networks.

A `Source` is one family of weight files (torchvision's `googlenet`, Caffe's
`bvlc_googlenet`, the released GoogLeNet-CAM, ...): its input convention, the model
kwargs our network needs to match it (the trunk variant), and its `entries`, each naming a
source tensor, our parameter path and the layout conversion between them.

Source tensors are named as torchvision's state_dict names them ('features.0.weight');
Caffe blobs as '<layer>.weight' (blob 0) and '<layer>.bias' (blob 1).

Layouts (`Entry.layout`):
- 'conv': a convolution kernel, OIHW (torch and Caffe, grouped ones as O×(I/g)×kh×kw) to
  HWIO (flax; a grouped kernel is kh×kw×(I/g)×O with the same group order);
- 'linear': a fully connected weight, (out, in) to (in, out); Caffe's legacy 4-D
  (1, 1, out, in) is accepted;
- 'linear_chw': the first fully connected layer after a conv map: its inputs are the map
  flattened in (c, h, w) order (NCHW), ours in (h, w, c) order (NHWC), so the input axis
  is permuted too;
- 'vector': a bias or BatchNorm vector; Caffe's legacy 4-D (1, 1, 1, n) is accepted.

`Entry.backbone` marks the entries of the classification backbone: a GAP network built on
that backbone takes only those, and its added layers (CAM conv, head) start fresh, as the
paper's fine-tuning does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cam_jax.models import googlenet as googlenet_lib
from cam_jax.models import vgg as vgg_lib

LAYOUTS = ('conv', 'linear', 'linear_chw', 'vector')


@dataclasses.dataclass(frozen=True)
class Entry:
  """Source tensor `source` → our parameter `target` (a path such as
  'trunk/conv1/conv/kernel'), converted by `layout`; `chw` the map (C, H, W) a
  'linear_chw' weight reads."""
  source: str
  target: str
  layout: str
  backbone: bool = True
  chw: tuple[int, int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Source:
  """One family of weight files (module docstring).

  `framework`: 'torchvision' or 'caffe'. `family`: the network family it fills
  ('googlenet', 'vgg16', 'alexnet', 'nin'). `complete_for`: our networks it fills
  entirely (every entry); other networks of the family take the backbone entries only.
  `model_kwargs`: what our network's constructor needs to match it. `convention` and
  `image_size`: the input the weights were trained with (cam_jax.data.conventions).
  """
  name: str
  framework: str
  family: str
  description: str
  complete_for: tuple[str, ...]
  entries: tuple[Entry, ...]
  convention: str
  image_size: int | None = None
  model_kwargs: dict = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------
# Layout conversions
# ---------------------------------------------------------------------------

def converted_shape(shape: tuple[int, ...], entry: Entry) -> tuple[int, ...]:
  """The shape a source tensor of `shape` has in our layout; raises ValueError on a shape
  the layout cannot take. Shape checks of full-size networks need no data."""
  shape = tuple(int(d) for d in shape)
  if entry.layout == 'conv':
    if len(shape) != 4:
      raise ValueError(f'a convolution kernel must be 4-D (O, I, kh, kw), got {shape}')
    o, i, kh, kw = shape
    return (kh, kw, i, o)
  if entry.layout == 'vector':
    if len(shape) > 1 and any(d != 1 for d in shape[:-1]):
      raise ValueError(f'a bias must be 1-D (or 1×1×1×n), got {shape}')
    return (int(np.prod(shape)),)
  if entry.layout in ('linear', 'linear_chw'):
    if len(shape) == 4 and shape[:2] == (1, 1):
      shape = shape[2:]  # Caffe's legacy (1, 1, out, in)
    if len(shape) != 2:
      raise ValueError(f'a fully connected weight must be 2-D (out, in), got {shape}')
    if entry.layout == 'linear_chw' and shape[1] != int(np.prod(entry.chw)):
      c, h, w = entry.chw
      raise ValueError(f'expected {c}×{h}×{w} = {c * h * w} inputs (a {c}-channel {h}×{w} '
                       f'map), got {shape[1]}')
    return (shape[1], shape[0])
  raise ValueError(f'unknown layout {entry.layout!r}; known: {LAYOUTS}')


def convert(value: np.ndarray, entry: Entry) -> np.ndarray:
  """`value` (the source's layout) in ours; raises ValueError on a shape that does not fit."""
  shape = converted_shape(value.shape, entry)
  value = np.asarray(value, np.float32)
  if entry.layout == 'conv':
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if entry.layout == 'vector':
    return value.reshape(shape)
  value = value.reshape(shape[::-1])  # (out, in)
  if entry.layout == 'linear_chw':
    c, h, w = entry.chw
    value = value.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(value.shape[0], -1)
  return np.ascontiguousarray(value.T)


# ---------------------------------------------------------------------------
# Building blocks of the maps
# ---------------------------------------------------------------------------

def _conv(src: str, dst: str, backbone: bool = True) -> list[Entry]:
  """A convolution with bias (Caffe, torchvision AlexNet and VGG) → ConvBNReLU `dst`."""
  return [Entry(f'{src}.weight', f'{dst}/conv/kernel', 'conv', backbone),
          Entry(f'{src}.bias', f'{dst}/conv/bias', 'vector', backbone)]


def _conv_bn(src: str, dst: str) -> list[Entry]:
  """torchvision's BasicConv2d (conv without bias, BatchNorm) → ConvBNReLU `dst`."""
  return [Entry(f'{src}.conv.weight', f'{dst}/conv/kernel', 'conv'),
          Entry(f'{src}.bn.weight', f'{dst}/bn/scale', 'vector'),
          Entry(f'{src}.bn.bias', f'{dst}/bn/bias', 'vector'),
          Entry(f'{src}.bn.running_mean', f'{dst}/bn/mean', 'vector'),
          Entry(f'{src}.bn.running_var', f'{dst}/bn/var', 'vector')]


def _linear(src: str, dst: str, backbone: bool = False,
            chw: tuple[int, int, int] | None = None) -> list[Entry]:
  return [Entry(f'{src}.weight', f'{dst}/kernel', 'linear_chw' if chw else 'linear', backbone,
                chw),
          Entry(f'{src}.bias', f'{dst}/bias', 'vector', backbone)]


# ---------------------------------------------------------------------------
# GoogLeNet
# ---------------------------------------------------------------------------

_BLOCKS = tuple(googlenet_lib.INCEPTION_CFG)  # '3a' ... '5b', index = trunk/blocks/<i>
# Our Inception branches, in torchvision's and Caffe's names.
_TV_BRANCHES = {'conv1x1': 'branch1', 'reduce3x3': 'branch2.0', 'conv3x3': 'branch2.1',
                'reduce5x5': 'branch3.0', 'conv5x5': 'branch3.1', 'pool_proj': 'branch4.1'}
_CAFFE_BRANCHES = {'conv1x1': '1x1', 'reduce3x3': '3x3_reduce', 'conv3x3': '3x3',
                   'reduce5x5': '5x5_reduce', 'conv5x5': '5x5', 'pool_proj': 'pool_proj'}
# GoogLeNet-GAP keeps the trunk through inception4e.
_GAP_BLOCKS = _BLOCKS[:_BLOCKS.index('4e') + 1]


def _torchvision_googlenet() -> list[Entry]:
  entries = (_conv_bn('conv1', 'trunk/conv1') + _conv_bn('conv2', 'trunk/conv2') +
             _conv_bn('conv3', 'trunk/conv3'))
  for i, block in enumerate(_BLOCKS):
    for ours, theirs in _TV_BRANCHES.items():
      entries += _conv_bn(f'inception{block}.{theirs}', f'trunk/blocks/{i}/{ours}')
  return entries + _linear('fc', 'head')


def _caffe_googlenet(blocks: tuple[str, ...] = _BLOCKS) -> list[Entry]:
  entries = (_conv('conv1/7x7_s2', 'trunk/conv1') + _conv('conv2/3x3_reduce', 'trunk/conv2') +
             _conv('conv2/3x3', 'trunk/conv3'))
  for i, block in enumerate(blocks):
    for ours, theirs in _CAFFE_BRANCHES.items():
      entries += _conv(f'inception_{block}/{theirs}', f'trunk/blocks/{i}/{ours}')
  return entries


# ---------------------------------------------------------------------------
# VGG16
# ---------------------------------------------------------------------------

# Position of each conv in VGG16_CFG (trunk/layers/<i>), in order.
_VGG_CONVS = tuple(i for i, v in enumerate(vgg_lib.VGG16_CFG) if v != 'M')
_VGG_CAFFE_NAMES = ('conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2',
                    'conv3_3', 'conv4_1', 'conv4_2', 'conv4_3', 'conv5_1', 'conv5_2',
                    'conv5_3')
# torchvision's features.<k>: each conv is followed by a ReLU, each 'M' is one MaxPool.
_VGG_TV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _vgg_trunk(names: tuple[str, ...]) -> list[Entry]:
  entries = []
  for name, i in zip(names, _VGG_CONVS):
    entries += _conv(name, f'trunk/layers/{i}')
  return entries


# ---------------------------------------------------------------------------
# AlexNet and NIN
# ---------------------------------------------------------------------------

def _alexnet_trunk(names: tuple[str, ...]) -> list[Entry]:
  entries = []
  for i, name in enumerate(names):
    entries += _conv(name, f'trunk/convs/{i}')
  return entries


_CAFFE_ALEXNET = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
_TV_ALEXNET = ('features.0', 'features.3', 'features.6', 'features.8', 'features.10')
_NIN_NAMES = (('conv1', 'cccp1', 'cccp2'), ('conv2', 'cccp3', 'cccp4'),
              ('conv3', 'cccp5', 'cccp6'), ('conv4-1024', 'cccp7-1024', 'cccp8-1024'))


def _nin() -> list[Entry]:
  entries = []
  for b, names in enumerate(_NIN_NAMES):
    for c, name in enumerate(names):
      entries += _conv(name, f'blocks/{b}/{c}')
  return entries


def _caffe_alexnet_classifier() -> list[Entry]:
  return (_linear('fc6', 'fc6', chw=(256, 6, 6)) + _linear('fc7', 'fc7') +
          _linear('fc8', 'classifier'))


# ---------------------------------------------------------------------------
# The sources
# ---------------------------------------------------------------------------

_GOOGLENET = ('googlenet', 'googlenet_gap', 'googlenet_gmp')
_VGG = ('vgg16', 'vgg16_gap', 'vgg16_gmp')
_ALEXNET = ('alexnet', 'alexnet_gap', 'alexnet_star_gap')

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source('torchvision_googlenet', 'torchvision', 'googlenet',
           "torchvision.models.googlenet (IMAGENET1K_V1; transform_input: the 'inception' "
           'convention); the auxiliary heads aux1, aux2 are unused',
           ('googlenet',), tuple(_torchvision_googlenet()), 'inception',
           model_kwargs={'variant': 'torchvision'}),
    Source('torchvision_vgg16', 'torchvision', 'vgg16', 'torchvision.models.vgg16',
           ('vgg16',),
           tuple(_vgg_trunk(tuple(f'features.{k}' for k in _VGG_TV_INDICES)) +
                 _linear('classifier.0', 'fc6', chw=(512, 7, 7)) +
                 _linear('classifier.3', 'fc7') + _linear('classifier.6', 'classifier')),
           'imagenet'),
    Source('torchvision_alexnet', 'torchvision', 'alexnet', 'torchvision.models.alexnet',
           ('alexnet',),
           tuple(_alexnet_trunk(_TV_ALEXNET) + _linear('classifier.1', 'fc6', chw=(256, 6, 6)) +
                 _linear('classifier.4', 'fc7') + _linear('classifier.6', 'classifier')),
           'imagenet', model_kwargs={'variant': 'torchvision'}),
    Source('caffe_googlenet', 'caffe', 'googlenet',
           "Caffe's bvlc_googlenet; the auxiliary classifiers loss1/*, loss2/* are unused",
           ('googlenet',), tuple(_caffe_googlenet() + _linear('loss3/classifier', 'head')),
           'caffe_googlenet', 224, {'variant': 'caffe'}),
    Source('cam_googlenet', 'caffe', 'googlenet',
           'GoogLeNet-CAM released by zhoubolei/CAM '
           '(imagenet_googlenetCAM_train_iter_120000.caffemodel)',
           ('googlenet_gap',),
           tuple(_caffe_googlenet(_GAP_BLOCKS) + _conv('CAM_conv', 'cam_conv', False) +
                 _linear('CAM_fc', 'head')),
           'caffe_ilsvrc_mean', 224, {'variant': 'caffe'}),
    Source('caffe_vgg16', 'caffe', 'vgg16', "VGG_ILSVRC_16_layers (Caffe's model zoo)",
           ('vgg16',),
           tuple(_vgg_trunk(_VGG_CAFFE_NAMES) + _linear('fc6', 'fc6', chw=(512, 7, 7)) +
                 _linear('fc7', 'fc7') + _linear('fc8', 'classifier')),
           'caffe_vgg', 224),
    Source('cam_vgg16', 'caffe', 'vgg16',
           'VGG16-CAM released by zhoubolei/CAM (vgg16CAM_train_iter_90000.caffemodel)',
           ('vgg16_gap',),
           tuple(_vgg_trunk(_VGG_CAFFE_NAMES) + _conv('CAM_conv', 'cam_conv', False) +
                 _linear('CAM_fc', 'head')),
           'caffe_ilsvrc_mean', 224),
    Source('caffe_alexnet', 'caffe', 'alexnet', "Caffe's bvlc_alexnet", ('alexnet',),
           tuple(_alexnet_trunk(_CAFFE_ALEXNET) + _caffe_alexnet_classifier()),
           'caffe_ilsvrc_mean', 227, {'variant': 'caffe'}),
    Source('caffe_caffenet', 'caffe', 'alexnet',
           "Caffe's bvlc_reference_caffenet (AlexNet with LRN after pooling)", ('alexnet',),
           tuple(_alexnet_trunk(_CAFFE_ALEXNET) + _caffe_alexnet_classifier()),
           'caffe_ilsvrc_mean', 227, {'variant': 'caffenet'}),
    Source('cam_alexnetplus', 'caffe', 'alexnet_star_official',
           'AlexNet+-CAM released by zhoubolei/CAM (alexnetplusCAM_imagenet.caffemodel)',
           ('alexnet_star_gap_official',),
           tuple(_alexnet_trunk(_CAFFE_ALEXNET) + _conv('conv6', 'conv6') +
                 _conv('conv7', 'cam_conv') + _linear('fc9', 'head')),
           'caffe_ilsvrc_mean', 227),
    Source('caffe_nin', 'caffe', 'nin', "nin_imagenet (Lin et al., Caffe's model zoo)",
           ('nin',), tuple(_nin()), 'caffe_ilsvrc_mean', 224),
)}

# Our networks by family: which sources can fill them.
FAMILIES = {
    'googlenet': _GOOGLENET, 'vgg16': _VGG, 'alexnet': _ALEXNET,
    'alexnet_star_official': ('alexnet_star_gap_official',), 'nin': ('nin',),
}


def family_of(network: str) -> str:
  """The family of our network `network`; raises listing the networks with public weights."""
  for family, networks in FAMILIES.items():
    if network in networks:
      return family
  known = sorted(n for networks in FAMILIES.values() for n in networks)
  raise ValueError(f'No public weights map to {network!r}; networks with a map: '
                   f'{", ".join(known)}')


def candidates(network: str, framework: str) -> list[Source]:
  """The sources of `framework` that can fill `network`, the complete ones first."""
  family = family_of(network)
  found = [s for s in SOURCES.values() if s.framework == framework and s.family == family]
  if not found:
    raise ValueError(f'No {framework} weights map to {network!r} (family {family!r}); '
                     'frameworks with a map for it: '
                     f'{sorted({s.framework for s in SOURCES.values() if s.family == family})}')
  return sorted(found, key=lambda s: network not in s.complete_for)


def entries_for(source: Source, network: str) -> tuple[Entry, ...]:
  """What `network` takes of `source`: everything if the source completes it, else the
  backbone (the added layers start fresh)."""
  if network in source.complete_for:
    return source.entries
  return tuple(e for e in source.entries if e.backbone)
