"""Several processes for real: `python -m cam_jax.main` as 2 processes × 2 CPU devices,
joined by jax.distributed over localhost (tests/multiprocess.py), against 1 process × 4
devices: the same global batch, the same losses and parameters, the same evaluation;
preemption of one process; checkpoints across process counts; evaluate and localize.

The runs are shared by the tests of this module (a few seconds of training each).
"""

import json
import os
import signal

import jax
import numpy as np
import pytest
from PIL import Image

from cam_jax import checkpoints, sharding, train
from configs import synthetic_gap
from tests import multiprocess
from tests import sum_worker

STEPS = 40
# Every step logged (losses to compare), two evaluations of the selection split, two
# checkpoints; the tiny model on 32×32 images, global batch 16. SGD, the paper's
# optimizer: AdamW divides each update by the gradient's RMS, which magnifies the
# rounding of the all-reduce for parameters whose gradients are near zero.
RUN = ['--config=configs/synthetic_gap.py:tiny', f'--config.total_steps={STEPS}',
       '--config.log_every=1', '--config.eval_every=20', '--config.checkpoint_every=20',
       '--config.eval.num_pictures=2', '--config.optimizer.name=sgd',
       '--config.optimizer.learning_rate=0.01']


def _args(data_dir, workdir, *extra):
  return [*RUN, f'--config.data.data_dir={data_dir}', f'--workdir={workdir}', *extra]


def _config(data_dir):
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = data_dir
  config.total_steps = STEPS
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.01
  return config


def _restore(config, workdir):
  """`(step, numpy state)` of the latest checkpoint, restored in this process (8 fake
  devices, whatever wrote it)."""
  mesh = sharding.make_mesh()
  _, abstract = train.abstract_train_state(config, 4, mesh)
  with checkpoints.checkpoint_manager(workdir, config) as manager:
    step, state = checkpoints.restore_checkpoint(manager, abstract,
                                                 checkpoints.checkpoint_meta(config, 4, 0))
  return step, jax.tree.map(np.asarray, state)


def _assert_same_training(state, want):
  """The model (parameters and BatchNorm statistics) to 1e-5; the optimizer's momentum
  more loosely: a sum of recent gradients, which the all-reduce's rounding moves by up to
  1e-3 of its scale over 40 steps, while the parameters stay within 1e-6."""
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state[0], want[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, atol=1e-2 * max(np.abs(b).max(), 1e-3)), state[1], want[1])


def _train_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return np.array([r['loss'] for r in records if r['split'] == 'train'])


