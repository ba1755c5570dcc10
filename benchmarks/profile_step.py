r"""Where one train step's time goes: a step under `jax.profiler`, thunk times summed by name.

  python benchmarks/profile_step.py --model=vgg16_gap [--size=224] [--batch=8]
  python benchmarks/profile_step.py --config=configs/synthetic_gap.py [--size=32]  # its own step

Times `--timed` steps and counts their page faults, then profiles one. With
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in the environment, as `python -m cam_jax.main`
sets it (cam_jax.huge_pages), the heap is in transparent huge pages.

Runs the real `train.make_train_step` (SGD momentum, as benchmarks/torch_compare.py; or a
config file's model, optimizer, batch size and image size with `--config`, the size
replaced by `--size` when given) over
a 1-device mesh, two warm-up steps, then one step traced; prints the longest thunks and
the sums by kind (YNN convolution fusions, dots, slices, loops...). The thunks overlap on
several cores and the profiler slows the step: read the shares, not the totals.
"""
import collections
import glob
import gzip
import json
import os
import resource
import sys
import tempfile
import time

from absl import app, flags
import jax
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax import sharding, train
from configs import common

_MODEL = flags.DEFINE_string('model', 'vgg16_gap', 'A registered model.')
_SIZE = flags.DEFINE_integer('size', 224, 'Input side.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Batch size.')
_TOP = flags.DEFINE_integer('top', 20, 'Thunks listed.')
_TIMED = flags.DEFINE_integer('timed', 8, 'Steps timed (untraced) before the profiled one.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A config file: its model, optimizer, batch and image size replace '
    '--model, --batch and --size.', lock_config=False)
KINDS = ('ynn', 'xnn', 'convolution', 'dot', 'while', 'reduce-window', 'select', 'slice',
         'pad', 'concatenate', 'transpose', 'copy', 'iota', 'scatter', 'fusion')


def kind(name: str) -> str:
  return next((k for k in KINDS if k in name.lower()), 'other')


def main(argv):
  del argv
  if _CONFIG.value is not None:
    config = _CONFIG.value
    name, size, batch_size = config.model.name, config.data.image_size, config.batch_size
    if _SIZE.present:  # another side, as progressive resizing trains at
      size = _SIZE.value
    num_classes = 10
  else:
    config = common.get_common()
    config.model.name = name = _MODEL.value
    config.optimizer.learning_rate, config.optimizer.momentum = 1e-3, 0.9
    config.optimizer.weight_decay = 5e-4
    size, batch_size, num_classes = _SIZE.value, _BATCH.value, 1000
  mesh = sharding.make_mesh(jax.devices()[:1])
  graphdef, state = train.create_train_state(config, num_classes)
  state = sharding.replicate(state, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({
      'image': rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
      'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh)
  step = train.make_train_step(graphdef, mesh)
  for _ in range(2):
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  # Untraced steps first: the step's time and the page faults it takes (XLA:CPU allocates
  # its temporaries at every call; cam_jax.huge_pages).
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  times = []
  for _ in range(_TIMED.value):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / max(_TIMED.value, 1)
  print(f'# {name}, batch {batch_size}, {size}×{size}: step {np.median(times) * 1e3:.0f} ms '
        f'(median of {_TIMED.value}; min {min(times, default=0) * 1e3:.0f}), {faults:,.0f} '
        f'page faults per step; GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES")}',
        flush=True)
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
    path = glob.glob(f'{folder}/**/*.trace.json.gz', recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    # Thunks only: not the executor's own spans nor Python's.
    if e.get('ph') == 'X' and 'dur' in e and not e.get('name', '').startswith(('$', 'Thunk')):
      total[e['name']] += e['dur']
      count[e['name']] += 1
  print(f'# {name}, batch {batch_size}, {size}×{size}: thunks, ms')
  for name, us in total.most_common(_TOP.value):
    print(f'{us / 1000:9.1f}  ×{count[name]:<3d} {name}')
  by_kind = collections.Counter()
  for name, us in total.items():
    by_kind[kind(name)] += us
  print('by kind, ms:', ', '.join(f'{k} {v / 1000:.0f}' for k, v in by_kind.most_common()))


if __name__ == '__main__':
  app.run(main)
