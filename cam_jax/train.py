"""Training: state, the jitted train step, the loop, checkpoints and metric cadence.

The step is one `jax.jit` over a `data` mesh of every device (DESIGN.md §2): the batch is
split over `data`, parameters and optimizer state are replicated, and the compiler
inserts the gradient all-reduce. BatchNorm statistics are therefore global.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from cam_jax import data as data_lib
from cam_jax import evaluate as evaluate_lib
from cam_jax import io_utils
from cam_jax import models
from cam_jax import sharding
from cam_jax.data import pipeline

TrainState = Any  # nnx.State of (model, optimizer)


def create_model(config: ml_collections.ConfigDict, num_classes: int, seed: int) -> nnx.Module:
  return models.get_model(config.model.name, num_classes=num_classes, rngs=nnx.Rngs(seed),
                          **config.model.get('kwargs', {}))


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


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  opt = config.optimizer
  lr = create_learning_rate_fn(config)
  # Weight decay on kernels only: decaying biases and BatchNorm scales only hurts.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if opt.name == 'adamw':
    return optax.adamw(lr, weight_decay=opt.weight_decay, mask=decay_mask)
  if opt.name == 'sgd':
    return optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
                       optax.sgd(lr, momentum=opt.momentum, nesterov=opt.get('nesterov', False)))
  raise ValueError(f"config.optimizer.name must be 'adamw' or 'sgd', got {opt.name!r}")


def _create_model_and_optimizer(config: ml_collections.ConfigDict,
                                num_classes: int) -> tuple[nnx.Module, nnx.Optimizer]:
  model = create_model(config, num_classes, config.seed)
  return model, nnx.Optimizer(model, create_optimizer(config), wrt=nnx.Param)


def create_train_state(config: ml_collections.ConfigDict,
                       num_classes: int) -> tuple[nnx.GraphDef, TrainState]:
  """`(graphdef, state)` of the model and its optimizer, split for pure jitted steps."""
  return nnx.split(_create_model_and_optimizer(config, num_classes))


def cross_entropy_loss(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(
      logits_BC.astype(jnp.float32), labels_B).mean()


def make_train_step(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh) -> Callable:
  """`step(state, batch) -> (state, metrics)`, jitted over the mesh, state donated."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model):
      logits_BC, _ = model(batch['image'], train=True)
      return cross_entropy_loss(logits_BC, batch['label']), logits_BC

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
# Checkpoints
# ---------------------------------------------------------------------------

