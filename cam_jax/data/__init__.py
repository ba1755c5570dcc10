"""Dataset registry: TF-free TFDS builders read through `data_source` (DESIGN.md §2).

Every dataset yields examples with `image` (H×W×3 uint8), `label` (int), `boxes`
(N×4 int32, `(x0, y0, x1, y1)` inclusive pixel corners in the original image, DESIGN.md
§5) and, where it has one, `segmentation_mask` (H×W×1 uint8, foreground 255).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow_datasets as tfds

from cam_jax.data import synthetic


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  builder_cls: type[tfds.core.DatasetBuilder]
  # Embedded datasets are drawn, not downloaded: they may be prepared on first use.
  embedded: bool


DATASETS: dict[str, DatasetSpec] = {
    'cam_synth': DatasetSpec(synthetic.CamSynth, embedded=True),
}


def get_builder(name: str, builder_config: str | None = None,
                data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of dataset `name`; raises with the known names if unknown."""
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; known datasets: {", ".join(sorted(DATASETS))}')
  kwargs: dict[str, Any] = {'data_dir': data_dir, 'file_format': 'array_record'}
  if builder_config:
    kwargs['config'] = builder_config
  try:
    return DATASETS[name].builder_cls(**kwargs)
  except ValueError as e:  # TFDS's message for an unknown config lists the known ones.
    raise ValueError(f'dataset {name!r}: {e}') from e


def prepare_command(name: str, builder_config: str | None, data_dir: str | None) -> str:
  """The shell command that prepares a dataset."""
  cmd = f'python -m cam_jax.data.prepare --dataset={name}'
  if builder_config:
    cmd += f' --builder_config={builder_config}'
  if data_dir:
    cmd += f' --data_dir={data_dir}'
  return cmd


def ensure_prepared(builder: tfds.core.DatasetBuilder, name: str, *, prepare: bool) -> None:
  """Prepares an embedded dataset when allowed; otherwise says how to prepare it."""
  if builder.is_prepared():
    return
  cfg = builder.builder_config.name if builder.builder_config else None
  if prepare and DATASETS[name].embedded:
    builder.download_and_prepare()
    return
  raise FileNotFoundError(
      f'Dataset {name}/{cfg} is not prepared in {builder.data_dir_root}. Prepare it with:\n'
      f'  {prepare_command(name, cfg, builder.data_dir_root)}'
      + ('\nor set --config.data.prepare=True.' if DATASETS[name].embedded else ''))


def load_source(data_config, split: str):
  """`(data_source, info)` of one split, prepared first if the config allows."""
  builder = get_builder(data_config.name, data_config.get('builder_config'),
                        data_config.get('data_dir'))
  ensure_prepared(builder, data_config.name, prepare=data_config.get('prepare', False))
  if split not in builder.info.splits:
    raise ValueError(f'dataset {data_config.name!r} has no split {split!r}; '
                     f'splits: {", ".join(builder.info.splits)}')
  return builder.as_data_source(split), builder.info


def class_names(info: tfds.core.DatasetInfo) -> list[str]:
  return list(info.features['label'].names)
