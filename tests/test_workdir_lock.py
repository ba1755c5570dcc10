"""Tests for cam_jax.workdir_lock."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from cam_jax import workdir_lock
from cam_jax.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError

_LINUX = sys.platform.startswith('linux')
# Takes the lock in argv[1] and dies without releasing it, as a killed run would.
_DIE_HOLDING = textwrap.dedent("""
    import os, sys
    from cam_jax.workdir_lock import WorkdirLock
    WorkdirLock(sys.argv[1]).acquire()
    print(os.getpid(), flush=True)
    os._exit(0)
""")


def _write_lock(workdir, **fields) -> str:
  """Writes a lock file by hand; returns its path."""
  record = {'host': socket.gethostname(), 'pid': os.getpid(),
            'start_time': workdir_lock._start_time(os.getpid()),
            'started': '2024-01-01T00:00:00+00:00', 'argv': ['train.py', '--workdir=x']}
  record.update(fields)
  path = os.path.join(workdir, LOCK_NAME)
  with open(path, 'w') as f:
    json.dump(record, f)
  return path


def _age(path, seconds: float) -> None:
  """Sets the file's mtime `seconds` into the past."""
  t = time.time() - seconds
  os.utime(path, (t, t))


def _holder(path) -> dict:
  with open(path) as f:
    return json.load(f)


def _warnings(caplog) -> str:
  return '\n'.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_second_acquire_is_refused_until_release(tmp_path):
  workdir = str(tmp_path / 'new' / 'workdir')  # Created by acquire.
  first = WorkdirLock(workdir)
  first.acquire()
  path = os.path.join(workdir, 'run.lock')
  holder = _holder(path)
  assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
  assert holder['argv'] == sys.argv and holder['started']
  if _LINUX:
    assert isinstance(holder['start_time'], int)
  with pytest.raises(WorkdirLockedError) as e:
    WorkdirLock(workdir).acquire()
  message = str(e.value)
  assert isinstance(e.value, RuntimeError)
  for part in ('run.lock', str(os.getpid()), socket.gethostname(), holder['started'],
               '--workdir', 'delete'):
    assert part in message
  first.release()
  assert not os.path.exists(path)
  first.release()  # Idempotent.
  second = WorkdirLock(workdir)
  second.acquire()
  assert os.path.exists(path)
  second.release()
  assert not os.path.exists(path)


def test_context_manager_releases_on_exception(tmp_path):
  with pytest.raises(KeyError):
    with WorkdirLock(str(tmp_path)) as lock:
      assert lock.held and (tmp_path / LOCK_NAME).exists()
      raise KeyError('boom')
  assert not lock.held
  assert not (tmp_path / LOCK_NAME).exists()


def test_acquire_twice_on_one_object_is_an_error(tmp_path):
  with WorkdirLock(str(tmp_path)) as lock:
    with pytest.raises(RuntimeError, match='already held'):
      lock.acquire()


def test_bad_intervals_are_rejected(tmp_path):
  with pytest.raises(ValueError):
    WorkdirLock(str(tmp_path), stale_after_s=10, heartbeat_s=10)
  with pytest.raises(ValueError):
    WorkdirLock(str(tmp_path), heartbeat_s=0)


def test_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  out = subprocess.run([sys.executable, '-c', _DIE_HOLDING, str(tmp_path)], check=True,
                       capture_output=True, text=True, timeout=60).stdout
  dead_pid = int(out)
  path = str(tmp_path / LOCK_NAME)
  assert _holder(path)['pid'] == dead_pid  # Left behind; subprocess.run reaped the child.
  with caplog.at_level(logging.WARNING):
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
  assert _holder(path)['pid'] == os.getpid()
  assert f'process {dead_pid} no longer exists' in _warnings(caplog)
  lock.release()


@pytest.mark.skipif(not _LINUX, reason='zombies are detected through /proc')
def test_lock_of_a_zombie_is_taken_over(tmp_path, caplog):
  # os.kill(pid, 0) succeeds on a zombie: an exited child its parent has not reaped yet.
  proc = subprocess.Popen([sys.executable, '-c', _DIE_HOLDING, str(tmp_path)],
                          stdout=subprocess.PIPE, text=True)
  try:
    assert int(proc.stdout.readline()) == proc.pid
    deadline = time.time() + 30
    while workdir_lock._proc_stat(proc.pid)[0] != 'Z':
      assert time.time() < deadline
      time.sleep(0.01)
    with caplog.at_level(logging.WARNING):
      with WorkdirLock(str(tmp_path)):
        assert _holder(tmp_path / LOCK_NAME)['pid'] == os.getpid()
    assert f'process {proc.pid} no longer exists' in _warnings(caplog)
  finally:
    proc.stdout.close()
    proc.wait()


