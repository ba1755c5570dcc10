"""`--mode=localize` on image files: boxes in the original grid, pictures, bad files.

Most tests use a tiny_gap network whose weights are set by hand
(`tests/square_detector.py`) so that its CAM is known exactly: it lights up where the
image is bright.
"""

import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cam_jax import localize
from cam_jax import restore
from tests.square_detector import CLASS_NAMES, STEP, config as _config
from tests.square_detector import square_image as _square_image
from tests.square_detector import workdir  # pylint: disable=unused-import (a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _records(output_dir):
  with open(os.path.join(output_dir, localize.PREDICTIONS)) as f:
    return [json.loads(line) for line in f]


def test_box_is_in_the_original_grid_and_overlay_red_where_the_cam_is_hot(workdir, tmp_path):
  # 96 wide × 48 high, resized to 32×32: an input pixel is 3 original pixels wide and 1.5
  # high. The square (x 24..47, y 12..35) covers input columns 8..15 and rows 8..23;
  # PIL's antialiased resize makes the rows and columns beside them 11 % bright, those on
  # its edges 89 %, so the 50 % cut of conv 1 keeps exactly that block, and max pooling
  # gives the feature cells x 4..7, y 4..11 of 16×16, all equal. A feature cell is 6
  # original pixels wide and 3 high, cell j centred at (j + 0.5) × 6 (or × 3).
  # Resampled bilinearly at pixel centres, the map rises linearly from cell 3's centre
  # to cell 4's, so it reaches 0.2 of its max 0.2 cells before: x + 0.5 >= (3.2 + 0.5) × 6
  # = 22.2, first x 22; x + 0.5 <= (7.8 + 0.5) × 6 = 49.8, last x 49; y + 0.5 >= 3.7 × 3
  # = 11.1, first y 11; y + 0.5 <= 12.3 × 3 = 36.9, last y 36. No value lies near a
  # threshold, so the box is exact.
  path = str(tmp_path / 'wide.png')
  _square_image().save(path)
  out = str(tmp_path / 'out')
  summary = localize.localize(_config(), workdir, path, output_dir=out)
  assert summary.written == 1 and summary.skipped == []
  assert summary.checkpoint == os.path.join(workdir, 'checkpoints', str(STEP))

  (record,) = _records(out)
  assert record['file'] == path and (record['height'], record['width']) == (48, 96)
  top = record['top_k']
  assert [p['class'] for p in top] == [0, 1, 2, 3]  # 4 classes: top-5 is top-4
  assert [p['name'] for p in top] == CLASS_NAMES
  assert top[0]['box'] == [22, 11, 49, 36]
  assert top[1]['box'] == [22, 11, 49, 36]  # half the same map: the same box
  scores = [p['score'] for p in top]
  assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-6

  overlay = np.asarray(Image.open(os.path.join(out, 'wide.overlay.png')), np.int32)
  # Shorter than inference.PICTURE_MIN_SIDE (192): upscaled ×2 (192 // 96), every original
  # pixel (x, y) a 2×2 block at (2x, 2y).
  assert overlay.shape == (96, 192, 3)
  r, b = overlay[..., 0], overlay[..., 2]
  assert (r[28:68, 52:92] > b[28:68, 52:92] + 30).all()  # inside the square: hot
  cold = np.ones((96, 192), bool)
  cold[18:78, 40:104] = False  # the square, its ramp and the box outline
  assert (b[cold] > r[cold]).all()
  # The red box outline (2 px, inwards) on the JSON box, ×2: (44, 22, 99, 73).
  assert tuple(overlay[48, 44]) == (255, 0, 0) and tuple(overlay[22, 60]) == (255, 0, 0)
  assert tuple(overlay[48, 45]) == (255, 0, 0) and tuple(overlay[48, 43]) != (255, 0, 0)

  figure = np.asarray(Image.open(os.path.join(out, 'wide.top5.png')))
  # Fig. 4 layout: the image then 4 overlays, each under a 14 px title strip, 2 px apart.
  assert figure.shape == (14 + 96, 5 * 192 + 4 * 2, 3)


def test_exif_orientation_is_honoured(workdir, tmp_path):
  """A phone stores a portrait photo's pixels sideways with an EXIF Orientation tag; the
  image is localized as a viewer shows it: the wide image of the test above, stored
  rotated by 90° with orientation 6 ("rotate 90° clockwise to view"), gives that test's
  size and box."""
  stored = _square_image().transpose(Image.Transpose.ROTATE_90)  # 48 wide, 96 high
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation
  path = str(tmp_path / 'phone.png')
  stored.save(path, exif=exif)
  assert Image.open(path).size == (48, 96)
  out = str(tmp_path / 'out')
  localize.localize(_config(), workdir, path, output_dir=out)
  (record,) = _records(out)
  assert (record['height'], record['width']) == (48, 96)
  assert record['top_k'][0]['box'] == [22, 11, 49, 36]


