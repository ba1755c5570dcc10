"""Real multi-process JAX jobs on this machine, for tests: N processes of a Python module
(the real entry point, `cam_jax.main`), each with its own CPU devices, joined through a
coordinator on localhost, as `jax.distributed` joins the hosts of a cluster.

`launch(...)` starts them (the way the README's by-hand recipe does, or with the
variables SLURM's srun sets); `Job.wait()` collects their exit codes and logs, killing
all of them if one fails or the time runs out, so that a hung collective never hangs the
suite.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SLURM's coordinator port is derived from the job id (jax's SlurmCluster).
_SLURM_FIRST_PORT = 65535 - 2**12 + 1


def free_port(low: int = 0, high: int = 0) -> int:
  """A TCP port free on localhost now (any, or the first free one in [low, high))."""
  for port in (range(low, high) if high else [0]):
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', port))
      except OSError:
        continue
      return s.getsockname()[1]
  raise RuntimeError(f'no free port in [{low}, {high})')


@dataclasses.dataclass
class Result:
  returncode: int
  log: str  # stdout and stderr together


@dataclasses.dataclass
class Job:
  procs: list[subprocess.Popen]
  log_paths: list[str]

  def log(self, index: int) -> str:
    with open(self.log_paths[index], errors='replace') as f:
      return f.read()

  def wait_for(self, index: int, text: str, timeout: float) -> None:
    """Blocks until process `index` has logged `text`; raises if it ended or the time ran
    out first (after stopping every process)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      if text in self.log(index):
        return
      if self.procs[index].poll() is not None:
        break
      time.sleep(0.05)
    self.kill()
    raise AssertionError(f'process {index} never logged {text!r}; its log ends:\n'
                         f'{self.log(index)[-3000:]}')

  def signal(self, index: int, signum: int = signal.SIGTERM) -> None:
    self.procs[index].send_signal(signum)

  def kill(self) -> None:
    """SIGKILL to every process and its children (grain and box-stage workers, which a
    killed parent cannot stop): each process leads a process group of its own."""
    for proc in self.procs:
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    for proc in self.procs:
      proc.wait()

  def wait(self, timeout: float = 300) -> list[Result]:
    """Every process's exit code and log. A process that fails stops the others (they
    would wait for it in the next collective until their own timeouts)."""
    deadline = time.time() + timeout
    while any(p.poll() is None for p in self.procs):
      failed = [p for p in self.procs if p.poll() not in (None, 0)]
      if failed or time.time() > deadline:
        time.sleep(2)  # let the others report what they saw
        self.kill()
        break
      time.sleep(0.1)
    return [Result(p.returncode, self.log(i)) for i, p in enumerate(self.procs)]


def launch(args: list[str], *, num_processes: int, devices_per_process: int, log_dir: str,
           module: str = 'cam_jax.main', launcher: str = 'env',
           extra_env: dict[str, str] | None = None) -> Job:
  """Starts `python -m module *args` as `num_processes` processes of
  `devices_per_process` CPU devices each.

  `launcher`: 'env' sets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
  (the README's by-hand recipe); 'slurm' sets the variables srun sets, for JAX's own
  cluster detection. One process gets neither: a plain single-process run.
  """
  os.makedirs(log_dir, exist_ok=True)
  base = {**os.environ, **(extra_env or {}), 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices_per_process}',
          'PYTHONPATH': REPO}
  for key in [k for k in base if k.startswith(('JAX_COORDINATOR', 'JAX_NUM_PROCESSES',
                                               'JAX_PROCESS_ID', 'SLURM_'))]:
    del base[key]
  if launcher == 'slurm':
    port = free_port(_SLURM_FIRST_PORT + 1000, 65536)
    job_env = {'SLURM_JOB_ID': str(port - _SLURM_FIRST_PORT), 'SLURM_STEP_NODELIST': 'localhost',
               'SLURM_NTASKS': str(num_processes)}
  elif launcher == 'env':
    job_env = {'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{free_port()}',
               'JAX_NUM_PROCESSES': str(num_processes)}
  else:
    raise ValueError(f"launcher must be 'env' or 'slurm', got {launcher!r}")
  procs, log_paths = [], []
  for index in range(num_processes):
    env = dict(base)
    if num_processes > 1:
      env.update(job_env)
      env.update({'SLURM_PROCID': str(index), 'SLURM_LOCALID': str(index)}
                 if launcher == 'slurm' else {'JAX_PROCESS_ID': str(index)})
    path = os.path.join(log_dir, f'process_{index}.log')
    with open(path, 'w') as log:
      procs.append(subprocess.Popen([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True))
    log_paths.append(path)
  return Job(procs, log_paths)


def run(args: list[str], *, timeout: float = 300, **kwargs) -> list[Result]:
  """`launch(...)`, then `wait`; raises with the logs unless every process exits 0."""
  results = launch(args, **kwargs).wait(timeout)
  check(results)
  return results


def check(results: list[Result], returncode: int = 0) -> None:
  bad = [(i, r) for i, r in enumerate(results) if r.returncode != returncode]
  if bad:
    raise AssertionError('\n\n'.join(
        f'process {i} exited {r.returncode} (expected {returncode}); its log ends:\n'
        f'{r.log[-4000:]}' for i, r in bad))
