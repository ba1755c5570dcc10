"""Training: sharded step equivalence, resume, checkpoint compatibility, bad input."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax import checkpoints, models, restore, sharding, train, workdir_lock
from configs import synthetic_gap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _five_steps(config, devices, num_steps=5):
  """Losses of `num_steps` steps on fixed random batches, and the final parameters."""
  rng = np.random.default_rng(0)
  batches = [{'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
              'label': rng.integers(0, 4, 16).astype(np.int32)} for _ in range(num_steps)]
  mesh = sharding.make_mesh(devices)
  graphdef, state = train.create_train_state(config, num_classes=4)
  state = sharding.replicate(state, mesh)
  step = train.make_train_step(graphdef, mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return np.array(losses), state


def test_train_steps_on_8_devices_match_1_device(tiny_data_dir):
  """Same global batch, same initial state: 5 losses and the parameters agree.

  The 8-device step sums gradients in another order (float32): losses and parameters
  agree to 1e-5 relative (1e-6 absolute). SGD, the paper's optimizer: AdamW divides each
  update by the gradient's RMS, which magnifies that rounding for parameters whose
  gradients are near zero.
  """
  assert jax.device_count() == 8
  config = tiny_config(tiny_data_dir, **{'optimizer.name': 'sgd',
                                         'optimizer.learning_rate': 0.05})
  losses1, state1 = _five_steps(config, jax.devices()[:1])
  losses8, state8 = _five_steps(config, jax.devices())
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  assert losses1[-1] < losses1[0]  # it trains
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               _params(state8), _params(state1))


def test_bfloat16_steps_stay_close_to_float32_with_float32_parameters(tiny_data_dir):
  """Mixed precision: bf16 activations (8 bits of mantissa) change each loss by well under
  1 % here; parameters and optimizer state stay float32."""
  config = tiny_config(tiny_data_dir)
  losses32, _ = _five_steps(config, jax.devices())
  config.model.dtype = 'bfloat16'
  losses16, state16 = _five_steps(config, jax.devices())
  np.testing.assert_allclose(losses16, losses32, rtol=1e-2)
  assert not np.array_equal(losses16, losses32)  # bf16 was really used
  dtypes = {x.dtype for x in jax.tree.leaves(state16) if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype('float32')}
  config.model.dtype = 'float16'
  with pytest.raises(ValueError, match="config.model.dtype='float16'"):
    restore.create_model(config, 4, 0)


def _restore(config, workdir, step=None):
  mesh = sharding.make_mesh()
  _, abstract = train.abstract_train_state(config, 4, mesh)
  with checkpoints.checkpoint_manager(workdir, config) as manager:
    step, state = checkpoints.restore_checkpoint(manager, abstract,
                                           checkpoints.checkpoint_meta(config, 4, 0), step=step)
  return step, _params(state)


def test_resume_continues_and_matches_uninterrupted_run(tiny_data_dir, tmp_path):
  # Progressive resizing: steps 1-4 on 16×16 images, 5-6 on the full 32×32, so that the
  # resumed run (from step 3) crosses the change of size too.
  config = tiny_config(tiny_data_dir, eval_every=0, checkpoint_every=3,
                       progressive_resizing=((16, 4),))
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
  other.model.kwargs.cam_channels = 16
  with pytest.raises(ValueError, match='incompatible model.*model_kwargs'):
    train.train_and_evaluate(other, workdir)
  assert sorted(os.listdir(ckpt)) == before


def test_options_spelt_out_or_left_to_their_defaults_build_the_same_model(tiny_data_dir,
                                                                           tmp_path):
  # A converted GoogLeNet-GAP records model_kwargs {} where its config says
  # {'variant': 'caffe'}, the default: the same network, so the checkpoint restores.
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(tiny_config(tiny_data_dir), workdir, stop_after=3)
  ckpt, mesh = os.path.join(workdir, 'checkpoints'), sharding.make_mesh()
  spelt = tiny_config(tiny_data_dir)
  spelt.model.kwargs.widths = models.options('tiny_gap')['widths']  # tiny_gap's own
  assert restore.restore_model_at(spelt, ckpt, mesh)[1] == 3
  other = tiny_config(tiny_data_dir)
  other.model.kwargs.widths = (8, 24)
  with pytest.raises(ValueError, match='incompatible model.*model_kwargs'):
    restore.restore_model_at(other, ckpt, mesh)


def test_zero_steps_from_another_run_evaluate_its_weights_as_they_are(tiny_data_dir,
                                                                       tmp_path):
  # What synthetic_gap.py:sweep_saliency does: another run's weights, the head kept, no
  # step: the evaluation is that run's own.
  source = str(tmp_path / 'source')
  first = train.train_and_evaluate(tiny_config(tiny_data_dir, **{'figures.enabled': False}),
                                   source)
  again = train.train_and_evaluate(
      tiny_config(tiny_data_dir, **{'figures.enabled': False, 'total_steps': 0,
                                    'optimizer.warmup_steps': 0, 'eval_every': 0,
                                    'init_from.workdir': source, 'init_from.reinit': ()}),
      str(tmp_path / 'again'))
  assert again.pop('step') == 0 and first.pop('step') == 6
  assert again == first


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


@pytest.fixture(scope='module')
def three_steps(tiny_data_dir, tmp_path_factory):
  """`(config, workdir)` of a tiny run stopped after step 3 (checkpoints at 3), trained
  once for the tests that only read it or work on a copy."""
  workdir = str(tmp_path_factory.mktemp('three_steps') / 'w')
  config = tiny_config(tiny_data_dir, eval_every=0)
  assert train.train_and_evaluate(config, workdir, stop_after=3) is None
  return config, workdir


def _poison_after_step_3(monkeypatch):
  """From step 4 on, a NaN learning rate: the run's settings (what a resume checks) stay
  those of the checkpoint, and step 4's update poisons every parameter."""
  real = train.create_learning_rate_fn
  monkeypatch.setattr(train, 'create_learning_rate_fn', lambda config: (
      lambda step: jnp.where(step >= 3, jnp.nan, real(config)(step))))


