"""Weights files into our networks: read, pick the layer map, convert, check, load.

  converted = weights.convert_file(model, 'googlenet_gap', 'googlenet.pth')
  weights.load_into(model, converted)

The framework is detected from the file (a torch zip or safetensors file: torchvision; a
protobuf: Caffe) unless stated. Every parameter the file gives is checked against the
network's shape before anything is loaded; the backbone must come complete from the
file, and what stays fresh (the layers a GAP network adds) and what the file holds
unused (auxiliary heads, the classifier a GAP network drops) are listed.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from typing import Any

import jax
import numpy as np
import scipy.io
from flax import nnx

from cam_jax import checkpoints
from cam_jax import models
from cam_jax.data import conventions
from cam_jax.pretrained import caffe_file
from cam_jax.pretrained import layer_maps
from cam_jax.pretrained import torch_file
from cam_jax.pretrained.errors import WeightsFileError

FRAMEWORKS = ('torchvision', 'caffe')
# Parameters that must come from the file: the backbone (our GAP networks keep their
# classification backbone under `trunk/`; NIN's layers are `blocks/`).
_BACKBONE = re.compile(r'(trunk|blocks)/.*')


@dataclasses.dataclass
class Converted:
  """A file's tensors in our layout for one network.

  `params`: our parameter path → array. `unused`: source tensors the network does not take
  (auxiliary heads, a classifier the GAP network replaces). `fresh`: our parameters the file
  does not give (the layers a GAP network adds), or that `reinit` asked to keep fresh.
  """
  path: str
  source: layer_maps.Source
  params: dict[str, np.ndarray]
  unused: list[str]
  fresh: list[str]
  convention: conventions.InputConvention

  def summary(self) -> str:
    return (f'{self.path}: {self.source.description}; {len(self.params)} arrays loaded; '
            f'fresh: {describe_layers(self.fresh, "/")}; unused: '
            f'{describe_layers(self.unused, ".")}')


def describe_layers(names: list[str], separator: str, limit: int | None = 8) -> str:
  """Parameter names as their layers ('aux1.fc1.weight' → 'aux1.fc1', in first-seen
  order), BatchNorm step counters counted apart; at most `limit` layers named."""
  counters = [n for n in names if n.endswith('num_batches_tracked')]
  layers = list(dict.fromkeys(n.rsplit(separator, 1)[0] for n in names if n not in counters))
  text = _short(layers, limit) if layers else 'none'
  return text + (f' (and {len(counters)} BatchNorm step counters)' if counters else '')


def _short(names: list[str], limit: int | None = 6) -> str:
  if not names:
    return 'none'
  if limit is None or len(names) <= limit:
    return ', '.join(names)
  return ', '.join(names[:limit]) + f', ... ({len(names) - limit} more)'


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

def detect_framework(path: str) -> str:
  """'torchvision' for a torch zip or safetensors file, else 'caffe' (a protobuf)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file {path} does not exist')
  if torch_file.is_torch_zip(path) or torch_file.is_safetensors(path):
    return 'torchvision'
  return 'caffe'


@dataclasses.dataclass
class WeightsFile:
  """A weights file read: `tensors` by source name, and the Caffe network's `net_name`."""
  path: str
  framework: str
  tensors: dict[str, np.ndarray]
  net_name: str = ''


def read(path: str, framework: str | None = None) -> WeightsFile:
  """Reads a weights file of `framework` (None: detected).

  Caffe blobs are named '<layer>.weight' and '<layer>.bias' (blobs 0 and 1, further ones
  '<layer>.blob<i>'); the network name is the NetParameter's (torch files have none).
  """
  framework = framework or detect_framework(path)
  if framework not in FRAMEWORKS:
    raise ValueError(f'weights format {framework!r}; expected one of {FRAMEWORKS}')
  if framework == 'torchvision':
    reader = torch_file.read_safetensors if torch_file.is_safetensors(path) else (
        torch_file.read_torch)
    return WeightsFile(path, framework, reader(path))
  net = caffe_file.read_caffemodel(path)
  tensors = {}
  for layer in net.layers:
    for i, blob in enumerate(layer.blobs):
      tensors[f'{layer.name}.{("weight", "bias")[i] if i < 2 else f"blob{i}"}'] = blob
  return WeightsFile(path, framework, tensors, net.name)


