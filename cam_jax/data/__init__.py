"""Dataset registry: TF-free TFDS builders read through `data_source`, and folder
datasets read in place.

Every source yields the examples described in `cam_jax.data.base`: encoded image bytes,
`label`, `boxes` (N×4 int32 inclusive corners in the original image), `file_name` and,
where the dataset has them, `segmentation_mask` bytes.

A run reads three splits: `train_split` (less its `holdout` part, if any) for training,
`select_split` for the evaluations during training that choose the best checkpoint, and
`eval_split` for the reported result. Choosing on the reported split would flatter it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
from typing import Any, Callable

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from cam_jax import sharding

from cam_jax.data import cub, folders, ilsvrc, synthetic, wsol
from cam_jax.data.base import SourceInfo


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  # A TF-free TFDS builder, prepared once as ArrayRecord...
  builder_cls: type[tfds.core.DatasetBuilder] | None = None
  # ...or a function `(data_config, split) -> (source, SourceInfo)` reading files in place.
  folder_source: Callable[[Any, str], tuple[Any, SourceInfo]] | None = None
  # Embedded datasets are drawn, not downloaded: they may be prepared on first use.
  embedded: bool = False


DATASETS: dict[str, DatasetSpec] = {
    'cam_synth': DatasetSpec(synthetic.CamSynth, embedded=True),
    'ilsvrc2012_loc': DatasetSpec(ilsvrc.Ilsvrc2012Loc),
    'cub2011_loc': DatasetSpec(cub.Cub2011Loc),
    'wsol': DatasetSpec(folder_source=wsol.load_source),
    'folders': DatasetSpec(folder_source=folders.load_source),
}


def _spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; known datasets: {", ".join(sorted(DATASETS))}')
  return DATASETS[name]


def get_builder(name: str, builder_config: str | None = None, data_dir: str | None = None,
                **builder_kwargs) -> tfds.core.DatasetBuilder:
  """The TFDS builder of dataset `name`; raises with the known names if unknown."""
  spec = _spec(name)
  if spec.builder_cls is None:
    raise ValueError(f'dataset {name!r} is read in place from its folder: it has no builder '
                     'and needs no prepare step')
  kwargs: dict[str, Any] = {'data_dir': data_dir, 'file_format': 'array_record',
                            **builder_kwargs}
  if builder_config:
    kwargs['config'] = builder_config
  try:
    return spec.builder_cls(**kwargs)
  except ValueError as e:  # TFDS's message for an unknown config lists the known ones.
    raise ValueError(f'dataset {name!r}: {e}') from e


def prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | None = None) -> None:
  """Writes the prepared ArrayRecord files; nothing is left behind if it fails."""
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=download_config)


def prepare_command(name: str, builder_config: str | None, data_dir: str | None) -> str:
  """The shell command that prepares a dataset."""
  cmd = f'python -m cam_jax.data.prepare --dataset={name}'
  if builder_config:
    cmd += f' --builder_config={builder_config}'
  if data_dir:
    cmd += f' --data_dir={data_dir}'
  if not DATASETS[name].embedded:
    cmd += ' --manual_dir=FOLDER_WITH_THE_ARCHIVES'
  return cmd


def _config_name(builder: tfds.core.DatasetBuilder) -> str | None:
  return builder.builder_config.name if builder.builder_config else None


def _prepare_locked(make_builder: Callable[[], tfds.core.DatasetBuilder],
                    manual_dir: str | None) -> None:
  """Prepares the dataset unless it already is, holding a lock file in the data dir, so
  that processes sharing the data dir never race on TFDS's final rename: the first
  prepares, the others find it prepared."""
  builder = make_builder()
  root = builder.data_dir_root
  os.makedirs(root, exist_ok=True)
  lock_name = f'.{builder.name}-{_config_name(builder) or "default"}.prepare.lock'
  with open(os.path.join(root, lock_name), 'a') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError as e:  # a file system without locks: preparing unlocked is all we can do
      logging.warning('No lock on %s (%s); preparing without one.', lock.name, e)
    builder = make_builder()  # after the wait: what is on disk now
    if not builder.is_prepared():
      prepare(builder, manual_dir)


# Datasets whose preparation the processes of this run have already agreed on.
_PREPARED_TOGETHER: set[tuple[str, str | None, str | None]] = set()


def ensure_prepared(make_builder: Callable[[], tfds.core.DatasetBuilder], name: str, *,
                    prepare_now: bool, manual_dir: str | None = None
                    ) -> tfds.core.DatasetBuilder:
  """The builder of a prepared dataset: an embedded one is prepared now when allowed;
  otherwise the error says how to prepare it.

  With several processes, process 0 prepares while the others wait at a barrier (the
  first time this run asks for the dataset), so that hosts sharing the data dir prepare
  it once; a process that still does not see it prepared (a data dir of its own) then
  prepares its own copy, under the same lock as every process of its host.
  """
  builder = make_builder()
  embedded = DATASETS[name].embedded
  cfg = _config_name(builder)
  if prepare_now and embedded:
    key = (name, cfg, os.fspath(builder.data_dir_root))
    if jax.process_count() > 1 and key not in _PREPARED_TOGETHER:
      if jax.process_index() == 0:
        _prepare_locked(make_builder, manual_dir)
      sharding.barrier(f'cam_jax: {name}/{cfg} prepared')
      _PREPARED_TOGETHER.add(key)
      builder = make_builder()
    if not builder.is_prepared():
      _prepare_locked(make_builder, manual_dir)
      builder = make_builder()
  if builder.is_prepared():
    return builder
  raise FileNotFoundError(
      f'Dataset {name}/{cfg} is not prepared in {builder.data_dir_root}. Prepare it with:\n'
      f'  {prepare_command(name, cfg, builder.data_dir_root)}'
      + ('\nor set --config.data.prepare=True.' if embedded else
         '\n(README, "Preparing ILSVRC and CUB", lists the files it reads).'))


def builder_info(name: str, info: tfds.core.DatasetInfo) -> SourceInfo:
  """The SourceInfo of a prepared TFDS dataset (readable names from its metadata)."""
  label = info.features['label']
  names = (info.metadata or {}).get('class_names') or label.names
  return SourceInfo(name=name, num_classes=label.num_classes, class_names=tuple(names),
                    has_masks='segmentation_mask' in info.features)


# `config.data.select_split` value that means the held-out part of the train split.
HOLDOUT = 'holdout'
# The held-out images are a random choice fixed by this seed, not by `config.seed`: every
# run of a sweep chooses its checkpoint on the same images.
HOLDOUT_SEED = 0


class Subset:
  """The examples of `source` at `indices`, as a source of its own (random access)."""

  def __init__(self, source: Any, indices: np.ndarray, name: str):
    self.source, self.indices, self.name = source, np.asarray(indices, np.int64), name

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Any:
    return self.source[int(self.indices[index])]

  def __repr__(self) -> str:
    return f'Subset({self.name}, {len(self)} of {len(self.source)})'


def holdout_indices(num_examples: int, holdout: int) -> np.ndarray:
  """Sorted indices of the `holdout` examples (of `num_examples`) kept out of training."""
  if not 0 <= holdout < num_examples:
    raise ValueError(f'config.data.holdout={holdout}: expected 0 <= holdout < '
                     f'{num_examples} (the size of the train split)')
  rng = np.random.default_rng(HOLDOUT_SEED)
  return np.sort(rng.choice(num_examples, size=holdout, replace=False))


def _load(data_config, split: str) -> tuple[Any, SourceInfo]:
  spec = _spec(data_config.name)
  if spec.folder_source is not None:
    return spec.folder_source(data_config, split)
  make_builder = functools.partial(get_builder, data_config.name,
                                   data_config.get('builder_config'),
                                   data_config.get('data_dir'))
  builder = ensure_prepared(make_builder, data_config.name,
                            prepare_now=data_config.get('prepare', False),
                            manual_dir=data_config.get('manual_dir'))
  if split not in builder.info.splits:
    raise ValueError(f'dataset {data_config.name!r} has no split {split!r}; '
                     f'splits: {", ".join(builder.info.splits)}'
                     + (f' (or {HOLDOUT!r}, with config.data.holdout > 0)'
                        if split == data_config.get('select_split') else ''))
  decoders = {k: tfds.decode.SkipDecoding() for k in ('image', 'segmentation_mask')
              if k in builder.info.features}
  source = builder.as_data_source(split, decoders=decoders)
  return source, builder_info(data_config.name, builder.info)


def load_source(data_config, split: str) -> tuple[Any, SourceInfo]:
  """`(source, info)` of one split, prepared first if the config allows; `'holdout'` is
  the part of `data_config.train_split` kept out of training (`data_config.holdout`
  examples).

  Images (and masks) come back encoded; the pipeline decodes them, so that every dataset
  converts colour modes the same way and a bad file is named in the error.
  """
  if split != HOLDOUT:
    return _load(data_config, split)
  holdout = data_config.get('holdout', 0)
  if not holdout:
    raise ValueError(f"split {HOLDOUT!r} (config.data.select_split) is the part of the train "
                     'split kept out of training: set config.data.holdout to its size')
  source, info = _load(data_config, data_config.train_split)
  return Subset(source, holdout_indices(len(source), holdout),
                f'{data_config.train_split} held out'), info


def load_train_source(data_config) -> tuple[Any, SourceInfo]:
  """`(source, info)` of what training reads: `data_config.train_split` without its
  held-out part (`data_config.holdout` examples, a fixed random choice)."""
  source, info = _load(data_config, data_config.train_split)
  holdout = data_config.get('holdout', 0)
  if not holdout:
    return source, info
  kept = np.setdiff1d(np.arange(len(source)), holdout_indices(len(source), holdout))
  return Subset(source, kept, f'{data_config.train_split} without the held-out part'), info
