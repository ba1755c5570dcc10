"""Device mesh, shardings and multi-host set-up.

One code path for 1 CPU, 8 GPUs or a TPU pod: `jax.jit` over a 1-D mesh whose axis `data`
carries the batch; parameters and optimizer state are replicated. Several processes (one
per host, or several on one machine) join through `jax.distributed`; what they exchange
outside the jitted steps (counts, barriers) goes through the helpers here.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cam_jax import io_utils

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


_ENV_ARGS = (('JAX_NUM_PROCESSES', 'num_processes'), ('JAX_PROCESS_ID', 'process_id'))


def distributed_args(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
  """The arguments of `jax.distributed.initialize` that the environment gives by hand.

  JAX reads JAX_COORDINATOR_ADDRESS itself but not the process count and id, which it
  expects from a cluster it detects (SLURM, Cloud TPU, Kubernetes, MPI): by hand, they
  come from JAX_NUM_PROCESSES and JAX_PROCESS_ID. Raises naming a variable that is not a
  whole number.
  """
  args: dict[str, Any] = {}
  for variable, arg in _ENV_ARGS:
    value = environ.get(variable, '').strip()
    if not value:
      continue
    if not value.isdigit():
      raise ValueError(f'{variable}={value!r}: expected a whole number')
    args[arg] = int(value)
  if len(args) == 1:
    (given, _), (missing, _) = sorted(_ENV_ARGS, key=lambda va: va[1] not in args)
    raise ValueError(f'{given} is set but not {missing}: a process needs both (or neither, '
                     'where the cluster is detected: SLURM, Cloud TPU)')
  return args


def maybe_initialize_distributed(enabled: bool,
                                 environ: Mapping[str, str] = os.environ) -> None:
  """`jax.distributed.initialize` for multi-process runs (TPU pods, SLURM, GPU clusters,
  several CPU processes), when `distributed_requested`; must run before anything else
  touches a device.

  The cluster comes from JAX's own detection (Cloud TPU metadata, SLURM variables) and
  from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID given by hand.
  Collectives between CPU processes go over gloo, unless another implementation is
  configured.
  """
  if not distributed_requested(enabled, environ) or jax.distributed.is_initialized():
    return
  if not jax.config.jax_cpu_collectives_implementation:
    # Without it, a computation spanning CPU devices of several processes cannot run.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**distributed_args(environ))


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier `name` (nothing with one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def to_host(tree: Any, mesh: Mesh) -> Any:
  """numpy arrays of this process's rows of batch-sharded global arrays, in its input order."""
  if jax.process_count() > 1:
    tree = multihost_utils.global_array_to_host_local_array(tree, mesh, P(DATA_AXIS))
  return jax.tree.map(np.asarray, tree)


# Counters travel between processes as 31-bit limbs in int32, whatever jax_enable_x64
# says: with it off, a gather turns int64 into int32 and float64 into float32.
_LIMB_BITS = 31
MAX_COUNT = 2**62  # per process


def sum_across_processes(counts: Mapping[str, Any]) -> dict[str, Any]:
  """Exact element-wise sums over processes of non-negative integer counters (Python ints
  or integer arrays): ints come back as ints, arrays as int64 arrays.

  Exact below `MAX_COUNT` per process: every counter is split into two 31-bit limbs, one
  all-gather moves them as int32, and the host adds them up exactly. Raises TypeError
  naming a counter that is not an integer (sums of fractions must be made integers
  first, e.g. fixed point, so that they do not depend on the order of addition).
  """
  keys = sorted(counts)
  arrays = [_check_count(key, counts[key]) for key in keys]
  if jax.process_count() > 1:
    flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.int64)
    mask = (1 << _LIMB_BITS) - 1
    limbs = np.concatenate([flat & mask, flat >> _LIMB_BITS]).astype(np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(limbs)).astype(np.int64)
    low, high = gathered.sum(0).reshape(2, -1)
    totals = [(int(h) << _LIMB_BITS) + int(l) for h, l in zip(high, low)]  # Python ints
    if totals and max(totals) >= 2**63:
      raise OverflowError(f'a sum over {jax.process_count()} processes reaches 2**63')
    flat = np.asarray(totals, np.int64)
    parts, start = [], 0
    for a in arrays:
      parts.append(flat[start:start + a.size].reshape(a.shape))
      start += a.size
    arrays = parts
  return {key: int(a) if np.ndim(counts[key]) == 0 else a for key, a in zip(keys, arrays)}


def _check_count(key: str, value: Any) -> np.ndarray:
  array = np.asarray(value)
  if array.dtype == bool or array.dtype.kind not in 'iu':
    raise TypeError(f'counter {key!r} is {array.dtype}, not an integer: only integer counts '
                    'are summed across processes (exactly)')
  array = array.astype(np.int64)
  if array.size and (array.min() < 0 or array.max() >= MAX_COUNT):
    raise ValueError(f'counter {key!r} must be in [0, 2**62), got {array.min()}..{array.max()}')
  return array


def write_jsonl_from_processes(path: str, records: Sequence[Mapping[str, Any]],
                               sort_key: str = 'index') -> None:
  """Every process's `records` into one JSON-lines file, one record a line in
  `sort_key` order. A collective: each process writes its part beside `path` (a folder
  every process sees), and once all are written process 0 merges them into `path`
  atomically and removes them, so that a reader never sees a partial file."""
  index, count = jax.process_index(), jax.process_count()
  part = f'{path}.part-{index}-of-{count}'
  io_utils.atomic_write_text(part, ''.join(json.dumps(r) + '\n' for r in records))
  sum_across_processes({'parts': 1})  # a barrier: every part is on disk past it
  if index != 0:
    return
  merged = []
  for p in range(count):
    part = f'{path}.part-{p}-of-{count}'
    if not os.path.exists(part):
      raise FileNotFoundError(f'{part} (the records of process {p}) is missing: {path} must '
                              'be in a folder every process sees')
    with open(part, encoding='utf-8') as f:
      merged += [json.loads(line) for line in f]
  merged.sort(key=lambda r: r[sort_key])
  io_utils.atomic_write_text(path, ''.join(json.dumps(r) + '\n' for r in merged))
  for p in range(count):
    os.remove(f'{path}.part-{p}-of-{count}')
