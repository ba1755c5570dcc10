"""The CPU forms of convolution and max pooling (cam_jax.models.cpu_ops) give the plain
ops' values and gradients, and only CPU programs use them."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax import models
from cam_jax.models import cpu_ops
from cam_jax.models import layers

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# (kernel, stride, padding, groups) of the convolutions of each network family.
CONVS = {
    'googlenet': [(7, 2, 3, 1), (1, 1, 0, 1), (3, 1, 1, 1), (5, 1, 2, 1), (3, 1, 1, 2)],
    'vgg': [(3, 1, 1, 1), (3, 1, 1, 2)],
    'alexnet': [(11, 4, 2, 1), (11, 4, 0, 1), (5, 1, 2, 2), (3, 1, 1, 2)],
    'nin': [(11, 4, 0, 1), (1, 1, 0, 1), (5, 1, 2, 1)],
    'small': [(3, 1, 'SAME', 1)],
}
# (window, stride, padding, ceil_mode) of each family's max pools (layers.max_pool).
POOLS = {
    'googlenet': [(3, 2, 0, True), (3, 1, 1, True)],
    'vgg': [(2, 2, 0, False)],
    'alexnet': [(3, 2, 0, False), (3, 2, 0, True), (3, 1, 0, True)],
    'nin': [(3, 2, 0, True)],
    'small': [(2, 2, 0, False)],
}
TOLERANCE = {'float32': 2e-5, 'bfloat16': 3e-2}


def _grads(fn, *args, enabled):
  """Values and gradients of `sum(fn(...) * weights)`, traced with or without the CPU
  forms (a fresh jit: the switch is read when tracing)."""
  cpu_ops.ENABLED = enabled
  try:
    def loss(*a):
      y = fn(*a)
      w = jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
      return jnp.sum(y.astype(jnp.float32) * w), y
    (_, y), g = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))),
                                           has_aux=True))(*args)
    return np.asarray(y, np.float32), [np.asarray(a, np.float32) for a in g]
  finally:
    cpu_ops.ENABLED = True


def _close(a, b, dtype):
  scale = max(float(np.abs(b).max()), 1e-6)
  np.testing.assert_allclose(a / scale, b / scale, atol=TOLERANCE[dtype])


# Each configuration once, under the first family that has it.
_UNIQUE_CONVS = list({c: f for f, cs in reversed(CONVS.items()) for c in cs}.items())
_UNIQUE_POOLS = list({p: f for f, ps in reversed(POOLS.items()) for p in ps}.items())


# bf16 for the forms that differ most: groups, a stride, a large kernel.
_BF16_CONVS = [(3, 1, 1, 2), (5, 1, 2, 2), (7, 2, 3, 1), (3, 1, 'SAME', 1)]


@pytest.mark.parametrize('conv,family,dtype',
                         [(c, f, 'float32') for c, f in _UNIQUE_CONVS] +
                         [(c, f, 'bfloat16') for c, f in _UNIQUE_CONVS if c in _BF16_CONVS])
def test_conv_values_and_gradients_equal_the_plain_op(family, conv, dtype):
  kernel, stride, padding, groups = conv
  rng = np.random.default_rng(zlib.crc32(repr((family, conv)).encode()))
  size = 19 if kernel >= 7 else 9
  x = jnp.asarray(rng.normal(size=(2, size, size, 4)), dtype)
  k = jnp.asarray(rng.normal(size=(kernel, kernel, 4 // groups, 6)), dtype)
  pads = padding if isinstance(padding, str) else [(padding, padding)] * 2

  def fn(x, k):
    return cpu_ops.conv_general_dilated(x, k, (stride, stride), pads, dimension_numbers=_NHWC,
                                        feature_group_count=groups)

  y, g = _grads(fn, x, k, enabled=True)
  y0, g0 = _grads(fn, x, k, enabled=False)
  _close(y, y0, dtype)
  for a, b in zip(g, g0):
    _close(a, b, dtype)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('pool,family', _UNIQUE_POOLS)
def test_max_pool_gradients_equal_xlas_ties_included(family, pool, dtype):
  """Small integers make many ties: the gradient goes to the first maximum of each
  window, as XLA's does."""
  window, stride, padding, ceil_mode = pool
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.integers(0, 4, size=(2, 13, 12, 3)), dtype)

  def fn(x):
    return layers.max_pool(x, window, stride, padding=padding, ceil_mode=ceil_mode)

  y, (g,) = _grads(fn, x, enabled=True)
  y0, (g0,) = _grads(fn, x, enabled=False)
  np.testing.assert_array_equal(y, y0)
  _close(g, g0, dtype)


def test_a_whole_network_trains_the_same(dtype='float32'):
  model = models.get_model('tiny_gap', num_classes=4, rngs=nnx.Rngs(0), dtype=jnp.dtype(dtype))
  graphdef, state = nnx.split(model)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(4, 32, 32, 3)), jnp.float32)

  def logits(state, images):
    return nnx.merge(graphdef, state)(images, train=False)[0]

  def grads(enabled):
    cpu_ops.ENABLED = enabled
    try:
      fn = jax.jit(jax.grad(lambda s: jnp.sum(logits(s, images).astype(jnp.float32) ** 2)))
      return jax.tree.map(lambda a: np.asarray(a, np.float32), fn(state))
    finally:
      cpu_ops.ENABLED = True

  for a, b in zip(jax.tree.leaves(grads(True)), jax.tree.leaves(grads(False))):
    _close(a, b, dtype)


def _exported(platform):
  # 16 input channels a group: 9 × 16 > cpu_ops.SMALL_PATCH, the taps' loop.
  x = jnp.ones((2, 8, 8, 32))
  k = jnp.ones((3, 3, 16, 6))

  def f(x, k):
    y = cpu_ops.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=_NHWC,
                                     feature_group_count=2)
    return cpu_ops.max_pool(y, 2, 2).sum()

  grad = jax.jit(jax.grad(f, argnums=(0, 1)))
  return jax.export.export(grad, platforms=[platform])(x, k).mlir_module()


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
def test_other_platforms_lower_the_plain_ops(platform):
  text = _exported(platform)
  assert 'feature_group_count = 2' in text  # one grouped convolution, not split
  assert 'select_and_scatter' in text  # XLA's max-pool gradient
  assert 'dot_general' not in text  # no kernel gradient by taps


def test_cpu_lowers_the_cpu_forms():
  text = _exported('cpu')
  assert 'feature_group_count = 2' not in text
  assert 'select_and_scatter' not in text
  assert text.count('dot_general') >= 2  # each group's kernel gradient, tap by tap
  assert 'stablehlo.while' in text  # the taps' loop
