"""Training: state, the jitted train step, the loop, checkpoints and metric cadence.

The step is one `jax.jit` over a `data` mesh of every device of every process: the batch
is split over `data`, parameters and optimizer state are replicated, and the compiler
inserts the gradient all-reduce. BatchNorm statistics are therefore global.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import signal
import threading
import time
from typing import Any, Callable, Iterator

import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from cam_jax import checkpoints
from cam_jax import data as data_lib
from cam_jax import evaluate as evaluate_lib
from cam_jax import evaluators
from cam_jax import figures
from cam_jax import metric_writers
from cam_jax import models
from cam_jax import restore
from cam_jax import sharding
from cam_jax import workdir_lock
from cam_jax.data import conventions
from cam_jax.data import pipeline
from cam_jax.pretrained import weights as pretrained_weights

TrainState = Any  # nnx.State of (model, optimizer)


# ---------------------------------------------------------------------------
# Model, optimizer, state
# ---------------------------------------------------------------------------

def resolve_schedule(config: ml_collections.ConfigDict, num_train_examples: int,
                     num_devices: int) -> ml_collections.ConfigDict:
  """A copy of `config` with the relative settings made absolute, where set:
  `per_device_batch_size` × devices -> `batch_size` (global); `num_epochs` and
  `optimizer.decay_every_epochs` -> `total_steps` and `optimizer.decay_every` for this
  split and global batch."""
  per_device = config.get('per_device_batch_size')
  epochs, decay_epochs = config.get('num_epochs'), config.optimizer.get('decay_every_epochs')
  if per_device is None and epochs is None and decay_epochs is None:
    return config
  config = config.copy_and_resolve_references()
  if per_device is not None:
    config.batch_size = per_device * num_devices
  steps_per_epoch = num_train_examples / config.batch_size
  if epochs is not None:
    config.total_steps = max(1, math.ceil(epochs * steps_per_epoch))
  if decay_epochs is not None:
    config.optimizer.decay_every = max(1, round(decay_epochs * steps_per_epoch))
  logging.info('%d training images at global batch %d: %.1f steps per epoch; total_steps %d, '
               'decay_every %d', num_train_examples, config.batch_size, steps_per_epoch,
               config.total_steps, config.optimizer.decay_every)
  return config


def create_learning_rate_fn(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up, then cosine decay to 0 or the paper's steps (×0.1 every N steps)."""
  opt = config.optimizer
  warmup = optax.linear_schedule(0.0, opt.learning_rate, max(opt.warmup_steps, 1))
  rest = config.total_steps - opt.warmup_steps
  if opt.schedule == 'cosine':
    main = optax.cosine_decay_schedule(opt.learning_rate, max(rest, 1))
  elif opt.schedule == 'step':
    main = optax.exponential_decay(opt.learning_rate, opt.decay_every, 0.1, staircase=True)
  elif opt.schedule == 'constant':
    main = optax.constant_schedule(opt.learning_rate)
  else:
    raise ValueError(f"config.optimizer.schedule must be 'cosine', 'step' or 'constant', "
                     f'got {opt.schedule!r}')
  return optax.join_schedules([warmup, main], [opt.warmup_steps])


def param_labels(config: ml_collections.ConfigDict, params: Any) -> Any:
  """'frozen', 'new' or 'base' for every parameter, by its path ('trunk/conv1/conv/kernel')
  matched against the regexes of `optimizer.frozen` and `optimizer.new_layers`.

  Raises if a regex matches no parameter: a typo must not silently train everything.
  """
  opt = config.optimizer
  names = []
  jax.tree_util.tree_map_with_path(lambda p, _: names.append(checkpoints.param_path(p)), params)
  checked = ('frozen', 'new_layers') if opt.get('new_layers_lr_multiplier', 1.0) != 1.0 else (
      'frozen',)
  for field in checked:
    for pattern in opt.get(field, ()):
      if not any(re.fullmatch(pattern, n) for n in names):
        raise ValueError(f'config.optimizer.{field}: {pattern!r} matches no parameter; '
                         f'parameters are named like {", ".join(names[:4])}, ...')

  def label(path, _):
    name = checkpoints.param_path(path)
    if any(re.fullmatch(p, name) for p in opt.get('frozen', ())):
      return 'frozen'
    if any(re.fullmatch(p, name) for p in opt.get('new_layers', ())):
      return 'new'
    return 'base'

  return jax.tree_util.tree_map_with_path(label, params)


