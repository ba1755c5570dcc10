"""Input conventions: what a network's weights expect its pixels to look like.

A network trained in torchvision saw RGB scaled to [0, 1] minus the ImageNet mean over
its standard deviation; one trained in Caffe saw BGR in 0-255 minus the ILSVRC mean (per
channel, or the 256×256 mean image cropped like the input); torchvision's GoogLeNet
re-normalises to [-1, 1] (`transform_input`). Feeding one the other's pixels costs
accuracy silently, so every checkpoint records its convention (meta `input`) and every
entry point preprocesses by it.

All numbers are in pixel units (0-255) and in the convention's channel order:
`network input = (pixels[..., order] - mean) / std`.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import ml_collections
import numpy as np
from absl import logging

# ImageNet statistics of torchvision (and of the flax ImageNet example), in 0-255 units.
_IMAGENET_MEAN = tuple(float(v) for v in np.float32([0.485, 0.456, 0.406]) * 255)
_IMAGENET_STD = tuple(float(v) for v in np.float32([0.229, 0.224, 0.225]) * 255)


@dataclasses.dataclass(frozen=True)
class InputConvention:
  """How pixels become a network's input.

  `name`: a preset of `PRESETS`, or the preset a mean image was added to.
  `channels`: 'RGB' or 'BGR'. `mean`, `std`: per channel, 0-255 units, in that order.
  `mean_image`: an S×S×3 float32 array (channel order as `channels`) subtracted instead of
  `mean` (Caffe's mean file, centre-cropped to the input), or None.
  `image_size`: the input side the weights were trained at, or None (any).
  """
  name: str
  channels: str
  mean: tuple[float, float, float]
  std: tuple[float, float, float] = (1.0, 1.0, 1.0)
  image_size: int | None = None
  mean_image: np.ndarray | None = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    if self.channels not in ('RGB', 'BGR'):
      raise ValueError(f"input convention {self.name!r}: channels must be 'RGB' or 'BGR', "
                       f'got {self.channels!r}')
    if self.mean_image is not None and self.mean_image.shape[-1] != 3:
      raise ValueError(f'input convention {self.name!r}: the mean image must be H×W×3, '
                       f'got {self.mean_image.shape}')

  def normalize(self, image_HW3: np.ndarray) -> np.ndarray:
    """uint8 RGB pixels → the network's float32 input."""
    x = image_HW3.astype(np.float32)
    if self.channels == 'BGR':
      x = x[..., ::-1]
    if self.mean_image is not None:
      if self.mean_image.shape[:2] != x.shape[:2]:
        raise ValueError(f'input convention {self.name!r}: the mean image is '
                         f'{self.mean_image.shape[1]}×{self.mean_image.shape[0]}, the input '
                         f'{x.shape[1]}×{x.shape[0]}; set config.data.image_size='
                         f'{self.mean_image.shape[0]}')
      x = x - self.mean_image
    else:
      x = x - np.float32(self.mean)
    return x / np.float32(self.std)

  def denormalize(self, input_HW3: np.ndarray) -> np.ndarray:
    """uint8 RGB pixels back from a network input (pictures of what it saw)."""
    x = np.asarray(input_HW3, np.float32) * np.float32(self.std)
    x = x + (self.mean_image if self.mean_image is not None else np.float32(self.mean))
    if self.channels == 'BGR':
      x = x[..., ::-1]
    return np.clip(x, 0, 255).round().astype(np.uint8)

  def to_meta(self) -> dict[str, Any]:
    """JSON for a checkpoint's meta (the mean image as base64 float32 bytes: exact)."""
    meta = {'name': self.name, 'channels': self.channels, 'mean': list(self.mean),
            'std': list(self.std), 'image_size': self.image_size}
    if self.mean_image is not None:
      image = np.ascontiguousarray(self.mean_image, '<f4')
      meta['mean_image'] = {'shape': list(image.shape),
                            'float32_base64': base64.b64encode(image.tobytes()).decode()}
    return meta

  def same_as(self, other: 'InputConvention') -> bool:
    """Equal, mean images included."""
    if self != other or (self.mean_image is None) != (other.mean_image is None):
      return False
    return self.mean_image is None or np.array_equal(self.mean_image, other.mean_image)

  def describe(self) -> str:
    what = 'the mean image' if self.mean_image is not None else (
        f'mean {tuple(round(v, 3) for v in self.mean)}')
    std = '' if self.std == (1.0, 1.0, 1.0) else f', std {tuple(round(v, 3) for v in self.std)}'
    size = f', {self.image_size}×{self.image_size}' if self.image_size else ''
    return f'{self.name} ({self.channels} 0-255 minus {what}{std}{size})'


def from_meta(meta: dict[str, Any]) -> InputConvention:
  """The convention a checkpoint's meta `input` records; raises naming a bad field."""
  try:
    image = meta.get('mean_image')
    mean_image = None
    if image is not None:
      mean_image = np.frombuffer(base64.b64decode(image['float32_base64']), '<f4')
      mean_image = mean_image.reshape(image['shape']).astype(np.float32)
    return InputConvention(name=str(meta['name']), channels=str(meta['channels']),
                           mean=tuple(float(v) for v in meta['mean']),
                           std=tuple(float(v) for v in meta['std']),
                           image_size=meta.get('image_size'), mean_image=mean_image)
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"a checkpoint's meta 'input' is malformed ({type(e).__name__}: {e}); "
                     f'expected the fields of InputConvention, got {sorted(meta)}') from e


