r"""What the per-step preemption check costs in a multi-process run.

  python benchmarks/preemption_check.py [--processes=2] [--steps=300] [--rounds=3]

Starts N processes of itself on this machine (1 CPU device each, a localhost coordinator,
as the README's by-hand recipe) and times the train step of `configs/synthetic_gap.py:tiny`
(global batch 16, 32×32) three ways, A B C A B C, in one run:

- `none`: no check (the floor);
- `all-gather`: what train.Preemption did before: every step all-gathers the SIGTERM flag,
  a collective that waits for the step before it, so the host can never queue steps ahead;
- `sync point`: JAX's `multihost_utils.reached_preemption_sync_point(step)`, what it does
  now: a call into the coordination service's client, no collective.

Prints the check alone (ms per call, nothing queued) and ms per train step with it
(median over rounds), against `none`.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ('none', 'all-gather', 'sync point')


def _child(steps: int, rounds: int) -> None:
  sys.path.insert(0, REPO)
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from cam_jax import sharding, train
  from configs import synthetic_gap

  sharding.maybe_initialize_distributed(False)  # the launcher's variables ask for it
  mesh = sharding.make_mesh()
  config = synthetic_gap.get_config('tiny')
  graphdef, state = train.create_train_state(config, num_classes=4)
  state = sharding.replicate(state, mesh)
  step_fn = train.make_train_step(graphdef, mesh)
  rng = np.random.default_rng(jax.process_index())
  local = config.batch_size // jax.process_count()
  batch = sharding.shard_batch({
      'image': rng.normal(size=(local, 32, 32, 3)).astype(np.float32),
      'label': rng.integers(0, 4, local).astype(np.int32)}, mesh)
  counter = [0]

  def check(mode: str) -> bool:
    counter[0] += 1
    if mode == 'all-gather':
      return bool(np.max(multihost_utils.process_allgather(np.int32(0))))
    if mode == 'sync point':
      return multihost_utils.reached_preemption_sync_point(counter[0])
    return False

  for mode in MODES:  # compile, and warm every path
    for _ in range(5):
      state, _ = step_fn(state, batch)
      check(mode)
  jax.block_until_ready(state)
  # The check alone, with nothing queued on the devices.
  alone = {}
  for mode in MODES:
    multihost_utils.sync_global_devices(f'alone {mode}')
    start = time.perf_counter()
    for _ in range(steps):
      check(mode)
    alone[mode] = (time.perf_counter() - start) / steps * 1e3
  times = {mode: [] for mode in MODES}
  for _ in range(rounds):
    for mode in MODES:
      multihost_utils.sync_global_devices(f'start {mode}')
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = step_fn(state, batch)
        check(mode)
      jax.block_until_ready((state, metrics))
      times[mode].append((time.perf_counter() - start) / steps * 1e3)
  if jax.process_index() == 0:
    print(json.dumps({'devices': jax.device_count(), 'processes': jax.process_count(),
                      'ms_per_step': times, 'ms_per_check': alone}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args.steps, args.rounds)
    return
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = []
  for index in range(args.processes):
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
           'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
           'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
           'JAX_NUM_PROCESSES': str(args.processes), 'JAX_PROCESS_ID': str(index)}
    procs.append(subprocess.Popen(
        [sys.executable, __file__, '--child', f'--steps={args.steps}',
         f'--rounds={args.rounds}'], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True))
  outputs = [p.communicate()[0] for p in procs]
  if any(p.returncode for p in procs):
    raise SystemExit(f'a process failed: exit codes {[p.returncode for p in procs]}')
  result = json.loads(outputs[0].strip().splitlines()[-1])
  ms = {mode: sorted(v)[len(v) // 2] for mode, v in result['ms_per_step'].items()}
  print(f'{result["processes"]} processes, {result["devices"]} CPU devices, tiny_gap '
        f'train step, global batch 16, {args.steps} steps × {args.rounds} rounds '
        '(median):')
  print('| check | the check alone, ms | ms per train step | against none |\n'
        '|---|---:|---:|---:|')
  for mode in MODES:
    print(f'| {mode} | {result["ms_per_check"][mode]:.4f} | {ms[mode]:.2f} | '
          f'{ms[mode] - ms["none"]:+.2f} ms |')


if __name__ == '__main__':
  main()