def test_injected_nan_stops_clearly_and_the_last_checkpoint_still_restores(
    tiny_data_dir, tmp_path, three_steps, monkeypatch):
  config, source = three_steps
  workdir = str(tmp_path / 'w')
  shutil.copytree(source, workdir)  # this test writes into it
  _, good = _restore(config, workdir)
  # Step 4's loss is finite (computed before its update), step 5's is NaN, seen at the
  # next log (step 6, log_every 2), before the next checkpoint.
  _poison_after_step_3(monkeypatch)
  with pytest.raises(FloatingPointError,
                     match=r'(?s)non-finite training metrics at step 6.*last good one in .*intact'):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']
  step, params = _restore(config, workdir)
  assert step == 3
  jax.tree.map(np.testing.assert_array_equal, params, good)


def test_nan_parameters_never_reach_the_best_checkpoint(tiny_data_dir, tmp_path, three_steps,
                                                       monkeypatch):
  """An evaluation at step 4 would save best/: step 4's metrics are finite (its loss
  comes before its update), but its update made the parameters NaN. The state is checked
  before any evaluation and save."""
  config, source = three_steps
  workdir = str(tmp_path / 'w')
  shutil.copytree(source, workdir)
  config = config.copy_and_resolve_references()
  config.eval_every = 4
  _poison_after_step_3(monkeypatch)
  with pytest.raises(FloatingPointError, match=r'non-finite parameters .*after step 4'):
    train.train_and_evaluate(config, workdir)
  assert not os.listdir(os.path.join(workdir, 'best'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']


def test_checkpoint_saved_on_8_devices_restores_on_1(three_steps):
  config, workdir = three_steps
  _, on_8 = _restore(config, workdir)
  mesh1 = sharding.make_mesh(jax.devices()[:1])
  _, abstract = train.abstract_train_state(config, 4, mesh1)
  with checkpoints.checkpoint_manager(workdir, config) as manager:
    step, state = checkpoints.restore_checkpoint(manager, abstract,
                                                 checkpoints.checkpoint_meta(config, 4, 0))
  assert step == 3
  leaves = jax.tree.leaves(state)
  assert all(len(x.sharding.device_set) == 1 for x in leaves)
  jax.tree.map(np.testing.assert_array_equal, _params(state), on_8)
  # And it trains on: the same config on a 1-device mesh resumes from it.
  graphdef, _ = train.abstract_train_state(config, 4, mesh1)
  step_fn = train.make_train_step(graphdef, mesh1)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 4, 16).astype(np.int32)}
  _, metrics = step_fn(state, sharding.shard_batch(batch, mesh1))
  assert np.isfinite(float(metrics['loss']))


