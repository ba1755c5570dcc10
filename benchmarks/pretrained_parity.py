r"""Numerical parity of converted weights with PyTorch: torchvision networks, and the
Caffe-specific layers of the Caffe networks.

PyTorch and torchvision are installed beside the package, not as its dependencies:

  python benchmarks/pretrained_parity.py [--networks=alexnet,vgg16,googlenet]

For each torchvision network: build it with random weights (BatchNorm statistics made
non-trivial), `torch.save` its state_dict, convert the file with `cam_jax.convert`, and
compare on the same images (a) the logits and (b) the last conv features (AlexNet conv5,
VGG16 conv5_3, GoogLeNet inception5b, after ReLU): max |ours - torch| / max |torch|.
torchvision's GoogLeNet runs with transform_input=True on ImageNet-normalised input, ours
on the same pixels under the 'inception' convention.

Then the Caffe layers, on the same random blobs: cross-channel LRN (torch's
LocalResponseNorm), ceil-mode max pooling (torch's ceil_mode=True), grouped convolution
(torch's conv2d with groups), and the BGR/mean preprocessing (by hand in torch), through
Caffe AlexNet's trunk converted from a .caffemodel written by this script in Caffe's wire
format (field numbers, no Caffe). Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cam_jax import convert as convert_lib  # pylint: disable=wrong-import-position
from cam_jax.data import conventions  # pylint: disable=wrong-import-position
from cam_jax.restore import restore_for_inference  # pylint: disable=wrong-import-position
from cam_jax import sharding  # pylint: disable=wrong-import-position
from configs import common  # pylint: disable=wrong-import-position
from tests.pretrained import caffe_wire  # pylint: disable=wrong-import-position

_NETWORKS = flags.DEFINE_list('networks', ['alexnet', 'vgg16', 'googlenet'],
                              'torchvision networks to check.')
_BATCH = flags.DEFINE_integer('batch', 2, 'Images per check.')


def _random_pixels(batch: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), np.uint8)


def _rel(ours: np.ndarray, theirs: np.ndarray) -> float:
  return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-12))


def _torch_features(net: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
  """The last conv map after ReLU, NCHW."""
  if name == 'googlenet':
    x = net._transform_input(x)  # pylint: disable=protected-access
    for layer in ('conv1', 'maxpool1', 'conv2', 'conv3', 'maxpool2', 'inception3a',
                  'inception3b', 'maxpool3', 'inception4a', 'inception4b', 'inception4c',
                  'inception4d', 'inception4e', 'maxpool4', 'inception5a', 'inception5b'):
      x = getattr(net, layer)(x)
    return x
  features = net.features
  if name == 'alexnet':
    return features[:12](x)  # conv5 + ReLU, before pool5
  return features[:30](x)  # vgg16: conv5_3 + ReLU, before pool5


def check_torchvision(name: str, workdir: str, batch: int) -> dict[str, float]:
  torch.manual_seed(0)
  kwargs = {'aux_logits': False, 'init_weights': True} if name == 'googlenet' else {}
  net = getattr(torchvision.models, name)(weights=None, **kwargs)
  if name == 'googlenet':
    net.transform_input = True  # as with its ImageNet weights
  with torch.no_grad():  # BatchNorm statistics that matter
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  net.eval()
  path = os.path.join(workdir, f'{name}.pth')
  torch.save(net.state_dict(), path)
  out = os.path.join(workdir, f'{name}_converted')
  start = time.time()
  convert_lib.convert(name, path, out, framework='torchvision')
  seconds = time.time() - start

  pixels = _random_pixels(batch, 224)
  config = common.get_common()
  mesh = sharding.make_mesh()
  model, _, _, config = restore_for_inference(config, out, mesh)
  convention = conventions.from_config(config.data)
  ours_in = np.stack([convention.normalize(p) for p in pixels])
  logits, aux = model(ours_in, train=False)
  imagenet = conventions.preset('imagenet')
  torch_in = torch.from_numpy(np.stack([imagenet.normalize(p) for p in pixels])).permute(0, 3, 1, 2)
  with torch.no_grad():
    t_logits = net(torch_in).numpy()
    t_feats = _torch_features(net, name, torch_in).permute(0, 2, 3, 1).numpy()
  return {'logits': _rel(np.asarray(logits), t_logits),
          'features': _rel(np.asarray(aux['features']), t_feats),
          'convention': convention.name, 'convert_s': seconds}


# ---------------------------------------------------------------------------
# Caffe layers
# ---------------------------------------------------------------------------

def _caffemodel(name: str, layers: list[tuple[str, str, list[np.ndarray]]]) -> bytes:
  """A NetParameter with V2 layers, written from Caffe's field numbers (tests' encoder)."""
  return caffe_wire.str_field(caffe_wire.NET_NAME, name) + b''.join(
      caffe_wire.v2_layer(layer_name, kind, *[caffe_wire.blob(b) for b in blobs])
      for layer_name, kind, blobs in layers)


def check_caffe_alexnet(workdir: str, batch: int) -> dict[str, float]:
  """bvlc_alexnet's trunk (grouped convs, LRN before pooling, ceil-mode pooling) and its
  preprocessing (BGR minus the per-channel mean) against torch's layers."""
  rng = np.random.default_rng(1)
  shapes = {'conv1': (96, 3, 11, 11), 'conv2': (256, 48, 5, 5), 'conv3': (384, 256, 3, 3),
            'conv4': (384, 192, 3, 3), 'conv5': (256, 192, 3, 3), 'fc6': (4096, 9216),
            'fc7': (4096, 4096), 'fc8': (1000, 4096)}
  blobs = {k: [rng.normal(0, 0.01, s).astype(np.float32),
               rng.normal(0, 0.1, s[0]).astype(np.float32)] for k, s in shapes.items()}
  kinds = {k: 'InnerProduct' if k.startswith('fc') else 'Convolution' for k in shapes}
  path = os.path.join(workdir, 'bvlc_alexnet.caffemodel')
  with open(path, 'wb') as f:
    f.write(_caffemodel('AlexNet', [(k, kinds[k], blobs[k]) for k in shapes]))
  out = os.path.join(workdir, 'bvlc_alexnet_converted')
  convert_lib.convert('alexnet', path, out, framework='caffe')
  config = common.get_common()
  config.data.image_size = 227
  model, _, _, config = restore_for_inference(config, out, sharding.make_mesh())
  convention = conventions.from_config(config.data)
  pixels = _random_pixels(batch, 227, seed=2)
  logits, aux = model(np.stack([convention.normalize(p) for p in pixels]), train=False)

  # torch: BGR, minus the mean; conv → ReLU → LRN → ceil-mode pool (bvlc_alexnet's order).
  mean = torch.tensor(convention.mean).view(1, 3, 1, 1)
  x = torch.from_numpy(pixels[..., ::-1].astype(np.float32).copy()).permute(0, 3, 1, 2) - mean
  t = lambda k, i: torch.from_numpy(blobs[k][i])  # pylint: disable=unnecessary-lambda-assignment
  lrn = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
  pool = lambda y: F.max_pool2d(y, 3, 2, ceil_mode=True)  # pylint: disable=unnecessary-lambda-assignment
  with torch.no_grad():
    x = pool(lrn(F.relu(F.conv2d(x, t('conv1', 0), t('conv1', 1), stride=4))))
    x = pool(lrn(F.relu(F.conv2d(x, t('conv2', 0), t('conv2', 1), padding=2, groups=2))))
    x = F.relu(F.conv2d(x, t('conv3', 0), t('conv3', 1), padding=1))
    x = F.relu(F.conv2d(x, t('conv4', 0), t('conv4', 1), padding=1, groups=2))
    feats = F.relu(F.conv2d(x, t('conv5', 0), t('conv5', 1), padding=1, groups=2))
    y = pool(feats).flatten(1)  # Caffe flattens C, H, W
    y = F.relu(F.linear(y, t('fc6', 0), t('fc6', 1)))
    y = F.relu(F.linear(y, t('fc7', 0), t('fc7', 1)))
    t_logits = F.linear(y, t('fc8', 0), t('fc8', 1)).numpy()
  return {'logits': _rel(np.asarray(logits), t_logits),
          'features': _rel(np.asarray(aux['features']),
                           feats.permute(0, 2, 3, 1).numpy()),
          'convention': convention.name}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax's lines would bury the table
  torch.set_num_threads(os.cpu_count() or 1)
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for name in _NETWORKS.value:
      r = check_torchvision(name, workdir, _BATCH.value)
      rows.append((f'torchvision {name}', r))
      print(f'{name}: {r}', flush=True)
    r = check_caffe_alexnet(workdir, _BATCH.value)
    rows.append(('Caffe bvlc_alexnet (random blobs; LRN, ceil pooling, groups, BGR/mean)', r))
    print(f'caffe alexnet: {r}', flush=True)
  print(f'\n{time.strftime("%Y-%m-%d")}, {platform.machine()} {os.cpu_count()} cores, '
        f'torch {torch.__version__}, torchvision {torchvision.__version__}, float32, '
        f'batch {_BATCH.value}, random weights\n')
  print('| weights | our input convention | logits max rel. diff | last conv features max '
        'rel. diff |')
  print('|---|---|---|---|')
  for name, r in rows:
    print(f'| {name} | {r["convention"]} | {r["logits"]:.2e} | {r["features"]:.2e} |')
  worst = max(max(r['logits'], r['features']) for _, r in rows)
  print(f'\nworst: {worst:.2e} (goal ≤ 1e-4)')
  if worst > 1e-4:
    raise SystemExit(1)


if __name__ == '__main__':
  app.run(main)
