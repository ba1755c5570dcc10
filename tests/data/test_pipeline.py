"""grain pipelines: resumable order, padding, windows and the boxes mapped through them."""

import io

import numpy as np
import pytest
from PIL import Image

from cam_jax import data, windows
from cam_jax.data import images, pipeline
from configs import common


def _source(data_dir, split):
  config = common.get_common().data
  config.builder_config = 'tiny'
  config.data_dir = data_dir
  return data.load_source(config, split)[0]


def test_train_batches_from_a_step_are_the_batches_of_an_uninterrupted_stream(tiny_data_dir):
  source = _source(tiny_data_dir, 'train')
  kwargs = dict(image_size=32, global_batch_size=8, seed=3, crop='random_resized')
  straight = pipeline.train_batches(source, **kwargs)
  first = [next(straight) for _ in range(40)]  # 40 * 8 = 320 > 256: crosses an epoch
  # A resumed run starts at its step: batch k is a pure function of (seed, k).
  resumed = pipeline.train_batches(source, start_step=35, **kwargs)
  for want in first[35:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])
  again = pipeline.train_batches(source, **kwargs)
  np.testing.assert_array_equal(next(again)['image'], first[0]['image'])
  assert first[0]['image'].shape == (8, 32, 32, 3) and first[0]['image'].dtype == np.float32
  # Each epoch has its own order, and shows every image once.
  epoch0 = np.concatenate([b['label'] for b in first[:32]])
  epoch1 = np.concatenate([b['label'] for b in first[32:]])
  assert not np.array_equal(epoch0[:64], epoch1)
  seen = {pipeline.denormalize(im).tobytes() for b in first[:32] for im in b['image']}
  assert len(seen) > 200  # random crops of 256 distinct images


def test_eval_batches_pad_and_keep_ground_truth(tiny_data_dir):
  source = _source(tiny_data_dir, 'test')
  got = list(pipeline.eval_batches(source, image_size=32, process_batch_size=24, max_boxes=4))
  assert [n for _, n in got] == [24, 24, 16]  # 64 images
  last, n = got[-1]
  assert last['image'].shape == (24, 32, 32, 3)
  np.testing.assert_array_equal(last['index'][:n], np.arange(48, 64))
  for i in (0, 5, 63):
    batch, _ = got[i // 24]
    row = i % 24
    ex = source[i]
    k = len(ex['boxes'])
    assert batch['num_boxes'][row] == k
    np.testing.assert_array_equal(batch['boxes'][row, :k], ex['boxes'])
    assert (batch['boxes'][row, k:] == -1).all()
    np.testing.assert_array_equal(batch['orig_hw'][row], [32, 32])
    np.testing.assert_array_equal(batch['window'][row], [0, 0, 32, 32])
    np.testing.assert_array_equal(pipeline.denormalize(batch['image'][row]),
                                  images.decode_image(ex['image'], 'png'))


def test_eval_batches_limit_examples(tiny_data_dir):
  source = _source(tiny_data_dir, 'test')
  got = list(pipeline.eval_batches(source, image_size=32, process_batch_size=8, max_boxes=4,
                                   num_examples=10))
  assert [n for _, n in got] == [8, 2]


def test_unknown_crops_are_rejected():
  with pytest.raises(ValueError, match="train_crop='centre'.*random_resized"):
    pipeline.TrainPreprocess(32, 'centre')
  with pytest.raises(ValueError, match="eval_crop='crop'.*resize_crop"):
    pipeline.EvalPreprocess(32, 4, 'crop')


# --- crops and boxes through windows --------------------------------------------------------------------------

def test_crop_resize_of_a_window_equals_cropping_then_resizing():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
  got = pipeline.crop_resize(image, np.array([10, 5, 40, 25]), 15)
  want = np.asarray(Image.fromarray(image[5:25, 10:40]).resize((15, 15), Image.BILINEAR))
  # The border differs: with a window, the filter reads the pixels just outside it, as a
  # resize of the whole image would; a crop clamps at its edge.
  assert np.abs(got.astype(int) - want)[1:-1, 1:-1].max() <= 1
  assert pipeline.crop_resize(image, windows.whole_window((30, 50)), 20).shape == (20, 20, 3)


@pytest.mark.parametrize('crop', pipeline.EVAL_CROPS)
def test_boxes_round_trip_through_each_eval_transform(crop):
  """Original -> input -> original on a non-square image moves each edge by at most half
  an input pixel's extent (rounded up) plus one pixel; a box thinner than an input pixel
  becomes one input pixel, so by at most that pixel's extent."""
  orig_hw, size = (375, 500), 64
  preprocess = pipeline.EvalPreprocess(size, 4, crop)
  window = preprocess.window(orig_hw)
  per_pixel = max((window[2] - window[0]) / size, (window[3] - window[1]) / size)
  rng = np.random.default_rng(0)
  wx0, wy0, wx1, wy1 = np.ceil(window[:2]).astype(int).tolist() + \
      np.floor(window[2:] - 1).astype(int).tolist()
  for _ in range(200):
    x0, x1 = np.sort(rng.integers(wx0, wx1 + 1, 2))
    y0, y1 = np.sort(rng.integers(wy0, wy1 + 1, 2))
    box = np.array([[x0, y0, x1, y1]])
    back = windows.boxes_to_original(windows.boxes_to_input(box, window, size), window,
                                      size, orig_hw)
    thin = min(x1 - x0 + 1, y1 - y0 + 1) < per_pixel
    bound = np.ceil(per_pixel if thin else per_pixel / 2) + 1
    assert np.abs(back - box).max() <= bound, (box, back)


def test_eval_preprocess_resize_crop_keeps_ground_truth_in_the_original():
  rng = np.random.default_rng(2)
  pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='PNG')
  ex = {'image': buf.getvalue(), 'label': 3, 'boxes': np.array([[1, 2, 50, 30]]),
        'file_name': 'a.png'}
  out = pipeline.EvalPreprocess(16, 2, 'resize_crop', 20).map((7, ex))
  # Shorter side 40 -> 20: the 16 crop covers 32 original pixels, centred at (30, 20).
  np.testing.assert_allclose(out['window'], [14, 4, 46, 36])
  np.testing.assert_array_equal(out['boxes'], [[1, 2, 50, 30], [-1, -1, -1, -1]])
  np.testing.assert_array_equal(out['orig_hw'], [40, 60])
  want = pipeline.crop_resize(pixels, np.array([14, 4, 46, 36]), 16)
  np.testing.assert_array_equal(pipeline.denormalize(out['image']), want)