def read_mean_image(path: str, image_size: int) -> np.ndarray:
  """A Caffe mean image, BGR, as `image_size`×`image_size`×3 float32: its central crop, as
  Caffe's test-phase transform crops it with the input.

  `.binaryproto` (Caffe's imagenet_mean: 1×3×256×256), `.npy` (pycaffe's
  ilsvrc_2012_mean.npy: 3×256×256) or `.mat` (the CAM release's ilsvrc_2012_mean.mat:
  `mean_data`, 256×256×3 with width first, as matcaffe stores images).
  """
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext == '.binaryproto':
      blob = caffe_file.read_blob(path)
      image = blob.reshape(-1, *blob.shape[-2:]).transpose(1, 2, 0)
    elif ext == '.npy':
      image = np.load(path, allow_pickle=False).transpose(1, 2, 0)
    elif ext == '.mat':
      image = scipy.io.loadmat(path)['mean_data'].transpose(1, 0, 2)
    else:
      raise WeightsFileError(f'{path}: a mean file must be .binaryproto, .npy or .mat')
  except (KeyError, ValueError, OSError) as e:
    if isinstance(e, WeightsFileError):
      raise
    raise WeightsFileError(f'{path}: not a readable mean image ({type(e).__name__}: {e})') from e
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[2] != 3:
    raise WeightsFileError(f'{path}: expected a 3-channel mean image, got shape {image.shape}')
  h, w = image.shape[:2]
  if h < image_size or w < image_size:
    raise WeightsFileError(f'{path}: the mean image is {w}×{h}, smaller than the '
                           f'{image_size}×{image_size} input')
  top, left = (h - image_size) // 2, (w - image_size) // 2
  return np.ascontiguousarray(image[top:top + image_size, left:left + image_size])


# ---------------------------------------------------------------------------
# Choosing the map
# ---------------------------------------------------------------------------

def default_variant(network: str) -> str | None:
  """The trunk variant our network `network` is built with when its kwargs do not say."""
  parameter = inspect.signature(models.MODELS[network]).parameters.get('variant')
  return None if parameter is None else parameter.default


def choose_source(network: str, weights: WeightsFile,
                  variant: str | None = None) -> layer_maps.Source:
  """The source whose entries for `network` the file holds: the complete one if it does
  (a released CAM model), else the backbone. `variant` (our trunk variant) narrows the
  choice; Caffe's AlexNet and CaffeNet, which have the same layers, are told apart by the
  file's network name ('CaffeNet') or `variant`."""
  framework, tensors = weights.framework, weights.tensors
  options = layer_maps.candidates(network, framework)
  if variant is not None:
    fits = [s for s in options if s.model_kwargs.get('variant', variant) == variant]
    if not fits:
      needed = sorted({s.model_kwargs['variant'] for s in options})
      raise ValueError(f'{weights.path}: {framework} weights for {network!r} need the trunk '
                       f'variant {" or ".join(map(repr, needed))}, not {variant!r}: set '
                       f'--config.model.kwargs.variant={needed[0]}')
    options = fits
  elif weights.net_name.lower() == 'caffenet':
    options = [s for s in options if s.model_kwargs.get('variant') != 'caffe'] or options
  misses = []
  for source in options:
    needed = [e.source for e in layer_maps.entries_for(source, network)
              if _BACKBONE.fullmatch(e.target) or network in source.complete_for]
    missing = [name for name in needed if name not in tensors]
    if not missing:
      return source
    misses.append(f'{source.name} lacks {_short(missing, 3)}')
  raise WeightsFileError(
      f'{weights.path}: not {framework} weights of a network that maps to {network!r} '
      f'({"; ".join(misses)}); the file holds {len(tensors)} tensors, e.g. '
      f'{_short(sorted(tensors), 5)}')


# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------

