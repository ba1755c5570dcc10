"""--mode=concept (paper Sec. 4.2, Fig. 10): hard-negative mining and the concept's CAMs."""

import json
import os

import numpy as np
import pytest
from sklearn import svm

from cam_jax import concepts
from cam_jax.data import novel_shapes
from configs import synthetic_gap
from tests.square_detector import workdir  # pylint: disable=unused-import


def _decision(x_pos, x_neg):
  """sklearn's own binary SVM, positives 1: the concept's score of every negative."""
  x = np.concatenate([x_pos, x_neg])
  y = np.r_[np.ones(len(x_pos)), np.zeros(len(x_neg))]
  scale = np.sqrt(np.mean(np.sum(x**2, axis=1)))
  clf = svm.LinearSVC(C=1.0, loss='hinge', dual=True, max_iter=100_000, random_state=0)
  clf.fit(x / scale, y)
  return lambda z: clf.decision_function(z / scale)


def test_hard_negatives_are_the_margin_violators_hardest_first():
  rng = np.random.default_rng(0)
  x_pos = rng.normal([3, 3], 0.5, (20, 2))
  easy = rng.normal([-3, -3], 0.5, (150, 2))
  hard = rng.normal([1.5, 1.5], 0.8, (30, 2))  # near the positives: mined
  x_neg = np.concatenate([easy, hard])
  kernel, bias, history = concepts.mine_detector(x_pos, x_neg, c=1.0, rounds=4,
                                                 init_negatives=10, per_round=8)
  assert len(history[0]['negatives']) == 10
  for r, entry in enumerate(history):
    chosen = np.array(entry['negatives'])
    score = _decision(x_pos, x_neg[chosen])(x_neg)
    outside = np.setdiff1d(np.arange(len(x_neg)), chosen)
    violators = outside[score[outside] > -1]
    expected = violators[np.argsort(-score[violators], kind='stable')][:8]
    if r < len(history) - 1:
      assert entry['added'] == expected.tolist() and len(expected)
      assert history[r + 1]['negatives'] == sorted(entry['negatives'] + entry['added'])
    else:
      assert entry['added'] == [] and (r == 4 or not len(expected))
  # Most mined negatives are the hard ones (indices 150 and up).
  mined = sum((h['added'] for h in history), [])
  assert np.mean(np.array(mined) >= 150) > 0.5
  # The final detector is the last fit's: scores positive for the positives.
  assert (x_pos @ kernel[:, 1] + bias[1] > 0).mean() > 0.9


def test_mining_stops_when_no_negative_is_left_to_violate_the_margin():
  x_pos = np.array([[10.0, 0], [11, 0], [12, 0]])
  x_neg = np.array([[-10.0, 0], [-11, 0], [-12, 0], [-13, 0]])
  _, _, history = concepts.mine_detector(x_pos, x_neg, c=1.0, rounds=5, init_negatives=10,
                                         per_round=10)
  assert len(history) == 1 and history[0]['added'] == []
  assert history[0]['negatives'] == [0, 1, 2, 3]
  with pytest.raises(ValueError, match='positives and negatives'):
    concepts.mine_detector(x_pos, x_neg[:0], c=1.0, rounds=1, init_negatives=None,
                           per_round=1)


def _concept_config(pos, neg, source):
  config = synthetic_gap.get_config('tiny')
  config.transfer.source = source
  config.transfer.batch_size = 16
  config.concept.positives = pos
  config.concept.negatives = neg
  config.concept.init_negatives = 6
  config.concept.per_round = 4
  config.concept.rounds = 2
  config.concept.num_pictures = 5
  return config


def test_run_concept_writes_the_detector_rounds_and_cams(workdir, tmp_path):
  root = str(tmp_path / 'shapes')
  novel_shapes.write(root, per_class={'train': 8}, image_size=32)
  # Every shape but the pentagon: two folders given as they are, the rest through a link.
  negatives = tmp_path / 'negatives'
  negatives.mkdir()
  for name in novel_shapes.CLASS_NAMES[3:]:
    os.symlink(os.path.join(root, 'train', name), negatives / name)
  others = ','.join(os.path.join(root, 'train', n) for n in novel_shapes.CLASS_NAMES[1:3])
  out = str(tmp_path / 'run')
  config = _concept_config(os.path.join(root, 'train', 'pentagon'),
                           f'{others},{negatives}', workdir)
  report = concepts.run_concept(config, out)
  with open(os.path.join(out, 'concept', 'concept.json')) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(report))
  assert saved['num_positives'] == 8 and saved['num_negatives'] == 40
  assert saved['rounds'][0]['num_negatives'] == 6
  for a, b in zip(saved['rounds'], saved['rounds'][1:]):
    assert b['num_negatives'] == a['num_negatives'] + a['num_added']
  assert 0 <= saved['average_precision'] <= 1
  scores = [score for _, score in saved['positives_ranked']]
  assert scores == sorted(scores, reverse=True) and len(scores) == 8
  assert [i for i, _ in saved['boxes']] == [i for i, _ in saved['positives_ranked']][:5]
  for _, box in saved['boxes']:
    assert 0 <= box[0] <= box[2] < 32 and 0 <= box[1] <= box[3] < 32
  assert sorted(os.listdir(os.path.join(out, 'concept'))) == [
      'concept.json', 'concept.png', 'detector.json', 'features']


def test_missing_folders_are_named(workdir, tmp_path):
  with pytest.raises(ValueError, match='concept.positives is not set'):
    concepts.run_concept(_concept_config(None, str(tmp_path), workdir), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="concept.positives: '.*nowhere' is not a folder"):
    concepts.run_concept(_concept_config(str(tmp_path / 'nowhere'), str(tmp_path), workdir),
                         str(tmp_path))
  with pytest.raises(ValueError, match='holds no image'):
    concepts.run_concept(_concept_config(str(tmp_path), str(tmp_path), workdir),
                         str(tmp_path / 'out'))