def test_bad_files_are_named_and_main_exits_3(workdir, tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  _square_image().save(folder / 'a.png')
  _square_image(hw=(40, 30), square=(5, 5, 20, 30)).save(folder / 'b.jpg', quality=95)
  (folder / 'notes.txt').write_text('not an image\n')
  buffer = io.BytesIO()
  _square_image(hw=(64, 64), square=(10, 10, 40, 40)).save(buffer, format='JPEG')
  (folder / 'cut.jpg').write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  (folder / 'sub').mkdir()  # not a file: skipped too (the listing is not recursive)
  out = tmp_path / 'out'
  cmd = [sys.executable, '-m', 'cam_jax.main', '--config=configs/synthetic_gap.py:tiny',
         f'--workdir={workdir}', '--mode=localize', f'--images={folder}',
         f'--output_dir={out}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == localize.EXIT_SKIPPED == 3, proc.stderr[-3000:]
  warnings = [line for line in proc.stderr.splitlines() if 'skipped: ' in line]
  assert len(warnings) == 3, warnings
  for name, why in (('notes.txt', 'not a readable image'), ('cut.jpg', 'truncated'),
                    ('sub', 'not a regular file')):
    assert sum(str(folder / name) in w and why in w.lower() for w in warnings) == 1, (
        name, warnings)
  assert 'Skipped 3 bad file(s)' in proc.stderr and 'exit status 3' in proc.stderr

  records = _records(out)
  assert [r['file'] for r in records] == [str(folder / 'a.png'), str(folder / 'b.jpg')]
  assert (records[1]['height'], records[1]['width']) == (40, 30)
  assert sorted(os.listdir(out)) == ['a.overlay.png', 'a.top5.png', 'b.overlay.png',
                                     'b.top5.png', localize.PREDICTIONS]


def test_every_file_bad_still_writes_an_empty_jsonl(workdir, tmp_path, caplog):
  path = tmp_path / 'x.png'
  path.write_bytes(b'\x89PNG\r\n\x1a\n not really')
  out = str(tmp_path / 'out')
  with caplog.at_level(logging.WARNING):
    summary = localize.localize(_config(), workdir, str(path), output_dir=out)
  assert summary.written == 0 and [p for p, _ in summary.skipped] == [str(path)]
  assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert os.listdir(out) == [localize.PREDICTIONS] and _records(out) == []


def test_colour_modes_are_converted(workdir, tmp_path):
  folder = tmp_path / 'modes'
  folder.mkdir()
  _square_image(mode='L').save(folder / 'gray.png')
  rgba = _square_image(mode='RGBA')
  rgba.putalpha(200)
  rgba.save(folder / 'rgba.png')
  _square_image(mode='CMYK').save(folder / 'cmyk.jpg', quality=95)
  sixteen = (np.asarray(_square_image(mode='L'), np.uint16) * 257).astype(np.uint16)
  Image.fromarray(sixteen).save(folder / 'sixteen.png')
  assert Image.open(folder / 'sixteen.png').mode.startswith('I')  # stayed 16-bit
  assert Image.open(folder / 'cmyk.jpg').mode == 'CMYK'
  out = str(tmp_path / 'out')
  # The step folder as --checkpoint.
  summary = localize.localize(_config(), str(tmp_path / 'unused'), str(folder),
                              checkpoint=os.path.join(workdir, 'checkpoints', str(STEP)),
                              output_dir=out)
  assert summary.written == 4 and summary.skipped == []
  for record in _records(out):
    # The same picture in every mode: the square is found in each (RGBA over white is a
    # grey square on a lighter background, still more than half bright only in the square).
    assert record['top_k'][0]['box'] == [22, 11, 49, 36], record['file']


def test_centre_crop_box_stays_in_the_window(workdir, tmp_path):
  # eval_crop 'resize_crop': shorter side 48 -> round(32 / 0.875) = 37, centre 32×32, so
  # the network sees the central 41.5-pixel square (x 27.2..68.8, y 3.2..44.8); pixels
  # outside it show the plain image in the overlay.
  config = _config()
  config.data.eval_crop = 'resize_crop'
  path = str(tmp_path / 'wide.png')
  _square_image(square=(36, 12, 59, 35)).save(path)
  out = str(tmp_path / 'out')
  localize.localize(config, workdir, path, output_dir=out)
  x0, y0, x1, y1 = _records(out)[0]['top_k'][0]['box']
  assert 27 <= x0 <= 36 and 59 <= x1 <= 68 and 3 <= y0 <= 12 and 35 <= y1 <= 44
  overlay = np.asarray(Image.open(os.path.join(out, 'wide.overlay.png')))
  assert (overlay[:, :20] == 0).all()  # black image, unblended (not the jet's dark blue)


def test_images_matching_nothing_is_a_clear_error(workdir, tmp_path):
  pattern = str(tmp_path / 'nothing' / '*.jpg')
  with pytest.raises(FileNotFoundError, match=r'--images=.*nothing/\*\.jpg.* matches no file'):
    localize.localize(_config(), workdir, pattern)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no file'):
    localize.localize(_config(), workdir, str(tmp_path / 'empty'))


def test_without_checkpoint_the_error_says_train_first(tmp_path):
  path = str(tmp_path / 'a.png')
  _square_image().save(path)
  with pytest.raises(FileNotFoundError, match='No checkpoint in .*train first'):
    localize.localize(_config(), str(tmp_path / 'empty_workdir'), path)


def test_colliding_stems_get_unique_names():
  paths = ['x/a.png', 'y/a.jpg', 'z/A.png', 'a-2.png', 'b.png']
  assert localize.output_names(paths) == ['a', 'a-3', 'A-4', 'a-2', 'b']


def test_class_names_fall_back_to_the_dataset_then_to_ids(tiny_data_dir, tmp_path, caplog):
  config = _config()
  config.data.data_dir = tiny_data_dir
  meta = {'num_classes': 4, 'class_names': []}  # a checkpoint from before names were saved
  names = restore.class_names(config, meta)
  assert len(names) == 4 and not names[0].startswith('class ')
  config.data.data_dir = str(tmp_path / 'no_data')  # not prepared, and never prepared here
  with caplog.at_level(logging.WARNING):
    assert restore.class_names(config, meta) == ['class 0', 'class 1', 'class 2', 'class 3']
  assert any('no class names' in r.getMessage() for r in caplog.records)
  assert not os.path.exists(tmp_path / 'no_data' / 'cam_synth')
