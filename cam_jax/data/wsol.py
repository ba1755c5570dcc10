"""WSOL folders read in place: the metadata layout of clovaai/wsolevaluation.

Choe et al. (CVPR 2020, "Evaluating WSOL Methods Right") ship their splits of CUB,
ILSVRC and OpenImages as text files next to the images; `data.name='wsol'` reads that
layout as it is, with no prepare step:

    METADATA_ROOT/<DATASET>/<split>/      split: train, val (train-fullsup) or test
        image_ids.txt     one image id per line: a path relative to IMAGE_ROOT/<DATASET>,
                          e.g. `001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg`,
                          `val/ILSVRC2012_val_00000001.JPEG`, `test/0bt_c3/0a51958fcd523ae4.jpg`
        class_labels.txt  `image_id,label`       label: class index, 0-based
        image_sizes.txt   `image_id,width,height`; read where the split has boxes
                          (CUB, ILSVRC), to check them; OpenImages has none
        localization.txt  boxes (CUB, ILSVRC): `image_id,x0,y0,x1,y1`, one line per box,
                          several lines for an image with several objects;
                          masks (OpenImages): `image_id,mask_path,ignore_path`, one line
                          per instance mask; the ignore path is given once per image (on
                          its first line, empty on the others) and may be empty.
    IMAGE_ROOT/<DATASET>/<image_id>       the images
    MASK_ROOT/<DATASET>/<mask_path>       OpenImages instance and ignore masks (PNG)

In wsolevaluation ILSVRC's `val` split is ImageNetV2 (`val2/...`) and its `test` split is
the ILSVRC 2012 validation set (`val/...`); CUB's `val` is CUBV2. localization.txt is
required in every split but train; in train it is read when present (wsolevaluation's
CUB train folder has one, OpenImages' has not), else the train examples have no boxes.
wsolevaluation's `image_ids_proxy.txt` (a subset of train for quick searches) is not read.

Config keys (`config.data.wsol`, with `config.data.name = 'wsol'`):
  dataset           the folder name under METADATA_ROOT: 'CUB', 'ILSVRC', 'OpenImages'
                    (another name works too: its localization.txt says boxes or masks).
  metadata_root     the folder that holds `<DATASET>/<split>/` (wsolevaluation's
                    `--metadata_root`, its `metadata/` folder).
  image_root        the folder that holds `<DATASET>/` with the images (wsolevaluation's
                    `--data_root`, its `dataset/` folder): an image id resolves to
                    IMAGE_ROOT/<DATASET>/<image_id>, exactly as wsolevaluation does.
  mask_root         the folder that holds `OpenImages/` with the masks (wsolevaluation's
                    `--mask_root`); default: image_root, where its download script puts them.
  class_names_file  optional: one readable class name per line, line i naming label i.
                    Without it the names are the label numbers ('0', '1', ...).
The split is config.data.train_split / eval_split, one of the folder names (train, val, test).

Classes: num_classes is the number of lines of class_names_file if given, else the
largest label in the class_labels.txt of every split folder of the dataset plus one, so
that all splits of a dataset agree on it.

Coordinates: boxes are `(x0, y0, x1, y1)`, integer inclusive pixel corners in the
original image, x the column. wsolevaluation reads the columns in that
order (as ints, whatever its variable names say) and computes IoU with the same +1
convention. A box that overhangs its image is clipped with a warning; an inverted box or
one wholly outside its image (against image_sizes.txt, whose order is width, height) is an
error naming the image id, raised when the source is loaded.

Each example (cam_jax.data.base): `image` (the file's bytes), `label`, `boxes` (N×4
int32; N = 0 where the split has no boxes), `file_name` (the image id) and, for a mask
dataset, two H×W uint8 0/255 masks of the image's size (arrays: the pipeline would only
decode PNGs again):
  `segmentation_mask`  the union of the image's instance masks (a pixel is foreground
                       when any instance mask is non-zero there);
  `ignore_mask`        the ignore region minus the foreground, as wsolevaluation defines
                       it (PxAP counts these pixels neither as positives nor negatives);
                       all zeros when the image has no ignore mask, and all 255 for a
                       split without localization.txt (nothing there may be scored).
OpenImages V5 ships many masks at another resolution than their image, with the same
aspect ratio (openimages/dataset#92; wsolevaluation resizes every mask to 224×224 nearest
neighbour): such a mask is resized to its image, nearest neighbour. A mask of another
aspect ratio is an error naming the mask file.

Loading checks every metadata file of the split and every box, and opens no image but
the first (a wrong image_root fails at once); an image is read when its example is: a
missing file then raises FileNotFoundError naming the path, and an image whose header
disagrees with image_sizes.txt a BadImageError (its boxes belong to another image).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
from PIL import Image

from cam_jax.data import images
from cam_jax.data import base
from cam_jax.data.base import SourceInfo

# Datasets of wsolevaluation and whether their localization.txt lists masks (else boxes).
_MASK_DATASETS = {'CUB': False, 'ILSVRC': False, 'OpenImages': True}
_SPLITS_WITHOUT_LOCALIZATION = ('train',)  # localization.txt is optional there.


# ---------------------------------------------------------------------------
# Reading the metadata files
# ---------------------------------------------------------------------------

def _lines(path: str, what: str):
  """`(line_number, line)` of the non-blank lines of a metadata file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: expected {what}')
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip('\r\n')
      if line.strip():
        yield number, line