def _eval_json(workdir):
  with open(os.path.join(workdir, 'eval.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('mp_tfds'))


# The two trainings compared below run XLA's own convolution and pooling gradients:
# cam_jax.models.cpu_ops sums kernel gradients in another order on each device's rows,
# and 40 SGD steps amplify that rounding past these tolerances (one process on 1 and on
# 4 devices drifts as far, 7e-4, either way). cpu_ops has its own gradient tests.
_PLAIN_OPS = {'CAM_JAX_CPU_OPS': '0'}


@pytest.fixture(scope='module')
def two_processes(data_dir, tmp_path_factory):
  """2 processes × 2 devices train and evaluate, the README's by-hand recipe; first on an
  unprepared data dir, so that the processes must prepare cam_synth once between them."""
  workdir = str(tmp_path_factory.mktemp('two') / 'w')
  results = multiprocess.run(_args(data_dir, workdir), num_processes=2,
                             devices_per_process=2, log_dir=workdir + '.logs',
                             extra_env=_PLAIN_OPS)
  return workdir, results


@pytest.fixture(scope='module')
def one_process(data_dir, two_processes, tmp_path_factory):
  """The same job as 1 process × 4 devices (the same global batch)."""
  workdir = str(tmp_path_factory.mktemp('one') / 'w')
  multiprocess.run(_args(data_dir, workdir), num_processes=1, devices_per_process=4,
                   log_dir=workdir + '.logs', extra_env=_PLAIN_OPS)
  return workdir


def test_two_processes_prepare_the_dataset_once(two_processes):
  _, results = two_processes
  prepared = ['Downloading and preparing dataset' in r.log for r in results]
  assert prepared == [True, False]  # process 0 prepared, process 1 waited at the barrier
  assert all('(2 processes)' in r.log for r in results)


def test_two_processes_train_as_one_with_the_same_global_batch(data_dir, two_processes,
                                                               one_process):
  """Same data order (global batch k depends on k alone), same initial state: the losses
  of all 40 steps and the final parameters agree to 1e-5 (the gradient all-reduce adds in
  another order across processes)."""
  two, _ = two_processes
  losses_2, losses_1 = _train_losses(two), _train_losses(one_process)
  assert len(losses_1) == STEPS
  np.testing.assert_allclose(losses_2, losses_1, rtol=1e-5)
  config = _config(data_dir)
  step_2, state_2 = _restore(config, two)
  step_1, state_1 = _restore(config, one_process)
  assert step_2 == step_1 == STEPS
  _assert_same_training(state_2, state_1)
  # 40 updates moved the parameters well beyond that tolerance.
  initial = jax.tree.map(np.asarray, train.create_train_state(config, 4)[1])
  kernel = lambda state: state[0]['head']['kernel']  # pylint: disable=unnecessary-lambda-assignment
  assert np.abs(kernel(state_1) - kernel(initial)).max() > 1e-2
  # The same evaluation, to rounding: every count but a pixel or two of PxAP's bins,
  # where a map value moved by 1e-7 crosses a threshold.
  got, want = _eval_json(two), _eval_json(one_process)
  assert got.keys() == want.keys()
  for key, value in want.items():
    assert got[key] == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value)
  # best/ was chosen on the validation split in both.
  for workdir in (two, one_process):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      assert {json.loads(line)['split'] for line in f} == {'train', 'validation'}
    assert _eval_json(workdir)['split'] == 'test'


def test_evaluation_in_two_processes_equals_one_process(data_dir, one_process, tmp_path):
  """The 1-process run's checkpoint, restored and evaluated by 2 processes launched as
  SLURM's srun launches them (JAX detects the cluster): exactly the eval.json of the
  1-process run, count for count."""
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  os.symlink(os.path.join(one_process, 'checkpoints'), os.path.join(workdir, 'checkpoints'))
  multiprocess.run(_args(data_dir, workdir, '--mode=evaluate', '--config.eval.baselines=()'),
                   num_processes=2, devices_per_process=2, launcher='slurm',
                   log_dir=str(tmp_path / 'logs'))
  got, want = _eval_json(workdir), _eval_json(one_process)
  assert got == want
  assert want['num_images'] == 64
  for key in ('cls_top1_error', 'gt_known_mean_iou', 'max_box_acc_v2', 'pxap'):
    assert 0 < want[key] < 1, key  # not a trivial table
  assert os.path.exists(os.path.join(workdir, 'figures', 'boxes.png'))


def test_sigterm_to_one_of_two_processes_saves_the_same_step_in_both(data_dir, two_processes,
                                                                    tmp_path):
  """SIGTERM to process 1 only: JAX's preemption sync point makes both save the same step
  and exit 0; the same command resumes and ends bit for bit where the uninterrupted
  2-process run ended (same batches, same computation)."""
  workdir = str(tmp_path / 'w')
  args = _args(data_dir, workdir, '--config.figures.enabled=False')  # eval.json is the same
  job = multiprocess.launch(args, num_processes=2, devices_per_process=2,
                            log_dir=str(tmp_path / 'logs'), extra_env=_PLAIN_OPS)
  job.wait_for(1, f'step 3/{STEPS}', timeout=240)
  job.signal(1, signal.SIGTERM)
  results = job.wait(timeout=240)
  multiprocess.check(results)
  saved = []
  for r in results:
    lines = [line for line in r.log.splitlines() if 'SIGTERM: saved a checkpoint at step' in line]
    assert len(lines) == 1, r.log[-3000:]
    saved.append(int(lines[0].split('at step ')[1].split()[0]))
  assert saved[0] == saved[1] and 3 < saved[0] < STEPS
  assert str(saved[0]) in os.listdir(os.path.join(workdir, 'checkpoints'))
  assert not os.path.exists(os.path.join(workdir, 'eval.json'))  # it did not go on

  resumed = multiprocess.run(args, num_processes=2, devices_per_process=2,
                             log_dir=str(tmp_path / 'logs_resumed'), extra_env=_PLAIN_OPS)
  assert all(f'Resumed from step {saved[0]}' in r.log for r in resumed)
  config = _config(data_dir)
  _, state = _restore(config, workdir)
  _, want = _restore(config, two_processes[0])
  jax.tree.map(np.testing.assert_array_equal, state, want)
  np.testing.assert_array_equal(_train_losses(workdir), _train_losses(two_processes[0]))
  assert _eval_json(workdir) == _eval_json(two_processes[0])


def test_a_checkpoint_of_two_processes_evaluates_in_one(data_dir, two_processes, tmp_path):
  """The reverse of the test above: 2 processes wrote it, 1 process × 4 devices restores
  it and gets exactly the eval.json the 2 processes wrote."""
  two, _ = two_processes
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  os.symlink(os.path.join(two, 'checkpoints'), os.path.join(workdir, 'checkpoints'))
  multiprocess.run(_args(data_dir, workdir, '--mode=evaluate', '--config.eval.baselines=()',
                         '--config.figures.enabled=False'),
                   num_processes=1, devices_per_process=4, log_dir=str(tmp_path / 'logs'))
  assert _eval_json(workdir) == _eval_json(two)


def test_localize_in_two_processes(data_dir, one_process, tmp_path):
  """Each process reads and draws every other file; process 0 writes predictions.jsonl
  in file order; every process exits 3 as one file was skipped."""
  folder = tmp_path / 'images'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(5):
    Image.fromarray(rng.integers(0, 256, (30 + 4 * i, 40, 3), dtype=np.uint8)).save(
        folder / f'im{i}.png')
  (folder / 'broken.png').write_bytes(b'not a png')
  out = tmp_path / 'out'
  results = multiprocess.launch(
      _args(data_dir, one_process, '--mode=localize', f'--images={folder}',
            f'--output_dir={out}'),
      num_processes=2, devices_per_process=2, log_dir=str(tmp_path / 'logs')).wait(240)
  multiprocess.check(results, returncode=3)
  with open(out / 'predictions.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [os.path.basename(r['file']) for r in records] == [f'im{i}.png' for i in range(5)]
  assert [r['height'] for r in records] == [30 + 4 * i for i in range(5)]
  assert sorted(os.listdir(out)) == sorted(
      [f'im{i}.{kind}.png' for i in range(5) for kind in ('overlay', 'top5')]
      + ['predictions.jsonl'])  # no part file left behind
  assert 'broken.png' in results[0].log


def test_counts_are_summed_exactly_above_32_bits(tmp_path):
  """sum_across_processes in 2 real processes with jax_enable_x64 off (where a gather
  would carry int64 as int32): counters above 2**31, 2**32 and near 2**62 add up exactly."""
  multiprocess.run([str(tmp_path)], module='tests.sum_worker', num_processes=2,
                   devices_per_process=1, log_dir=str(tmp_path / 'logs'), timeout=120)
  want = {key: sum(np.asarray(sum_worker.contribution(i)[key], object) for i in range(2))
          for key in ('scalar', 'array', 'small')}
  for index in range(2):
    with open(tmp_path / f'sums_{index}.json') as f:
      got = json.load(f)
    assert got['process_count'] == 2 and got['scalar_type'] == 'int'
    assert got['scalar'] == want['scalar'] == 6 * 2**31 + 1
    assert got['array'] == list(want['array'])
    assert got['array'][2] == 2**63 - 3
    assert got['small'] == 3
