"""A lock file in the workdir, so that two training runs never write the same checkpoints.

A launcher that retries a job can easily start a second run on a workdir whose first run
is still alive. The training entry point takes a `WorkdirLock` at start and releases it
at the end; a second run is refused with a message that names the holder.

Protocol:

- The lock is `<workdir>/run.lock`, created with `O_CREAT | O_EXCL` (atomic, also on NFS
  v3 and later) and holding JSON that describes its holder: host, pid, the process's
  start time (Linux: field 22 of /proc/<pid>/stat, else None), when the lock was taken
  and the command line.
- While held, a daemon thread refreshes the file's mtime every `heartbeat_s` seconds.
- A run that finds the file decides whether its holder is alive. On the same host: the
  pid exists, is not a zombie and, when both are known, still has the recorded start
  time (so that a recycled pid is not taken for the holder). On another host the pid
  means nothing here, so the heartbeat decides: the holder is alive while the mtime is
  younger than `stale_after_s`. A file that is empty or not valid JSON (a holder killed
  between creating and writing it) is stale once its mtime is a few seconds old.
- A live holder: `WorkdirLockedError`. A stale one: a warning, the file is removed and
  the exclusive create is retried, so that of two runs taking over at once only one
  wins.
- Release removes the file only if it still names this process.

Limits: the lock is advisory; it keeps out only code that takes it. Same-host liveness
trusts the host name, so two containers with the same host name but separate pid
namespaces on one shared workdir are not told apart. Cross-host liveness compares the
file's mtime (often stamped by the file server) with this host's clock: `stale_after_s`
must exceed `heartbeat_s` by more than the clock skew and the file system's delays, and
a holder that is alive but cannot refresh the file for `stale_after_s` (a long NFS
outage, a suspended process) looks dead. Taking over a stale lock re-reads it just
before removing it, which narrows but does not close the race with a holder that comes
back to life at that instant.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import sys
import threading
import time
from typing import Any

from absl import logging

LOCK_NAME = 'run.lock'

# An empty or unparsable lock file younger than this is taken to be still being written.
_PARTIAL_WRITE_GRACE_S = 10.0
# How long release() waits for the heartbeat thread, which may be stuck in a slow NFS call.
_JOIN_TIMEOUT_S = 5.0


class WorkdirLockedError(RuntimeError):
  """The workdir's lock is held by a run that is (or may be) alive."""


def _proc_stat(pid: int) -> tuple[str, int] | None:
  """(state, start time in clock ticks since boot) of `pid` from /proc, or None."""
  try:
    with open(f'/proc/{pid}/stat', 'rb') as f:
      text = f.read().decode('ascii', 'replace')
  except OSError:
    return None
  # The command name (field 2) is in parentheses and may itself hold spaces and ')'.
  fields = text[text.rfind(')') + 2:].split()
  try:
    return fields[0], int(fields[19])  # Fields 3 (state) and 22 (starttime).
  except (IndexError, ValueError):
    return None


def _start_time(pid: int) -> int | None:
  """The start time of process `pid` (Linux only), or None when unknown."""
  stat = _proc_stat(pid) if sys.platform.startswith('linux') else None
  return stat[1] if stat else None


def _pid_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # It exists, under another user.
  # A zombie has exited; only its exit status waits for its parent.
  stat = _proc_stat(pid) if sys.platform.startswith('linux') else None
  return not (stat and stat[0] in ('Z', 'X'))


def _describe(info: dict[str, Any]) -> str:
  """The holder in words: host, pid, when it took the lock and its command line."""
  argv = info.get('argv')
  if isinstance(argv, list):
    command = ' '.join(shlex.quote(str(a)) for a in argv)
  else:
    command = 'unknown'
  return (f"host {info.get('host')}, pid {info.get('pid')}, "
          f"started {info.get('started', 'unknown')}, command: {command}")


def _parse(raw: bytes) -> dict[str, Any] | None:
  """The holder recorded in a lock file, or None when the file is not a valid record."""
  try:
    info = json.loads(raw.decode('utf-8'))
  except (UnicodeDecodeError, ValueError):
    return None
  if not isinstance(info, dict):
    return None
  pid = info.get('pid')
  # bool is an int; pid 0 or below would make os.kill signal a process group.
  if (not isinstance(info.get('host'), str) or not isinstance(pid, int)
      or isinstance(pid, bool) or pid <= 0):
    return None
  return info


