"""--mode=transfer (paper Sec. 4): the SVM on GAP features, its CAMs, the crops."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn import svm

from cam_jax import cam
from cam_jax import data as data_lib
from cam_jax import features
from cam_jax import restore
from cam_jax import sharding
from cam_jax import boxes as boxes_lib
from cam_jax import transfer
from cam_jax.data import conventions
from cam_jax.data import novel_shapes
from cam_jax.data import pipeline
from configs import synthetic_gap
from tests import multiprocess
from tests.square_detector import workdir  # pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def feats(tiny_data_dir):
  """A random tiny_gap's features (and maps) of 64 tiny test images, and the network."""
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.builder_config = 'tiny'
  source, info = data_lib.load_source(config.data, 'test')
  model = restore.create_model(config, info.num_classes, seed=1)
  out = features.extract(model, sharding.make_mesh(), source, image_size=32, batch_size=16,
                         convention=conventions.from_config(config.data), with_maps=True)
  prep = pipeline.EvalPreprocess(32, config.data.max_boxes,
                                 convention=conventions.from_config(config.data))
  images = np.stack([prep.map((i, source[i]))['image'] for i in range(len(source))])
  return out, model, images, info.num_classes


def _sklearn_scores(x, y, c):
  """LinearSVC on its own: the same loss, C and feature scale, its decision function."""
  scale = np.sqrt(np.mean(np.sum(np.asarray(x, np.float64)**2, axis=1)))
  clf = svm.LinearSVC(C=c, loss='hinge', dual=True, max_iter=100_000, random_state=0)
  clf.fit(x / scale, y)
  return clf.decision_function(x / scale), clf.predict(x / scale)


