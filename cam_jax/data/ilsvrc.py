"""`ilsvrc2012_loc`: ILSVRC-2012 classification with every localization box, without TF.

TFDS's own `imagenet2012` needs TensorFlow to prepare and carries no boxes; this builder
reads the archives users already have (manual download) and writes ArrayRecord files
holding the encoded images as stored.

Images: `ILSVRC2012_img_train.tar` (a tar of 1,000 per-synset tars) and
`ILSVRC2012_img_val.tar` (50,000 JPEGs), or the same extracted as Kaggle serves the
localization release (`ILSVRC/Data/CLS-LOC/train/<synset>/`, `ILSVRC/Data/CLS-LOC/val/`).
Labels and boxes in either of two forms:
- the ILSVRC localization release: `LOC_synset_mapping.txt`, `LOC_val_solution.csv` and,
  for the ~544k annotated training images, optionally `LOC_train_solution.csv`;
- the 2012 devkit: `ILSVRC2012_devkit_t12.tar.gz` (its `meta.mat` and
  `ILSVRC2012_validation_ground_truth.txt`; or those two files loose) with
  `ILSVRC2012_bbox_val_v3.tgz` (one Pascal-VOC XML per validation image) and, optionally,
  `ILSVRC2012_bbox_train_v2.tar.gz`.

Label = position of the synset in sorted synset order (the same as TFDS imagenet2012).
Boxes are the annotation's `(xmin, ymin, xmax, ymax)` taken as inclusive pixel corners,
every object of the image, clipped to the image. Training images without
annotation have no boxes. The few CMYK and PNG-in-JPEG training files are re-encoded as
JPEG. The readable class names (first synonym of the synset's words) and the full words
are in `info.metadata`.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from typing import Iterator

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from cam_jax.data import images
from cam_jax.data import base
from cam_jax.data.base import find_manual_file, maybe_manual_file

TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
LOC_SYNSETS = 'LOC_synset_mapping.txt'
LOC_VAL = 'LOC_val_solution.csv'
LOC_TRAIN = 'LOC_train_solution.csv'
DEVKIT = 'ILSVRC2012_devkit_t12.tar.gz'
DEVKIT_META = 'meta.mat'
DEVKIT_VAL_LABELS = 'ILSVRC2012_validation_ground_truth.txt'
BBOX_VAL = 'ILSVRC2012_bbox_val_v3.tgz'
BBOX_TRAIN = 'ILSVRC2012_bbox_train_v2.tar.gz'
# The localization release as Kaggle serves it: the images already extracted.
KAGGLE_TRAIN = 'ILSVRC/Data/CLS-LOC/train'
KAGGLE_VAL = 'ILSVRC/Data/CLS-LOC/val'

_NAME = 'ilsvrc2012_loc'
_SYNSET = re.compile(r'^n\d{8}$')
_VAL_FILE = re.compile(r'^ILSVRC2012_val_(\d{8})\.JPEG$')

Annotation = tuple[str, np.ndarray, tuple[int, int] | None]  # (synset, boxes N×4, (h, w))


# ---------------------------------------------------------------------------
# Annotation readers (each names its file in every error)
# ---------------------------------------------------------------------------

def read_loc_synsets(path: str) -> dict[str, str]:
  """`{synset: words}` from LOC_synset_mapping.txt (`n01440764 tench, Tinca tinca`)."""
  words = {}
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      synset, _, text = line.strip().partition(' ')
      if not _SYNSET.match(synset):
        raise ValueError(f'{path}:{line_no}: expected "nXXXXXXXX words", got {line.strip()!r}')
      words[synset] = text.strip()
  return words


def read_loc_solution(path: str) -> dict[str, list[tuple[str, list[float]]]]:
  """`{image_id: [(synset, [x0, y0, x1, y1]), ...]}` from LOC_{train,val}_solution.csv."""
  out: dict[str, list[tuple[str, list[float]]]] = {}
  with open(path, newline='') as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header != ['ImageId', 'PredictionString']:
      raise ValueError(f'{path}: expected the header "ImageId,PredictionString", got {header}')
    for line_no, row in enumerate(reader, 2):
      if not row:
        continue
      fields = row[1].split() if len(row) == 2 else []
      if len(row) != 2 or not fields or len(fields) % 5:
        raise ValueError(f'{path}:{line_no}: expected "ImageId,synset x0 y0 x1 y1 ...", '
                         f'got {",".join(row)!r}')
      objects = []
      for k in range(0, len(fields), 5):
        synset = fields[k]
        try:
          coords = [float(v) for v in fields[k + 1:k + 5]]
        except ValueError as e:
          raise ValueError(f'{path}:{line_no}: non-numeric box in {row[1]!r}') from e
        if not _SYNSET.match(synset):
          raise ValueError(f'{path}:{line_no}: {synset!r} is not a synset id')
        objects.append((synset, coords))
      out[row[0]] = objects
  return out


def parse_voc_xml(data: bytes, name: str) -> Annotation:
  """`(synset, boxes_N4, (h, w))` of one ILSVRC Pascal-VOC annotation file."""
  try:
    root = ET.fromstring(data)
    size = root.find('size')
    hw = (int(size.findtext('height')), int(size.findtext('width'))) if size is not None else None
    synsets, boxes = [], []
    for obj in root.iter('object'):
      bb = obj.find('bndbox')
      synsets.append(obj.findtext('name').strip())
      boxes.append([float(bb.findtext(k)) for k in ('xmin', 'ymin', 'xmax', 'ymax')])
  except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
    raise ValueError(f'{name}: not an ILSVRC annotation (Pascal-VOC XML with size and '
                     f'object/name, object/bndbox/xmin..ymax): {e}') from e
  if len(set(synsets)) > 1:
    raise ValueError(f'{name}: objects of several synsets {sorted(set(synsets))}; ILSVRC '
                     'annotates one class per image')
  return (synsets[0] if synsets else ''), np.asarray(boxes).reshape(-1, 4), hw


def read_xml_archive(path: str) -> dict[str, Annotation]:
  """`{file stem: annotation}` of every .xml in a (compressed) tar, at any depth."""
  out = {}
  with tarfile.open(path, 'r:*') as tar:
    for member in tar:
      if member.isfile() and member.name.endswith('.xml'):
        stem = os.path.splitext(os.path.basename(member.name))[0]
        out[stem] = parse_voc_xml(tar.extractfile(member).read(), f'{path}:{member.name}')
  return out


def read_devkit(manual_dir: str) -> tuple[dict[str, str], list[str]]:
  """`({synset: words}, [synset of validation image 1, 2, ...])` from the devkit."""
  devkit = maybe_manual_file(manual_dir, DEVKIT)
  if devkit:
    with tarfile.open(devkit, 'r:*') as tar:
      members = {os.path.basename(m.name): m for m in tar if m.isfile()}
      for needed in (DEVKIT_META, DEVKIT_VAL_LABELS):
        if needed not in members:
          raise FileNotFoundError(f'{devkit}: has no {needed} (expected under '
                                  'ILSVRC2012_devkit_t12/data/)')
      meta = tar.extractfile(members[DEVKIT_META]).read()
      labels = tar.extractfile(members[DEVKIT_VAL_LABELS]).read().decode()
      where_meta, where_labels = f'{devkit}:{DEVKIT_META}', f'{devkit}:{DEVKIT_VAL_LABELS}'
  else:
    where_meta = find_manual_file(manual_dir, [DEVKIT_META], _NAME,
                                  f'the devkit ({DEVKIT}, or its {DEVKIT_META} loose)')
    where_labels = find_manual_file(manual_dir, [DEVKIT_VAL_LABELS], _NAME,
                                    'the devkit validation labels')
    with open(where_meta, 'rb') as f:
      meta = f.read()
    with open(where_labels) as f:
      labels = f.read()
  try:
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)['synsets']
    by_id = {int(s['ILSVRC2012_ID']): (str(s['WNID']), str(s['words'])) for s in synsets
             if int(s['num_children']) == 0}
  except Exception as e:
    raise ValueError(f'{where_meta}: not the devkit meta.mat (a struct array "synsets" with '
                     f'ILSVRC2012_ID, WNID, words, num_children): {e}') from e
  val_synsets = []
  for line_no, line in enumerate(labels.split('\n'), 1):
    if not line.strip():
      continue
    if not line.strip().isdigit() or int(line) not in by_id:
      raise ValueError(f'{where_labels}:{line_no}: expected an ILSVRC2012_ID of meta.mat '
                       f'(1..{len(by_id)}), got {line.strip()!r}')
    val_synsets.append(by_id[int(line)][0])
  return dict(by_id.values()), val_synsets


# ---------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------

def readable_name(words: str) -> str:
  """The first synonym: 'tench, Tinca tinca' -> 'tench'."""
  return words.split(',')[0].strip()


class Ilsvrc2012Loc(tfds.core.GeneratorBasedBuilder):
  """ILSVRC-2012 images, labels and every ground-truth box, prepared without TensorFlow."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put in the manual folder (default DATA_DIR/downloads/manual, or --manual_dir):
  {TRAIN_TAR} and {VAL_TAR} (https://image-net.org, ILSVRC2012 downloads; or the
  extracted {KAGGLE_TRAIN}/ and {KAGGLE_VAL}/ of Kaggle's download), and either
  {LOC_SYNSETS}, {LOC_VAL} and optionally {LOC_TRAIN} (the ILSVRC localization release,
  also on Kaggle's imagenet-object-localization-challenge), or
  {DEVKIT} (or its data/{DEVKIT_META} and data/{DEVKIT_VAL_LABELS} loose) and {BBOX_VAL},
  optionally {BBOX_TRAIN}.
Then: python -m cam_jax.data.prepare --dataset={_NAME} --manual_dir=FOLDER
"""

  def __init__(self, *, skip_bad_images: bool = False, **kwargs):
    self._skip_bad_images = skip_bad_images
    self._synsets: list[str] = []
    self._label_of: dict[str, int] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # The class list is only known from the manual files, so the features get it at
    # prepare time (`_split_generators`); a prepared dataset reads it back from disk.
    return self.dataset_info_from_configs(
        features=images.localization_features(None),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # records in archive order: stable indices
        metadata=tfds.core.MetadataDict(),
        description=__doc__,
        homepage='https://image-net.org/challenges/LSVRC/2012/',
    )

  def _split_generators(self, dl_manager) -> dict[str, Iterator]:
    manual_dir = base.manual_dir(dl_manager, _NAME, f'{TRAIN_TAR}, {VAL_TAR} and the annotations')
    train_tar = find_manual_file(manual_dir, [TRAIN_TAR, KAGGLE_TRAIN], _NAME,
                                 'the training images')
    val_tar = find_manual_file(manual_dir, [VAL_TAR, KAGGLE_VAL], _NAME, 'the validation images')
    if maybe_manual_file(manual_dir, LOC_VAL):
      words, val, train = self._read_loc_release(manual_dir)
    elif maybe_manual_file(manual_dir, BBOX_VAL):
      words, val, train = self._read_devkit_release(manual_dir)
    else:
      raise FileNotFoundError(
          f'{_NAME}: validation labels and boxes not found: expected {LOC_VAL} (with '
          f'{LOC_SYNSETS}) or {BBOX_VAL} (with {DEVKIT}) in the manual folder {manual_dir}.')
    self._synsets = sorted(words)
    self._label_of = {s: i for i, s in enumerate(self._synsets)}
    self.info.features['label'].names = self._synsets  # sorted order = label index
    self.info.metadata['class_names'] = [readable_name(words[s]) for s in self._synsets]
    self.info.metadata['synset_words'] = [words[s] for s in self._synsets]
    return {'train': self._generate_examples('train', train_tar, train),
            'validation': self._generate_examples('validation', val_tar, val)}

  def _read_loc_release(self, manual_dir: str):
    words = read_loc_synsets(find_manual_file(manual_dir, [LOC_SYNSETS], _NAME,
                                              'the synset list'))
    val = self._annotations_from_csv(os.path.join(manual_dir, LOC_VAL))
    train_csv = maybe_manual_file(manual_dir, LOC_TRAIN)
    train = self._annotations_from_csv(train_csv) if train_csv else {}
    return words, val, train

  @staticmethod
  def _annotations_from_csv(path: str) -> dict[str, Annotation]:
    out = {}
    for image_id, objects in read_loc_solution(path).items():
      synsets = sorted({s for s, _ in objects})
      if len(synsets) > 1:
        raise ValueError(f'{path}: {image_id} has objects of several synsets {synsets}; '
                         'ILSVRC annotates one class per image')
      out[image_id] = (synsets[0], np.asarray([c for _, c in objects]).reshape(-1, 4), None)
    return out

  def _read_devkit_release(self, manual_dir: str):
    words, val_synsets = read_devkit(manual_dir)
    val_xml_path = os.path.join(manual_dir, BBOX_VAL)
    xmls = read_xml_archive(val_xml_path)
    val = {}
    for k, synset in enumerate(val_synsets, 1):
      image_id = f'ILSVRC2012_val_{k:08d}'
      if image_id not in xmls:
        raise ValueError(f'{val_xml_path}: no annotation {image_id}.xml')
      xml_synset, boxes, hw = xmls[image_id]
      if xml_synset and xml_synset != synset:
        raise ValueError(f'{val_xml_path}: {image_id}.xml names {xml_synset}, but '
                         f'{DEVKIT_VAL_LABELS} says {synset}')
      val[image_id] = (synset, boxes, hw)
    train_xml_path = maybe_manual_file(manual_dir, BBOX_TRAIN)
    train = read_xml_archive(train_xml_path) if train_xml_path else {}
    return words, val, train

  def _example(self, data: bytes, file_name: str, name: str, synset: str,
               annotation: Annotation | None) -> dict | None:
    """One example, or None when a bad image is skipped (`skip_bad_images`); `name` says
    where the file is in the archives, for errors."""
    try:
      encoded, hw = images.check_encoded_image(data, name, formats=('JPEG',))
      boxes = np.zeros((0, 4), np.int32)
      if annotation is not None:
        ann_synset, ann_boxes, ann_hw = annotation
        if ann_synset and ann_synset != synset:
          raise images.BadBoxError(f'{name}: annotated as {ann_synset}, labelled {synset}')
        if ann_hw is not None and tuple(ann_hw) != hw:
          raise images.BadBoxError(f'{name}: the annotation is for a {ann_hw[1]}×{ann_hw[0]} '
                                   f'image, the file is {hw[1]}×{hw[0]}')
        boxes = images.check_boxes(ann_boxes, hw, name)
    except images.BadImageError as e:
      images.skip_or_raise(e, self._skip_bad_images)
      return None
    return {'image': encoded, 'label': self._label_of[synset], 'boxes': boxes,
            'image_hw': np.asarray(hw, np.int32), 'file_name': file_name}

  def _generate_examples(self, split: str, path: str, annotations: dict[str, Annotation]):
    files = _train_files(path) if split == 'train' else _val_files(path)
    known = set(self._synsets)
    for synset, file_name, name, payload in files:
      stem = os.path.splitext(file_name)[0]
      if split == 'train':
        if synset not in known:
          raise ValueError(f'{name}: {synset} is not one of the {len(known)} synsets of the '
                           'synset list')
        annotation = annotations.get(stem)
      else:
        if stem not in annotations:
          raise ValueError(f'{name}: no label or boxes for {stem} in the annotation files')
        annotation = annotations[stem]
        synset = annotation[0]
      ex = self._example(payload, file_name, name, synset, annotation)
      if ex is not None:
        yield file_name, ex


def _train_files(path: str) -> Iterator[tuple[str, str, str, bytes]]:
  """`(synset, file name, where, bytes)` of each training image: from the tar of
  per-synset tars, or from the extracted `train/<synset>/` folders."""
  if os.path.isdir(path):
    for synset in sorted(os.listdir(path)):
      for file_name in sorted(os.listdir(os.path.join(path, synset))):
        where = os.path.join(path, synset, file_name)
        with open(where, 'rb') as f:
          yield synset, file_name, where, f.read()
    return
  with tarfile.open(path, 'r|*') as outer:
    for synset_member in outer:
      if not synset_member.isfile():
        continue
      synset = os.path.splitext(os.path.basename(synset_member.name))[0]
      if not _SYNSET.match(synset):
        raise ValueError(f'{path}: member {synset_member.name} is not a per-synset tar '
                         '(expected nXXXXXXXX.tar)')
      with tarfile.open(fileobj=outer.extractfile(synset_member), mode='r|*') as inner:
        for member in inner:
          if member.isfile():
            yield (synset, os.path.basename(member.name),
                   f'{path}:{synset_member.name}:{member.name}', inner.extractfile(member).read())


def _val_files(path: str) -> Iterator[tuple[str, str, str, bytes]]:
  """`('', file name, where, bytes)` of each validation image: from the tar, or from the
  extracted `val/` folder."""
  if os.path.isdir(path):
    for file_name in sorted(os.listdir(path)):
      where = os.path.join(path, file_name)
      _check_val_name(file_name, where)
      with open(where, 'rb') as f:
        yield '', file_name, where, f.read()
    return
  with tarfile.open(path, 'r|*') as tar:
    for member in tar:
      if member.isfile():
        file_name = os.path.basename(member.name)
        _check_val_name(file_name, f'{path}:{member.name}')
        yield '', file_name, f'{path}:{member.name}', tar.extractfile(member).read()


def _check_val_name(file_name: str, where: str) -> None:
  if not _VAL_FILE.match(file_name):
    raise ValueError(f'{where}: unexpected file (expected ILSVRC2012_val_NNNNNNNN.JPEG)')