_SIGTERM_RUN = ['--config=configs/synthetic_gap.py:tiny', '--config.total_steps=60',
                '--config.checkpoint_every=1000', '--config.eval_every=0',
                '--config.log_every=1', '--config.eval.num_pictures=0']


def test_sigterm_mid_run_saves_and_the_resumed_run_matches_an_uninterrupted_one(
    tiny_data_dir, tmp_path):
  """A preempted job: SIGTERM to `python -m cam_jax.main` mid-run; it saves at the end of
  the current step and exits 0; the same command resumes and ends with the parameters of
  a run that was never interrupted (bit for bit: same data order, same computation)."""
  workdir = str(tmp_path / 'preempted')
  cmd = [sys.executable, '-m', 'cam_jax.main', *_SIGTERM_RUN, f'--workdir={workdir}',
         f'--config.data.data_dir={tiny_data_dir}', '--config.data.prepare=False']
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics_path):
      with open(metrics_path) as f:
        if sum(1 for _ in f) >= 5:  # five steps done
          break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be preempted'
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=240)
  assert proc.returncode == 0, stderr[-3000:]
  assert 'SIGTERM: saved a checkpoint at step' in stderr
  stopped_at = int(os.listdir(os.path.join(workdir, 'checkpoints'))[0])
  assert 5 <= stopped_at < 60
  assert not os.path.exists(os.path.join(workdir, 'eval.json'))  # it did not go on

  resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {stopped_at}' in resumed.stderr

  config = tiny_config(tiny_data_dir, total_steps=60, checkpoint_every=1000, eval_every=0,
                       log_every=1)
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(config, straight)
  step_a, params_a = _restore(config, straight)
  step_b, params_b = _restore(config, workdir)
  assert step_a == step_b == 60
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_init_from_another_run_copies_all_but_the_head(tiny_data_dir, three_steps):
  config, source = three_steps
  config = config.copy_and_resolve_references()  # this test sets init_from on it
  _, trained = _restore(config, source)
  fresh_model = nnx.merge(*train.create_train_state(config, 4))[0]
  config.init_from.workdir = source
  model = nnx.merge(*train.create_train_state(config, 4))[0]
  trained_model = trained[0]
  got = _params(nnx.state(model))
  np.testing.assert_array_equal(got['cam_conv']['conv']['kernel'],
                                trained_model['cam_conv']['conv']['kernel'])
  np.testing.assert_array_equal(got['stages'][1][0]['bn']['mean'],  # BatchNorm statistics too
                                trained_model['stages'][1][0]['bn']['mean'])
  fresh = _params(nnx.state(fresh_model))
  np.testing.assert_array_equal(got['head']['kernel'], fresh['head']['kernel'])
  assert not np.array_equal(got['head']['kernel'], trained_model['head']['kernel'])
  # Another architecture: the first parameter it lacks or has in another shape is named.
  other = tiny_config(tiny_data_dir, **{'model.name': 'small_gap', 'init_from.workdir': source})
  with pytest.raises((KeyError, ValueError), match='init_from.*reinit'):
    train.create_train_state(other, 4)


