"""`cub2011_loc`: CUB-200-2011 birds with their boxes (and masks), prepared without TensorFlow.

Reads the official files from the manual folder, without extracting them to disk:
  `CUB_200_2011.tgz`   `CUB_200_2011/images/<class folder>/<file>.jpg` and the text files
                       `images.txt`, `image_class_labels.txt`, `train_test_split.txt`,
                       `bounding_boxes.txt` and `classes.txt`;
  `segmentations.tgz`  `segmentations/<class folder>/<file stem>.png` (config
                       `segmentation` only).
Either may also be given already extracted, as the folder `CUB_200_2011/` (or
`segmentations/`) in the manual folder.

Splits `train` (5,994 images) and `test` (5,794) follow `train_test_split.txt`; records
are in image id order. Label = class id - 1; the ClassLabel names are those of
`classes.txt` (`001.Black_footed_Albatross`) and the readable names (`Black footed
Albatross`) are in `info.metadata['class_names']`.

Boxes: CUB's `x y width height` (0-based pixel coordinates) cover the pixels x .. x +
width - 1, so each image's one box is stored as the inclusive corners `(x0, y0, x1, y1) =
(x, y, x + width - 1, y + height - 1)`, rounded, clipped to the image when it overhangs.

Masks (config `segmentation`): CUB's soft masks, each pixel the fraction of annotators who
marked it × 255, stored as single-channel PNGs of the image's size; threshold them where a
binary mask is needed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import posixpath
import re
import tarfile
from typing import Collection, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from cam_jax.data import base, images

_NAME = 'cub2011_loc'
_TOP = 'CUB_200_2011'
_SEG_TOP = 'segmentations'
_TEXT_FILES = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt',
               'bounding_boxes.txt', 'classes.txt')

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download from https://www.vision.caltech.edu/datasets/cub_200_2011/ (the files are hosted
on data.caltech.edu, record "Caltech-UCSD Birds-200-2011"):
  CUB_200_2011.tgz   images, labels, splits and boxes (1.1 GB); always needed
  segmentations.tgz  soft segmentation masks (37 MB); for --builder_config=segmentation
Put them in one folder as downloaded (or extracted there, as the folders CUB_200_2011/ and
segmentations/), then run
  python -m cam_jax.data.prepare --dataset=cub2011_loc [--builder_config=segmentation] --manual_dir=DIR
"""


