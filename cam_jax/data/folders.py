"""Folder-per-class datasets read in place: `data.name='folders'`.

The layout of Caltech-256, Stanford Action40, MIT Indoor67, UIUC Event8 and most users'
own data (torchvision's `ImageFolder`):

    ROOT/<split>/<class name>/<image>      one folder per split (train, test, ...)
    ROOT/<class name>/<image>              or one tree, split per class (`random_splits`)

Config keys (`config.data.folders`, with `config.data.name = 'folders'`):
  root           the folder above.
  random_splits  None: the splits are ROOT's sub-folders (config.data.train_split and
                 eval_split name them). Else the classes are ROOT's sub-folders and each
                 class's images are split at random by the given fractions, e.g.
                 'train=0.6,validation=0.2,test=0.2' (a fixed choice: `split_seed`); a
                 class with one image gives it to the first split.
  split_seed     the seed of `random_splits` (default 0).
  boxes_file     optional ground-truth boxes, as wsolevaluation's localization.txt: one
                 line `image_id,x0,y0,x1,y1` per box (inclusive pixel corners, x the
                 column), several lines for an image with several objects; the image id
                 is the path relative to ROOT (`<split>/<class>/<image>`, or
                 `<class>/<image>` with random_splits), the example's `file_name`. Images
                 it does not list have no boxes.

Classes are the sorted names of the class folders of every split together, so that the
splits agree on the labels; the names are the folders'. Images are the files with an
image extension (`IMAGE_EXTENSIONS`, any case), sorted by path; other files and hidden
ones are ignored. Loading opens the first image only (a wrong root fails at once); an
image is read when its example is: a missing or undecodable file raises naming its path,
as in the WSOL folders (cam_jax.data.wsol), and a box outside its image raises then (a
box that overhangs is clipped with a warning, `images.check_boxes`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import logging

from cam_jax.data import images
from cam_jax.data import wsol
from cam_jax.data import base
from cam_jax.data.base import SourceInfo

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def _visible_dirs(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path)
                if not d.startswith('.') and os.path.isdir(os.path.join(path, d)))


def list_class_images(class_dir: str) -> list[str]:
  """The image files under `class_dir` (recursively), relative to it, sorted."""
  found = []
  # Symbolic links to folders are followed, as torchvision's ImageFolder does.
  for parent, dirs, files in os.walk(class_dir, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for f in files:
      if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(parent, f), class_dir))
  return sorted(found)


def parse_fractions(spec: str) -> dict[str, float]:
  """'train=0.6,test=0.4' → {'train': 0.6, 'test': 0.4}; the fractions must sum to 1."""
  out = {}
  for part in spec.split(','):
    name, sep, value = part.partition('=')
    try:
      fraction = float(value)
    except ValueError:
      fraction = -1.0
    if not sep or not name.strip() or not 0 < fraction <= 1 or name.strip() in out:
      raise ValueError(f'config.data.folders.random_splits={spec!r}: expected '
                       "'split=fraction,...' with distinct splits and fractions in (0, 1], "
                       "e.g. 'train=0.7,test=0.3'")
    out[name.strip()] = fraction
  if abs(sum(out.values()) - 1) > 1e-6:
    raise ValueError(f'config.data.folders.random_splits={spec!r}: the fractions sum to '
                     f'{sum(out.values()):g}, not 1')
  return out


def random_split(num_images: int, fractions: dict[str, float], seed: int,
                 class_index: int) -> dict[str, np.ndarray]:
  """Sorted indices of one class's images in each split: a random permutation (seeded by
  `seed` and the class) cut by the cumulative fractions, rounded."""
  order = np.random.default_rng([seed, class_index]).permutation(num_images)
  cuts = np.round(np.cumsum(list(fractions.values())) * num_images).astype(int)
  cuts[-1] = num_images
  return {name: np.sort(part) for name, part in zip(fractions, np.split(order, cuts[:-1]))}


class FolderSource:
  """The examples of one split of a folder-per-class dataset (picklable for grain)."""

  def __init__(self, *, root: str, split: str, paths: list[str], labels: np.ndarray,
               boxes: dict[str, np.ndarray]):
    self.root, self.split = root, split
    self.image_ids = paths  # relative to root: the boxes file's ids
    self.labels = labels
    self.boxes = boxes

  def __len__(self) -> int:
    return len(self.image_ids)

  def __repr__(self) -> str:
    return (f'FolderSource(root={self.root!r}, split={self.split!r}, images={len(self)}, '
            f'boxes={sum(len(b) for b in self.boxes.values())})')

  def __getitem__(self, index) -> dict[str, Any]:
    i = base.checked_index(index, self)
    image_id = self.image_ids[i]
    path = os.path.join(self.root, image_id)
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except FileNotFoundError:
      raise FileNotFoundError(f'folders/{self.split}: image file {path} not found (it was '
                              'listed when the dataset was loaded)') from None
    boxes = self.boxes.get(image_id)
    if boxes is None:
      boxes = np.zeros((0, 4), np.int32)
    else:
      width, height = images.open_image(data, path).size
      boxes = images.check_boxes(boxes, (height, width), f'{path} (config.data.folders.'
                                 'boxes_file)')
    return {'image': data, 'label': self.labels[i], 'boxes': boxes, 'file_name': image_id}


def _read_boxes(path: str, image_ids: list[str], split: str) -> dict[str, np.ndarray]:
  boxes = wsol.read_boxes(path)
  out = {i: np.asarray(boxes[i], np.int32).reshape(-1, 4) for i in image_ids if i in boxes}
  if boxes and not out:
    logging.warning('%s lists no image of split %r: its ids must be paths relative to '
                    'config.data.folders.root, e.g. %r', path, split, image_ids[0])
  return out


def load_source(data_config, split: str) -> tuple[FolderSource, SourceInfo]:
  """`(source, info)` of one split of a folder-per-class dataset."""
  cfg = data_config.folders
  if not cfg.get('root'):
    raise ValueError('config.data.folders.root is not set (data.name="folders": '
                     'ROOT/<split>/<class>/<image>; see cam_jax/data/folders.py)')
  root = os.path.expanduser(cfg.root)
  if not os.path.isdir(root):
    raise FileNotFoundError(f'config.data.folders.root={root!r} is not a folder')
  spec = cfg.get('random_splits')
  if spec:
    fractions = parse_fractions(spec)
    if split not in fractions:
      raise ValueError(f'split {split!r} is not one of config.data.folders.random_splits '
                       f'({", ".join(fractions)})')
    class_names = _visible_dirs(root)
    if not class_names:
      raise ValueError(f'{root} has no class folders (expected ROOT/<class>/<image> with '
                       'config.data.folders.random_splits)')
    paths, labels = [], []
    for c, name in enumerate(class_names):
      files = list_class_images(os.path.join(root, name))
      chosen = random_split(len(files), fractions, cfg.get('split_seed', 0), c)[split]
      paths += [os.path.join(name, files[j]) for j in chosen]
      labels += [c] * len(chosen)
  else:
    split_dirs = _visible_dirs(root)
    if split not in split_dirs:
      raise FileNotFoundError(
          f'{os.path.join(root, split)} not found: expected ROOT/<split>/<class>/<image> '
          f'with split folders ({", ".join(split_dirs) or "none found"}), or set '
          "config.data.folders.random_splits (e.g. 'train=0.7,test=0.3') for "
          'ROOT/<class>/<image>')
    class_names = sorted({c for s in split_dirs for c in _visible_dirs(os.path.join(root, s))})
    paths, labels = [], []
    for c, name in enumerate(class_names):
      class_dir = os.path.join(root, split, name)
      if os.path.isdir(class_dir):
        files = list_class_images(class_dir)
        paths += [os.path.join(split, name, f) for f in files]
        labels += [c] * len(files)
  if not paths:
    raise ValueError(f'split {split!r} of {root} has no images (extensions: '
                     f'{", ".join(IMAGE_EXTENSIONS)})')
  # The first image, so that a root of non-images fails now rather than mid-run.
  first = os.path.join(root, paths[0])
  with open(first, 'rb') as f:
    images.open_image(f.read(), first)
  boxes = {}
  if cfg.get('boxes_file'):
    boxes = _read_boxes(os.path.expanduser(cfg.boxes_file), paths, split)
  source = FolderSource(root=root, split=split, paths=paths,
                        labels=np.asarray(labels, np.int64), boxes=boxes)
  return source, SourceInfo(name='folders', num_classes=len(class_names),
                            class_names=tuple(class_names), has_masks=False)
