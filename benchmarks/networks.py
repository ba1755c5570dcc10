r"""Parameters, FLOPs and speed of every registered network at one input size.

  python benchmarks/networks.py [--size=224] [--batch=8] [--models=vgg16_gap,googlenet_gap]

FLOPs per image are XLA's cost analysis of the compiled forward pass (multiply and add
counted separately), divided by the batch. Speeds: forward and train step (SGD, the
same jitted step as cam_jax.train) in images/s, median of `--repeats` timed calls after
one compile call.
"""

import os
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax import models, sharding, train
from cam_jax.models import layers
from configs import common

_SIZE = flags.DEFINE_integer('size', 224, 'Input side.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Batch size.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement.')
_MODELS = flags.DEFINE_list('models', None, 'Registry names (default: all but tiny_*).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classes of the head.')


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def measure(name: str, size: int, batch: int, repeats: int, num_classes: int) -> dict:
  config = common.get_common()
  config.model.name = name
  mesh = sharding.make_mesh()
  graphdef, state = train.create_train_state(config, num_classes)
  state = sharding.replicate(state, mesh)
  model = nnx.merge(graphdef, state)[0]
  images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)),
                       jnp.float32)
  labels = jnp.zeros((batch,), jnp.int32)
  m_graphdef, m_state = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(m_graphdef, s)(x, train=False)[0])
  flops = forward.lower(m_state, images).compile().cost_analysis()
  flops = flops[0] if isinstance(flops, list) else flops
  jax.block_until_ready(forward(m_state, images))
  t_fwd = _median_time(lambda: forward(m_state, images), repeats)
  step = train.make_train_step(graphdef, mesh)
  batch_ = sharding.shard_batch({'image': np.asarray(images), 'label': np.asarray(labels)}, mesh)
  state, _ = step(state, batch_)
  jax.block_until_ready(state)
  holder = [state]

  def one_step():
    holder[0], metrics = step(holder[0], batch_)
    return metrics['loss']

  t_train = _median_time(one_step, repeats)
  return {'params': layers.num_params(model), 'gflops': flops['flops'] / batch / 1e9,
          'forward': batch / t_fwd, 'train': batch / t_train}


def main(argv):
  del argv
  names = _MODELS.value or [n for n in models.MODELS if not n.startswith('tiny')]
  print(f'# {jax.devices()[0].device_kind}, {os.cpu_count()} cores, '
        f'input {_SIZE.value}, batch {_BATCH.value}, jax {jax.__version__}, '
        f'{time.strftime("%Y-%m-%d")}')
  print('| network | params | GFLOPs/image (XLA) | forward img/s | train step img/s |')
  print('|---|---:|---:|---:|---:|')
  for name in names:
    r = measure(name, _SIZE.value, _BATCH.value, _REPEATS.value, _NUM_CLASSES.value)
    print(f'| {name} | {r["params"]:,} | {r["gflops"]:.2f} | {r["forward"]:.1f} | '
          f'{r["train"]:.2f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