def test_frozen_layers_keep_their_values_and_new_layers_learn_faster(tiny_data_dir):
  """Plain SGD (no momentum, no decay): an update is lr × gradient, so with the same state
  and batch the new layers' first update is exactly `multiplier` times the base one."""
  base = {'optimizer.name': 'sgd', 'optimizer.momentum': 0.0, 'optimizer.weight_decay': 0.0,
          'optimizer.learning_rate': 0.1, 'optimizer.warmup_steps': 0}
  deltas = {}
  for name, extra in [('plain', {}), ('x10', {'optimizer.new_layers_lr_multiplier': 10.0}),
                      ('frozen', {'optimizer.frozen': (r'stages/0/.*',)})]:
    config = tiny_config(tiny_data_dir, **base, **extra)
    _, state = _five_steps(config, jax.devices(), num_steps=1)
    start = _params(train.create_train_state(config, 4)[1])[0]
    deltas[name] = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b,
                                _params(state)[0], start)
  plain, x10, frozen = deltas['plain'], deltas['x10'], deltas['frozen']
  # To float32 rounding of the updated parameters (about 1e-7 for values near 0.1).
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6)
  close(x10['head']['kernel'], 10 * plain['head']['kernel'])
  close(x10['cam_conv']['conv']['kernel'], 10 * plain['cam_conv']['conv']['kernel'])
  close(x10['stages'][1][0]['conv']['kernel'], plain['stages'][1][0]['conv']['kernel'])
  assert not np.any(frozen['stages'][0][0]['conv']['kernel'])
  assert np.any(frozen['stages'][1][0]['conv']['kernel'])
  typo = tiny_config(tiny_data_dir, **{'optimizer.frozen': ('trunk/conv9/.*',)})
  with pytest.raises(ValueError, match=r"optimizer.frozen: 'trunk/conv9/\.\*' matches no"):
    train.create_train_state(typo, 4)


def test_a_step_with_an_image_size_trains_on_the_resized_batch(tiny_data_dir):
  """Progressive resizing's step equals the plain step on images resized beforehand."""
  config = tiny_config(tiny_data_dir)
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(size=(8, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 4, 8).astype(np.int32)}
  small = dict(batch, image=np.asarray(jax.image.resize(batch['image'], (8, 16, 16, 3),
                                                        'linear')))
  mesh = sharding.make_mesh(jax.devices()[:1])
  graphdef, state = train.create_train_state(config, num_classes=4)
  copy = jax.tree.map(jnp.copy, state)  # the steps donate their state
  resized, m_resized = train.make_train_step(graphdef, mesh, image_size=16)(
      sharding.replicate(state, mesh), sharding.shard_batch(batch, mesh))
  plain, m_plain = train.make_train_step(graphdef, mesh)(
      sharding.replicate(copy, mesh), sharding.shard_batch(small, mesh))
  np.testing.assert_allclose(float(m_resized['loss']), float(m_plain['loss']), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               _params(resized), _params(plain))


def test_progressive_resizing_evaluates_only_at_full_size(tiny_data_dir, tmp_path):
  # Steps 1-4 at 16×16, 5-8 at 32×32: of the evaluations every 2 steps, only step 6's runs
  # (8 is the last, evaluated on the test split instead).
  config = tiny_config(tiny_data_dir, eval_every=2, checkpoint_every=100, total_steps=8,
                       progressive_resizing=((16, 4),))
  workdir = str(tmp_path / 'w')
  assert train.train_and_evaluate(config, workdir) is not None
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records if 'cls_top1_error' in r and r['step'] < 8] == [6]


def test_progressive_resizing_sizes_by_step_and_bad_stages_name_the_field():
  config = synthetic_gap.get_config()  # 64×64 images
  config.progressive_resizing = ((32, 100), (48, 250))
  stages = train.progressive_sizes(config)
  assert [train.train_image_size(stages, s, 64) for s in (1, 100, 101, 250, 251, 600)] == [
      32, 32, 48, 48, 64, 64]
  for bad in (((64, 100),), ((32, 100), (48, 100)), ((0, 10),), ((32,),), ((32.0, 10),),
              (32, 100)):
    config.progressive_resizing = bad
    with pytest.raises(ValueError, match='config.progressive_resizing'):
      train.progressive_sizes(config)


