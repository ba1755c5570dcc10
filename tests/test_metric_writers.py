"""metrics.jsonl and TensorBoard event files: what is written is what a reader gets."""

import json
import os
import struct

import pytest

from tensorboardX.proto import event_pb2

from cam_jax import metric_writers


def _read_events(path):
  """Scalars `(tag, step, value)` of a TFRecord event file (length, crc, data, crc)."""
  out = []
  with open(path, 'rb') as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4
    for value in event.summary.value:
      out.append((value.tag, event.step, value.simple_value))
  return out


def test_records_go_to_jsonl_and_tensorboard_and_truncate(tmp_path):
  writer = metric_writers.MetricWriter(str(tmp_path))
  writer.write({'step': 2, 'split': 'train', 'loss': 1.5, 'accuracy': 0.25})
  writer.write({'step': 4, 'split': 'train', 'loss': 1.0, 'accuracy': 0.5})
  writer.write({'step': 4, 'split': 'test', 'cls_top1_error': 0.75, 'top_k': 5,
                'note': 'text is kept in jsonl only'})
  writer.close()
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records] == [2, 4, 4]
  assert records[2]['note'] == 'text is kept in jsonl only'
  (events,) = os.listdir(tmp_path / 'tensorboard')
  scalars = _read_events(str(tmp_path / 'tensorboard' / events))
  assert ('train/loss', 2, 1.5) in scalars and ('train/accuracy', 4, 0.5) in scalars
  assert ('test/cls_top1_error', 4, 0.75) in scalars and ('test/top_k', 4, 5.0) in scalars
  assert not any(tag.endswith('/note') for tag, _, _ in scalars)
  metric_writers.MetricWriter(str(tmp_path), tensorboard=False).truncate(3)
  with open(tmp_path / 'metrics.jsonl') as f:
    assert [json.loads(line)['step'] for line in f] == [2]


def test_a_torn_last_line_is_dropped_with_a_warning_on_resume(tmp_path, caplog):
  """A crash while writing leaves the last line cut short: a resume drops it (and the
  records past its step) instead of failing; the next record starts on a line of its own."""
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"split": "train", "step": 2, "loss": 1.5}\n'
                  '{"split": "train", "step": 4, "loss": 1.0}\n'
                  '{"split": "train", "step": 6, "lo')
  writer = metric_writers.MetricWriter(str(tmp_path), tensorboard=False)
  writer.truncate(5)
  assert 'dropped its last line, cut short' in caplog.text
  writer.write({'step': 6, 'split': 'train', 'loss': 0.5})
  with open(path) as f:
    assert [json.loads(line)['step'] for line in f] == [2, 4, 6]


def test_a_last_line_without_its_newline_is_kept_and_ended(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"split": "train", "step": 2, "loss": 1.5}')  # complete, no newline
  writer = metric_writers.MetricWriter(str(tmp_path), tensorboard=False)
  writer.truncate(2)
  writer.write({'step': 4, 'split': 'train', 'loss': 1.0})
  with open(path) as f:
    assert [json.loads(line)['step'] for line in f] == [2, 4]


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"split": "train", "step": 2}\nnot json\n{"split": "train", "step": 4}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl, line 2: not a JSON record'):
    metric_writers.MetricWriter(str(tmp_path), tensorboard=False).truncate(4)
  assert 'not json' in path.read_text()  # left as it was
