"""What every dataset source shares: its description and its manual files.

A *source* is a random-access sequence of examples (a TFDS `data_source`, or a folder
read in place); each example is a dict with
  `image`      encoded image bytes (JPEG or PNG), decoded by the pipeline;
  `label`      int class index;
  `boxes`      N×4 int32, `(x0, y0, x1, y1)` inclusive pixel corners in the original
               image, N >= 0;
  `file_name`  the file it came from (str or bytes), named in every error about it;
and, where the dataset has masks, `segmentation_mask` (encoded single-channel PNG bytes).
"""

from __future__ import annotations

import dataclasses
import operator
import os


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What the trainer and the evaluator need to know about a dataset."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]  # Human-readable, indexed by label.
  has_masks: bool = False


def find_manual_file(manual_dir: os.PathLike | str, candidates: list[str], dataset: str,
                     what: str) -> str:
  """The first of `candidates` present in `manual_dir`; else an error naming them all."""
  for name in candidates:
    path = os.path.join(manual_dir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f'{dataset}: {what} not found: expected {" or ".join(candidates)} in the manual '
      f'folder {manual_dir} (set it with --manual_dir or config.data.manual_dir).')


def maybe_manual_file(manual_dir: os.PathLike | str, name: str) -> str | None:
  path = os.path.join(manual_dir, name)
  return path if os.path.exists(path) else None


def manual_dir(dl_manager, dataset: str, expected: str) -> str:
  """The manual folder of a prepare; a missing or empty one names what belongs in it."""
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError as e:  # TFDS's error for a missing or empty manual folder.
    raise FileNotFoundError(f'{dataset}: expected {expected} in the manual folder, but: '
                            f'{e}') from e


def checked_index(index, source) -> int:
  """`index` of a folder source as a position in [0, len(source)), negative ones counted
  from the end; IndexError naming the source past either end."""
  i = operator.index(index)
  if not -len(source) <= i < len(source):
    raise IndexError(f'{source!r} has no example {i}')
  return i % len(source)
