"""Models with NumPy-drawn parameters, for tests that need a real network quickly."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def random_model(build, seed=0):
  """`build()` with He-normal kernels and small random biases drawn by NumPy.

  NNX's own initialisers compile one XLA program per parameter shape: tens of seconds for
  a GoogLeNet on two CPU cores. BatchNorm starts at scale 1, mean 0, var 1.
  """
  graphdef, state = nnx.split(nnx.eval_shape(build))
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)

  def fill(path, leaf):
    name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.standard_normal(leaf.shape, np.float32) * np.float32(np.sqrt(2 / fan_in))
    elif name == 'bias':
      value = rng.normal(0, 0.1, leaf.shape).astype(np.float32)
    elif name in ('scale', 'var'):
      value = np.ones(leaf.shape, leaf.dtype)
    else:  # BN mean, RNG counts
      value = np.zeros(leaf.shape, leaf.dtype)
    return jnp.asarray(value)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
