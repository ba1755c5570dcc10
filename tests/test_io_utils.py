"""Tests for cam_jax.io_utils."""

import json
import os
import stat

import numpy as np
import pytest

from cam_jax import io_utils


def test_atomic_write_json_round_trip(tmp_path):
  path = tmp_path / 'a' / 'metrics.json'
  obj = {'b': [1, 2.5, None], 'a': {'top1': np.float32(0.25), 'n': np.int64(3)}}
  io_utils.atomic_write_json(path, obj)
  text = path.read_text()
  assert text.endswith('}\n')
  assert text.index('"a"') < text.index('"b"')  # sorted keys
  assert json.loads(text) == {'b': [1, 2.5, None], 'a': {'top1': 0.25, 'n': 3}}
  assert os.listdir(path.parent) == ['metrics.json']


def test_failed_serialisation_keeps_old_file(tmp_path):
  path = tmp_path / 'metrics.json'
  io_utils.atomic_write_json(path, {'old': 1})
  with pytest.raises(TypeError):
    io_utils.atomic_write_json(path, {'new': object()})
  assert json.loads(path.read_text()) == {'old': 1}
  assert os.listdir(tmp_path) == ['metrics.json']


def test_failed_write_removes_temp_file(tmp_path):
  path = tmp_path / 'blob.bin'
  io_utils.atomic_write_bytes(path, b'old')
  with pytest.raises(TypeError):
    io_utils.atomic_write_bytes(path, 'not bytes')  # fails after the temp file exists
  assert path.read_bytes() == b'old'
  assert os.listdir(tmp_path) == ['blob.bin']


def test_atomic_write_text_and_mode(tmp_path):
  path = tmp_path / 'notes.txt'
  io_utils.atomic_write_text(path, 'héllo\n')
  assert path.read_text(encoding='utf-8') == 'héllo\n'
  # The mode an ordinary open() would give, not tempfile's 0600.
  assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~io_utils._UMASK
