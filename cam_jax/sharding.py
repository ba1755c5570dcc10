"""Device mesh, shardings and multi-host set-up.

One code path for 1 CPU, 8 GPUs or a TPU pod (DESIGN.md §2): `jax.jit` over a 1-D mesh
whose axis `data` carries the batch; parameters and optimizer state are replicated.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  # Auto axes: the compiler propagates shardings as in classic jit. The Explicit default of
  # jax.make_mesh would make every reshape of a sharded batch spell out its sharding.
  return Mesh(np.asarray(devices), (DATA_AXIS,),
              axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `data`, the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = 'batch_size') -> int:
  """The per-process batch; raises unless the global batch splits evenly over the mesh."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f'config.{what}={global_batch} must be a multiple of the number of '
                     f'devices ({n})')
  return global_batch // jax.process_count()


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays, split over `data`, from this process's share of the batch."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree`, whole, on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def distributed_requested(enabled: bool, environ: Mapping[str, str] = os.environ) -> bool:
  """Whether to join a multi-process cluster: the config says so, or the launcher does
  (JAX_COORDINATOR_ADDRESS set; SLURM with several tasks; a multi-host Cloud TPU VM)."""
  return (enabled or bool(environ.get('JAX_COORDINATOR_ADDRESS'))
          or int(environ.get('SLURM_NTASKS', '1') or 1) > 1
          or ',' in environ.get('TPU_WORKER_HOSTNAMES', ''))


def maybe_initialize_distributed(enabled: bool) -> None:
  """`jax.distributed.initialize()` for multi-host runs (TPU pods, SLURM, GPU clusters).

  With no arguments JAX reads the cluster from the environment (Cloud TPU metadata,
  SLURM variables, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
  """
  if distributed_requested(enabled) and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def to_host(tree: Any, mesh: Mesh) -> Any:
  """numpy arrays of this process's rows of batch-sharded global arrays, in its input order."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    tree = multihost_utils.global_array_to_host_local_array(tree, mesh, P(DATA_AXIS))
  return jax.tree.map(np.asarray, tree)


def sum_across_processes(counts: dict[str, Any]) -> dict[str, Any]:
  """Element-wise sum of per-process counters, scalars or arrays (identity with one
  process). One all-gather of everything, flattened into a float64 vector."""
  if jax.process_count() == 1:
    return counts
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  keys = sorted(counts)
  arrays = [np.asarray(counts[k], np.float64) for k in keys]
  flat = np.concatenate([a.ravel() for a in arrays])
  summed = multihost_utils.process_allgather(flat).sum(0)
  out, start = {}, 0
  for key, a in zip(keys, arrays):
    part = summed[start:start + a.size].reshape(a.shape)
    out[key] = part if a.ndim else float(part)
    start += a.size
  return out
