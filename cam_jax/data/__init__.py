"""Dataset registry: TF-free TFDS builders read through `data_source`, and folder
datasets read in place (DESIGN.md §2).

Every source yields the examples described in `cam_jax.data.base`: encoded image bytes,
`label`, `boxes` (N×4 int32 inclusive corners in the original image, DESIGN.md §5),
`file_name` and, where the dataset has them, `segmentation_mask` bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import tensorflow_datasets as tfds

from cam_jax.data import cub, ilsvrc, synthetic, wsol
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


def ensure_prepared(builder: tfds.core.DatasetBuilder, name: str, *, prepare_now: bool,
                    manual_dir: str | None = None) -> None:
  """Prepares an embedded dataset when allowed; otherwise says how to prepare it."""
  if builder.is_prepared():
    return
  cfg = builder.builder_config.name if builder.builder_config else None
  if prepare_now and DATASETS[name].embedded:
    prepare(builder, manual_dir)
    return
  raise FileNotFoundError(
      f'Dataset {name}/{cfg} is not prepared in {builder.data_dir_root}. Prepare it with:\n'
      f'  {prepare_command(name, cfg, builder.data_dir_root)}'
      + ('\nor set --config.data.prepare=True.' if DATASETS[name].embedded else
         '\n(README, "Preparing ILSVRC and CUB", lists the files it reads).'))


def builder_info(name: str, info: tfds.core.DatasetInfo) -> SourceInfo:
  """The SourceInfo of a prepared TFDS dataset (readable names from its metadata)."""
  label = info.features['label']
  names = (info.metadata or {}).get('class_names') or label.names
  return SourceInfo(name=name, num_classes=label.num_classes, class_names=tuple(names),
                    has_masks='segmentation_mask' in info.features)


def load_source(data_config, split: str) -> tuple[Any, SourceInfo]:
  """`(source, info)` of one split, prepared first if the config allows.

  Images (and masks) come back encoded; the pipeline decodes them, so that every dataset
  converts colour modes the same way and a bad file is named in the error.
  """
  spec = _spec(data_config.name)
  if spec.folder_source is not None:
    return spec.folder_source(data_config, split)
  builder = get_builder(data_config.name, data_config.get('builder_config'),
                        data_config.get('data_dir'))
  ensure_prepared(builder, data_config.name, prepare_now=data_config.get('prepare', False),
                  manual_dir=data_config.get('manual_dir'))
  if split not in builder.info.splits:
    raise ValueError(f'dataset {data_config.name!r} has no split {split!r}; '
                     f'splits: {", ".join(builder.info.splits)}')
  decoders = {k: tfds.decode.SkipDecoding() for k in ('image', 'segmentation_mask')
              if k in builder.info.features}
  source = builder.as_data_source(split, decoders=decoders)
  return source, builder_info(data_config.name, builder.info)
