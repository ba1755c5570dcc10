"""Class saliency maps shaped like CAMs, for the same box stage: CAM and its baselines.

Each method gives `maps_BThw`: one float32 map per image and per requested class (the top
k and the ground-truth class, as the CAM kernel), at `out_hw` (bilinear, half-pixel
centres, no antialiasing, as `cam.class_activation_maps`; `None` keeps the native size).

- 'cam': class activation maps, `cam.class_activation_maps` with `models.cam_weights`;
  GAP/GMP networks and NIN only.
- 'backprop': Simonyan et al. (ICLR 2014 workshop), the "Backprop" rows of the paper's
  Table 2: `max_channels |d logit_c / d pixel|`, for any network. The score is the logit
  (pre-softmax), as in Simonyan et al.; the pixels are the network's input, i.e.
  normalised ones (a per-channel factor 1/std away from raw pixels, inside the max).
- 'gradcam': Selvaraju et al. (ICCV 2017), beyond the paper, for networks without a GAP
  head: `ReLU(sum_k alpha_kc f_k)` with `alpha_kc = mean_hw d logit_c / d f_k` on the last
  conv map `f = aux['features']`, through the model's `logits_from_features`. For a GAP
  network `alpha_kc = kernel[k, c] / (h·w)`, so Grad-CAM is `ReLU(CAM_c) / (h·w)`.

Every method has the form `method(model, images_BHWC, out_hw) -> (logits_BC, maps_fn)`
with `maps_fn(class_ids_BT) -> maps_BThw`: one forward pass gives the logits (from which
the caller picks the classes) and `maps_fn` reuses it, with one backward pass per class
column, vmapped over T. Call them inside a jitted function, as `evaluate.make_predict_fn`
calls the model after `nnx.merge`; `get_saliency(name)` picks one by name (the config's
`eval.saliency`). The models run in eval mode (`train=False`): BatchNorm statistics, no
dropout; nothing in the model is updated. `backprop_saliency` and `grad_cam` are the
one-call forms for given classes, under `nnx.jit`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from cam_jax import cam as cam_lib
from cam_jax import models

MapsFn = Callable[[jax.Array], jax.Array]
Method = Callable[..., tuple[jax.Array, MapsFn]]


def _one_hot_TBC(class_ids_BT: jax.Array, logits_BC: jax.Array) -> jax.Array:
  """One cotangent per class column t: `onehot[t, b] = e_{class_ids[b, t]}`."""
  return jax.nn.one_hot(class_ids_BT.T, logits_BC.shape[-1], dtype=logits_BC.dtype)


def cam_maps(model: nnx.Module, images_BHWC: jax.Array,
             out_hw: tuple[int, int] | None = None) -> tuple[jax.Array, MapsFn]:
  """Class activation maps: `(logits_BC, class_ids_BT -> cams_BThw)`; raises without a
  GAP/GMP head (use 'backprop' or 'gradcam' there)."""
  weights = models.cam_weights(model)
  if weights is None:
    raise ValueError(f'{type(model).__name__} has no GAP/GMP head, so CAM does not apply; '
                     f"use saliency 'gradcam' or 'backprop'")
  kernel_KC, _ = weights
  logits_BC, aux = model(images_BHWC, train=False)
  feats_BhwK = aux['features']
  return logits_BC, lambda class_ids_BT: cam_lib.class_activation_maps(
      feats_BhwK, kernel_KC, class_ids_BT, out_hw)


def backprop_maps(model: nnx.Module, images_BHWC: jax.Array,
                  out_hw: tuple[int, int] | None = None) -> tuple[jax.Array, MapsFn]:
  """Simonyan et al.'s saliency: `(logits_BC, class_ids_BT -> maps_BThw)`, map
  `max_channels |d logit_c / d images|` at the input size (or `out_hw`)."""
  graphdef, state = nnx.split(model)

  def logits_fn(images):
    return nnx.merge(graphdef, state)(images, train=False)[0]

  logits_BC, vjp_fn = jax.vjp(logits_fn, images_BHWC)

  def maps_fn(class_ids_BT):
    # In eval mode images do not interact, so one VJP of the summed scores gives every
    # image's own gradient.
    grads_TBHWC, = jax.vmap(vjp_fn)(_one_hot_TBC(class_ids_BT, logits_BC))
    maps_TBHW = jnp.max(jnp.abs(grads_TBHWC.astype(jnp.float32)), axis=-1)
    return cam_lib.resize_maps(maps_TBHW.transpose(1, 0, 2, 3), out_hw)

  return logits_BC, maps_fn


def grad_cam_maps(model: nnx.Module, images_BHWC: jax.Array,
                  out_hw: tuple[int, int] | None = None) -> tuple[jax.Array, MapsFn]:
  """Grad-CAM on `aux['features']`: `(logits_BC, class_ids_BT -> maps_BThw)`; needs the
  model's `logits_from_features`. Maps are ReLU'd at h×w, then resized."""
  _, aux = model(images_BHWC, train=False)
  feats_BhwK = aux['features']

  def head_fn(feats):
    return model.logits_from_features(feats, train=False)

  # The model's own logits go unused, so under jit its head is not computed twice.
  logits_BC, vjp_fn = jax.vjp(head_fn, feats_BhwK)

  def maps_fn(class_ids_BT):
    grads_TBhwK, = jax.vmap(vjp_fn)(_one_hot_TBC(class_ids_BT, logits_BC))
    alpha_TBK = jnp.mean(grads_TBhwK.astype(jnp.float32), axis=(2, 3))
    maps_BThw = jnp.einsum('bhwk,tbk->bthw', feats_BhwK.astype(jnp.float32), alpha_TBK)
    return cam_lib.resize_maps(jax.nn.relu(maps_BThw), out_hw)

  return logits_BC, maps_fn


SALIENCY: dict[str, Method] = {
    'cam': cam_maps,
    'backprop': backprop_maps,
    'gradcam': grad_cam_maps,
}


def get_saliency(name: str) -> Method:
  """The method `name` of `SALIENCY`; raises with the known names if unknown."""
  if name not in SALIENCY:
    raise ValueError(f'Unknown saliency {name!r}; known saliency methods: '
                     f'{", ".join(sorted(SALIENCY))}')
  return SALIENCY[name]


@functools.partial(nnx.jit, static_argnames=('out_hw',))
def backprop_saliency(model: nnx.Module, images_BHWC: jax.Array, class_ids_BT: jax.Array,
                      out_hw: tuple[int, int] | None = None) -> jax.Array:
  """`maps_BThw` of Simonyan et al. for the given classes (see `backprop_maps`)."""
  return backprop_maps(model, images_BHWC, out_hw)[1](class_ids_BT)


@functools.partial(nnx.jit, static_argnames=('out_hw',))
def grad_cam(model: nnx.Module, images_BHWC: jax.Array, class_ids_BT: jax.Array,
             out_hw: tuple[int, int] | None = None) -> jax.Array:
  """Grad-CAM `maps_BThw` for the given classes (see `grad_cam_maps`)."""
  return grad_cam_maps(model, images_BHWC, out_hw)[1](class_ids_BT)
