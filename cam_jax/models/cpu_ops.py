"""Convolutions and max pooling whose gradients XLA:CPU runs fast, chosen per platform.

XLA:CPU (jaxlib 0.10, YNNPACK convolutions) falls off its fast path in three places of a
CAM network's training step (benchmarks/RESULTS.md, "Train step against PyTorch"):

1. a grouped convolution (the CAM conv's `groups=2`) runs ~5× slower than its groups
   apart, forward and backward;
2. a kernel gradient is lowered as a convolution whose window is the whole output map,
   several times slower than the forward on large maps;
3. a max-pool gradient is an argmax reduce-window over four full-size iota arrays and a
   scatter.

On CPU, `conv_general_dilated` and `max_pool` here compute the same values as the plain
ops with (1) the groups convolved apart and concatenated, (2) the kernel gradient as one
matmul per kernel tap, over the input shifted to that tap (`kernel_grad_by_taps`), and (3)
the pool gradient one window tap at a time, each output's gradient going to the first tap
in row-major window order that holds the max, as XLA's own gradient does
(`max_pool_grad_by_taps`). Elsewhere (GPU, TPU), `jax.lax.platform_dependent` keeps the
plain ops, which cuDNN and the TPU compiler run natively: the choice is made when the
program is lowered for its platform, so one traced function serves both.

`cam_jax.models.layers` builds every convolution and max pool of the models from these.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# Read when a function is traced: False traces the plain ops on every platform (the
# benchmarks' A/B comparisons, gradient-equality tests). CAM_JAX_CPU_OPS=0 in the
# environment turns them off for a whole run.
ENABLED = os.environ.get('CAM_JAX_CPU_OPS', '1') != '0'
# Kernel gradients with at most this many taps × input channels take all taps in one
# matmul (`kernel_grad_by_taps`).
SMALL_PATCH = 64


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------

def _plain_conv(x, kernel, strides, pads, precision):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _split_conv(x, kernel, strides, pads, groups, precision):
  """A grouped convolution as its groups' convolutions, concatenated."""
  if groups == 1:
    return _plain_conv(x, kernel, strides, pads, precision)
  xs = jnp.split(x, groups, axis=3)
  ks = jnp.split(kernel, groups, axis=3)
  return jnp.concatenate([_plain_conv(a, k, strides, pads, precision)
                          for a, k in zip(xs, ks)], axis=3)


def kernel_grad_by_taps(x_BHWC: jax.Array, g_BhwO: jax.Array, kernel_hw: tuple[int, int],
                        strides: tuple[int, int], pads: Sequence[tuple[int, int]]
                        ) -> jax.Array:
  """dL/dkernel (HWIO, one group) as one matmul per kernel tap: the padded input, shifted
  to the tap and strided, `(C, B·h·w) @ (B·h·w, O)`, accumulated in float32: the sums of
  XLA's kernel-gradient convolution, in another order.

  The taps run one after the other in a loop, so that one shifted copy of the input is
  alive at a time: unrolled, XLA:CPU keeps them all (the default network's train step
  needed 860 MB of temporaries instead of 311 MB).
  """
  B, _, _, C = x_BHWC.shape
  _, h, w, O = g_BhwO.shape
  (top, bottom), (left, right) = pads
  sh, sw = strides
  kh, kw = kernel_hw
  x_p = jnp.pad(x_BHWC, ((0, 0), (top, bottom), (left, right), (0, 0)))
  g_NO = g_BhwO.reshape(-1, O)
  span = (B, (h - 1) * sh + 1, (w - 1) * sw + 1, C)

  if C * kh * kw <= SMALL_PATCH:
    # Few input channels (an RGB first layer): every tap side by side, one matmul. The
    # (C, B·h·w) matmuls of a loop would each stream the whole gradient for 3 rows.
    taps = [lax.slice(x_p, (0, i, j, 0), (B, i + span[1], j + span[2], C), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(taps, axis=3).reshape(-1, kh * kw * C)
    return jnp.matmul(patches.T, g_NO,
                      preferred_element_type=jnp.float32).reshape(kh, kw, C, O)

  def tap(t):
    window = lax.dynamic_slice(x_p, (0, t // kw, t % kw, 0), span)
    shifted = lax.slice(window, (0, 0, 0, 0), span, (1, sh, sw, 1))
    return jnp.matmul(shifted.reshape(-1, C).T, g_NO, preferred_element_type=jnp.float32)

  return lax.map(tap, jnp.arange(kh * kw)).reshape(kh, kw, C, O)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _cpu_conv(x, kernel, strides, pads, groups, precision):
  return _split_conv(x, kernel, strides, pads, groups, precision)


def _cpu_conv_fwd(x, kernel, strides, pads, groups, precision):
  return _cpu_conv(x, kernel, strides, pads, groups, precision), (x, kernel)


def _cpu_conv_bwd(strides, pads, groups, precision, residuals, g):
  x, kernel = residuals
  _, input_vjp = jax.vjp(
      lambda x: _split_conv(x, kernel, strides, pads, groups, precision), x)
  gs = jnp.split(g, groups, axis=3)
  xs = jnp.split(x, groups, axis=3)
  dkernel = jnp.concatenate([kernel_grad_by_taps(a, b, kernel.shape[:2], strides, pads)
                             for a, b in zip(xs, gs)], axis=3)
  return input_vjp(g)[0], dkernel.astype(kernel.dtype)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, precision=None,
                         preferred_element_type=None, **kwargs: Any) -> jax.Array:
  """`lax.conv_general_dilated` for flax's `nnx.Conv(conv_general_dilated=...)`: the CPU
  forms of the module docstring for 2-D NHWC/HWIO convolutions without dilation, the plain
  op on other platforms and for anything else."""
  plain = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, preferred_element_type=preferred_element_type, **kwargs)
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  given = (None if dimension_numbers is None
           else lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers))
  undilated = all(d == 1 for d in (lhs_dilation or (1, 1))) and all(
      d == 1 for d in (rhs_dilation or (1, 1)))
  if (not ENABLED or lhs.ndim != 4 or given != nhwc or not undilated
      or preferred_element_type is not None or any(v is not None for v in kwargs.values())):
    return plain(lhs, rhs)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    pads = tuple(lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding))
  else:
    pads = tuple((int(a), int(b)) for a, b in padding)
  groups = int(feature_group_count)
  return lax.platform_dependent(
      lhs, rhs, cpu=lambda x, k: _cpu_conv(x, k, strides, pads, groups, precision),
      default=lambda x, k: plain(x, k))