def model_parameters(model: nnx.Module) -> dict[str, Any]:
  """Our parameter path → variable value (Params and BatchNorm statistics)."""
  flat = {}
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  for path, value in jax.tree_util.tree_flatten_with_path(state)[0]:
    flat[checkpoints.param_path(path)] = value
  return flat


@dataclasses.dataclass
class Plan:
  """What a file gives a network: `loads` (our parameter → its entry), `fresh` (our
  parameters left at their initialisation), `unused` (source tensors not taken)."""
  loads: dict[str, layer_maps.Entry]
  fresh: list[str]
  unused: list[str]


def plan(network: str, ours: dict[str, tuple[int, ...]], tensors: dict[str, tuple[int, ...]],
         source: layer_maps.Source, *, reinit: tuple[str, ...] = (), path: str = '') -> Plan:
  """Matches a file's tensor shapes (`tensors`: name → shape) to our network's parameter
  shapes (`ours`: path → shape), from shapes alone.

  `reinit`: regexes of our parameters to keep fresh even if the file has them (fine-tuning
  on other classes: the head). Raises WeightsFileError naming the file (`path`), the
  tensor and both shapes on a mismatch, or the layers the backbone lacks.
  """
  patterns = [re.compile(r) for r in reinit]
  loads = {}
  for entry in layer_maps.entries_for(source, network):
    if entry.target not in ours or any(p.fullmatch(entry.target) for p in patterns):
      continue
    if entry.source not in tensors:
      raise WeightsFileError(f'{path}: no tensor {entry.source!r} ({source.description}), '
                             f'which {network} needs for {entry.target}')
    shape, want = tuple(tensors[entry.source]), tuple(ours[entry.target])
    try:
      got = layer_maps.converted_shape(shape, entry)
    except ValueError as e:
      raise WeightsFileError(f'{path}: {entry.source!r} of shape {shape}: {e} (for '
                             f'{entry.target}, shape {want} in {network})') from e
    if got != want:
      raise WeightsFileError(
          f'{path}: {entry.source!r} has shape {shape} ({got} in our layout), but '
          f'{network} expects {want} for {entry.target}: the file is of another network, '
          'or the config of another size')
    loads[entry.target] = entry
  fresh = sorted(k for k in ours if k not in loads)
  missing = [k for k in fresh if _BACKBONE.fullmatch(k)
             and not any(p.fullmatch(k) for p in patterns)]
  if missing:
    raise WeightsFileError(f'{path} ({source.description}) does not give the backbone '
                           f'parameters {_short(missing)} of {network}')
  used = {e.source for e in loads.values()}
  return Plan(loads, fresh, sorted(k for k in tensors if k not in used))


def convert(model: nnx.Module, network: str, weights: WeightsFile, source: layer_maps.Source,
            *, reinit: tuple[str, ...] = (), mean_file: str | None = None) -> Converted:
  """The tensors of `source` (`choose_source`) for `model` (an instance of our network
  `network`), in our layout and checked against its shapes (`plan`); nothing is loaded
  yet (`load_into`)."""
  ours = {k: tuple(v.shape) for k, v in model_parameters(model).items()}
  tensors = weights.tensors
  matched = plan(network, ours, {k: v.shape for k, v in tensors.items()}, source,
                 reinit=reinit, path=weights.path)
  params = {target: layer_maps.convert(tensors[entry.source], entry)
            for target, entry in matched.loads.items()}
  convention = conventions.preset(source.convention, source.image_size)
  if mean_file:
    if weights.framework != 'caffe':
      raise ValueError('a mean file applies to Caffe weights only')
    size = source.image_size or 224
    convention = dataclasses.replace(convention, mean_image=read_mean_image(mean_file, size),
                                     image_size=size)
  return Converted(weights.path, source, params, matched.unused, matched.fresh, convention)


def load_into(model: nnx.Module, converted: Converted) -> None:
  """Writes the converted arrays into `model`'s parameters (dtypes kept)."""
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))

  def take(path, value):
    name = checkpoints.param_path(path)
    if name in converted.params:
      return np.asarray(converted.params[name], dtype=value.dtype)
    return value

  nnx.update(model, jax.tree_util.tree_map_with_path(take, state))
