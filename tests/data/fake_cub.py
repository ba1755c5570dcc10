"""Fake CUB-200-2011 manual files, in the official layout, for tests of `cub2011_loc`.

`write_fake_cub(folder)` writes `CUB_200_2011.tgz` and `segmentations.tgz` (or the
extracted folders) holding a few small JPEGs, and returns what a test should read back.
Every expected value is worked out here from what was drawn, not with cam_jax's code:
each image's box is the inclusive rectangle (x0, y0, x1, y1) painted bright on it, and
bounding_boxes.txt gets CUB's `x y width height` of that rectangle.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image

# (classes.txt name, readable name), written out by hand; real CUB class names.
_CLASSES = [
    ('001.Black_footed_Albatross', 'Black footed Albatross'),
    ('002.Laysan_Albatross', 'Laysan Albatross'),
    ('003.Sooty_Albatross', 'Sooty Albatross'),
    ('004.Groove_billed_Ani', 'Groove billed Ani'),
    ('005.Crested_Auklet', 'Crested Auklet'),
    ('006.Least_Auklet', 'Least Auklet'),
]
# (height, width) of the images, in turn: small, non-square, varied.
_SIZES = [(30, 40), (36, 28), (32, 44), (40, 30), (28, 36)]
TEXT_FILES = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt',
              'bounding_boxes.txt', 'classes.txt')


def _class_names(i: int) -> tuple[str, str]:
  if i < len(_CLASSES):
    return _CLASSES[i]
  return f'{i + 1:03d}.Bird_number_{i + 1}', f'Bird number {i + 1}'


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def _write_tgz(path: str, members: list[tuple[str, bytes | None]]) -> None:
  """A gzipped tar with `members` in the given order; None contents make a folder."""
  with tarfile.open(path, 'w:gz') as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
      else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def _write_tree(folder: str, members: list[tuple[str, bytes | None]]) -> None:
  for name, data in members:
    path = os.path.join(folder, *name.split('/'))
    if data is None:
      os.makedirs(path, exist_ok=True)
    else:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'wb') as f:
        f.write(data)


def write_fake_cub(folder: str, *, num_classes: int = 3, per_class: int = 4,
                   with_segmentations: bool = True, extracted: bool = False,
                   truncated: int | None = None, inverted_box: int | None = None,
                   overhanging_box: int | None = None, wrong_mask_size: int | None = None,
                   drop_row: tuple[str, int] | None = None, missing_image: int | None = None,
                   seed: int = 0) -> dict:
  """Writes fake CUB manual files into `folder`; returns the expected contents.

  Image ids run 1..num_classes * per_class in class order, as in CUB; the archive holds
  the images in a shuffled order, with the text files last, so that a reader may rely on
  neither. Every third image (ids 3, 6, ...) is in the test split. Image 3 is a grayscale
  JPEG; image 2's box has fractional coordinates (x + 0.3, width - 0.2: rounding gives the
  drawn rectangle back); the last image's mask is an RGB PNG (gray, so its L conversion is
  exact).

  Options, each an image id: `truncated` cuts that JPEG in half; `inverted_box` writes a
  negative width (x1 < x0); `overhanging_box` writes a box running 5 pixels past the right
  edge (expected: clipped to the last column); `wrong_mask_size` writes a mask 2 rows too
  tall; `missing_image` lists the image in the text files but leaves its JPEG out.
  `drop_row=(text file, id)` leaves that id's row out of that text file. `extracted` writes
  the folders `CUB_200_2011/` and `segmentations/` instead of the archives.

  Returns a dict:
    `cub`, `segmentations`: the paths written (None when not written);
    `class_names`: the classes.txt names, by label; `readable_names`: the same, readable;
    `splits`: {'train': [ids], 'test': [ids]}, ids ascending;
    `images`: {id: {'file_name' (path under images/), 'label', 'split', 'image_hw' (h, w),
               'box' (expected stored (x0, y0, x1, y1), None if it must be rejected),
               'box_line' (its bounding_boxes.txt line), 'encoded' (the JPEG bytes written),
               'grayscale', 'mask' (h×w uint8 soft mask expected back, or None)}}.
  """
  if num_classes < 1 or per_class < 1 or num_classes * per_class < 3:
    raise ValueError('need at least 3 images, in at least one class')
  rng = np.random.default_rng(seed)
  classes = [_class_names(i) for i in range(num_classes)]
  expected: dict[int, dict] = {}
  image_members, mask_members = [], []
  rows = {name: [] for name in TEXT_FILES}
  for c, (class_name, _) in enumerate(classes):
    rows['classes.txt'].append(f'{c + 1} {class_name}')
    stem = class_name.split('.', 1)[1].title()
    for k in range(per_class):
      image_id = c * per_class + k + 1
      h, w = _SIZES[(image_id - 1) % len(_SIZES)]
      # The bird: a bright rectangle, inclusive corners, at least 6 pixels a side.
      x0 = int(rng.integers(0, w // 3))
      y0 = int(rng.integers(0, h // 3))
      x1 = int(rng.integers(x0 + 5, w))
      y1 = int(rng.integers(y0 + 5, h))
      if image_id == overhanging_box:
        x1 = w - 1
      pixels = rng.integers(20, 60, size=(h, w, 3)).astype(np.uint8)
      pixels[y0:y1 + 1, x0:x1 + 1] = (230, 200, 90)
      grayscale = image_id == 3
      if grayscale:
        pixels = pixels.mean(-1).astype(np.uint8)
      encoded = _encode(pixels, 'JPEG', quality=90)
      written = encoded[:len(encoded) // 2] if image_id == truncated else encoded
      file_name = f'{class_name}/{stem}_{k + 1:04d}_{image_id}.jpg'
      if image_id != missing_image:
        image_members.append((f'CUB_200_2011/images/{file_name}', written))

      bw, bh = x1 - x0 + 1, y1 - y0 + 1
      bx, by = float(x0), float(y0)
      box = (x0, y0, x1, y1)
      if image_id == 2:
        bx, bw = bx + 0.3, bw - 0.2
      if image_id == overhanging_box:
        bw += 5  # the written box ends at column w + 4; the image's last column is w - 1
      if image_id == inverted_box:
        bw, box = -4.0, None
      box_line = f'{image_id} {bx:.1f} {by:.1f} {bw:.1f} {float(bh):.1f}'
      split = 'test' if image_id % 3 == 0 else 'train'
      rows['images.txt'].append(f'{image_id} {file_name}')
      rows['image_class_labels.txt'].append(f'{image_id} {c + 1}')
      rows['train_test_split.txt'].append(f'{image_id} {0 if split == "test" else 1}')
      rows['bounding_boxes.txt'].append(box_line)

      # A soft mask: 255 where all annotators agree, 153 (3 of 5) on the rectangle's edge,
      # 51 (1 of 5) on a one-pixel band outside it.
      mask = np.zeros((h, w), np.uint8)
      mask[max(y0 - 1, 0):y1 + 2, max(x0 - 1, 0):x1 + 2] = 51
      mask[y0:y1 + 1, x0:x1 + 1] = 153
      mask[y0 + 1:y1, x0 + 1:x1] = 255
      mask_file = f'segmentations/{file_name[:-len(".jpg")]}.png'
      if image_id == wrong_mask_size:
        mask_members.append((mask_file, _encode(np.zeros((h + 2, w), np.uint8), 'PNG')))
      elif image_id == num_classes * per_class:
        mask_members.append((mask_file, _encode(np.repeat(mask[..., None], 3, -1), 'PNG')))
      else:
        mask_members.append((mask_file, _encode(mask, 'PNG')))
      expected[image_id] = {
          'file_name': file_name, 'label': c, 'split': split, 'image_hw': (h, w),
          'box': box, 'box_line': box_line, 'encoded': encoded, 'grayscale': grayscale,
          'mask': mask if with_segmentations else None,
      }
  if drop_row is not None:
    text_file, image_id = drop_row
    rows[text_file] = [r for r in rows[text_file] if r.split()[0] != str(image_id)]

  cub_members = [('CUB_200_2011/', None), ('CUB_200_2011/images/', None)]
  cub_members += [image_members[i] for i in rng.permutation(len(image_members))]
  cub_members.append(('CUB_200_2011/README', b'A fake CUB-200-2011, for tests.\n'))
  cub_members += [(f'CUB_200_2011/{name}', ('\n'.join(rows[name]) + '\n').encode())
                  for name in TEXT_FILES]
  seg_members = [('segmentations/', None)]
  seg_members += [mask_members[i] for i in rng.permutation(len(mask_members))]

  os.makedirs(folder, exist_ok=True)
  write = _write_tree if extracted else _write_tgz
  cub_path = os.path.join(folder, 'CUB_200_2011' if extracted else 'CUB_200_2011.tgz')
  write(folder if extracted else cub_path, cub_members)
  seg_path = None
  if with_segmentations:
    seg_path = os.path.join(folder, 'segmentations' if extracted else 'segmentations.tgz')
    write(folder if extracted else seg_path, seg_members)
  ids = sorted(expected)
  return {
      'cub': cub_path,
      'segmentations': seg_path,
      'class_names': [name for name, _ in classes],
      'readable_names': [readable for _, readable in classes],
      'splits': {s: [i for i in ids if expected[i]['split'] == s] for s in ('train', 'test')},
      'images': expected,
  }