def _base_optimizer(config: ml_collections.ConfigDict,
                    lr: optax.Schedule) -> optax.GradientTransformation:
  opt = config.optimizer
  # Weight decay on kernels only: decaying biases and BatchNorm scales only hurts.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if opt.name == 'adamw':
    return optax.adamw(lr, weight_decay=opt.weight_decay, mask=decay_mask)
  if opt.name == 'sgd':
    return optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
                       optax.sgd(lr, momentum=opt.momentum, nesterov=opt.get('nesterov', False)))
  raise ValueError(f"config.optimizer.name must be 'adamw' or 'sgd', got {opt.name!r}")


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD or AdamW on the schedule; with `optimizer.frozen` and a new-layer learning-rate
  multiplier, one transform per group of parameters (fine-tuning practice: the layers the
  paper adds learn `new_layers_lr_multiplier` times faster than the pretrained ones)."""
  opt = config.optimizer
  lr = create_learning_rate_fn(config)
  multiplier = opt.get('new_layers_lr_multiplier', 1.0)
  if not opt.get('frozen') and multiplier == 1.0:
    return _base_optimizer(config, lr)
  return optax.multi_transform(
      {'base': _base_optimizer(config, lr),
       'new': _base_optimizer(config, lambda step: lr(step) * multiplier),
       'frozen': optax.set_to_zero()},
      functools.partial(param_labels, config))


def _create_model_and_optimizer(config: ml_collections.ConfigDict,
                                num_classes: int) -> tuple[nnx.Module, nnx.Optimizer]:
  model = restore.create_model(config, num_classes, config.seed)
  return model, nnx.Optimizer(model, create_optimizer(config), wrt=nnx.Param)


def create_train_state(config: ml_collections.ConfigDict, num_classes: int,
                       pretrained: tuple[Any, Any] | None = None
                       ) -> tuple[nnx.GraphDef, TrainState]:
  """`(graphdef, state)` of the model and its optimizer, split for pure jitted steps.

  With `config.init_from.workdir`, the model's parameters come from that run's checkpoint;
  with `config.init_from.pretrained`, from that torchvision or Caffe file (`pretrained`:
  its `(WeightsFile, Source)` if `starting_weights` already read it); either way except
  those matching `config.init_from.reinit` (default: the head).
  """
  model, optimizer = _create_model_and_optimizer(config, num_classes)
  init = config.get('init_from') or {}
  reinit = tuple(init.get('reinit', ()))
  if init.get('workdir'):
    checkpoints.load_params_from(model, init.workdir, init.get('step'), reinit)
  elif init.get('pretrained'):
    weights, source = pretrained or _read_pretrained(config)
    converted = pretrained_weights.convert(model, config.model.name, weights, source,
                                           reinit=reinit)
    pretrained_weights.load_into(model, converted)
    logging.info('Initialised from %s', converted.summary())
  return nnx.split((model, optimizer))


def _read_pretrained(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """`(WeightsFile, Source)` of `config.init_from.pretrained` for the config's network."""
  init = config.init_from
  weights = pretrained_weights.read(init.pretrained, init.get('pretrained_format'))
  variant = config.model.get('kwargs', {}).get('variant') or (
      pretrained_weights.default_variant(config.model.name))
  return weights, pretrained_weights.choose_source(config.model.name, weights, variant)


