"""Training: sharded step equivalence, resume, checkpoint compatibility, bad input."""

import json
import os

import jax
import numpy as np
import pytest

from cam_jax import sharding, train
from configs import synthetic_gap


def tiny_config(data_dir, **overrides):
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = data_dir
  config.data.prepare = False
  config.eval.num_pictures = 0
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return config


def _params(state):
  return jax.tree.map(np.asarray, state)


def test_train_step_on_8_devices_matches_1_device(tiny_data_dir):
  """Same global batch, same initial state: the loss and the updated parameters agree.

  Tolerance 1e-5 relative: the 8-device step sums gradients in another order (float32).
  """
  assert jax.device_count() == 8
  config = tiny_config(tiny_data_dir)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 4, 16).astype(np.int32)}
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    graphdef, state = train.create_train_state(config, num_classes=4)
    state = sharding.replicate(state, mesh)
    step = train.make_train_step(graphdef, mesh)
    for _ in range(3):
      state, metrics = step(state, sharding.shard_batch(batch, mesh))
    results.append((float(metrics['loss']), _params(state)))
  (loss1, params1), (loss8, params8) = results
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params8, params1)


def _restore(config, workdir, step=None):
  mesh = sharding.make_mesh()
  _, abstract = train.abstract_train_state(config, 4, mesh)
  with train.checkpoint_manager(workdir, config) as manager:
    step, state = train.restore_checkpoint(manager, abstract,
                                           train.checkpoint_meta(config, 4, 0), step=step)
  return step, _params(state)


def test_resume_continues_and_matches_uninterrupted_run(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, eval_every=0, checkpoint_every=3)
  # A tuple option, as configs write them, must match its JSON (list) form in the checkpoint.
  config.model.kwargs = {'widths': (8, 16)}
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  assert train.train_and_evaluate(config, straight) is not None
  # Stopped after step 3 (a checkpoint is written on the way out), then resumed.
  assert train.train_and_evaluate(config, resumed, stop_after=3) is None
  with open(os.path.join(resumed, 'metrics.jsonl')) as f:
    assert max(json.loads(line)['step'] for line in f) == 3
  assert train.train_and_evaluate(config, resumed) is not None
  with open(os.path.join(resumed, 'metrics.jsonl')) as f:
    train_steps = [json.loads(line)['step'] for line in f if '"train"' in line]
  assert train_steps == [2, 3, 4, 6]  # The second run started at step 4, not 1.
  step_a, params_a = _restore(config, straight)
  step_b, params_b = _restore(config, resumed)
  assert step_a == step_b == 6
  # Same data order, same computation: bit-identical on one machine.
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  # The straight run saved step 3 asynchronously and then went on donating its state to
  # the next steps: that checkpoint must still hold step 3's values, as the stopped run's.
  _, mid_a = _restore(config, straight, step=3)
  _, mid_b = _restore(config, resumed, step=3)
  jax.tree.map(np.testing.assert_array_equal, mid_a, mid_b)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, mid_a, params_a)))


def test_incompatible_checkpoint_is_refused_and_left_intact(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(tiny_config(tiny_data_dir), workdir, stop_after=3)
  ckpt = os.path.join(workdir, 'checkpoints')
  before = sorted(os.listdir(ckpt))
  other = tiny_config(tiny_data_dir, **{'model.name': 'tiny_gmp'})
  other.model.kwargs = {'cam_channels': 16}
  with pytest.raises(ValueError, match='incompatible model.*model_kwargs'):
    train.train_and_evaluate(other, workdir)
  assert sorted(os.listdir(ckpt)) == before


def test_unknown_model_lists_known_names(tiny_data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"Unknown model 'nope'.*small_gap.*tiny_gap"):
    train.train_and_evaluate(tiny_config(tiny_data_dir, **{'model.name': 'nope'}),
                             str(tmp_path))


def test_unknown_dataset_lists_known_names(tmp_path):
  config = tiny_config(str(tmp_path), **{'data.name': 'imagenet9'})
  with pytest.raises(ValueError, match=r"Unknown dataset 'imagenet9'.*cam_synth"):
    train.train_and_evaluate(config, str(tmp_path / 'w'))


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
  config = tiny_config(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError,
                     match=r'(?s)not prepared.*python -m cam_jax.data.prepare --dataset=cam_synth '
                           r'--builder_config=tiny --data_dir='):
    train.train_and_evaluate(config, str(tmp_path / 'w'))


def test_nan_loss_stops_with_clear_message(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, **{'optimizer.learning_rate': float('nan')})
  with pytest.raises(FloatingPointError, match='loss is nan at step 2'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
