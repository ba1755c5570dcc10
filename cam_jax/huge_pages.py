"""Transparent huge pages for the host heap, set before the program starts.

XLA:CPU allocates a compiled step's temporaries afresh at every call: 311 MB for the
default network's train step. In 4 KB pages the kernel faults and zeroes them one at a
time, about 81,000 faults per step, 7-11 % of the step on 2 cores (8-10 % for
GoogLeNet-GAP's and VGGnet-GAP's; benchmarks/RESULTS.md, "A five-minute default run").
glibc 2.35 and later back malloc's memory with transparent huge pages when
`GLIBC_TUNABLES` holds `glibc.malloc.hugetlb=1` (2 MB pages: a few hundred faults per
step), but it reads the variable only when a process starts. So `reexec_with_huge_pages`
starts the same command again in the same process (`os.execve`: same process id, same
arguments, interpreter options included) with the variable set. `python -m
cam_jax.main` calls it first; `CAM_JAX_HUGE_PAGES=0` turns it off. Only there: in a
process shared with PyTorch (benchmarks/torch_compare.py) the tunable slowed both.

Nothing changes where it cannot help: not Linux, a glibc older than 2.35 or none
(musl), transparent huge pages set to `never`, or the tunable already given.
"""

from __future__ import annotations

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_version() -> tuple[int, ...] | None:
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()  # 'glibc 2.36'
  except (AttributeError, ValueError, OSError):
    return None
  if name != 'glibc':
    return None
  return tuple(int(part) for part in version.split('.')[:2] if part.isdigit())


def _thp_available() -> bool:
  try:
    with open(_THP_SETTING) as f:
      return '[never]' not in f.read()
  except OSError:
    return False


def wanted(environ: dict[str, str] | None = None) -> bool:
  """Whether a re-exec would turn huge pages on: Linux, glibc >= 2.35, transparent huge
  pages not `never`, the tunable not yet in `GLIBC_TUNABLES`, not turned off."""
  environ = os.environ if environ is None else environ
  if environ.get('CAM_JAX_HUGE_PAGES', '1') == '0' or not sys.platform.startswith('linux'):
    return False
  if 'glibc.malloc.hugetlb' in environ.get('GLIBC_TUNABLES', ''):
    return False  # given already (or by the re-exec: never a loop)
  version = _glibc_version()
  return version is not None and version >= (2, 35) and _thp_available()


def environment(environ: dict[str, str] | None = None) -> dict[str, str]:
  """`environ` with `TUNABLE` added to `GLIBC_TUNABLES` (other tunables kept)."""
  env = dict(os.environ if environ is None else environ)
  env['GLIBC_TUNABLES'] = ':'.join(t for t in (env.get('GLIBC_TUNABLES'), TUNABLE) if t)
  return env


def reexec_with_huge_pages() -> None:
  """Starts this command again with huge pages on (`wanted`); returns only when not."""
  if not wanted():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environment())