def checkpoint_meta(config: ml_collections.ConfigDict, num_classes: int,
                    step: int) -> dict[str, Any]:
  """What a checkpoint must agree on with the config that restores it."""
  return {'step': step, 'model': config.model.name,
          'model_kwargs': config.model.get('kwargs', ml_collections.ConfigDict()).to_dict(),
          'num_classes': num_classes, 'dataset': config.data.name}


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: TrainState,
                    meta: dict[str, Any], data_iterator: grain.DatasetIterator | None = None
                    ) -> None:
  """Saves asynchronously; orbax writes to a temporary folder and renames it when done, so
  a crash never leaves a checkpoint that `latest_step` would trust.

  With `data_iterator`, its state (one small JSON file per process) is saved too, so that
  a resumed run reads the batches an uninterrupted one would have read.
  """
  items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(meta)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items))


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state: TrainState,
                       expected_meta: dict[str, Any], step: int | None = None,
                       data_iterator: grain.DatasetIterator | None = None
                       ) -> tuple[int, TrainState] | None:
  """`(step, state)` of the latest (or given) checkpoint, or None if there is none.

  With `data_iterator`, the input pipeline's saved state is restored into it. Raises
  ValueError if the checkpoint belongs to another model or dataset, before anything is
  overwritten.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  where = os.path.join(str(manager.directory), str(step))
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  expected_meta = json.loads(json.dumps(expected_meta))  # as stored: tuples become lists
  keys = ('model', 'model_kwargs', 'num_classes', 'dataset')
  diffs = {k: (meta.get(k), expected_meta[k]) for k in keys if meta.get(k) != expected_meta[k]}
  if diffs:
    detail = '; '.join(f'{k}: checkpoint has {a!r}, config asks for {b!r}'
                       for k, (a, b) in diffs.items())
    raise ValueError(f'The checkpoint in {where} is of an incompatible model ({detail}). '
                     'Use another --workdir, or the config that wrote it.')
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    if not os.path.isdir(os.path.join(where, 'data')):
      raise ValueError(f'The checkpoint in {where} has no input pipeline state, so the data '
                       'order cannot be resumed. Use another --workdir.')
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'The checkpoint in {where} does not fit the model of this config '
                     f'({type(e).__name__}: {e}). Use another --workdir.') from e
  return step, restored['state']


def abstract_train_state(config: ml_collections.ConfigDict, num_classes: int,
                         mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, TrainState]:
  """`(graphdef, state)` with shapes, dtypes and (replicated) shardings, nothing allocated."""
  graphdef, state = nnx.split(
      nnx.eval_shape(lambda: _create_model_and_optimizer(config, num_classes)))
  repl = sharding.replicated(mesh)
  return graphdef, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)


# ---------------------------------------------------------------------------
# Metrics log
# ---------------------------------------------------------------------------

def append_metrics(workdir: str, record: dict[str, Any]) -> None:
  """One JSON line per record in workdir/metrics.jsonl (process 0 only)."""
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')


def truncate_metrics(workdir: str, step: int) -> None:
  """Drops records past `step`: a resumed run logs those steps again."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if json.loads(line).get('step', 0) <= step]
  if len(kept) != len(lines):
    io_utils.atomic_write_text(path, ''.join(kept))


def _format_eta(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}:{m:02d}:{s:02d}'


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