# --- decoding -------------------------------------------------------------------------

@pytest.mark.parametrize('mode', ['L', 'RGBA', 'CMYK', 'P', 'I;16'])
def test_decode_converts_every_mode_to_rgb(mode):
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
  image = Image.fromarray(gray).convert('RGB')
  fmt = 'JPEG' if mode == 'CMYK' else 'PNG'
  if mode == 'I;16':
    image = Image.fromarray(gray.astype(np.uint16) * 257)  # 16-bit, full range
  else:  # an adaptive palette holds the 12 grey levels exactly
    image = image.convert(mode, palette=Image.ADAPTIVE) if mode == 'P' else image.convert(mode)
  buf = io.BytesIO()
  image.save(buf, format=fmt, **({'quality': 100} if fmt == 'JPEG' else {}))
  rgb = pipeline.decode({'image': buf.getvalue()}, 0)
  assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
  assert np.abs(rgb[..., 0].astype(int) - gray).max() <= (8 if fmt == 'JPEG' else 1)


def test_decode_names_the_bad_file():
  with pytest.raises(images.BadImageError, match='broken.jpg'):
    pipeline.decode({'image': b'not an image', 'file_name': b'broken.jpg'}, 0)


# --- several processes ----------------------------------------------------------------

def _as_process(monkeypatch, index, count):
  monkeypatch.setattr(pipeline.jax, 'process_index', lambda: index)
  monkeypatch.setattr(pipeline.jax, 'process_count', lambda: count)


def test_processes_read_disjoint_shares_and_the_same_number_of_eval_batches(
    tiny_data_dir, monkeypatch):
  source = _source(tiny_data_dir, 'test')  # 64 images
  eval_shares = []
  for index in range(3):
    _as_process(monkeypatch, index, 3)
    got = list(pipeline.eval_batches(source, image_size=32, process_batch_size=8, max_boxes=4,
                                     num_examples=50))
    eval_shares.append(np.concatenate([b['index'][:n] for b, n in got]))
    # 50 images over 3 processes: shares of 17, 17, 16 -> 3 batches of 8 each.
    assert len(got) == 3
  np.testing.assert_array_equal(np.sort(np.concatenate(eval_shares)), np.arange(50))
  for index, share in enumerate(eval_shares):
    np.testing.assert_array_equal(share, np.arange(index, 50, 3))  # a stride per process


def test_processes_read_their_rows_of_the_same_global_batches(tiny_data_dir, monkeypatch):
  """Global batch k is the same for any number of processes: process p of P reads the
  p-th block of its rows, the rows its devices hold; a resume starts at the step in any
  number of processes."""
  source = _source(tiny_data_dir, 'train')
  kwargs = dict(image_size=32, global_batch_size=12, seed=1, crop='random_resized')
  _as_process(monkeypatch, 0, 1)
  one = pipeline.train_batches(source, **kwargs)
  want = [next(one) for _ in range(25)]  # 300 images: crosses an epoch
  for count in (2, 3):
    for start in (0, 21):
      parts = []
      for index in range(count):
        _as_process(monkeypatch, index, count)
        it = pipeline.train_batches(source, start_step=start, **kwargs)
        parts.append([next(it) for _ in range(25 - start)])
      for k in range(start, 25):
        for key in ('image', 'label'):
          np.testing.assert_array_equal(
              np.concatenate([p[k - start][key] for p in parts]), want[k][key])
  _as_process(monkeypatch, 0, 5)
  with pytest.raises(ValueError, match=r'batch_size=12 must be a multiple of the number of '
                                       r'processes \(5\)'):
    pipeline.train_batches(source, **kwargs)


def test_worker_processes_give_the_same_batches_and_resume(tiny_data_dir):
  source = _source(tiny_data_dir, 'train')
  kwargs = dict(image_size=32, global_batch_size=8, seed=5)
  in_process = pipeline.train_batches(source, **kwargs)
  want = [next(in_process) for _ in range(6)]
  workers = pipeline.train_batches(source, num_workers=2, **kwargs)
  try:
    for k in range(3):
      np.testing.assert_array_equal(next(workers)['image'], want[k]['image'])
  finally:
    workers.close()
  resumed = pipeline.train_batches(source, num_workers=2, start_step=3, **kwargs)
  try:
    for k in range(3, 6):
      np.testing.assert_array_equal(next(resumed)['image'], want[k]['image'])
  finally:
    resumed.close()