def test_svm_scores_are_sklearns_and_its_cams_average_to_them(feats):
  out, model, images, num_classes = feats
  x, y = out.pooled_NK, out.labels_N
  kernel_KC, bias_C = transfer.fit_svm(x, y, num_classes, 1.0, 100_000)
  scores_NC = transfer.scores(x, kernel_KC, bias_C)
  expected, predicted = _sklearn_scores(x, y, 1.0)
  np.testing.assert_allclose(scores_NC, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(scores_NC.argmax(1), predicted)
  # The CAM identity: a class's CAM averaged over the map, plus its bias, is its score.
  maps_NhwC = np.einsum('nhwk,kc->nhwc', out.maps_NhwK.astype(np.float64), kernel_KC)
  np.testing.assert_allclose(maps_NhwC.mean(axis=(1, 2)) + bias_C, scores_NC, rtol=1e-4,
                             atol=1e-4)
  # The network with the SVM as its head: its logits are the scores, its CAMs the maps.
  svm_model = transfer.with_head(model, kernel_KC, bias_C)
  logits, aux = svm_model(images, train=False)
  np.testing.assert_allclose(np.asarray(logits), scores_NC, rtol=1e-4, atol=1e-4)
  cams_NChw = cam.class_activation_maps(aux['features'], svm_model.head.kernel[...],
                                        np.arange(num_classes)[None].repeat(len(images), 0))
  np.testing.assert_allclose(np.asarray(cams_NChw), maps_NhwC.transpose(0, 3, 1, 2),
                             rtol=1e-4, atol=1e-4)
  # The source network is untouched.
  assert model.head.kernel.shape[1] == num_classes


def test_two_classes_split_the_binary_score_and_absent_classes_never_win(feats):
  out, _, _, _ = feats
  keep = out.labels_N < 2
  x, y = out.pooled_NK[keep], out.labels_N[keep]
  kernel_KC, bias_C = transfer.fit_svm(x, y, 4, 1.0, 100_000)
  scores_NC = transfer.scores(x, kernel_KC, bias_C)
  expected, predicted = _sklearn_scores(x, y, 1.0)
  np.testing.assert_allclose(scores_NC[:, 1], expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(scores_NC[:, 0], -expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(kernel_KC[:, 2:], 0)
  np.testing.assert_array_equal(scores_NC.argmax(1), predicted)
  with pytest.raises(ValueError, match='1 class'):
    transfer.fit_svm(x[y == 0], y[y == 0], 4, 1.0)


def test_holdout_is_per_class_fixed_and_leaves_every_class_a_training_image():
  labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
  train, val = transfer.holdout_split(labels, 0.2)
  assert not set(train) & set(val) and len(train) + len(val) == len(labels)
  assert [int((labels[val] == c).sum()) for c in range(4)] == [2, 1, 1, 0]
  assert all((labels[train] == c).any() for c in range(4))
  np.testing.assert_array_equal(transfer.holdout_split(labels, 0.2)[1], val)
  with pytest.raises(ValueError, match='validation_fraction'):
    transfer.holdout_split(labels, 1.0)


def test_c_is_chosen_on_validation_ties_going_to_the_smaller():
  rng = np.random.default_rng(0)
  y = np.repeat([0, 1, 2], 10)
  x = np.eye(3)[y] * 10 + rng.normal(0, 0.1, (30, 3))  # separable at any C
  c, by_c = transfer.choose_c((x, y), (x, y), 3, (10.0, 0.1, 1.0), 1000)
  assert c == 0.1 and set(by_c) == {'0.1', '1.0', '10.0'} and set(by_c.values()) == {1.0}


@pytest.fixture(scope='module')
def novel(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('novel'))
  novel_shapes.write(root, per_class={'train': 6, 'validation': 2, 'test': 3}, image_size=32)
  return root


def _transfer_config(novel_root, source, crops=('full', 'cam', 'gt')):
  config = synthetic_gap.get_config('tiny')
  config.data.name = 'folders'
  config.data.folders.root = novel_root
  config.data.folders.boxes_file = os.path.join(novel_root, 'boxes.txt')
  config.transfer.source = source
  config.transfer.crops = crops
  config.transfer.batch_size = 16
  config.transfer.svm_c = (1.0, 100.0)
  config.transfer.validation_split = 'validation'
  config.figures.num_examples = 16
  return config


@pytest.fixture(scope='module')
def single(novel, workdir, tmp_path_factory):
  """One process's transfer to the novel shapes, every crop: `(workdir, results)`."""
  out = str(tmp_path_factory.mktemp('transfer') / 'one')
  return out, transfer.run_transfer(_transfer_config(novel, workdir), out)


def test_run_transfer_writes_svms_crops_and_their_cams(novel, workdir, single):
  out, results = single
  with open(os.path.join(out, 'transfer', 'eval.json')) as f:
    saved = json.load(f)
  t = saved['transfer']
  assert t['source_model'] == 'tiny_gap' and t['num_classes'] == 6
  assert t['splits'] == {'train': 'train', 'test': 'test', 'validation': 'validation'}
  assert set(t['crops']) == {'full', 'cam', 'gt'}
  for numbers in t['crops'].values():
    assert numbers['num_train'] == 48 and numbers['num_validation'] == 12
    assert numbers['num_test'] == 18 and numbers['svm_c'] in (1.0, 100.0)
  # The evaluation's classification is the SVM's.
  assert saved['svm_test_accuracy'] == pytest.approx(1 - saved['cls_top1_error'])
  assert saved['num_images'] == 18 and 'gt_known_loc_accuracy' in saved
  assert saved == json.loads(json.dumps(results))
  # The CAM boxes' accuracy, recomputed from the boxes written and the ground truth.
  gt = {}
  with open(os.path.join(novel, 'boxes.txt')) as f:
    for line in f:
      name, *box = line.strip().split(',')
      gt[name] = np.array([box], int)
  source, _ = data_lib.load_source(_transfer_config(novel, workdir).data, 'test')
  with open(os.path.join(out, 'transfer', 'boxes-test.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  hits = [boxes_lib.max_iou(np.array(r['cam_box']), gt[source.image_ids[r['index']]]) >= 0.5
          for r in rows]
  assert t['cam_box_accuracy'] == pytest.approx(np.mean(hits))
  assert [r['gt_box'] for r in rows] == [gt[i][0].tolist() for i in source.image_ids]
  for name in ('figures/class_cams.png', 'cams/00.png', 'svm.json'):
    assert os.path.exists(os.path.join(out, 'transfer', name)), name
  # A rerun reads the cached features.
  chunk = os.path.join(out, 'transfer', 'features', 'train-train-full',
                       'part-0-of-1.chunk-00000.npz')
  stamp = os.stat(chunk).st_mtime_ns
  again = transfer.run_transfer(_transfer_config(novel, workdir, crops=('full',)), out)
  assert os.stat(chunk).st_mtime_ns == stamp
  assert again['transfer']['crops']['full'] == t['crops']['full']


def test_bad_transfer_settings_are_named(novel, workdir, tmp_path):
  config = _transfer_config(novel, None)
  with pytest.raises(ValueError, match='transfer.source is not set'):
    transfer.run_transfer(config, str(tmp_path))
  config = _transfer_config(novel, workdir, crops=('full', 'bbox'))
  with pytest.raises(ValueError, match="crops=.*expected some of"):
    transfer.run_transfer(config, str(tmp_path))


def test_cub_recipe_runs_end_to_end_on_the_fake_cub(workdir, tmp_path):
  from cam_jax import data  # pylint: disable=g-import-not-at-top,reimported
  from tests.data import fake_cub  # pylint: disable=g-import-not-at-top
  fake_cub.write_fake_cub(str(tmp_path / 'manual'), num_classes=3, per_class=6)
  data_dir = str(tmp_path / 'tfds')
  data.prepare(data.get_builder('cub2011_loc', None, data_dir), str(tmp_path / 'manual'))
  out = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'cam_jax.main', '--config=configs/cub_transfer.py:tiny',
         f'--workdir={out}', '--mode=transfer', f'--config.data.data_dir={data_dir}',
         f'--config.transfer.source={workdir}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': REPO})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, 'transfer', 'eval.json')) as f:
    t = json.load(f)['transfer']
  assert set(t['crops']) == {'full', 'cam', 'gt'} and t['dataset'] == 'cub2011_loc'
  assert 0 <= t['cam_box_accuracy'] <= 1
  # The table has the paper's numbers beside ours.
  assert '63.0' in proc.stdout and '67.8' in proc.stdout and '70.5' in proc.stdout
  assert '41.0' in proc.stdout


