"""metrics.jsonl and TensorBoard event files: what is written is what a reader gets."""

import json
import os
import struct

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