def _train_loop(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
                manager: ocp.CheckpointManager, graphdef: nnx.GraphDef, state: TrainState,
                batches: grain.DatasetIterator, num_classes: int, start_step: int,
                last_step: int) -> TrainState:
  """Steps `start_step + 1 .. last_step` on `batches` (positioned after `start_step`):
  progress lines, metrics.jsonl, periodic classification evals and checkpoints. Returns
  the state after `last_step`."""
  train_step = make_train_step(graphdef, mesh)
  lr_fn = create_learning_rate_fn(config)

  total = config.total_steps
  logging.info('Training %s on %s: steps %d..%d of %d, global batch %d on %d devices',
               config.model.name, config.data.name, start_step, last_step, total,
               config.batch_size, mesh.devices.size)
  t_start, t_log, step_log = time.time(), time.time(), start_step
  train_metrics = []
  for step in range(start_step + 1, last_step + 1):
    batch = sharding.shard_batch(next(batches), mesh)
    state, metrics = train_step(state, batch)
    train_metrics.append(metrics)

    checkpoint_now = step % config.checkpoint_every == 0 or step == last_step
    # Metrics are read before every checkpoint, so a NaN never reaches one.
    if step % config.log_every == 0 or checkpoint_now:
      summary = {k: float(np.mean([m[k] for m in jax.device_get(train_metrics)]))
                 for k in train_metrics[0]}
      train_metrics = []
      if not np.isfinite(summary['loss']):
        raise FloatingPointError(f'loss is {summary["loss"]} at step {step}; the last good '
                                 f'checkpoint in {manager.directory} is left as it was')
      now = time.time()
      images_per_s = (step - step_log) * config.batch_size / (now - t_log)
      eta = (total - step) * (now - t_start) / (step - start_step)
      t_log, step_log = now, step
      logging.info('step %d/%d  loss %.4f  accuracy %.3f  lr %.2e  %.1f images/s  ETA %s',
                   step, total, summary['loss'], summary['accuracy'], lr_fn(step - 1),
                   images_per_s, _format_eta(eta))
      append_metrics(workdir, {'step': step, 'split': 'train', **summary,
                               'learning_rate': float(lr_fn(step - 1)),
                               'images_per_s': images_per_s,
                               'elapsed_s': now - t_start})

    if config.eval_every and step % config.eval_every == 0 and step != total:
      results = evaluate_lib.evaluate(
          config, nnx.merge(graphdef, state)[0], mesh, localization=False,
          num_examples=config.get('eval_examples_during_training'))
      logging.info('step %d eval: %s', step, evaluate_lib.format_brief(results))
      append_metrics(workdir, {'step': step, 'split': config.data.eval_split, **results})

    if checkpoint_now:
      save_checkpoint(manager, step, state, checkpoint_meta(config, num_classes, step), batches)
  manager.wait_until_finished()
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after: int | None = None) -> dict[str, Any] | None:
  """Trains (resuming from the latest checkpoint in `workdir`), then evaluates.

  `stop_after`: leave after that many steps in total, with a checkpoint, as a preempted
  job would; the next call with the same workdir resumes there. Returns the evaluation
  results, or None when stopped early.
  """
  os.makedirs(workdir, exist_ok=True)
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  mesh = sharding.make_mesh()
  process_batch = sharding.check_batch_size(config.batch_size, mesh)

  # --- Data -------------------------------------------------------------------
  train_source, info = data_lib.load_source(config.data, config.data.train_split)
  num_classes = info.num_classes
  batches = pipeline.train_batches(
      train_source, image_size=config.data.image_size, process_batch_size=process_batch,
      seed=config.seed, crop=config.data.train_crop, flip=config.data.flip,
      num_threads=config.data.num_threads, num_workers=config.data.num_workers)

  # --- State, resumed if the workdir has a checkpoint -------------------------
  graphdef, abstract_state = abstract_train_state(config, num_classes, mesh)
  # Closing the iterator stops its worker processes, whatever ends the loop.
  with checkpoint_manager(workdir, config) as manager, contextlib.closing(batches):
    restored = restore_checkpoint(manager, abstract_state,
                                  checkpoint_meta(config, num_classes, 0),
                                  data_iterator=batches)
    if restored is None:
      start_step = 0
      state = sharding.replicate(create_train_state(config, num_classes)[1], mesh)
    else:
      start_step, state = restored
      logging.info('Resumed from step %d in %s', start_step, workdir)
      truncate_metrics(workdir, start_step)
    total = config.total_steps
    last_step = total if stop_after is None else min(total, stop_after)
    state = _train_loop(config, workdir, mesh, manager, graphdef, state, batches,
                        num_classes, start_step, last_step)

  if last_step < total:
    logging.info('Stopped after step %d of %d; run again with the same workdir to resume.',
                 last_step, total)
    return None

  # --- Evaluate -----------------------------------------------------------------
  model = nnx.merge(graphdef, state)[0]
  return evaluate_lib.evaluate_and_report(config, model, mesh, workdir, step=total)


def restore_model(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
                  num_classes: int) -> tuple[nnx.Module, int]:
  """`(model, step)` from the latest checkpoint in `workdir`; raises if there is none."""
  graphdef, abstract_state = abstract_train_state(config, num_classes, mesh)
  with checkpoint_manager(workdir, config) as manager:
    restored = restore_checkpoint(manager, abstract_state, checkpoint_meta(config, num_classes, 0))
  if restored is None:
    raise FileNotFoundError(f'No checkpoint in {os.path.join(workdir, "checkpoints")}: '
                            'train first (--mode=train_and_evaluate).')
  step, state = restored
  return nnx.merge(graphdef, state)[0], step


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`--mode=evaluate`: the latest checkpoint in `workdir`, evaluated and reported."""
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  mesh = sharding.make_mesh()
  _, info = data_lib.load_source(config.data, config.data.eval_split)
  model, step = restore_model(config, workdir, mesh, info.num_classes)
  return evaluate_lib.evaluate_and_report(config, model, mesh, workdir, step=step)