def test_two_processes_transfer_as_one_does(novel, workdir, single, tmp_path):
  """2 processes × 2 CPU devices (`python -m tests.test_transfer`, below) against one: the
  features each process wrote are read by both, the boxes gathered, the SVMs the same."""
  one_dir, one = single
  out = str(tmp_path / 'two')
  multiprocess.run([novel, workdir, out], module='tests.test_transfer', num_processes=2,
                   devices_per_process=2, log_dir=str(tmp_path / 'logs'), timeout=240)
  with open(os.path.join(out, 'transfer', 'eval.json')) as f:
    two = json.load(f)
  parts = os.listdir(os.path.join(out, 'transfer', 'features', 'test-test-full'))
  assert sorted(parts) == ['meta.json', 'part-0-of-2.chunk-00000.npz',
                           'part-1-of-2.chunk-00000.npz']
  for crop in ('full', 'cam', 'gt'):
    a, b = (np.load(os.path.join(d, 'transfer', 'features', f'train-train-{crop}',
                                 'part-0-of-1.chunk-00000.npz' if d.endswith('one') else
                                 'part-0-of-2.chunk-00000.npz'))
            for d in (one_dir, out))
    rows = np.searchsorted(a['indices'], b['indices'])  # process 0's share of the rows
    np.testing.assert_allclose(b['pooled'], a['pooled'][rows], rtol=1e-5, atol=1e-5)
  for key in ('cls_top1_error', 'gt_known_loc_accuracy', 'max_box_acc', 'num_images'):
    assert two[key] == pytest.approx(one[key]), key
  t1, t2 = one['transfer'], two['transfer']
  assert t2['cam_box_accuracy'] == pytest.approx(t1['cam_box_accuracy'])
  for crop in ('full', 'cam', 'gt'):
    for key in ('svm_c', 'test_accuracy', 'num_train', 'num_test'):
      assert t2['crops'][crop][key] == pytest.approx(t1['crops'][crop][key]), (crop, key)


def _process_main(novel_root: str, source: str, out: str) -> None:
  """One process of `test_two_processes_transfer_as_one_does` (the launcher's variables
  make it join the others)."""
  transfer.run_transfer(_transfer_config(novel_root, source), out)


if __name__ == '__main__':
  _process_main(*sys.argv[1:])