@pytest.mark.skipif(not _LINUX, reason='process start times come from /proc')
def test_recycled_pid_is_stale(tmp_path, caplog):
  # Our own pid, alive, but another start time: the holder died and its pid was reused.
  path = _write_lock(tmp_path, start_time=workdir_lock._start_time(os.getpid()) + 1)
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(str(tmp_path)):
      assert _holder(path)['start_time'] == workdir_lock._start_time(os.getpid())
  assert 'now belongs to another process' in _warnings(caplog)


def test_lock_of_another_host_goes_by_its_heartbeat(tmp_path, caplog):
  path = _write_lock(tmp_path, host='elsewhere', pid=4242)
  with pytest.raises(WorkdirLockedError, match=r'host elsewhere, pid 4242.*last heartbeat'):
    WorkdirLock(str(tmp_path), stale_after_s=60, heartbeat_s=1).acquire()
  assert _holder(path)['host'] == 'elsewhere'
  _age(path, 61)
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(str(tmp_path), stale_after_s=60, heartbeat_s=1):
      assert _holder(path)['host'] == socket.gethostname()
  assert re.search(r'heartbeat is 6\d s old \(stale after 60 s\)', _warnings(caplog))
  assert 'elsewhere' in _warnings(caplog)


def test_heartbeat_refreshes_mtime_until_release(tmp_path):
  lock = WorkdirLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  path = str(tmp_path / LOCK_NAME)
  _age(path, 1000)
  time.sleep(0.2)
  assert time.time() - os.path.getmtime(path) < 10
  thread = lock._thread
  lock.release()
  assert not thread.is_alive()


def test_heartbeat_stops_when_the_lock_is_no_longer_ours(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    lock = WorkdirLock(str(tmp_path), heartbeat_s=0.05)
    lock.acquire()
    path = _write_lock(tmp_path, host='elsewhere')
    _age(path, 1000)
    time.sleep(0.2)
    # Refreshing it would keep a dead holder's lock alive.
    assert time.time() - os.path.getmtime(path) > 900
    assert not lock._thread.is_alive()
    lock.release()
  assert 'no longer holds' in _warnings(caplog)


def test_release_never_removes_another_holders_lock(tmp_path):
  lock = WorkdirLock(str(tmp_path))
  lock.acquire()
  path = _write_lock(tmp_path, pid=os.getpid() + 1)  # Someone took over meanwhile.
  lock.release()
  assert _holder(path)['pid'] == os.getpid() + 1


@pytest.mark.parametrize('content', [b'', b'{"host": "half-writ'])
def test_empty_or_corrupt_lock_is_stale_only_when_old(tmp_path, caplog, content):
  path = tmp_path / LOCK_NAME
  path.write_bytes(content)
  with pytest.raises(WorkdirLockedError, match='still writing'):
    WorkdirLock(str(tmp_path)).acquire()
  assert path.read_bytes() == content
  _age(path, 11)
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(str(tmp_path)):
      assert _holder(path)['pid'] == os.getpid()
  assert 'not valid JSON' in _warnings(caplog)


def test_lost_takeover_race_names_the_winner(tmp_path, monkeypatch):
  # Between our verdict "stale" and our retry, another run takes over first.
  path = _write_lock(tmp_path, host='elsewhere', pid=1)
  _age(path, 1000)
  real = workdir_lock.WorkdirLock._remove_if_unchanged

  def remove_then_lose(self, raw, st):
    real(self, raw, st)
    _write_lock(tmp_path, host='winner', pid=7)

  monkeypatch.setattr(workdir_lock.WorkdirLock, '_remove_if_unchanged', remove_then_lose)
  with pytest.raises(WorkdirLockedError, match='host winner, pid 7'):
    WorkdirLock(str(tmp_path)).acquire()
  assert _holder(path)['host'] == 'winner'