def test_label_smoothing_loss_by_hand():
  logits = np.array([[2.0, 0.0, -1.0]], np.float32)
  # Targets (1 - 0.3) one-hot + 0.3 / 3: [0.8, 0.1, 0.1]; loss = -sum t log softmax.
  log_p = logits[0] - np.log(np.exp(logits[0]).sum())
  want = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
  got = train.cross_entropy_loss(jnp.asarray(logits), jnp.array([0]), 0.3)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  np.testing.assert_allclose(float(train.cross_entropy_loss(jnp.asarray(logits), jnp.array([0]))),
                             -log_p[0], rtol=1e-6)


def test_epochs_become_steps():
  config = synthetic_gap.get_config()
  config.batch_size = 64
  config.num_epochs = 8.0
  config.optimizer.decay_every_epochs = 2.0
  # The paper's recipe: 1,281,167 images / 64 = 20,018.2 steps per epoch;
  # 8 epochs -> ceil(160,145.9) = 160,146 steps; decay every round(40,036.5) = 40,036.
  resolved = train.resolve_schedule(config, 1_281_167, num_devices=8)
  assert resolved.total_steps == 160_146 and resolved.optimizer.decay_every == 40_036
  assert config.total_steps == 600  # the original is left alone
  # 16 per device on 8 devices: a global batch of 128, so half as many steps per epoch:
  # 10,009.1 -> 8 epochs ceil(80,072.9) = 80,073; decay every round(20,018.2) = 20,018.
  config.per_device_batch_size = 16
  resolved = train.resolve_schedule(config, 1_281_167, num_devices=8)
  assert resolved.batch_size == 128
  assert resolved.total_steps == 80_073 and resolved.optimizer.decay_every == 20_018


