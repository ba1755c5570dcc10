"""Small fake ILSVRC-2012 manual files, in the real formats, for the builder's tests.

Train: a tar of per-synset tars of JPEGs (one CMYK JPEG and one PNG named .JPEG among
them, as in the real set). Validation: a flat tar of ILSVRC2012_val_NNNNNNNN.JPEG, with
labels and boxes either as the localization release's CSVs or as the devkit's meta.mat +
ground-truth file + one Pascal-VOC XML per image. Images are non-square, of several
sizes, with a bright rectangle where each box is.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import scipy.io
from PIL import Image

# Listed out of sorted order on purpose: labels must follow *sorted* synset order.
SYNSETS = {'n02102040': 'English springer, English springer spaniel',
           'n01440764': 'tench, Tinca tinca',
           'n01443537': 'goldfish, Carassius auratus'}
SORTED = sorted(SYNSETS)
# (synset, (h, w), boxes (x0, y0, x1, y1) inclusive) per validation image, in file order.
VAL = [
    ('n01443537', (36, 48), [[4, 6, 20, 30]]),
    ('n02102040', (40, 30), [[0, 0, 29, 39]]),
    ('n01440764', (30, 50), [[2, 3, 12, 14], [20, 5, 30, 25], [35, 10, 49, 29]]),  # 3 objects
    ('n01440764', (44, 44), [[10, 10, 33, 33]]),
    ('n02102040', (32, 40), [[5, 1, 25, 30]]),
    ('n01443537', (50, 38), [[0, 20, 37, 49]]),
]
TRAIN_PER_SYNSET = 3
TRAIN_HW = (36, 44)
CMYK_FILE = 'n01440764_2.JPEG'
PNG_FILE = 'n02102040_1.JPEG'


def val_name(k: int) -> str:
  return f'ILSVRC2012_val_{k + 1:08d}'


def train_name(synset: str, j: int) -> str:
  return f'{synset}_{j}'


def train_box(j: int) -> list[int]:
  return [2 + j, 3, 20 + j, 30]


def image_bytes(hw, boxes, seed: int, fmt: str = 'JPEG', mode: str = 'RGB') -> bytes:
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 80, (*hw, 3), dtype=np.uint8)
  for x0, y0, x1, y1 in boxes:
    pixels[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = 230
  image = Image.fromarray(pixels)
  if mode != 'RGB':
    image = image.convert(mode)
  buf = io.BytesIO()
  image.save(buf, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
  return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _tar_bytes(files: dict[str, bytes], mode: str = 'w') -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode=mode) as tar:
    for name, data in files.items():
      _add(tar, name, data)
  return buf.getvalue()


def _voc_xml(name: str, hw, synset: str, boxes) -> bytes:
  objects = ''.join(
      f'<object><name>{synset}</name><pose>Unspecified</pose><truncated>0</truncated>'
      f'<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>'
      f'<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>' for b in boxes)
  return (f'<annotation><folder>val</folder><filename>{name}</filename><source>'
          f'<database>ILSVRC_2012</database></source><size><width>{hw[1]}</width>'
          f'<height>{hw[0]}</height><depth>3</depth></size><segmented>0</segmented>'
          f'{objects}</annotation>').encode()


def _loc_row(image_id: str, synset: str, boxes) -> str:
  return f'{image_id},' + ' '.join(f'{synset} {b[0]} {b[1]} {b[2]} {b[3]}' for b in boxes) + ' '


def write_fake_ilsvrc(folder: str, *, form: str = 'loc', val=None, truncate_val: int | None = None,
                      annotate_train: bool = True, extracted: bool = False) -> dict:
  """Writes the manual files; returns {'train': {file: (label, boxes)}, 'validation':
  {file: (label, boxes, hw)}, 'class_names': [...], 'synset_words': [...]}.

  `extracted`: the images as Kaggle serves them (ILSVRC/Data/CLS-LOC/{train/<synset>,val}/)
  instead of the two tars.
  """
  val = VAL if val is None else val
  os.makedirs(folder, exist_ok=True)
  expected = {'train': {}, 'validation': {},
              'class_names': [SYNSETS[s].split(',')[0] for s in SORTED],
              'synset_words': [SYNSETS[s] for s in SORTED]}

  # --- Train: a tar of per-synset tars ------------------------------------------------
  train_annotations = {}
  with tarfile.open(os.path.join(folder, 'ILSVRC2012_img_train.tar'), 'w') as outer:
    for si, synset in enumerate(SYNSETS):
      files = {}
      for j in range(TRAIN_PER_SYNSET):
        stem = train_name(synset, j)
        box = train_box(j)
        fmt, mode = 'JPEG', 'RGB'
        if f'{stem}.JPEG' == CMYK_FILE:
          mode = 'CMYK'
        if f'{stem}.JPEG' == PNG_FILE:
          fmt = 'PNG'
        files[f'{stem}.JPEG'] = image_bytes(TRAIN_HW, [box], 100 * si + j, fmt, mode)
        annotated = annotate_train and j != 0  # the first image of each synset has no box
        if annotated:
          train_annotations[stem] = (synset, [box])
        expected['train'][f'{stem}.JPEG'] = (SORTED.index(synset),
                                              [box] if annotated else [])
      _add(outer, f'{synset}.tar', _tar_bytes(files))
      if extracted:
        _write_files(os.path.join(folder, 'ILSVRC/Data/CLS-LOC/train', synset), files)

  # --- Validation images ----------------------------------------------------------------
  val_files = {}
  for k, (synset, hw, boxes) in enumerate(val):
    data = image_bytes(hw, boxes, 1000 + k)
    val_files[f'{val_name(k)}.JPEG'] = data[:len(data) // 2] if k == truncate_val else data
    expected['validation'][f'{val_name(k)}.JPEG'] = (SORTED.index(synset), boxes, hw)
  if extracted:
    _write_files(os.path.join(folder, 'ILSVRC/Data/CLS-LOC/val'), val_files)
    os.remove(os.path.join(folder, 'ILSVRC2012_img_train.tar'))
  else:
    with open(os.path.join(folder, 'ILSVRC2012_img_val.tar'), 'wb') as f:
      f.write(_tar_bytes(val_files))

  # --- Labels and boxes ---------------------------------------------------------------
  if form == 'loc':
    with open(os.path.join(folder, 'LOC_synset_mapping.txt'), 'w') as f:
      f.writelines(f'{s} {SYNSETS[s]}\n' for s in SORTED)
    with open(os.path.join(folder, 'LOC_val_solution.csv'), 'w') as f:
      f.write('ImageId,PredictionString\n')
      # The real file is not in image order either.
      for k in reversed(range(len(val))):
        f.write(_loc_row(val_name(k), val[k][0], val[k][2]) + '\n')
    if annotate_train:
      with open(os.path.join(folder, 'LOC_train_solution.csv'), 'w') as f:
        f.write('ImageId,PredictionString\n')
        for stem, (synset, boxes) in train_annotations.items():
          f.write(_loc_row(stem, synset, boxes) + '\n')
  elif form == 'devkit':
    # meta.mat: ILSVRC2012_IDs in the devkit's own order (not sorted by WNID), plus a
    # non-leaf synset that must be ignored.
    ids = {'n02102040': 1, 'n01443537': 2, 'n01440764': 3}
    rows = [(ids[s], s, SYNSETS[s], 'gloss', 0) for s in SYNSETS]
    rows.append((1001, 'n00001740', 'entity', 'root', 2))
    dtype = [('ILSVRC2012_ID', 'O'), ('WNID', 'O'), ('words', 'O'), ('gloss', 'O'),
             ('num_children', 'O')]
    synsets = np.array(rows, dtype=dtype)
    meta = io.BytesIO()
    scipy.io.savemat(meta, {'synsets': synsets})
    truth = ''.join(f'{ids[s]}\n' for s, _, _ in val).encode()
    _write_tgz(os.path.join(folder, 'ILSVRC2012_devkit_t12.tar.gz'), {
        'ILSVRC2012_devkit_t12/data/meta.mat': meta.getvalue(),
        'ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt': truth})
    _write_tgz(os.path.join(folder, 'ILSVRC2012_bbox_val_v3.tgz'), {
        f'val/{val_name(k)}.xml': _voc_xml(val_name(k), hw, s, boxes)
        for k, (s, hw, boxes) in enumerate(val)})
    if annotate_train:
      _write_tgz(os.path.join(folder, 'ILSVRC2012_bbox_train_v2.tar.gz'), {
          f'{s}/{stem}.xml': _voc_xml(stem, TRAIN_HW, s, boxes)
          for stem, (s, boxes) in train_annotations.items()})
  else:
    raise ValueError(form)
  return expected


def _write_files(folder: str, files: dict[str, bytes]) -> None:
  os.makedirs(folder, exist_ok=True)
  for name, data in files.items():
    with open(os.path.join(folder, name), 'wb') as f:
      f.write(data)


def _write_tgz(path: str, files: dict[str, bytes]) -> None:
  with open(path, 'wb') as f:
    f.write(_tar_bytes(files, mode='w:gz'))