def _malformed(path: str, number: int, line: str, expected: str) -> ValueError:
  return ValueError(f'{path}, line {number}: expected {expected}, got {line!r}')


def _ints(path: str, number: int, line: str, count: int, expected: str) -> tuple[str, list[int]]:
  """`image_id,int,...,int` with `count` integers (the id may itself hold commas)."""
  fields = line.rsplit(',', count)
  if len(fields) != count + 1 or not fields[0]:
    raise _malformed(path, number, line, expected)
  try:
    return fields[0], [int(v) for v in fields[1:]]
  except ValueError:
    raise _malformed(path, number, line, expected) from None


def read_image_ids(path: str) -> list[str]:
  ids, first_line = [], {}
  for number, line in _lines(path, 'one image id per line'):
    if line in first_line:
      raise ValueError(f'{path}, line {number}: image id {line!r} is listed twice '
                       f'(first on line {first_line[line]})')
    first_line[line] = number
    ids.append(line)
  if not ids:
    raise ValueError(f'{path} lists no image')
  return ids


def read_class_labels(path: str) -> dict[str, int]:
  expected = '"image_id,label" with a class index >= 0'
  labels: dict[str, int] = {}
  for number, line in _lines(path, '"image_id,label" lines'):
    image_id, (label,) = _ints(path, number, line, 1, expected)
    if label < 0 or labels.get(image_id, label) != label:
      raise _malformed(path, number, line, expected + ', one label per image')
    labels[image_id] = label
  return labels


def _max_label(path: str) -> int:
  """The largest label of a class_labels.txt, read fast (ILSVRC train has 1.3M lines)."""
  try:
    with open(path, encoding='utf-8') as f:
      return max((int(line.rsplit(',', 1)[1]) for line in f if line.strip()), default=-1)
  except (ValueError, IndexError):
    return max(read_class_labels(path).values(), default=-1)  # Raises naming the bad line.


def read_image_sizes(path: str) -> dict[str, tuple[int, int]]:
  """`{image_id: (height, width)}` from `image_id,width,height` lines."""
  expected = '"image_id,width,height" with positive integers'
  sizes: dict[str, tuple[int, int]] = {}
  for number, line in _lines(path, '"image_id,width,height" lines'):
    image_id, (width, height) = _ints(path, number, line, 2, expected)
    if width <= 0 or height <= 0 or sizes.get(image_id, (height, width)) != (height, width):
      raise _malformed(path, number, line, expected + ', one size per image')
    sizes[image_id] = (height, width)
  return sizes


def read_boxes(path: str) -> dict[str, list[list[int]]]:
  """`{image_id: [[x0, y0, x1, y1], ...]}` from one `image_id,x0,y0,x1,y1` line per box."""
  expected = ('"image_id,x0,y0,x1,y1" with integer pixel corners (x0,y0,x1,y1 inclusive, '
              'in the original image)')
  boxes: dict[str, list[list[int]]] = {}
  for number, line in _lines(path, '"image_id,x0,y0,x1,y1" lines, one per box'):
    image_id, box = _ints(path, number, line, 4, expected)
    boxes.setdefault(image_id, []).append(box)
  return boxes


