"""Training metrics: `metrics.jsonl` and TensorBoard event files, written by process 0.

TensorBoard files come from tensorboardX, which writes the event format without
TensorFlow: `tensorboard --logdir WORKDIR/tensorboard`.
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any

import jax
from absl import logging

from cam_jax import io_utils


class MetricWriter:
  """One JSON line per record in workdir/metrics.jsonl, and each number as a TensorBoard
  scalar `<split>/<name>` at its step. Other processes write nothing."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.active = jax.process_index() == 0
    self.tb = None
    if self.active and tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, record: dict[str, Any]) -> None:
    """`record` holds `step` and `split`; its other numbers become scalars."""
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record, sort_keys=True) + '\n')
    if self.tb is not None:
      for key, value in record.items():
        if key not in ('step', 'split') and isinstance(value, numbers.Number):
          self.tb.add_scalar(f'{record["split"]}/{key}', float(value), record['step'])
      self.tb.flush()

  def truncate(self, step: int) -> None:
    """Drops records past `step`: a resumed run logs those steps again. (TensorBoard shows
    the newer points of a step that is logged twice.)

    A last line cut short (a crash while writing it) is dropped with a warning; a bad
    line before the last one raises ValueError naming it.
    """
    if not self.active or not os.path.exists(self.path):
      return
    with open(self.path, encoding='utf-8', errors='replace') as f:
      text = f.read()
    lines = text.splitlines(keepends=True)
    kept = []
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        if number < len(lines):
          raise ValueError(f'{self.path}, line {number}: not a JSON record ({e}); fix or '
                           'remove that line to resume') from e
        logging.warning('%s: dropped its last line, cut short (%d characters: %r...), '
                        'as a crash while writing leaves it', self.path, len(line), line[:60])
        continue
      if record.get('step', 0) <= step:
        kept.append(line if line.endswith('\n') else line + '\n')
    if ''.join(kept) != text:
      io_utils.atomic_write_text(self.path, ''.join(kept))

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