class _Files:
  """The files under one top folder, read from a tar archive or from the extracted folder.

  A `.tgz` is streamed member by member: a gzip stream cannot seek, and random access
  would decompress it again from the start for every backward jump.
  """

  def __init__(self, path: str, top: str):
    self.path = path
    self.top = top
    self.is_archive = os.path.isfile(path)

  def describe(self, name: str) -> str:
    """How errors name file `name` (relative to the top folder)."""
    if self.is_archive:
      return f'{posixpath.join(self.top, name)} in {self.path}'
    return os.path.join(self.path, *name.split('/'))

  def _stream(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """`(name, contents)` of the archive's members in `wanted`, in archive order."""
    prefix = self.top + '/'
    try:
      with tarfile.open(self.path, mode='r|*', bufsize=1 << 20) as tar:
        for member in tar:
          name = member.name[2:] if member.name.startswith('./') else member.name
          if member.isfile() and name.startswith(prefix) and name[len(prefix):] in wanted:
            yield name[len(prefix):], tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:  # Truncated or not a tar archive.
      raise ValueError(f'{_NAME}: cannot read the archive {self.path} ({e})') from e

  def read(self, names: Collection[str]) -> dict[str, bytes]:
    """The contents of those of `names` that exist (stops once all are found)."""
    wanted, found = set(names), {}
    if not self.is_archive:
      for name in wanted:
        path = os.path.join(self.path, *name.split('/'))
        if os.path.isfile(path):
          with open(path, 'rb') as f:
            found[name] = f.read()
      return found
    if not wanted:
      return found
    for name, data in self._stream(wanted):
      found[name] = data
      if len(found) == len(wanted):
        break
    return found

  def iter_files(self, names: Collection[str]) -> Iterator[tuple[str, bytes]]:
    """`(name, contents)` of each of `names`, in archive order; raises if one is missing."""
    if not self.is_archive:
      for name in names:
        found = self.read([name])
        if not found:
          raise FileNotFoundError(f'{_NAME}: {self.describe(name)} not found')
        yield name, found[name]
      return
    wanted = set(names)
    for name, data in self._stream(set(wanted)):
      wanted.discard(name)
      yield name, data
      if not wanted:
        return
    if wanted:
      raise FileNotFoundError(f'{_NAME}: {self.describe(sorted(wanted)[0])} not found '
                              f'({len(wanted)} listed file(s) missing)')


def _rows(text: bytes, file_name: str, num_fields: int) -> Iterator[tuple[int, list[str]]]:
  """`(line_number, fields)` of each non-blank line; the last field keeps its spaces."""
  for number, line in enumerate(text.decode('utf-8').splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split(maxsplit=num_fields - 1)
    if len(fields) != num_fields:
      raise ValueError(f'{_NAME}: {file_name} line {number}: expected {num_fields} fields, '
                       f'got {line!r}')
    yield number, fields


def _table(text: bytes, file_name: str, num_fields: int, parse) -> dict[int, object]:
  """`{id: parse(rest_of_fields)}` of a CUB text file keyed by its first column."""
  table = {}
  for number, fields in _rows(text, file_name, num_fields):
    try:
      key, value = int(fields[0]), parse(fields[1:])
    except ValueError as e:
      raise ValueError(f'{_NAME}: {file_name} line {number}: cannot parse '
                       f'{" ".join(fields)!r} ({e})') from e
    if key in table:
      raise ValueError(f'{_NAME}: {file_name} line {number}: id {key} listed twice')
    table[key] = value
  return table


def _split_flag(fields: list[str]) -> str:
  if fields[0] not in ('0', '1'):
    raise ValueError('expected 1 (train) or 0 (test)')
  return 'train' if fields[0] == '1' else 'test'


def readable_name(class_name: str) -> str:
  """`001.Black_footed_Albatross` -> `Black footed Albatross`."""
  return re.sub(r'^\d+\.', '', class_name).replace('_', ' ')


@dataclasses.dataclass(frozen=True)
class _Annotations:
  class_names: list[str]  # classes.txt names, indexed by label
  file_names: dict[int, str]  # image id -> path under images/
  labels: dict[int, int]
  splits: dict[int, str]
  boxes_xywh: dict[int, tuple[float, float, float, float]]


def _read_annotations(files: _Files) -> _Annotations:
  """Parses the text files and checks that every image id has a row in each."""
  texts = files.read(_TEXT_FILES)
  for name in _TEXT_FILES:
    if name not in texts:
      raise FileNotFoundError(f'{_NAME}: {files.describe(name)} not found')
  described = {name: files.describe(name) for name in _TEXT_FILES}
  classes = _table(texts['classes.txt'], described['classes.txt'], 2, lambda f: f[0])
  if sorted(classes) != list(range(1, len(classes) + 1)):
    raise ValueError(f'{_NAME}: {described["classes.txt"]}: class ids must be 1..N, got '
                     f'{sorted(classes)}')
  file_names = _table(texts['images.txt'], described['images.txt'], 2, lambda f: f[0])
  labels = _table(texts['image_class_labels.txt'], described['image_class_labels.txt'], 2,
                  lambda f: int(f[0]) - 1)
  splits = _table(texts['train_test_split.txt'], described['train_test_split.txt'], 2,
                  _split_flag)
  boxes = _table(texts['bounding_boxes.txt'], described['bounding_boxes.txt'], 5,
                 lambda f: tuple(float(v) for v in f))
  for name, table in (('image_class_labels.txt', labels), ('train_test_split.txt', splits),
                      ('bounding_boxes.txt', boxes)):
    missing = sorted(set(file_names) - set(table))
    if missing:
      raise ValueError(f'{_NAME}: {described[name]} has no row for image id {missing[0]} '
                       f'(listed in images.txt; {len(missing)} id(s) missing)')
    extra = sorted(set(table) - set(file_names))
    if extra:
      raise ValueError(f'{_NAME}: {described["images.txt"]} has no row for image id '
                       f'{extra[0]} (listed in {described[name]})')
  for image_id, label in labels.items():
    if not 0 <= label < len(classes):
      raise ValueError(f'{_NAME}: {described["image_class_labels.txt"]}: image id {image_id} '
                       f'has class {label + 1}, not in classes.txt')
  return _Annotations(class_names=[classes[k + 1] for k in range(len(classes))],
                      file_names=file_names, labels=labels, splits=splits, boxes_xywh=boxes)


def _mask_name(file_name: str) -> str:
  return posixpath.splitext(file_name)[0] + '.png'


def _check_mask(data: bytes, name: str, image_hw: tuple[int, int]) -> bytes:
  """Single-channel PNG bytes of a verified mask of the image's size."""
  mask_HW = images.decode_mask(data, name)  # A full decode: a truncated file fails here.
  if mask_HW.shape != tuple(image_hw):
    raise ValueError(f'{_NAME}: mask {name} is {mask_HW.shape[1]}×{mask_HW.shape[0]}, but '
                     f'its image is {image_hw[1]}×{image_hw[0]}')
  header = Image.open(io.BytesIO(data))  # Opens: decode_mask read it.
  if header.format == 'PNG' and header.mode == 'L':
    return data
  buf = io.BytesIO()
  Image.fromarray(mask_HW).save(buf, format='PNG')
  return buf.getvalue()


@dataclasses.dataclass
class Cub2011LocConfig(tfds.core.BuilderConfig):
  """Whether the examples carry CUB's segmentation masks."""
  with_mask: bool = False


class Cub2011Loc(tfds.core.GeneratorBasedBuilder):
  """CUB-200-2011 for weakly supervised localization: one box per image, optional masks."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      Cub2011LocConfig(name='default', description='Images, labels, boxes.'),
      Cub2011LocConfig(name='segmentation', with_mask=True,
                       description='Images, labels, boxes and soft segmentation masks.'),
  ]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, skip_bad_images: bool = False, **kwargs):
    """`skip_bad_images`: leave out (with a warning naming it) an image or mask that does
    not decode, instead of failing; bad boxes and missing files always fail."""
    self._skip_bad_images = skip_bad_images
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # The class names are read from classes.txt at prepare time (the ClassLabel and the
    # metadata are filled in then, and saved with the dataset).
    return self.dataset_info_from_configs(
        features=images.localization_features(None, image_format='jpeg',
                                              with_mask=self.builder_config.with_mask),
        supervised_keys=('image', 'label'),
        # Keys are image ids: records are in image id order.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        homepage='https://www.vision.caltech.edu/datasets/cub_200_2011/',
        description=__doc__,
    )

  def _manual_files(self, dl_manager) -> tuple[_Files, _Files | None]:
    manual_dir = base.manual_dir(dl_manager, _NAME, f'{_TOP}.tgz (or the folder {_TOP}/)')
    cub = base.find_manual_file(manual_dir, [f'{_TOP}.tgz', _TOP], _NAME,
                                'the CUB-200-2011 images and annotations')
    seg = None
    if self.builder_config.with_mask:
      seg = _Files(base.find_manual_file(manual_dir, [f'{_SEG_TOP}.tgz', _SEG_TOP], _NAME,
                                         'the segmentation masks'), _SEG_TOP)
    return _Files(cub, _TOP), seg

  def _split_generators(self, dl_manager):
    cub, seg = self._manual_files(dl_manager)
    ann = _read_annotations(cub)
    self.info.features['label'].names = ann.class_names
    self.info.metadata['class_names'] = [readable_name(n) for n in ann.class_names]
    return {split: self._generate_examples(cub, seg, ann, split) for split in ('train', 'test')}

  def _generate_examples(self, cub: _Files, seg: _Files | None, ann: _Annotations, split: str):
    ids = sorted(i for i, s in ann.splits.items() if s == split)
    id_of = {'images/' + ann.file_names[i]: i for i in ids}
    masks = {}
    if seg is not None:
      wanted = [_mask_name(ann.file_names[i]) for i in ids]
      masks = seg.read(wanted)
      missing = [name for name in wanted if name not in masks]
      if missing:
        raise FileNotFoundError(f'{_NAME}: mask {seg.describe(missing[0])} not found '
                                f'({len(missing)} mask(s) missing)')
    for path, data in cub.iter_files(list(id_of)):
      image_id = id_of[path]
      file_name = ann.file_names[image_id]
      name = cub.describe(path)
      try:
        encoded, image_hw = images.check_encoded_image(data, name)
      except images.BadImageError as e:
        images.skip_or_raise(e, self._skip_bad_images)
        continue
      x, y, w, h = ann.boxes_xywh[image_id]
      # CUB's box covers pixels x .. x + w - 1 (and y .. y + h - 1): inclusive corners.
      box = np.round([x, y, x + w - 1, y + h - 1])
      example = {
          'image': encoded,
          'label': ann.labels[image_id],
          'boxes': images.check_boxes(box, image_hw, name),
          'image_hw': np.asarray(image_hw, np.int32),
          'file_name': file_name,
      }
      if seg is not None:
        mask_name = _mask_name(file_name)
        try:
          example['segmentation_mask'] = _check_mask(masks.pop(mask_name),
                                                     seg.describe(mask_name), image_hw)
        except images.BadImageError as e:
          images.skip_or_raise(e, self._skip_bad_images)
          continue
      yield image_id, example
