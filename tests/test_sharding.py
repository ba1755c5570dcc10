"""Multi-process helpers that can be checked in one process (the rest run for real in
test_multiprocess.py)."""

import numpy as np
import pytest

from cam_jax import sharding


def test_the_by_hand_variables_reach_jax_distributed_initialize():
  """JAX reads JAX_COORDINATOR_ADDRESS itself, but not these two (its own detection covers
  SLURM and Cloud TPU): without them, `initialize()` fails with 'Number of processes must
  be defined'."""
  assert sharding.distributed_args({'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}) == {
      'num_processes': 4, 'process_id': 3}
  assert sharding.distributed_args({'SLURM_NTASKS': '4'}) == {}  # left to JAX's detection
  with pytest.raises(ValueError, match='JAX_NUM_PROCESSES is set but not JAX_PROCESS_ID'):
    sharding.distributed_args({'JAX_NUM_PROCESSES': '2'})
  with pytest.raises(ValueError, match="JAX_PROCESS_ID='one': expected a whole number"):
    sharding.distributed_args({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': 'one'})


def test_only_integer_counts_are_summed():
  got = sharding.sum_across_processes({'n': 3, 'big': np.int64(2**40), 'hist': np.arange(3)})
  assert got == {'n': 3, 'big': 2**40, 'hist': got['hist']} and type(got['n']) is int
  np.testing.assert_array_equal(got['hist'], [0, 1, 2])
  assert got['hist'].dtype == np.int64
  # A float sum depends on the order of addition: it must be made an integer first.
  with pytest.raises(TypeError, match="counter 'iou' is float64, not an integer"):
    sharding.sum_across_processes({'iou': 0.5})
  with pytest.raises(ValueError, match=r"counter 'n' must be in \[0, 2\*\*62\)"):
    sharding.sum_across_processes({'n': -1})
