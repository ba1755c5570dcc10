"""One process of the exact-sum test: `python -m tests.sum_worker OUT_DIR`, started N
times by tests/multiprocess.py. Process i contributes counters that do not fit 32 bits;
each process writes the sums it got to OUT_DIR/sums_<i>.json."""

import json
import os
import sys

import jax
import numpy as np

from cam_jax import sharding


def contribution(index: int) -> dict:
  """What process `index` adds: above 2**31 and 2**32, near the per-process limit, and 0."""
  return {'scalar': 3 * 2**31 + index,
          'array': np.array([2**40 + 7 * index, 0, 2**62 - 1 - index, index], np.int64),
          'small': index + 1}


def main(out_dir: str) -> None:
  sharding.maybe_initialize_distributed(False)  # the launcher's variables ask for it
  assert not jax.config.jax_enable_x64  # the case where a gather would cut int64 to int32
  sums = sharding.sum_across_processes(contribution(jax.process_index()))
  with open(os.path.join(out_dir, f'sums_{jax.process_index()}.json'), 'w') as f:
    json.dump({'process_count': jax.process_count(), 'scalar': sums['scalar'],
               'array': [int(v) for v in sums['array']], 'small': sums['small'],
               'scalar_type': type(sums['scalar']).__name__}, f)


if __name__ == '__main__':
  main(sys.argv[1])