PRESETS: dict[str, InputConvention] = {
    # torchvision's ImageNet weights; and the default for training from scratch.
    'imagenet': InputConvention('imagenet', 'RGB', _IMAGENET_MEAN, _IMAGENET_STD),
    # torchvision GoogLeNet with transform_input=True (its ImageNet weights): the
    # ImageNet-normalised input mapped to (x / 255 - 0.5) / 0.5.
    'inception': InputConvention('inception', 'RGB', (127.5,) * 3, (127.5,) * 3),
    # Caffe, BGR minus the per-channel mean of ilsvrc_2012_mean (Caffe's mean file; the
    # CAM release's ilsvrc_2012_mean.mat holds the same image): bvlc_alexnet,
    # bvlc_reference_caffenet (227), nin_imagenet and the released CAM models (224).
    'caffe_ilsvrc_mean': InputConvention(
        'caffe_ilsvrc_mean', 'BGR', (104.00699, 116.66877, 122.67891)),
    # bvlc_googlenet's train_val: mean_value 104, 117, 123.
    'caffe_googlenet': InputConvention('caffe_googlenet', 'BGR', (104.0, 117.0, 123.0)),
    # VGG_ILSVRC_16_layers (Simonyan & Zisserman's release).
    'caffe_vgg': InputConvention('caffe_vgg', 'BGR', (103.939, 116.779, 123.68)),
}
DEFAULT = 'imagenet'


def preset(name: str, image_size: int | None = None) -> InputConvention:
  """The preset `name` (with `image_size` when given); raises listing the known ones."""
  if name not in PRESETS:
    raise ValueError(f'Unknown input convention {name!r}; known: {", ".join(sorted(PRESETS))}')
  conv = PRESETS[name]
  return conv if image_size is None else dataclasses.replace(conv, image_size=image_size)


def from_config(data_config: ml_collections.ConfigDict) -> InputConvention:
  """The convention a run preprocesses with: the one resolved into `data.input` by an
  entry point (`resolve`), else the preset `data.input_convention`, else 'imagenet'."""
  resolved = data_config.get('input')
  if isinstance(resolved, InputConvention):
    return resolved
  return preset(data_config.get('input_convention') or DEFAULT)


def resolve(config: ml_collections.ConfigDict, weights: InputConvention | None,
            where: str) -> ml_collections.ConfigDict:
  """A copy of `config` whose `data.input` is the convention to preprocess with.

  `weights`: the convention of the weights the run starts from or restores (`where` names
  them), None for fresh weights. A config that names another preset
  (`data.input_convention`) is an error: never a silent loss of accuracy. Another input
  size than the weights were trained at is an error with a mean image (it has one size),
  a warning otherwise (fine-tuning at another size is legitimate).
  """
  asked = config.data.get('input_convention')
  if weights is None:
    conv = preset(asked or DEFAULT)
  else:
    conv = weights
    if asked and asked != weights.name:
      raise ValueError(
          f'config.data.input_convention={asked!r}, but {where} was trained with '
          f'{weights.describe()}: leave input_convention unset (the weights say it) or use '
          'weights of that convention.')
    if weights.image_size and config.data.image_size != weights.image_size:
      message = (f'config.data.image_size={config.data.image_size}, but {where} was trained '
                 f'at {weights.image_size}×{weights.image_size} ({weights.describe()})')
      if weights.mean_image is not None:
        raise ValueError(f'{message}: set --config.data.image_size={weights.image_size}.')
      logging.warning('%s: its accuracy at this size may be lower.', message)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.input = conv
  return config
