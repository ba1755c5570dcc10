"""A fake WSOL tree in clovaai/wsolevaluation's layout, for tests of `data.name='wsol'`.

`write_fake_wsol(root, dataset)` writes

    ROOT/metadata/<DATASET>/<split>/image_ids.txt, class_labels.txt,
                                    image_sizes.txt (not for OpenImages, as the real one),
                                    localization.txt (val and test; train only if asked)
    ROOT/dataset/<DATASET>/<image_id>        small non-square PNG and JPEG images
    ROOT/dataset/OpenImages/<mask_path>      instance and ignore masks (OpenImages)
    ROOT/class_names.txt                     one readable name per class

with image ids shaped like the real ones, and returns what it wrote (the expected values
of a test): see `write_fake_wsol`. `data_config(expected)` is the matching
`config.data` for `cam_jax.data.load_source`.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

SPLITS = ('train', 'val', 'test')


def _image_id(dataset: str, split: str, label: int, i: int, ext: str) -> str:
  if dataset == 'CUB':  # The splits share the class folders: a number per split and image.
    number = 1000 * (SPLITS.index(split) + 1) + i if split in SPLITS else i
    return f'{label + 1:03d}.Class_{label}/Class_{label}_{i:04d}_{number}.{ext}'
  if dataset == 'ILSVRC':
    if split == 'train':
      return f'train/n0000000{label}/n0000000{label}_{i}.{ext.upper()}'
    if split == 'val':  # ImageNetV2, in wsolevaluation's val split.
      return f'val2/{label}/{i}.{ext}'
    return f'val/ILSVRC2012_val_{i + 1:08d}.{ext.upper()}'
  return f'{split}/0cls{label}/{i:016x}.{ext}'


def _pixels(rng: np.random.Generator, hw: tuple[int, int], fmt: str, i: int) -> np.ndarray:
  h, w = hw
  if fmt == 'png':  # Noise: decoding must give these exact bytes back.
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  # JPEG: smooth, so that the decoded pixels stay close to these.
  y, x = np.mgrid[:h, :w]
  return np.stack([30 + 150 * x / w, 30 + 150 * y / h, np.full((h, w), 60.0 + 10 * i)],
                  axis=-1).astype(np.uint8)


def _save(array: np.ndarray, path: str, fmt: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array)
  if fmt == 'jpeg':
    image.save(path, format='JPEG', quality=95)
  else:
    image.save(path, format='PNG')


def _write_lines(path: str, lines: list[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(''.join(line + '\n' for line in lines))


def _rect(hw: tuple[int, int], y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
  mask = np.zeros(hw, bool)
  mask[y0:y1 + 1, x0:x1 + 1] = True
  return mask


def write_fake_wsol(root: str, dataset: str = 'CUB', *, splits=SPLITS, images_per_split: int = 4,
                    num_classes: int = 3, image_format: str = 'mixed',
                    train_localization: bool = False, seed: int = 0) -> dict:
  """Writes a fake `dataset` ('CUB', 'ILSVRC' or 'OpenImages') under `root`; returns

    {'root', 'dataset', 'metadata_root', 'image_root', 'mask_root' (= image_root),
     'class_names_file', 'class_names', 'num_classes',
     'splits': {split: {
         'image_ids': [str], 'labels': [int], 'formats': ['png' | 'jpeg'],
         'sizes_hw': [(h, w)], 'pixels': [H×W×3 uint8 as written],
         'boxes': [N×4 int lists, (x0, y0, x1, y1) inclusive; [] where the split has no
                   localization.txt] (CUB, ILSVRC),
         'masks': [H×W uint8, 255 where any instance mask is set; None without
                   localization.txt], 'ignore': [H×W uint8, 255 on the ignore region
                   minus the masks; None without localization.txt] (OpenImages),
         'mask_files': [[mask_path, ...]], 'ignore_files': [ignore_path or '']}}}

  Labels: train uses every class (i % num_classes); val and test only the first
  num_classes - 1, so that num_classes must come from all splits. Image 1 of every split
  with localization has three boxes (or three instance masks), one touching the image
  border; even images are PNG and odd ones JPEG when `image_format='mixed'`. OpenImages
  images 0 and 2 have an ignore mask overlapping their first instance; of image 1's three
  instance masks one is a 1-bit PNG and one holds 0/1 instead of 0/255.
  """
  rng = np.random.default_rng(seed)
  metadata_root = os.path.join(root, 'metadata')
  image_root = os.path.join(root, 'dataset')
  with_masks = dataset == 'OpenImages'
  class_names = [f'species {c}' for c in range(num_classes)]
  class_names_file = os.path.join(root, 'class_names.txt')
  _write_lines(class_names_file, class_names)
  out = {'root': root, 'dataset': dataset, 'metadata_root': metadata_root,
         'image_root': image_root, 'mask_root': image_root,
         'class_names_file': class_names_file, 'class_names': class_names,
         'num_classes': num_classes, 'splits': {}}
  for s, split in enumerate(splits):
    meta = os.path.join(metadata_root, dataset, split)
    localized = split != 'train' or (train_localization and not with_masks)
    n_labels = num_classes if split == 'train' else num_classes - 1
    exp = {k: [] for k in ('image_ids', 'labels', 'formats', 'sizes_hw', 'pixels', 'boxes',
                           'masks', 'ignore', 'mask_files', 'ignore_files')}
    ids_lines, label_lines, size_lines, loc_lines = [], [], [], []
    for i in range(images_per_split):
      label = i % n_labels
      fmt = image_format if image_format != 'mixed' else ('png' if i % 2 == 0 else 'jpeg')
      hw = (20 + 2 * i + s, 31 + 3 * i)  # Wider than high, a different size each.
      h, w = hw
      image_id = _image_id(dataset, split, label, i, 'png' if fmt == 'png' else 'jpg')
      pixels = _pixels(rng, hw, fmt, i)
      _save(pixels, os.path.join(image_root, dataset, image_id), fmt)
      ids_lines.append(image_id)
      label_lines.append(f'{image_id},{label}')
      size_lines.append(f'{image_id},{w},{h}')  # width first, as wsolevaluation's files.
      for key, value in (('image_ids', image_id), ('labels', label), ('formats', fmt),
                         ('sizes_hw', hw), ('pixels', pixels)):
        exp[key].append(value)

      boxes = []
      if localized and not with_masks:
        boxes = [[i, 1 + i % 3, w - 2 - i, h - 3]]
        if i == 1:
          boxes += [[0, 0, w - 1, h - 1], [2, 2, 5, 4]]
        loc_lines += [f'{image_id},' + ','.join(map(str, b)) for b in boxes]
      exp['boxes'].append(boxes)

      if with_masks and localized:
        stem = os.path.splitext(image_id)[0]
        instances = [_rect(hw, 2, 3, h // 2, w // 2)]
        if i == 1:
          instances += [_rect(hw, h // 2, w // 2, h - 1, w - 1), _rect(hw, 0, 0, 1, w - 1)]
        mask_files = [f'{stem}_m0cls{label}_{j:08x}.png' for j in range(len(instances))]
        for j, (mask, mask_file) in enumerate(zip(instances, mask_files)):
          path = os.path.join(image_root, dataset, mask_file)
          if i == 1 and j == 1:  # A 1-bit PNG: decoded as 0/255 too.
            Image.fromarray(mask).save(path, format='PNG')
          elif i == 1 and j == 2:  # 0/1: any non-zero value is foreground (wsolevaluation: > 0.5).
            _save(mask.astype(np.uint8), path, 'png')
          else:
            _save(mask.astype(np.uint8) * 255, path, 'png')
        union = np.logical_or.reduce(instances)
        ignore_file, ignore = '', np.zeros(hw, bool)
        if i % 2 == 0:
          ignore_file = f'{stem}_ignore.png'
          region = _rect(hw, 0, 0, h - 1, 5)  # Overlaps the first instance (columns 3-5).
          _save(region.astype(np.uint8) * 255, os.path.join(image_root, dataset, ignore_file),
                'png')
          ignore = region & ~union
        loc_lines.append(f'{image_id},{mask_files[0]},{ignore_file}')
        loc_lines += [f'{image_id},{m},' for m in mask_files[1:]]
        exp['masks'].append(union.astype(np.uint8) * 255)
        exp['ignore'].append(ignore.astype(np.uint8) * 255)
        exp['mask_files'].append(mask_files)
        exp['ignore_files'].append(ignore_file)
      elif with_masks:
        for key in ('masks', 'ignore', 'mask_files', 'ignore_files'):
          exp[key].append(None)

    _write_lines(os.path.join(meta, 'image_ids.txt'), ids_lines)
    _write_lines(os.path.join(meta, 'class_labels.txt'), label_lines)
    if not with_masks:
      _write_lines(os.path.join(meta, 'image_sizes.txt'), size_lines)
    if localized:
      _write_lines(os.path.join(meta, 'localization.txt'), loc_lines)
    out['splits'][split] = exp
  return out


def data_config(expected: dict, **wsol_overrides):
  """`config.data` (configs/common.py) that reads the fake tree `expected` describes."""
  from configs import common  # pylint: disable=g-import-not-at-top

  config = common.get_common().data
  config.name = 'wsol'
  config.wsol.dataset = expected['dataset']
  config.wsol.metadata_root = expected['metadata_root']
  config.wsol.image_root = expected['image_root']
  for key, value in wsol_overrides.items():
    config.wsol[key] = value
  return config
