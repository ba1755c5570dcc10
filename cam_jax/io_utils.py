"""Atomic file writes: readers see the old file or the new one, never a partial one.

Each writer encodes everything in memory first, writes it to a temporary file in the
destination's directory (same file system, so the rename is atomic) and `os.replace`s
it over the destination. On any failure the temporary file is removed and the
destination is left as it was.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import numpy as np

# NamedTemporaryFile creates files with mode 0600; the final file should get the
# mode an ordinary open() would give. The umask can only be read by setting it,
# which is done once here, at import, rather than racing other threads per write.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically, creating parent directories."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = tempfile.NamedTemporaryFile(
      dir=path.parent, prefix=f'.{path.stem}.', suffix=f'{path.suffix}.tmp', delete=False)
  try:
    with tmp:
      tmp.write(data)
      tmp.flush()
      # Without fsync a crash after the rename can leave an empty file in its place.
      os.fsync(tmp.fileno())
    try:
      mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
      mode = 0o666 & ~_UMASK
    os.chmod(tmp.name, mode)
    os.replace(tmp.name, path)
  except BaseException:
    os.unlink(tmp.name)
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically, creating parent directories."""
  atomic_write_bytes(path, text.encode('utf-8'))


def _json_default(obj: Any) -> Any:
  # Metrics are often numpy scalars (np.float32, np.int64), which json rejects.
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f'Object of type {type(obj).__name__} is not JSON serializable')


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as JSON (indent 2, sorted keys, trailing newline) atomically.

  numpy scalars and arrays are written as numbers and lists. nan and inf are written
  as `NaN` / `Infinity` (Python's json default; not strict JSON) so that a broken
  metric shows up in the file instead of failing the write. The object is
  serialised before any file is touched: if that fails, nothing on disk changes.
  """
  text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + '\n'
  atomic_write_text(path, text)
