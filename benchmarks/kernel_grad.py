r"""Kernel gradients of a 3×3 convolution (stride 1, padding 1) on CPU, formulation by formulation.

  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/kernel_grad.py \
      [--shapes=64x32x32x64x64,8x224x224x64x64] [--rounds=7]

Issue 17, item 2: a kernel gradient that copies neither a shifted input per tap (what
`cam_jax.models.cpu_ops.kernel_grad_by_taps` does) nor runs XLA's whole-map window. Each
shape is BxHxWxCxO (input B×H×W×C, gradient B×H×W×O); each formulation is jitted alone
and checked against XLA's before it is timed (median of `--rounds` calls after one):

- `xla`: `jax.vjp` of `lax.conv_general_dilated` in the kernel (XLA's own gradient);
- `taps`: the package's: per tap, the padded input shifted and strided, one matmul each;
- `flat`: the padded input flattened to rows (B·(H+2)·(W+2), C), where every tap's
  window is one contiguous run of rows, the gradient laid in the same frame: per tap a
  contiguous row slice and a matmul, no strided copy;
- `rows3`: the flat frame with the three column taps side by side (one 3× copy), then
  one matmul per kernel row, each a contiguous slice: 3 matmuls of (3C, ·) @ (·, O);
- `im2col`: all nine shifted copies side by side, one (9C, ·) @ (·, O) matmul.

Without huge pages every call faults its fresh temporaries in 4 KB at a time (cam_jax.huge_pages),
which swamps the differences; run it with the tunable.
"""
import os
import sys
import time

from absl import app, flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax.models import cpu_ops

_SHAPES = flags.DEFINE_list(
    'shapes', ['64x32x32x64x64', '64x32x32x32x64', '64x64x64x16x16', '8x224x224x64x64',
               '8x112x112x128x128'],
    'BxHxWxCxO each: the default network\'s layers at batch 64, then VGGnet-GAP\'s first '
    'two stages at batch 8.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Timed calls per formulation; the median.')


def xla(x, g):
  def conv(kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  kernel = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
  return jax.vjp(conv, kernel)[1](g)[0]


def taps(x, g):
  return cpu_ops.kernel_grad_by_taps(x, g, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _frame(x, g):
  """x padded and flattened to rows, g in the same frame (zeros off the outputs), and the
  number of rows a window's top-left corner can sit on."""
  B, H, W, C = x.shape
  O = g.shape[-1]
  rows = B * (H + 2) * (W + 2)
  x_RC = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(rows, C)
  g_RO = jnp.pad(g, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(rows, O)
  return x_RC, g_RO, rows - 2 * (W + 2) - 2


def flat(x, g):
  W, C, O = x.shape[2], x.shape[3], g.shape[3]
  x_RC, g_RO, n = _frame(x, g)

  def tap(t):
    window = lax.dynamic_slice(x_RC, ((t // 3) * (W + 2) + t % 3, 0), (n, C))
    return jnp.matmul(window.T, g_RO[:n], preferred_element_type=jnp.float32)

  return lax.map(tap, jnp.arange(9)).reshape(3, 3, C, O)


def rows3(x, g):
  W, C, O = x.shape[2], x.shape[3], g.shape[3]
  x_RC, g_RO, n = _frame(x, g)
  span = n + 2 * (W + 2)
  x3 = jnp.concatenate([x_RC[j:j + span] for j in range(3)], axis=1)  # (span, 3C)

  def row(i):
    window = lax.dynamic_slice(x3, (i * (W + 2), 0), (n, 3 * C))
    return jnp.matmul(window.T, g_RO[:n], preferred_element_type=jnp.float32)

  return lax.map(row, jnp.arange(3)).reshape(3, 3, C, O)


def im2col(x, g):
  _, H, W, C = x.shape
  O = g.shape[-1]
  x_p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([x_p[:, i:i + H, j:j + W] for i in range(3) for j in range(3)],
                            axis=3).reshape(-1, 9 * C)
  return jnp.matmul(patches.T, g.reshape(-1, O),
                    preferred_element_type=jnp.float32).reshape(3, 3, C, O)


FORMULATIONS = {'xla': xla, 'taps': taps, 'flat': flat, 'rows3': rows3, 'im2col': im2col}


def _time(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_ROUNDS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  print(f'# {time.strftime("%Y-%m-%d %H:%M", time.gmtime())} UTC, {os.cpu_count()} cores, '
        f'load {os.getloadavg()[0]:.2f}, jax {jax.__version__}, GLIBC_TUNABLES='
        f'{os.environ.get("GLIBC_TUNABLES")}; ms per kernel gradient, median of '
        f'{_ROUNDS.value}')
  print('| BxHxWxCxO | ' + ' | '.join(FORMULATIONS) + ' |')
  print('|---|' + '---:|' * len(FORMULATIONS))
  for shape in _SHAPES.value:
    B, H, W, C, O = (int(v) for v in shape.split('x'))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(B, H, W, C)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(B, H, W, O)), jnp.float32)
    want = np.asarray(jax.jit(xla)(x, g))
    cells = []
    for name, formulation in FORMULATIONS.items():
      fn = jax.jit(formulation)
      np.testing.assert_allclose(np.asarray(fn(x, g)), want, rtol=1e-4,
                                 atol=1e-4 * np.abs(want).max(), err_msg=name)
      cells.append(f'{_time(fn, x, g) * 1e3:.1f}')
    print(f'| {shape} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
  app.run(main)
