"""cam_jax.huge_pages: the re-exec with glibc's huge-page tunable, and its effect."""

import os
import subprocess
import sys

import pytest

from cam_jax import huge_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child that re-execs (if wanted), then reports its pid, tunables and arguments, and
# the page faults of filling 64 MB from glibc's malloc (as XLA's buffers come; numpy
# asks for huge pages itself, so its arrays would not show the difference).
_CHILD = r'''
import ctypes, os, resource, sys
from cam_jax import huge_pages
huge_pages.reexec_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(64 << 20), 1, 64 << 20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], faults)
'''


def _env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', 'CAM_JAX_HUGE_PAGES')}
  return dict(env, PYTHONPATH=REPO, **extra)


def test_wanted_is_off_when_asked_or_already_given_and_keeps_other_tunables():
  assert not huge_pages.wanted({'CAM_JAX_HUGE_PAGES': '0'})
  assert not huge_pages.wanted({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})
  env = huge_pages.environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'A': 'b'})
  assert env == {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1',
                 'A': 'b'}
  assert huge_pages.environment({})['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'


def test_reexec_keeps_the_process_and_its_arguments_and_cuts_page_faults():
  if not huge_pages.wanted(_env()):
    pytest.skip('huge pages cannot be turned on here (not Linux with glibc >= 2.35 and '
                'transparent huge pages)')
  child = subprocess.Popen([sys.executable, '-c', _CHILD, 'a b', '--flag=1'], env=_env(),
                           stdout=subprocess.PIPE, text=True)
  out, _ = child.communicate(timeout=120)
  lines = out.strip().splitlines()
  assert len(lines) == 1, out  # the command ran once, after the re-exec
  pid, rest = lines[0].split(' ', 1)
  assert int(pid) == child.pid  # execve: the same process
  assert rest.startswith('glibc.malloc.hugetlb=1 ')
  assert "['a b', '--flag=1']" in rest
  with_huge = int(rest.rsplit(' ', 1)[1])
  off = subprocess.run([sys.executable, '-c', _CHILD], env=_env(CAM_JAX_HUGE_PAGES='0'),
                       stdout=subprocess.PIPE, text=True, check=True, timeout=120).stdout
  assert off.split()[1] == 'None'
  without = int(off.split()[-1])
  # 64 MB in 4 KB pages is 16,384 faults; in 2 MB pages, a few dozen.
  assert without > 10_000
  assert with_huge < without / 10