def test_distributed_is_requested_by_config_or_launcher():
  assert not sharding.distributed_requested(False, {})
  assert sharding.distributed_requested(True, {})
  assert sharding.distributed_requested(False, {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'})
  assert sharding.distributed_requested(False, {'SLURM_NTASKS': '16'})
  assert not sharding.distributed_requested(False, {'SLURM_NTASKS': '1'})
  assert sharding.distributed_requested(False, {'TPU_WORKER_HOSTNAMES': 'h0,h1,h2,h3'})
  assert not sharding.distributed_requested(False, {'TPU_WORKER_HOSTNAMES': 'localhost'})


def test_resuming_with_another_batch_size_is_refused_naming_it(tiny_data_dir, tmp_path,
                                                              three_steps):
  config, source = three_steps
  workdir = str(tmp_path / 'w')
  shutil.copytree(source, workdir)
  changed = config.copy_and_resolve_references()
  changed.batch_size = 32
  with pytest.raises(ValueError, match=r'(?s)checkpoints/3 was written by a run with other '
                                       r'settings.*batch_size: 16 in the checkpoint, 32 now'):
    train.train_and_evaluate(changed, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']


def test_a_second_run_on_a_locked_workdir_is_refused(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  with workdir_lock.WorkdirLock(workdir):  # as a live run holds it
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=rf'(?s)run.lock is held by another run.*pid {os.getpid()}'):
      train.train_and_evaluate(tiny_config(tiny_data_dir), workdir)
    assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  assert train.train_and_evaluate(tiny_config(tiny_data_dir, eval_every=0), workdir,
                                  stop_after=1) is None
  assert not os.path.exists(os.path.join(workdir, 'run.lock'))  # released at the end


# ---------------------------------------------------------------------------
# Damaged checkpoints
# ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def six_steps(tiny_data_dir, tmp_path_factory):
  """`(config, workdir)` of a run of 9 steps stopped after step 6: checkpoints 3 and 6."""
  workdir = str(tmp_path_factory.mktemp('six_steps') / 'w')
  config = tiny_config(tiny_data_dir, eval_every=0, total_steps=9)
  assert train.train_and_evaluate(config, workdir, stop_after=6) is None
  return config, workdir


def _truncate_arrays(workdir, step):
  """Empties the OCDBT data files of a checkpoint's `state`, as a full disk or an
  interrupted copy leaves them. (Halving them is not enough: the model's arrays may all
  lie in the first halves, and the model alone restores.)"""
  data = os.path.join(workdir, 'checkpoints', str(step), 'state', 'ocdbt.process_0', 'd')
  for name in os.listdir(data):
    os.truncate(os.path.join(data, name), 0)


def test_damaged_checkpoint_is_one_clear_error_naming_its_folder(six_steps, tmp_path):
  config, source = six_steps
  workdir = str(tmp_path / 'w')
  shutil.copytree(source, workdir)
  _truncate_arrays(workdir, 6)
  folder = os.path.join(workdir, 'checkpoints', '6')
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=rf'checkpoint {folder} cannot be read \(ValueError: [A-Z_]+: '):
    restore.restore_model_at(config, os.path.join(workdir, 'checkpoints'), sharding.make_mesh(),
                           num_classes=4)
  with pytest.raises(checkpoints.DamagedCheckpointError, match=rf'checkpoint {folder} cannot'):
    _restore(config, workdir, step=6)
  # An explicit step (evaluate, localize) is never swapped for another, nor moved.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']


def test_resume_skips_a_damaged_checkpoint_and_moves_it_aside(six_steps, tmp_path, caplog):
  config, source = six_steps
  workdir = str(tmp_path / 'w')
  shutil.copytree(source, workdir)
  _, good = _restore(config, source, step=3)
  _truncate_arrays(workdir, 6)
  step, params = _restore(config, workdir)
  assert step == 3
  jax.tree.map(np.testing.assert_array_equal, params, good)
  folder = os.path.join(workdir, 'checkpoints', '6')
  assert f'Skipping the damaged checkpoint {folder} (ValueError: ' in caplog.text
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6.damaged']
  # The resumed run saves step 6 again (orbax no longer lists the damaged one).
  assert train.train_and_evaluate(config, workdir) is not None
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['6', '6.damaged', '9']


def test_no_restorable_checkpoint_raises_naming_each_and_moves_nothing(six_steps, tmp_path):
  config, source = six_steps
  workdir = str(tmp_path / 'w')
  shutil.copytree(source, workdir)
  _truncate_arrays(workdir, 3)
  _truncate_arrays(workdir, 6)
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=r'(?s)no checkpoint in .*checkpoints can be read: 6 \(.*\); 3 \('):
    _restore(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']


def test_a_tree_that_does_not_fit_is_not_taken_for_damage(six_steps):
  """A restore that fails because the state's tree is another one (here 5 classes against
  the checkpoint's 4, past a meta that agrees) stays 'does not fit', naming an array, and
  nothing moves."""
  config, source = six_steps
  mesh = sharding.make_mesh()
  _, abstract = train.abstract_train_state(config, 5, mesh)
  with checkpoints.checkpoint_manager(source, config) as manager:
    with pytest.raises(ValueError, match=r"checkpoints/6 does not fit the model of this config "
                                         r"\(\d+ array\(s\) of another shape, e.g. '0/head/"):
      checkpoints.restore_checkpoint(manager, abstract, checkpoints.checkpoint_meta(config, 4, 0))
  assert sorted(os.listdir(os.path.join(source, 'checkpoints'))) == ['3', '6']


def test_damaged_checkpoint_leaves_no_asyncio_noise(six_steps, tmp_path):
  """orbax closes its event loop with reads in flight when one fails: the tracebacks that
  followed ("Event loop is closed", "Exception ignored in: <coroutine ...>", hundreds of
  lines) came from TensorStore's threads and from the interpreter's exit, hence a
  subprocess. What is left is one error naming the step folder."""
  config, source = six_steps
  workdir = str(tmp_path / 'w')
  shutil.copytree(source, workdir)
  _truncate_arrays(workdir, 6)
  cmd = [sys.executable, '-m', 'cam_jax.main', '--config=configs/synthetic_gap.py:tiny',
         f'--workdir={workdir}', f'--config.data.data_dir={config.data.data_dir}',
         '--mode=evaluate']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert 'Event loop is closed' not in proc.stderr
  assert 'Exception ignored' not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('E')]
  assert len(errors) == 1 and 'checkpoints/6 cannot be read (ValueError: ' in errors[0], \
      proc.stderr[-3000:]
  assert len(proc.stderr.splitlines()) < 15, proc.stderr