def starting_weights(config: ml_collections.ConfigDict
                     ) -> tuple[ml_collections.ConfigDict, tuple[Any, Any] | None]:
  """`(config, pretrained)`: the config with the input convention of the weights the run
  starts from resolved into `data.input` (cam_jax.data.conventions.resolve: an error if
  the config contradicts it), and the pretrained file read, if any."""
  init = config.get('init_from') or {}
  if init.get('workdir') and init.get('pretrained'):
    raise ValueError('config.init_from: set workdir or pretrained, not both')
  if init.get('pretrained'):
    weights, source = _read_pretrained(config)
    convention = conventions.preset(source.convention, source.image_size)
    where = f'config.init_from.pretrained={init.pretrained} ({source.description})'
    return conventions.resolve(config, convention, where), (weights, source)
  if init.get('workdir'):
    meta, where = checkpoints.read_meta_at(init.workdir, init.get('step'))
    return conventions.resolve(config, checkpoints.input_convention(meta), where), None
  return conventions.resolve(config, None, ''), None


def abstract_train_state(config: ml_collections.ConfigDict, num_classes: int,
                         mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, TrainState]:
  """`(graphdef, state)` with shapes, dtypes and (replicated) shardings, nothing allocated."""
  return restore.abstract(lambda: _create_model_and_optimizer(config, num_classes), mesh)


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------

def cross_entropy_loss(logits_BC: jax.Array, labels_B: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy, in float32 whatever the compute dtype; with label
  smoothing, the target puts `label_smoothing` of its mass uniformly on all classes."""
  logits_BC = logits_BC.astype(jnp.float32)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BC, labels_B).mean()
  targets_BC = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BC.shape[-1]),
                                   label_smoothing)
  return optax.softmax_cross_entropy(logits_BC, targets_BC).mean()


def progressive_sizes(config: ml_collections.ConfigDict) -> tuple[tuple[int, int], ...]:
  """`config.progressive_resizing` checked: `((size, last_step), ...)`, the train images
  resized to `size`×`size` up to and including `last_step`, sizes below
  `data.image_size` and last steps increasing; after the last entry, full size."""
  stages = tuple(config.get('progressive_resizing', ()) or ())
  full = config.data.image_size
  previous = 0
  for stage in stages:
    if (not isinstance(stage, (tuple, list)) or len(stage) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in stage)
        or not 0 < stage[0] < full or stage[1] <= previous):
      raise ValueError(
          f'config.progressive_resizing must be ((size, last_step), ...) with sizes in '
          f'(0, data.image_size={full}) and last steps increasing from 1; got {stages}')
    previous = stage[1]
  return tuple(tuple(stage) for stage in stages)


def train_image_size(stages: tuple[tuple[int, int], ...], step: int, full: int) -> int:
  """The side of the train images at `step` (1-based) under `progressive_sizes`."""
  return next((size for size, last in stages if step <= last), full)


def make_train_step(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, *,
                    label_smoothing: float = 0.0, image_size: int | None = None) -> Callable:
  """`step(state, batch) -> (state, metrics)`, jitted over the mesh, state donated.

  With `image_size`, the batch's images are first resized to `image_size`×`image_size`
  on the device (bilinear, antialiased when shrinking): progressive resizing's cheap early
  steps (`config.progressive_resizing`).
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    model, optimizer = nnx.merge(graphdef, state)
    images_BHWC = batch['image']
    if image_size is not None and images_BHWC.shape[1:3] != (image_size, image_size):
      images_BHWC = jax.image.resize(
          images_BHWC, (images_BHWC.shape[0], image_size, image_size, images_BHWC.shape[3]),
          'linear').astype(images_BHWC.dtype)

    def loss_fn(model):
      logits_BC, _ = model(images_BHWC, train=True)
      return cross_entropy_loss(logits_BC, batch['label'], label_smoothing), logits_BC

    (loss, logits_BC), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    metrics = {'loss': loss,
               'accuracy': jnp.mean(jnp.argmax(logits_BC, -1) == batch['label']),
               'grad_norm': optax.tree.norm(grads)}
    return nnx.state((model, optimizer)), metrics

  repl = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(repl, sharding.batch_sharding(mesh)),
                 out_shardings=(repl, repl), donate_argnums=0)