def read_mask_paths(path: str) -> tuple[dict[str, list[str]], dict[str, str]]:
  """`({image_id: [mask_path, ...]}, {image_id: ignore_path or ''})`."""
  expected = '"image_id,mask_path,ignore_path" (ignore_path may be empty)'
  masks: dict[str, list[str]] = {}
  ignores: dict[str, str] = {}
  for number, line in _lines(path, '"image_id,mask_path,ignore_path" lines, one per mask'):
    fields = line.split(',')
    if len(fields) != 3 or not fields[0] or not fields[1]:
      raise _malformed(path, number, line, expected)
    image_id, mask_path, ignore_path = fields
    masks.setdefault(image_id, []).append(mask_path)
    previous = ignores.setdefault(image_id, ignore_path)
    if ignore_path and previous and previous != ignore_path:
      raise _malformed(path, number, line, expected + f', one ignore mask per image ('
                       f'{image_id} already has {previous})')
    ignores[image_id] = previous or ignore_path
  return masks, ignores


def read_class_names(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: expected the class_names_file, one readable '
                            'class name per line (line i names label i)')
  with open(path, encoding='utf-8') as f:
    names = [line.rstrip('\r\n') for line in f]
  while names and not names[-1].strip():
    names.pop()
  for number, name in enumerate(names, 1):
    if not name.strip():
      raise ValueError(f'{path}, line {number}: empty class name (expected one name per line)')
  if not names:
    raise ValueError(f'{path} names no class')
  return names


# ---------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------

