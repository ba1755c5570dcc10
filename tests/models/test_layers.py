"""Shared building blocks: LRN against Caffe's formula, pooled sizes, grouped convs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax.models import layers


def _caffe_lrn(x, size, alpha, beta, k):
  """Caffe's LRN across channels, float64: centred window, zeros past the ends."""
  x = x.astype(np.float64)
  C, half = x.shape[-1], (size - 1) // 2
  out = np.empty_like(x)
  for c in range(C):
    window = x[..., max(0, c - half):min(C, c + half + 1)]
    scale = k + alpha / size * np.sum(window ** 2, axis=-1)
    out[..., c] = x[..., c] * scale ** -beta
  return out


@pytest.mark.parametrize('size, alpha, beta, k', [
    (5, 1e-4, 0.75, 1.0),   # AlexNet
    (3, 0.5, 0.6, 2.0),     # big alpha, so that every term of the window matters
])
def test_local_response_norm_matches_caffe(size, alpha, beta, k):
  # Values around ±30 so that alpha=1e-4 changes the result visibly (scale up to ~1.4).
  x = 30 * np.random.default_rng(0).standard_normal((2, 3, 4, 7)).astype(np.float32)
  got = layers.local_response_norm(jnp.asarray(x), size, alpha, beta, k)
  want = _caffe_lrn(x, size, alpha, beta, k)
  assert not np.allclose(want, x, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def _torch_pool_size(n, window, stride, pad, ceil_mode):
  """torch.nn.MaxPool2d's output size."""
  out = (math.ceil if ceil_mode else math.floor)((n + 2 * pad - window) / stride) + 1
  if ceil_mode and (out - 1) * stride >= n + pad:
    out -= 1
  return out


@pytest.mark.parametrize('n, window, stride, pad, ceil_mode, expected', [
    (112, 3, 2, 0, True, 56),    # GoogLeNet pool1
    (55, 3, 2, 0, False, 27),    # AlexNet pool1
    (54, 3, 2, 0, True, 27),     # Caffe AlexNet/NIN at 224 (floor would give 26)
    (54, 3, 2, 0, False, 26),
    (13, 3, 1, 0, True, 11),     # AlexNet*-GAP pool5
    (14, 2, 2, 0, True, 7),
    (7, 3, 2, 1, True, 4),
    (5, 3, 3, 1, True, 2),       # the last window would start in the padding: dropped
])
def test_max_pool_sizes_follow_pytorch(n, window, stride, pad, ceil_mode, expected):
  assert _torch_pool_size(n, window, stride, pad, ceil_mode) == expected
  x = jax.ShapeDtypeStruct((1, n, n + 1, 2), jnp.float32)
  y = jax.eval_shape(lambda x: layers.max_pool(x, window, stride, padding=pad,
                                               ceil_mode=ceil_mode), x)
  assert y.shape == (1, expected, _torch_pool_size(n + 1, window, stride, pad, ceil_mode), 2)


def test_max_pool_ceil_mode_values():
  # Windows that reach past the input take the max of what they cover.
  x = np.random.default_rng(1).standard_normal((1, 6, 6, 1)).astype(np.float32)
  got = np.asarray(layers.max_pool(jnp.asarray(x), 3, 2, ceil_mode=True))
  assert got.shape == (1, 3, 3, 1)
  for i in range(3):
    for j in range(3):
      assert got[0, i, j, 0] == x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, 0].max()


@pytest.mark.parametrize('batch_norm', [False, True])
def test_grouped_conv_parameter_count(batch_norm):
  block = nnx.eval_shape(lambda: layers.ConvBNReLU(8, 6, 3, padding=1, groups=2,
                                                   batch_norm=batch_norm, rngs=nnx.Rngs(0)))
  assert block.conv.kernel.shape == (3, 3, 4, 6)
  # in/2 · out · k · k weights, then out biases (no BN) or out scales + out shifts (BN).
  expected = 8 // 2 * 6 * 3 * 3 + (2 * 6 if batch_norm else 6)
  assert layers.num_params(block) == expected


def test_max_pool_refuses_an_input_smaller_than_its_window():
  with pytest.raises(ValueError, match='smaller than the 3-pixel window'):
    layers.max_pool(jnp.zeros((1, 1, 1, 4)), 3, 1, ceil_mode=True)
