"""The 1,000 ILSVRC-2012 classes, as every ImageNet-trained network numbers them.

`imagenet_classes.txt` is the ILSVRC localization release's LOC_synset_mapping.txt: one
`<synset> <words>` line per class, in sorted synset order (class i = line i), the order of
torchvision's and Caffe's ImageNet classifiers and of our `ilsvrc2012_loc` labels.
"""

from __future__ import annotations

import functools

import importlib_resources

from cam_jax.data import ilsvrc

NUM_CLASSES = 1000


@functools.cache
def synsets_and_words() -> tuple[tuple[str, str], ...]:
  """`((synset, words), ...)` in class order."""
  text = (importlib_resources.files('cam_jax.pretrained') / 'imagenet_classes.txt').read_text(
      encoding='utf-8')
  rows = tuple(tuple(line.split(' ', 1)) for line in text.splitlines() if line.strip())
  if len(rows) != NUM_CLASSES:
    raise RuntimeError(f'imagenet_classes.txt has {len(rows)} classes, expected {NUM_CLASSES}')
  return rows


def class_names() -> tuple[str, ...]:
  """Readable names ('tench', 'goldfish', ...): the first synonym, as `ilsvrc2012_loc`."""
  return tuple(ilsvrc.readable_name(words) for _, words in synsets_and_words())