# ---------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------

def _plain_max_pool(x_BHWC, window, stride):
  return lax.reduce_window(x_BHWC, -jnp.inf, lax.max, (1, window, window, 1),
                           (1, stride, stride, 1), 'VALID')


def max_pool_grad_by_taps(x_BHWC: jax.Array, y_BhwC: jax.Array, g_BhwC: jax.Array,
                          window: int, stride: int) -> jax.Array:
  """The gradient of a VALID max pool one window tap at a time: each output's gradient
  goes to the first tap (row-major window order) that holds the max, as XLA's own
  gradient does, added back at that tap's input positions."""
  B, H, W, C = x_BHWC.shape
  _, h, w, _ = y_BhwC.shape
  taken = jnp.zeros(y_BhwC.shape, bool)
  dx = jnp.zeros(x_BHWC.shape, g_BhwC.dtype)
  zero = jnp.zeros((), g_BhwC.dtype)
  for i in range(window):
    for j in range(window):
      tap = lax.slice(x_BHWC, (0, i, j, 0), (B, i + (h - 1) * stride + 1,
                                             j + (w - 1) * stride + 1, C),
                      (1, stride, stride, 1))
      chosen = (tap == y_BhwC) & ~taken
      taken = taken | chosen
      dx = dx + lax.pad(jnp.where(chosen, g_BhwC, zero), zero, (
          (0, 0, 0), (i, H - i - (h - 1) * stride - 1, stride - 1),
          (j, W - j - (w - 1) * stride - 1, stride - 1), (0, 0, 0)))
  return dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _cpu_max_pool(x, window, stride):
  return _plain_max_pool(x, window, stride)


def _cpu_max_pool_fwd(x, window, stride):
  y = _plain_max_pool(x, window, stride)
  return y, (x, y)


def _cpu_max_pool_bwd(window, stride, residuals, g):
  x, y = residuals
  return (max_pool_grad_by_taps(x, y, g, window, stride),)


_cpu_max_pool.defvjp(_cpu_max_pool_fwd, _cpu_max_pool_bwd)


def max_pool(x_BHWC: jax.Array, window: int, stride: int) -> jax.Array:
  """VALID max pooling of square windows (pad first for other paddings): the CPU gradient
  of the module docstring on CPU, XLA's reduce-window elsewhere."""
  if not ENABLED:
    return _plain_max_pool(x_BHWC, window, stride)
  return lax.platform_dependent(
      x_BHWC, cpu=lambda x: _cpu_max_pool(x, window, stride),
      default=lambda x: _plain_max_pool(x, window, stride))
