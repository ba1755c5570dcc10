"""cam_jax.units (`--mode=units`, paper Sec. 5): the ranking by hand, the exact quantile
against numpy, the pass over a split against an independent forward pass, and the files
of a run on the hand-made square detector (`tests/square_detector.py`)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from cam_jax import data as data_lib
from cam_jax import models, sharding, units, viz
from cam_jax.data import pipeline
from tests import model_params
from tests import multiprocess
from tests.square_detector import CLASS_NAMES, STEP, config as _square_config
from tests.square_detector import workdir  # pylint: disable=unused-import (a fixture)


def _tiny_config(data_dir):
  config = _square_config()
  config.data.data_dir = data_dir
  config.data.prepare = False
  return config


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------

def test_units_are_ranked_by_weight_ties_by_lower_index():
  kernel_KC = np.array([[0.1, 0.0], [0.5, -1.0], [0.5, 0.0], [-1.0, 0.0], [0.5, 2.0],
                        [0.25, 0.0]], np.float32)
  ids, weights = units.rank_units(kernel_KC, 0, 4)
  assert ids.tolist() == [1, 2, 4, 5]  # three ties at 0.5: lower index first
  np.testing.assert_array_equal(weights, [0.5, 0.5, 0.5, 0.25])
  ids, weights = units.rank_units(kernel_KC, 1, 3)
  assert ids.tolist() == [4, 0, 2] and weights.tolist() == [2.0, 0.0, 0.0]
  # Against numpy on a kernel with many ties (weights in steps of 0.25).
  kernel_KC = np.random.default_rng(0).integers(-3, 4, (64, 5)).astype(np.float32) / 4
  for c in range(5):
    ids, weights = units.rank_units(kernel_KC, c, 10)
    expected = np.lexsort((np.arange(64), -kernel_KC[:, c]))[:10]
    assert ids.tolist() == expected.tolist()
    np.testing.assert_array_equal(weights, kernel_KC[expected, c])


def test_class_selection():
  config = _square_config().units
  assert units.selected_classes(config, 4) == [0, 1, 2, 3]  # 6 asked, 4 exist
  config.classes = (3, 1, 3)
  assert units.selected_classes(config, 4) == [3, 1]
  config.classes = (4,)
  with pytest.raises(ValueError, match=r'class ids in \[0, 4\)'):
    units.selected_classes(config, 4)


# ---------------------------------------------------------------------------
# The exact quantile
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('n', [1, 2, 7, 1000, 4097])
def test_quantile_from_the_largest_values_is_numpys_to_the_bit(n):
  rng = np.random.default_rng(n)
  for values in (rng.standard_normal(n).astype(np.float32),
                 rng.integers(0, 5, n).astype(np.float32)):  # many ties
    for q in (0.0, 0.3, 0.5, 0.9, 0.995, 0.9999, 1.0):
      m = units.num_top_values(n, q)
      assert 1 <= m <= n
      top_m = np.sort(values)[n - m:][::-1]  # any order
      assert units.quantile_from_top(top_m, n, q) == np.quantile(values.astype(np.float64), q)
  with pytest.raises(ValueError, match='largest'):
    units.quantile_from_top(np.sort(values)[n // 2 + 1:], n, 0.5)  # one short


def test_top_values_streamed_in_batches_give_numpys_quantile():
  rng = np.random.default_rng(0)
  values_UX = rng.gamma(1.0, size=(3, 5000)).astype(np.float32)
  values_UX[1] = 0.0  # a dead unit: all ties
  for q in (0.995, 0.9, 0.2):
    top = units.TopValues(3, units.num_top_values(5000, q))
    for start in range(0, 5000, 700):
      top.add(values_UX[:, start:start + 700])
    assert top.padded().shape == (3, top.m)
    got = [units.quantile_from_top(t, 5000, q) for t in top.padded()]
    assert got == [np.quantile(v.astype(np.float64), q) for v in values_UX]


# ---------------------------------------------------------------------------
# The pass over a split
# ---------------------------------------------------------------------------

def _random_tiny_model():
  return model_params.random_model(lambda: models.get_model(
      'tiny_gap', num_classes=4, rngs=nnx.Rngs(0)))


def test_thresholds_and_top_images_equal_an_independent_forward_pass(tiny_data_dir):
  config = _tiny_config(tiny_data_dir)
  model = _random_tiny_model()
  unit_ids = [0, 5, 17, 31]
  # 40 images: two full eval batches of 16 and a padded one of 8.
  stats = units.unit_statistics(config, model, sharding.make_mesh(), unit_ids, split='test',
                                num_examples=40, top_images=5, quantile=0.99)
  # Independently: every image through the eval transform, one forward pass, numpy.
  source, _ = data_lib.load_source(config.data, 'test')
  preprocess = pipeline.EvalPreprocess(config.data.image_size, config.data.max_boxes)
  examples = [preprocess.map((i, source[i])) for i in range(40)]
  images_NHWC = np.stack([ex['image'] for ex in examples])
  _, aux = model(jnp.asarray(images_NHWC), train=False)
  feats_NhwU = np.asarray(aux['features'], np.float32)[..., unit_ids]
  assert stats['num_images'] == 40 and stats['map_hw'] == feats_NhwU.shape[1:3] == (16, 16)
  np.testing.assert_allclose(
      stats['thresholds_U'],
      [np.quantile(feats_NhwU[..., u].astype(np.float64), 0.99) for u in range(4)],
      rtol=1e-5, atol=1e-6)
  peaks_NU = feats_NhwU.max(axis=(1, 2))
  best = stats['images']
  for u in range(4):
    order = np.lexsort((np.arange(40), -peaks_NU[:, u]))[:5]  # ties: the lower index
    assert best['index'][u].tolist() == order.tolist()
    np.testing.assert_allclose(best['peak'][u], peaks_NU[order, u], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(best['map'][u], feats_NhwU[order, ..., u].astype(np.float32),
                               rtol=1e-5, atol=1e-6)
    assert best['label'][u].tolist() == [int(examples[i]['label']) for i in order]
    np.testing.assert_array_equal(best['orig_hw'][u], [[32, 32]] * 5)


def test_the_processes_shares_merge_into_the_whole_splits_result():
  """What several processes do (each its stride of the split, then one gather), against
  one process reading everything, on maps with ties."""
  rng = np.random.default_rng(0)
  maps_NhwU = rng.integers(0, 6, (30, 4, 4, 3)).astype(np.float32)
  index_N = np.arange(30)
  label_N, window_N4 = index_N % 4, np.tile(np.float32([0, 0, 8, 8]), (30, 1))
  orig_hw_N2 = np.full((30, 2), 8)
  n, q, top = 30 * 16, 0.95, 4

  def share(rows):
    values = units.TopValues(3, units.num_top_values(n, q))
    images = units.TopImages(3, top, (4, 4))
    for batch in np.array_split(rows, 3):  # in batches, as they stream by
      values.add(maps_NhwU[batch].reshape(-1, 3).T)
      images.add(maps_NhwU[batch], index_N[batch], label_N[batch], window_N4[batch],
                 orig_hw_N2[batch])
    return {'values': values.padded(), **{f'image/{k}': v for k, v in images.arrays.items()}}

  def merged(shares):
    return units.merge_processes({k: np.stack([s[k] for s in shares]) for k in shares[0]},
                                 n, q, top)

  one_U, one = merged([share(index_N)])
  two_U, two = merged([share(index_N[0::2]), share(index_N[1::2])])
  np.testing.assert_array_equal(one_U, [np.quantile(maps_NhwU[..., u].astype(np.float64), q)
                                        for u in range(3)])
  np.testing.assert_array_equal(two_U, one_U)
  for key in one:
    np.testing.assert_array_equal(two[key], one[key])
  for u in range(3):
    peaks_N = maps_NhwU[..., u].max(axis=(1, 2))
    assert one['index'][u].tolist() == np.lexsort((index_N, -peaks_N))[:top].tolist()


def test_more_top_images_than_the_split_has(tiny_data_dir):
  config = _tiny_config(tiny_data_dir)
  stats = units.unit_statistics(config, _random_tiny_model(), sharding.make_mesh(), [3],
                                split='test', num_examples=3, top_images=5, quantile=0.5)
  assert sorted(stats['images']['index'][0, :3].tolist()) == [0, 1, 2]
  assert stats['images']['index'][0, 3:].tolist() == [-1, -1]  # empty slots


# ---------------------------------------------------------------------------
# Pictures and files
# ---------------------------------------------------------------------------

def test_highlight_region_darkens_outside_and_outlines():
  image_HW3 = np.full((6, 8, 3), 200, np.uint8)
  region_HW = np.zeros((6, 8), bool)
  region_HW[1:5, 2:7] = True
  out = viz.highlight_region(image_HW3, region_HW)
  assert (out[~region_HW] == 80).all()  # 0.4 of 200
  edge = region_HW.copy()
  edge[2:4, 3:6] = False
  assert (out[edge] == viz.REGION_COLOR).all()
  assert (out[2:4, 3:6] == 200).all()  # the region's inside as it was
  with pytest.raises(ValueError, match='region_HW'):
    viz.highlight_region(image_HW3, region_HW[:5])


def _png_shape(path):
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.mode == 'RGB'
    return np.asarray(im).shape


def test_write_units_of_the_square_detector(workdir, tiny_data_dir):
  config = _tiny_config(tiny_data_dir)
  summary = units.write_units(config, workdir)
  out = os.path.join(workdir, 'units')
  assert summary['output_dir'] == out
  assert summary['checkpoint'] == os.path.join(workdir, 'checkpoints', str(STEP))
  names = [f'class_{c}_{n.replace(" ", "_")}.png' for c, n in enumerate(CLASS_NAMES)]
  assert sorted(os.listdir(out)) == sorted(['units.json', 'units.md', 'units.png', *names])
  assert sorted(summary['files']) == sorted(os.listdir(out))  # and no temporary file left

  with open(os.path.join(out, 'units.json')) as f:
    report = json.load(f)
  assert report == {k: v for k, v in summary.items() if k not in ('output_dir', 'files')}
  assert (report['split'], report['num_images'], report['map_hw']) == ('test', 64, [16, 16])
  assert report['num_units'] == 32 and report['quantile'] == 0.995
  assert [e['class'] for e in report['classes']] == [0, 1, 2, 3]  # 6 asked, 4 exist
  assert [e['name'] for e in report['classes']] == CLASS_NAMES
  # Head: class 0 weighs unit 0 (the bright-pixel detector) 1, class 1 0.5, the others 0:
  # then ties, the lower units first.
  for entry, w0 in zip(report['classes'], (1.0, 0.5, 0.0, 0.0)):
    assert [u['unit'] for u in entry['units']] == [0, 1, 2]
    assert [u['weight'] for u in entry['units']] == [w0, 0.0, 0.0]
  unit0 = report['classes'][0]['units'][0]
  assert report['classes'][1]['units'][0] == {**unit0, 'weight': 0.5}  # the same unit
  peaks = [i['peak'] for i in unit0['top_images']]
  assert len(peaks) == 4 and peaks == sorted(peaks, reverse=True) and peaks[-1] > 0
  assert 0 < unit0['threshold'] <= peaks[-1]
  dead = report['classes'][0]['units'][1]  # all its activations are 0
  assert dead['threshold'] == 0.0
  assert [i['index'] for i in dead['top_images']] == [0, 1, 2, 3]
  assert all(i['peak'] == 0.0 for i in dead['top_images'])

  with open(os.path.join(out, 'units.md')) as f:
    md = f.read()
  assert '| class | unit | weight | T_k | top images |' in md
  assert md.count('\n| ') == 1 + 4 * 3  # header and a row per (class, unit)
  assert '| 0 square | 0 | +1.000 |' in md

  # 32×32 images upscaled ×4 to 128 px tiles under a 14 px title, 2 px apart: a row of 4
  # under its unit's title, 3 rows 6 px apart under the class's title.
  assert _png_shape(os.path.join(out, names[0])) == (14 + 3 * (14 + 14 + 128) + 2 * 6,
                                                     4 * 128 + 3 * 2, 3)
  # The summary: 4 classes (rows 10 px apart), each 3 units of 2 images (10 px apart).
  assert _png_shape(os.path.join(out, 'units.png')) == (4 * (14 + 14 + 128) + 3 * 10,
                                                        3 * (2 * 128 + 2) + 2 * 10, 3)
  figure = np.asarray(Image.open(os.path.join(out, names[0])))
  assert np.all(figure == viz.REGION_COLOR, axis=-1).any()  # unit 0's regions outlined


def test_other_output_dir_and_classes(workdir, tiny_data_dir, tmp_path):
  config = _tiny_config(tiny_data_dir)
  config.units.classes = (1,)
  config.units.top_units = 1
  config.units.top_images = 2
  summary = units.write_units(config, workdir, checkpoint=os.path.join(workdir, 'checkpoints'),
                              output_dir=str(tmp_path / 'u'))
  assert sorted(os.listdir(tmp_path / 'u')) == ['class_1_half_square.png', 'units.json',
                                                'units.md', 'units.png']
  (entry,) = summary['classes']
  assert [u['unit'] for u in entry['units']] == [0]
  assert len(entry['units'][0]['top_images']) == 2


class _FCClassifier(nnx.Module):
  """A fully connected classifier: no CAM head."""

  def __init__(self, num_classes, *, rngs):
    self.classifier = nnx.Linear(32 * 32 * 3, num_classes, rngs=rngs)

  def __call__(self, x, train=False):
    return self.classifier(x.reshape(x.shape[0], -1)), {'features': x}


def test_network_without_cam_head_raises(tiny_data_dir, tmp_path):
  with pytest.raises(ValueError, match='no GAP/GMP head'):
    units.find_units(_tiny_config(tiny_data_dir), _FCClassifier(4, rngs=nnx.Rngs(0)),
                     sharding.make_mesh(), CLASS_NAMES, str(tmp_path / 'u'))
  assert not os.path.exists(tmp_path / 'u')


def test_two_processes_write_what_one_writes(workdir, tiny_data_dir, tmp_path):
  """2 processes × 2 CPU devices (`python -m tests.test_units`, below) against this one."""
  one = units.write_units(_tiny_config(tiny_data_dir), workdir,
                          output_dir=str(tmp_path / 'one'))
  out = str(tmp_path / 'two')
  multiprocess.run([workdir, tiny_data_dir, out], module='tests.test_units', num_processes=2,
                   devices_per_process=2, log_dir=str(tmp_path / 'logs'), timeout=120)
  assert sorted(os.listdir(out)) == sorted(one['files'])
  with open(os.path.join(out, 'units.json')) as f:
    two = json.load(f)
  one = {k: v for k, v in one.items() if k not in ('output_dir', 'files')}
  assert two == one
  for index in range(2):  # every process holds the whole split's result
    with open(os.path.join(tmp_path, f'summary_{index}.json')) as f:
      assert json.load(f) == one


def test_main_units_mode_takes_checkpoint_and_output_dir(workdir, tiny_data_dir, tmp_path):
  """The entry point's wiring: --mode=units with --checkpoint and --output_dir."""
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = str(tmp_path / 'units_out')
  cmd = [sys.executable, '-m', 'cam_jax.main', '--config=configs/synthetic_gap.py:tiny',
         f'--workdir={tmp_path / "elsewhere"}', '--mode=units', f'--checkpoint={workdir}',
         f'--output_dir={out}', f'--config.data.data_dir={tiny_data_dir}']
  proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': repo})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {'units.json', 'units.md', 'units.png'} <= set(os.listdir(out))


def _process_main(workdir: str, data_dir: str, output_dir: str) -> None:
  """One process of `test_two_processes_write_what_one_writes` (the launcher's variables
  make it join the others); its report goes to summary_<process>.json beside
  `output_dir`."""
  summary = units.write_units(_tiny_config(data_dir), workdir, output_dir=output_dir)
  path = os.path.join(os.path.dirname(output_dir), f'summary_{jax.process_index()}.json')
  with open(path, 'w') as f:
    json.dump({k: v for k, v in summary.items() if k not in ('output_dir', 'files')}, f)


if __name__ == '__main__':
  _process_main(*sys.argv[1:])