# ---------------------------------------------------------------------------
# Preemption
# ---------------------------------------------------------------------------

class Preemption:
  """Notes a SIGTERM (what Kubernetes, SLURM and Cloud TPU send before they stop a job);
  the loop then saves a checkpoint at the step `requested(step)` first says True and
  leaves cleanly.

  One process: a signal handler sets a flag, read at the end of each step. Several
  processes must all save the same step, even if only one got the signal: JAX's
  preemption sync point does that (`multihost_utils.reached_preemption_sync_point`). The
  coordination service's own SIGTERM handler tells every process, and they agree on a
  step a little ahead of all of them; asking costs no collective, so the steps stay
  queued on the devices. Where JAX's preemption service is off
  (`jax_enable_preemption_service`), every step all-gathers the flag instead.
  """

  def __init__(self):
    self.flag = False
    self._previous = None
    self._sync_point = False
    self._all_gather = False

  def __enter__(self) -> 'Preemption':
    if jax.process_count() > 1:
      try:
        multihost_utils.reached_preemption_sync_point(0)
        self._sync_point = True
        return self  # JAX's handler catches SIGTERM: ours would replace it.
      except RuntimeError as e:
        logging.warning('JAX preemption service unavailable (%s): checking for SIGTERM with '
                        'an all-gather every step.', e)
        self._all_gather = True
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.flag = True

  def requested(self, step: int) -> bool:
    """Whether to save at `step` and stop; called once at the end of every step."""
    if self._sync_point:
      return multihost_utils.reached_preemption_sync_point(step)
    if self._all_gather:
      return bool(sharding.sum_across_processes({'flag': int(self.flag)})['flag'])
    return self.flag


def _format_eta(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}:{m:02d}:{s:02d}'


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

def selection_split(config: ml_collections.ConfigDict) -> str:
  """The split the evaluations during training run on, and best/ is chosen on."""
  return config.data.get('select_split') or config.data.eval_split


def _all_finite(state: TrainState) -> bool:
  """Whether every float of the train state (parameters, optimizer state) is finite."""
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return bool(_finite_fn(leaves))


