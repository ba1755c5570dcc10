"""Model registry and the head accessor the CAM kernel relies on.

Every model follows this contract:
`model(images_BHWC, train: bool) -> (logits_BC, aux)`, with `aux['features']` the last
convolutional map `B×h×w×K`, and a linear head whose `(kernel_KC, bias_C)`
`head_params(model)` returns.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from cam_jax.models import alexnet, googlenet, nin, small, vgg

MODELS: dict[str, Callable[..., nnx.Module]] = {
    # The paper's networks (Sec. 3.1) and the originals they are compared with.
    'googlenet_gap': googlenet.GoogLeNetGAP,
    'googlenet_gmp': googlenet.GoogLeNetGMP,
    'googlenet': googlenet.GoogLeNet,
    'vgg16_gap': vgg.VGG16GAP,
    'vgg16_gmp': vgg.VGG16GMP,
    'vgg16': vgg.VGG16,
    'alexnet_gap': alexnet.AlexNetGAP,
    # The paper's text (13×13 map, 1024-channel CAM conv) and, differing from it, the
    # released deploy_alexnetplusCAM_imagenet.prototxt (11×11, 512; CaffeNet's LRN order).
    'alexnet_star_gap': functools.partial(alexnet.AlexNetStarGAP, layout='paper'),
    'alexnet_star_gap_official': functools.partial(alexnet.AlexNetStarGAP, layout='official',
                                                   variant='caffenet'),
    'alexnet': alexnet.AlexNet,
    # A GAP network without a linear head: its last 1×1 conv gives the class maps.
    'nin': nin.NIN,
    # Small networks that train on a CPU in minutes.
    'small_gap': small.SmallGAP,
    'small_gmp': functools.partial(small.SmallGAP, pooling='max'),
    # Test-only sizes (flax examples keep theirs at the bottom of models.py).
    'tiny_gap': functools.partial(small.SmallGAP, widths=(8, 16), cam_channels=32),
    'tiny_gmp': functools.partial(small.SmallGAP, widths=(8, 16), cam_channels=32,
                                  pooling='max'),
}


def get_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
  """Builds the registered model `name`; raises with the known names if unknown."""
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; known models: {", ".join(sorted(MODELS))}')
  return MODELS[name](num_classes=num_classes, rngs=rngs, **kwargs)


# Constructor arguments that are not model options: the trainer passes them
# (`dtype` from config.model.dtype).
_NOT_OPTIONS = ('self', 'num_classes', 'rngs', 'dtype')


def options(name: str) -> dict[str, Any]:
  """`{option: default}` of the registered model `name`'s keyword options, from its
  constructor's signature (a registry alias's own values, e.g. `tiny_gmp`'s pooling, as
  its defaults); raises with the known names if unknown."""
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; known models: {", ".join(sorted(MODELS))}')
  build, bound = MODELS[name], {}
  if isinstance(build, functools.partial):
    build, bound = build.func, dict(build.keywords)
  # nnx modules are built through their metaclass: __init__ has the signature.
  init = build.__init__ if isinstance(build, type) else build
  out = {}
  for p in inspect.signature(init).parameters.values():
    if p.name in _NOT_OPTIONS or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
      continue
    out[p.name] = bound.get(p.name, None if p.default is p.empty else p.default)
  return out


def given_options(kwargs: Any) -> dict[str, Any]:
  """The options a config's `model.kwargs` sets: those not None (None leaves an option to
  the model's default; configs/common.model_options lists every option as None)."""
  items = kwargs.items() if kwargs is not None else ()
  return {k: v for k, v in items if v is not None}


def resolved_options(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
  """Every option of model `name` as `kwargs` would build it: the defaults, then `kwargs`
  (None values left to the default). Two kwargs build the same network exactly when their
  resolved options are equal (`{}` and `{'variant': 'caffe'}` for GoogLeNet-GAP)."""
  return {**options(name), **given_options(kwargs)}


def head_params(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
  """The linear head as `(kernel_KC, bias_C)`: what turns pooled features into logits.

  `M_c = sum_k kernel_KC[k, c] * features[..., k]` is the class activation map of class c,
  and for GAP networks `mean_hw(M_c) + bias_C[c]` is logit c.
  """
  head = getattr(model, 'head', None)
  if not isinstance(head, nnx.Linear):
    raise TypeError(f'{type(model).__name__} has no linear `head`; CAM needs a GAP/GMP head')
  return head.kernel[...], head.bias[...]


def cam_weights(model: nnx.Module) -> tuple[jax.Array, jax.Array] | None:
  """`(kernel_KC, bias_C)` that turn `aux['features']` into class activation maps.

  The linear head for GAP/GMP networks; the identity and zero bias for networks whose last
  convolution already gives one map per class (NIN); None for networks with fully
  connected classifiers (the original AlexNet and VGG16), where CAM does not apply.
  """
  if getattr(model, 'features_are_class_maps', False):
    num_classes = model.num_classes
    return jnp.eye(num_classes, dtype=jnp.float32), jnp.zeros((num_classes,), jnp.float32)
  if isinstance(getattr(model, 'head', None), nnx.Linear):
    return head_params(model)
  return None