class WorkdirLock:
  """An exclusive, advisory lock on a workdir, held by one run at a time.

  Use as a context manager (`with WorkdirLock(workdir): train(...)`) or call `acquire()`
  and `release()`. `acquire` raises `WorkdirLockedError` when a live run holds the lock
  and takes over, with a warning, a lock whose holder is gone.
  """

  def __init__(self, workdir: str, *, stale_after_s: float = 300.0,
               heartbeat_s: float = 30.0) -> None:
    if not 0 < heartbeat_s < stale_after_s:
      raise ValueError(f'need 0 < heartbeat_s < stale_after_s, got heartbeat_s={heartbeat_s}, '
                       f'stale_after_s={stale_after_s}')
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._stale_after_s = stale_after_s
    self._heartbeat_s = heartbeat_s
    self._record: dict[str, Any] | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  @property
  def held(self) -> bool:
    """Whether this object holds the lock (as far as it knows)."""
    return self._record is not None

  def acquire(self) -> None:
    """Takes the lock, or raises `WorkdirLockedError` naming the live holder."""
    if self._record is not None:
      raise RuntimeError(f'{self.path} is already held by this WorkdirLock')
    os.makedirs(self.workdir, exist_ok=True)
    # Bounded: once to take the free lock, once more after taking over a stale one or
    # after the holder released it while we looked, and a last look to name the winner.
    for attempt in range(3):
      if self._try_create():
        return
      try:
        with open(self.path, 'rb') as f:
          raw = f.read()
          st = os.fstat(f.fileno())
      except FileNotFoundError:
        continue  # Released between our create and our read: try again.
      info = _parse(raw)
      reason = self._stale_reason(info, st.st_mtime)
      if reason is None or attempt == 2:
        raise WorkdirLockedError(self._locked_message(info, st.st_mtime))
      holder = _describe(info) if info else 'unknown (the file is empty or not valid JSON)'
      logging.warning('Taking over the stale lock %s of a run that is gone (%s): %s',
                      self.path, reason, holder)
      self._remove_if_unchanged(raw, st)
    raise WorkdirLockedError(f'{self.path} keeps changing hands; another run is starting '
                             'in this workdir. Wait for it to finish or use another --workdir.')

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours; idempotent."""
    record, self._record = self._record, None
    self._stop.set()
    if self._thread is not None:
      if self._thread is not threading.current_thread():
        self._thread.join(_JOIN_TIMEOUT_S)
      self._thread = None
    # A child forked while the lock was held inherits this object; the lock is its
    # parent's, so only the process that took it removes it.
    if record is None or record['pid'] != os.getpid():
      return
    try:
      if self._is_ours(record):
        os.remove(self.path)
      else:
        logging.warning('Not removing %s: it no longer names this run', self.path)
    except FileNotFoundError:
      pass
    except OSError as e:
      # Often called while an exception unwinds: do not replace it. A lock left behind
      # is taken over as stale by the next run.
      logging.warning('Could not remove the lock %s: %s', self.path, e)

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.release()

  def _try_create(self) -> bool:
    """Creates the lock file exclusively and starts the heartbeat; False if it exists."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    pid = os.getpid()
    record = {
        'host': socket.gethostname(),
        'pid': pid,
        'start_time': _start_time(pid),
        'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'argv': list(sys.argv),
    }
    try:
      with os.fdopen(fd, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write('\n')
        f.flush()
        # Other hosts read the file over the network: it must be complete on disk.
        os.fsync(f.fileno())
    except BaseException:
      os.remove(self.path)
      raise
    self._record = record
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._heartbeat, args=(record, self._stop),
                                    name=f'WorkdirLock heartbeat {self.path}', daemon=True)
    self._thread.start()
    return True

  def _heartbeat(self, record: dict[str, Any], stop: threading.Event) -> None:
    """Refreshes the file's mtime every heartbeat_s seconds until `stop` is set."""
    failing = False
    while not stop.wait(self._heartbeat_s):
      try:
        if not self._is_ours(record):
          # Refreshing someone else's lock would keep it alive after its holder dies.
          logging.warning('%s was removed or taken by another run: this run no longer holds '
                          'the workdir lock', self.path)
          return
        os.utime(self.path)
        failing = False
      except OSError as e:
        if not failing:  # Log a streak of failures (say an NFS outage) once.
          logging.warning('Could not refresh the lock %s: %s', self.path, e)
        failing = True

  def _is_ours(self, record: dict[str, Any]) -> bool:
    """Whether the lock file still holds `record`'s host, pid and start time."""
    try:
      with open(self.path, 'rb') as f:
        info = _parse(f.read())
    except FileNotFoundError:
      return False
    return info is not None and all(
        info.get(k) == record[k] for k in ('host', 'pid', 'start_time'))

  def _stale_reason(self, info: dict[str, Any] | None, mtime: float) -> str | None:
    """Why the holder of a lock file is considered gone, or None if it may be alive."""
    age = time.time() - mtime
    if info is None:
      if age > _PARTIAL_WRITE_GRACE_S:
        return f'the file is empty or not valid JSON and {age:.0f} s old'
      return None
    pid = info['pid']
    if info['host'] == socket.gethostname():
      if not _pid_exists(pid):
        return f'process {pid} no longer exists on this host'
      recorded, current = info.get('start_time'), _start_time(pid)
      if recorded is not None and current is not None and recorded != current:
        return (f'pid {pid} now belongs to another process (start time {current}, '
                f'recorded {recorded})')
      return None
    if age > self._stale_after_s:
      return f'its heartbeat is {age:.0f} s old (stale after {self._stale_after_s:g} s)'
    return None

  def _locked_message(self, info: dict[str, Any] | None, mtime: float) -> str:
    age = time.time() - mtime
    if info is None:
      holder = (f'a run that is still writing it (the file is empty or not valid JSON and '
                f'was modified {age:.1f} s ago)')
    else:
      holder = f'another run: {_describe(info)}'
      if info['host'] != socket.gethostname():
        holder += f' (last heartbeat {age:.0f} s ago)'
    return (f'The workdir lock {self.path} is held by {holder}.\n'
            'Wait for that run to finish, use another --workdir, or, if that run is '
            f'certainly dead, delete {self.path}.')

  def _remove_if_unchanged(self, raw: bytes, st: os.stat_result) -> bool:
    """Removes the lock file if it is still the one judged stale; True if removed."""
    try:
      with open(self.path, 'rb') as f:
        now_raw = f.read()
        now_st = os.fstat(f.fileno())
    except FileNotFoundError:
      return False
    # Another run may have taken over (or the holder written its record) meanwhile.
    if (now_raw != raw or now_st.st_ino != st.st_ino
        or now_st.st_mtime_ns != st.st_mtime_ns):
      return False
    try:
      os.remove(self.path)
    except FileNotFoundError:
      return False
    return True