@jax.jit
def _finite_fn(leaves: list[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _train_loop(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                manager: ocp.CheckpointManager, writer: metric_writers.MetricWriter,
                best: checkpoints.BestCheckpoint | None, preemption: Preemption,
                graphdef: nnx.GraphDef, state: TrainState, batches: grain.DatasetIterator,
                info: data_lib.SourceInfo, start_step: int, last_step: int
                ) -> tuple[TrainState, int]:
  """Steps `start_step + 1 .. last_step` on `batches` (positioned after `start_step`):
  progress lines, metrics, periodic evaluations of `config.data.select_split` (which
  choose best/), checkpoints. Returns the state and the last step run (earlier than
  `last_step` when preempted)."""
  stages = progressive_sizes(config)
  full_size = config.data.image_size
  # One compiled step per train image size (progressive resizing), made when first used.
  steps_by_size = {}

  def train_step_at(step: int) -> Callable:
    size = train_image_size(stages, step, full_size)
    if size not in steps_by_size:
      steps_by_size[size] = make_train_step(
          graphdef, mesh, label_smoothing=config.get('label_smoothing', 0.0),
          image_size=size)
    return steps_by_size[size]

  lr_fn = create_learning_rate_fn(config)
  select_split = selection_split(config)

  total = config.total_steps
  logging.info('Training %s on %s: steps %d..%d of %d, global batch %d on %d devices '
               '(%d processes), compute dtype %s', config.model.name, config.data.name,
               start_step, last_step, total, config.batch_size, mesh.devices.size,
               jax.process_count(), restore.compute_dtype(config).name)
  t_start, t_log, step_log = time.time(), time.time(), start_step
  train_metrics = []
  step = start_step
  for step in range(start_step + 1, last_step + 1):
    batch = sharding.shard_batch(next(batches), mesh)
    state, metrics = train_step_at(step)(state, batch)
    train_metrics.append(metrics)

    preempted = preemption.requested(step)
    checkpoint_now = step % config.checkpoint_every == 0 or step == last_step or preempted
    # Not while training below full size (progressive resizing): the full-size evaluation
    # of a network in the middle of learning smaller images would choose nothing.
    eval_now = bool(config.eval_every) and step % config.eval_every == 0 and step != total \
        and not preempted and train_image_size(stages, step, full_size) == full_size
    # Metrics are read before every evaluation and checkpoint, and the state is checked,
    # so that a NaN never reaches a saved checkpoint, best/ included.
    if step % config.log_every == 0 or checkpoint_now or eval_now:
      fetched = jax.device_get(train_metrics)
      summary = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      train_metrics = []
      if not all(np.isfinite(v) for v in summary.values()):
        raise FloatingPointError(
            f'non-finite training metrics at step {step} ({summary}); stopped before any '
            f'checkpoint held them: the last good one in {manager.directory} is intact. '
            'Lower the learning rate, or check the input data.')
      now = time.time()
      images_per_s = (step - step_log) * config.batch_size / (now - t_log)
      eta = (total - step) * (now - t_start) / (step - start_step)
      t_log, step_log = now, step
      logging.info('step %d/%d  loss %.4f  accuracy %.3f  lr %.2e  %.1f images/s  ETA %s',
                   step, total, summary['loss'], summary['accuracy'], lr_fn(step - 1),
                   images_per_s, _format_eta(eta))
      writer.write({'step': step, 'split': 'train', **summary,
                    'learning_rate': float(lr_fn(step - 1)), 'images_per_s': images_per_s,
                    'elapsed_s': now - t_start})
    if checkpoint_now or eval_now:
      if not _all_finite(state):
        # The step's metrics come from before its update: a finite loss and gradient with
        # a NaN learning rate still poison the parameters.
        raise FloatingPointError(
            f'non-finite parameters or optimizer state after step {step}; stopped before any '
            f'checkpoint held them: the last good one in {manager.directory} is intact. '
            'Check the learning rate schedule.')
      meta = checkpoints.checkpoint_meta(config, info.num_classes, step, info.class_names)

    if eval_now:
      model = nnx.merge(graphdef, state)[0]
      results = evaluate_lib.evaluate(
          config, model, mesh, localization=True,
          num_examples=config.get('eval_examples_during_training'), split=select_split)
      results.pop('pictures', None)
      # The config's evaluators marked during_training=True, on the same images.
      results.update(evaluators.scalars(evaluators.run_evaluators(
          config, model, mesh, during_training=True, split=select_split,
          num_examples=config.get('eval_examples_during_training'))))
      logging.info('step %d eval of %s: %s', step, select_split,
                   evaluate_lib.format_brief(results))
      # Per-class lists and curves stay in eval.json; the log keeps numbers and names.
      writer.write({'step': step, **{k: v for k, v in results.items()
                                     if not isinstance(v, (list, tuple))}})
      if best is not None and best.update(step, state, meta, results):
        logging.info('step %d: best %s so far (%.4f), saved in %s', step, best.metric,
                     best.value, best.manager.directory)

    if checkpoint_now:
      checkpoints.save_checkpoint(manager, step, state, meta)
    if preempted:
      logging.warning('SIGTERM: saved a checkpoint at step %d in %s; run the same command to '
                      'resume.', step, manager.directory)
      break
  manager.wait_until_finished()
  return state, step


@contextlib.contextmanager
def _workdir_lock(workdir: str) -> Iterator[None]:
  """Process 0 holds the workdir's lock for the run (`cam_jax.workdir_lock`); if it cannot
  get it, every process raises, so that none of them starts."""
  lock = workdir_lock.WorkdirLock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except workdir_lock.WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    refused = sharding.sum_across_processes({'refused': int(error is not None)})['refused']
    if refused and error is None:
      raise workdir_lock.WorkdirLockedError(
          f'process 0 could not lock {lock.path}: another run holds it (process 0 names it)')
  if error is not None:
    raise error
  try:
    yield
  finally:
    lock.release()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after: int | None = None) -> dict[str, Any] | None:
  """Trains (resuming from the latest checkpoint in `workdir`), then evaluates.

  `stop_after`: leave after that many steps in total, with a checkpoint, as a preempted
  job would; the next call with the same workdir resumes there. A SIGTERM does the same
  at the end of the current step. Returns the evaluation results, or None when stopped
  early. Refuses to start while another run holds the workdir (`run.lock`).
  """
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  with _workdir_lock(workdir):
    return _train_and_evaluate(config, workdir, mesh, stop_after)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        mesh: jax.sharding.Mesh, stop_after: int | None
                        ) -> dict[str, Any] | None:
  # --- Data -------------------------------------------------------------------
  config, pretrained = starting_weights(config)
  train_source, info = data_lib.load_train_source(config.data)
  num_classes = info.num_classes
  config = resolve_schedule(config, len(train_source), mesh.devices.size)
  sharding.check_batch_size(config.batch_size, mesh)
  if config.eval_every and selection_split(config) == config.data.eval_split:
    logging.warning('config.data.select_split is the reported split (%r): best/ is chosen '
                    'on the images that report the result.', config.data.eval_split)

  # --- State, resumed if the workdir has a checkpoint -------------------------
  graphdef, abstract_state = abstract_train_state(config, num_classes, mesh)
  writer = metric_writers.MetricWriter(workdir, tensorboard=config.get('tensorboard', True))
  best = (checkpoints.BestCheckpoint(workdir, config)
          if config.get('best_metric') and config.eval_every else None)
  with checkpoints.checkpoint_manager(workdir, config) as manager, \
      contextlib.closing(writer), Preemption() as preemption:
    restored = checkpoints.restore_checkpoint(
        manager, abstract_state, checkpoints.checkpoint_meta(config, num_classes, 0))
    if restored is None:
      start_step = 0
      state = sharding.replicate(create_train_state(config, num_classes, pretrained)[1], mesh)
    else:
      start_step, state = restored
      logging.info('Resumed from step %d in %s', start_step, workdir)
      writer.truncate(start_step)
    total = config.total_steps
    last_step = total if stop_after is None else min(total, stop_after)
    # The batches after start_step: global batch k depends on k alone.
    batches = pipeline.train_batches(
        train_source, image_size=config.data.image_size, global_batch_size=config.batch_size,
        seed=config.seed, start_step=start_step, crop=config.data.train_crop,
        flip=config.data.flip, convention=conventions.from_config(config.data),
        num_threads=config.data.num_threads,
        num_workers=config.data.num_workers)
    # Closing the iterator stops its worker processes, whatever ends the loop.
    try:
      with contextlib.closing(batches):
        state, last_step = _train_loop(config, mesh, manager, writer, best, preemption,
                                       graphdef, state, batches, info, start_step,
                                       last_step)
    finally:
      if best is not None:
        best.close()

  if last_step < total:
    logging.info('Stopped after step %d of %d; run again with the same workdir to resume.',
                 last_step, total)
    return None

  # --- Evaluate -----------------------------------------------------------------
  model = nnx.merge(graphdef, state)[0]
  results = evaluators.evaluate_and_report(config, model, mesh, workdir, step=total)
  figures.write_evaluation_figures(config, model, mesh, workdir)
  return results