def _same_aspect(mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
  """Whether one is the other scaled (rounding each side to whole pixels)."""
  (mh, mw), (ih, iw) = mask_hw, image_hw
  return abs(mw * ih - mh * iw) <= max(mh, mw, ih, iw)



def _read_file(path: str, what: str, hint: str) -> bytes:
  """The bytes of `path`; a missing file names what it is and where ids resolve."""
  try:
    with open(path, 'rb') as f:
      return f.read()
  except FileNotFoundError:
    raise FileNotFoundError(f'{what} {path} not found ({hint})') from None

class WsolSource:
  """The examples of one split of a WSOL folder, read at access (picklable for grain)."""

  def __init__(self, *, dataset: str, split: str, image_dir: str, image_ids: list[str],
               labels: np.ndarray, boxes_by_image: list[np.ndarray] | None,
               sizes_hw: np.ndarray | None, mask_dir: str | None = None,
               mask_paths: list[list[str]] | None = None,
               ignore_paths: list[str] | None = None, with_masks: bool = False):
    self.dataset, self.split = dataset, split
    self.image_dir, self.mask_dir = image_dir, mask_dir
    self.image_ids = image_ids
    self.labels = labels
    # All boxes in one array, image i's being boxes[starts[i]:starts[i + 1]]: few objects
    # to pickle when grain sends the source to its workers. None: the split has no boxes.
    if boxes_by_image is None:
      self._starts = None
    else:
      self._starts = np.cumsum([0] + [len(b) for b in boxes_by_image]).astype(np.int64)
      self._boxes = np.concatenate(boxes_by_image).astype(np.int32).reshape(-1, 4)
    self.sizes_hw = sizes_hw  # N×2 (height, width) from image_sizes.txt (box splits), or None.
    self.with_masks = with_masks
    self.mask_paths = mask_paths  # None: a mask dataset's split without localization.
    self.ignore_paths = ignore_paths

  def __len__(self) -> int:
    return len(self.image_ids)

  def __repr__(self) -> str:
    parts = [f'dataset={self.dataset!r}', f'split={self.split!r}', f'images={len(self)}',
             f'image_dir={self.image_dir!r}']
    if self.with_masks:
      parts.append(f'mask_dir={self.mask_dir!r}')
      parts.append('masks=' + ('none (no localization.txt)' if self.mask_paths is None
                               else str(sum(map(len, self.mask_paths)))))
    else:
      parts.append('boxes=' + ('none (no localization.txt)' if self._starts is None
                               else str(len(self._boxes))))
    return f'WsolSource({", ".join(parts)})'

  def _name(self, image_id: str) -> str:
    return f'wsol/{self.dataset}/{self.split}: {image_id}'

  def __getitem__(self, index) -> dict[str, Any]:
    i = base.checked_index(index, self)
    image_id = self.image_ids[i]
    path = os.path.join(self.image_dir, image_id)
    data = _read_file(path, f'{self._name(image_id)}: image file',
                      'image ids resolve to image_root/<DATASET>/<image_id>')
    example = {
        'image': data,
        'label': self.labels[i],
        'boxes': (np.zeros((0, 4), np.int32) if self._starts is None else
                  self._boxes[self._starts[i]:self._starts[i + 1]].copy()),
        'file_name': image_id,
    }
    if self.sizes_hw is not None or self.with_masks:
      image_hw = self._image_hw(i, data, path)
      if self.with_masks:
        example.update(self._masks(i, image_hw))
    return example

  def _image_hw(self, i: int, data: bytes, path: str) -> tuple[int, int]:
    """The image's (height, width) from its header, checked against image_sizes.txt."""
    width, height = images.open_image(data, path).size
    if self.sizes_hw is not None:
      expected_h, expected_w = (int(v) for v in self.sizes_hw[i])
      if (height, width) != (expected_h, expected_w):
        raise images.BadImageError(
            f'{path}: the image is {width}×{height} but image_sizes.txt says '
            f'{expected_w}×{expected_h}: its boxes would not fit it')
    return height, width

  def _read_mask(self, image_id: str, mask_path: str, image_hw: tuple[int, int]) -> np.ndarray:
    path = os.path.join(self.mask_dir, mask_path)
    data = _read_file(path, f'{self._name(image_id)}: mask file',
                      'mask paths resolve to mask_root/<DATASET>/<mask_path>')
    mask = images.decode_mask(data, path) > 0
    if mask.shape != image_hw:
      if not _same_aspect(mask.shape, image_hw):
        raise images.BadImageError(
            f'{path}: the mask is {mask.shape[1]}×{mask.shape[0]} but its image {image_id} is '
            f'{image_hw[1]}×{image_hw[0]} (not even the same aspect ratio)')
      resized = Image.fromarray(mask.astype(np.uint8)).resize(image_hw[::-1], Image.NEAREST)
      mask = np.asarray(resized) > 0
    return mask

  def _masks(self, i: int, image_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    if self.mask_paths is None:
      return {'segmentation_mask': np.zeros(image_hw, np.uint8),
              'ignore_mask': np.full(image_hw, 255, np.uint8)}
    image_id = self.image_ids[i]
    foreground = np.zeros(image_hw, bool)
    for mask_path in self.mask_paths[i]:
      foreground |= self._read_mask(image_id, mask_path, image_hw)
    ignore = np.zeros(image_hw, bool)
    if self.ignore_paths[i]:
      ignore = self._read_mask(image_id, self.ignore_paths[i], image_hw) & ~foreground
    return {'segmentation_mask': foreground * np.uint8(255),
            'ignore_mask': ignore * np.uint8(255)}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def _root(cfg, key: str) -> str:
  value = cfg.get(key)
  if not value:
    raise ValueError(f'config.data.wsol.{key} is not set (data.name="wsol"; see '
                     'cam_jax/data/wsol.py for the layout)')
  return os.path.expanduser(value)


def _uses_masks(dataset: str, dataset_dir: str, split_dirs: list[str]) -> bool:
  """OpenImages lists masks, CUB and ILSVRC boxes; another dataset says so in its files."""
  if dataset in _MASK_DATASETS:
    return _MASK_DATASETS[dataset]
  for split in split_dirs:
    path = os.path.join(dataset_dir, split, 'localization.txt')
    if os.path.isfile(path):
      for _, line in _lines(path, ''):
        return len(line.split(',')) == 3
  return False


def _require(ids: list[str], table: dict, path: str, what: str) -> None:
  missing = [i for i in ids if i not in table]
  if missing:
    more = f' and {len(missing) - 1} more' if len(missing) > 1 else ''
    raise ValueError(f'{path} has no {what} for image {missing[0]!r}{more} (listed in '
                     'image_ids.txt)')


def load_source(data_config, split: str) -> tuple[WsolSource, SourceInfo]:
  """`(source, info)` of one split of a WSOL folder; every metadata file checked now."""
  cfg = data_config.wsol
  dataset = cfg.dataset
  metadata_root, image_root = _root(cfg, 'metadata_root'), _root(cfg, 'image_root')
  mask_root = os.path.expanduser(cfg.get('mask_root') or image_root)
  dataset_dir = os.path.join(metadata_root, dataset)
  if not os.path.isdir(dataset_dir):
    raise FileNotFoundError(f'{dataset_dir} not found: expected the metadata folder of '
                            f'{dataset} (config.data.wsol.metadata_root holds <DATASET>/<split>/)')
  split_dirs = sorted(d for d in os.listdir(dataset_dir)
                      if os.path.isdir(os.path.join(dataset_dir, d)))
  split_dir = os.path.join(dataset_dir, split)
  if split not in split_dirs:
    raise FileNotFoundError(f'{split_dir} not found: expected the metadata of split {split!r}; '
                            f'split folders present: {", ".join(split_dirs) or "none"}')
  path = functools.partial(os.path.join, split_dir)

  image_ids = read_image_ids(path('image_ids.txt'))
  labels_by_id = read_class_labels(path('class_labels.txt'))
  _require(image_ids, labels_by_id, path('class_labels.txt'), 'label')

  # Classes: from the names file, else from the labels of every split.
  if cfg.get('class_names_file'):
    names_file = os.path.expanduser(cfg.class_names_file)
    class_names = read_class_names(names_file)
    where = f'{names_file} names {len(class_names)} classes'
  else:
    max_label = max(labels_by_id.values())
    for other in split_dirs:
      other_path = os.path.join(dataset_dir, other, 'class_labels.txt')
      if other != split and os.path.isfile(other_path):
        max_label = max(max_label, _max_label(other_path))
    class_names = [str(c) for c in range(max_label + 1)]
    where = 'no class_names_file is set'
  for image_id in image_ids:
    if labels_by_id[image_id] >= len(class_names):
      raise ValueError(f'{path("class_labels.txt")}: image {image_id!r} has label '
                       f'{labels_by_id[image_id]}, outside [0, {len(class_names)}) ({where})')
  labels = np.array([labels_by_id[i] for i in image_ids], np.int64)

  with_masks = _uses_masks(dataset, dataset_dir, split_dirs)
  localization = path('localization.txt')
  has_localization = (os.path.isfile(localization) or
                      split not in _SPLITS_WITHOUT_LOCALIZATION)
  boxes_by_image, sizes, mask_paths, ignore_paths = None, None, None, None
  if has_localization and not with_masks:
    # Sizes matter to boxes only: a split without boxes does not read image_sizes.txt.
    sizes_path = path('image_sizes.txt')
    sizes = read_image_sizes(sizes_path)
    _require(image_ids, sizes, sizes_path, 'size')
    boxes = read_boxes(localization)
    _require(image_ids, boxes, localization, 'box')
    boxes_by_image = [images.check_boxes(boxes[i], sizes[i], f'{i} ({localization})')
                      for i in image_ids]
  elif has_localization:
    masks, ignores = read_mask_paths(localization)
    _require(image_ids, masks, localization, 'mask')
    mask_paths = [masks[i] for i in image_ids]
    ignore_paths = [ignores[i] for i in image_ids]

  image_dir = os.path.join(image_root, dataset)
  first = os.path.join(image_dir, image_ids[0])
  if not os.path.isfile(first):
    raise FileNotFoundError(
        f'{first} not found: the first image of {path("image_ids.txt")}. Image ids resolve '
        f'to image_root/{dataset}/<image_id> (image_root={image_root!r}: the folder that '
        f'holds {dataset}/, as wsolevaluation\'s --data_root)')
  mask_dir = os.path.join(mask_root, dataset) if with_masks else None
  if mask_paths is not None and not os.path.isdir(mask_dir):
    raise FileNotFoundError(f'{mask_dir} not found: masks resolve to mask_root/{dataset}/'
                            f'<mask_path> (mask_root={mask_root!r}, default image_root)')

  source = WsolSource(
      dataset=dataset, split=split, image_dir=image_dir, image_ids=image_ids, labels=labels,
      boxes_by_image=boxes_by_image,
      sizes_hw=None if sizes is None else np.array([sizes[i] for i in image_ids], np.int32),
      mask_dir=mask_dir, mask_paths=mask_paths, ignore_paths=ignore_paths,
      with_masks=with_masks)
  info = SourceInfo(name=f'wsol/{dataset}', num_classes=len(class_names),
                    class_names=tuple(class_names), has_masks=with_masks)
  return source, info
