"""Class activation maps on the accelerator.

For class c and the last conv map f:
    M_c(x, y) = sum_k kernel[k, c] * f_k(x, y)
and for a GAP network logit c is mean(M_c) + bias_c (GAP and the linear head commute).
The kernel gathers the T requested weight columns first (T << C), so the einsum costs
B·h·w·K·T, not B·h·w·K·C, then upsamples with `jax.image.resize` (bilinear, half-pixel
centres, like cv2.resize in the official code).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=('out_hw',))
def class_activation_maps(feats_BhwK: jax.Array, kernel_KC: jax.Array,
                          class_ids_BT: jax.Array,
                          out_hw: tuple[int, int] | None = None) -> jax.Array:
  """CAMs `B×T×H×W` of classes `class_ids_BT` (per image), at `out_hw` (default: h×w).

  No bias and no normalisation: `mean_hw(M_c) + bias_c` is logit c of a GAP network.
  """
  w_BKT = jnp.take(kernel_KC, class_ids_BT, axis=1).transpose(1, 0, 2)
  cams_BThw = jnp.einsum('bhwk,bkt->bthw', feats_BhwK, w_BKT.astype(feats_BhwK.dtype),
                         preferred_element_type=jnp.float32)
  return resize_maps(cams_BThw, out_hw)


def resize_maps(maps_BThw: jax.Array, out_hw: tuple[int, int] | None) -> jax.Array:
  """Bilinear resize of every map to `out_hw` (half-pixel centres, no antialiasing, as
  cv2.resize); identity when `out_hw` is None or already the maps' size."""
  if out_hw is None or tuple(out_hw) == maps_BThw.shape[2:]:
    return maps_BThw
  B, T = maps_BThw.shape[:2]
  return jax.image.resize(maps_BThw, (B, T, *out_hw), method='bilinear', antialias=False)


def top_k_classes(logits_BC: jax.Array, k: int) -> jax.Array:
  """The k highest-scoring classes of each image, best first: `B×k` int32."""
  return jax.lax.top_k(logits_BC, k)[1].astype(jnp.int32)
