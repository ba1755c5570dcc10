"""orbax checkpoints of the train state: save, resume, the best one, and initialisation
from another run's weights.

Layout of a workdir:
  checkpoints/<step>/  the last `config.keep_checkpoints` saves: `state` (model and
                       optimizer, replicated arrays) and `meta` (JSON: what the checkpoint
                       must agree on with the config that restores it, and the run
                       settings a resume must keep). The input pipeline's position is the
                       step itself, so a checkpoint holds no iterator state and restores
                       in any number of processes.
  best/<step>/         the save with the best `config.best_metric` so far (state + meta,
                       the metric's value in meta).
orbax writes each save to a temporary folder and renames it when complete, so a crash
never leaves a checkpoint that a later run would trust. Arrays are saved replicated and
restored onto whatever mesh the restoring run has: a checkpoint written on 8 devices
restores on 1, and the other way round.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

TrainState = Any  # nnx.State of (model, optimizer)
_COMPATIBLE_KEYS = ('model', 'model_kwargs', 'num_classes', 'dataset')

# What an exact resume depends on, by config field: the batches it reads (global batch k is
# a function of these and k alone) and the update of every step.
RESUME_FIELDS = ('batch_size', 'seed', 'data.name', 'data.builder_config', 'data.train_split',
                 'data.holdout', 'data.image_size', 'data.train_crop', 'data.flip',
                 'total_steps', 'optimizer.name', 'optimizer.learning_rate',
                 'optimizer.schedule', 'optimizer.warmup_steps', 'optimizer.decay_every',
                 'optimizer.momentum', 'optimizer.nesterov', 'optimizer.weight_decay',
                 'optimizer.frozen', 'optimizer.new_layers',
                 'optimizer.new_layers_lr_multiplier', 'label_smoothing', 'model.dtype')
# Changes a resume goes on with, with a warning: the data order and every update stay as
# they were (model.dtype changes rounding only).
_RESUME_WARN_ONLY = ('process_count', 'model.dtype')


def _config_value(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for name in field.split('.'):
    node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
  return node


def resume_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`{config field: value}` of what an exact resume needs unchanged, and the number of
  processes, as JSON would store them (tuples become lists)."""
  settings = {field: _config_value(config, field) for field in RESUME_FIELDS}
  settings['process_count'] = jax.process_count()
  return json.loads(json.dumps(settings))


def checkpoint_meta(config: ml_collections.ConfigDict, num_classes: int, step: int,
                    class_names: tuple[str, ...] = ()) -> dict[str, Any]:
  """What a checkpoint must agree on with the config that restores it, what a resume
  needs unchanged (`resume`), and the class names, so that a checkpoint alone can name
  its predictions (--mode=localize)."""
  return {'step': step, 'model': config.model.name,
          'model_kwargs': config.model.get('kwargs', ml_collections.ConfigDict()).to_dict(),
          'num_classes': num_classes, 'dataset': config.data.name,
          'class_names': list(class_names), 'resume': resume_settings(config)}


def check_resume(meta: dict[str, Any], settings: dict[str, Any], where: str) -> None:
  """Refuses a resume whose config changed a setting the checkpoint's run depends on
  (ValueError naming each field); warns where going on is safe: the number of processes
  (the batches are the same), the compute dtype, and `total_steps` under a schedule that
  does not depend on it ('step' or 'constant')."""
  saved = meta.get('resume')
  if saved is None:
    logging.warning('The checkpoint in %s was written before checkpoints recorded their '
                    'run settings: the resume cannot check that batch size, data and '
                    'schedule are unchanged.', where)
    return
  refused, warned = [], []
  for field, now in settings.items():
    then = saved.get(field)
    if field not in saved or then == now:
      continue
    safe = field in _RESUME_WARN_ONLY or (
        field == 'total_steps' and settings.get('optimizer.schedule') in ('step', 'constant'))
    (warned if safe else refused).append(f'{field}: {then!r} in the checkpoint, {now!r} now')
  for change in warned:
    logging.warning('Resuming %s with a changed setting (safe: the batches and the updates '
                    'of the steps done stay the same): %s', where, change)
  if refused:
    raise ValueError(
        f'The checkpoint in {where} was written by a run with other settings, so resuming '
        f'it would not continue that run: {"; ".join(refused)}. Use the config (and '
        '--config flags) that wrote it, or another --workdir.')


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict, *,
                       folder: str = 'checkpoints',
                       max_to_keep: int | None = None) -> ocp.CheckpointManager:
  """The manager of `workdir/folder`; saves are asynchronous."""
  keep = config.keep_checkpoints if max_to_keep is None else max_to_keep
  # With several processes, orbax names its barriers by step: checkpoints/ and best/ saving
  # the same step at once would collide ("Barrier _async_write_complete.N is already
  # ongoing") unless each manager has its own prefix.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=folder))
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), folder), options=options)


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: TrainState,
                    meta: dict[str, Any]) -> None:
  """Saves asynchronously (orbax: temporary folder, renamed when complete). The input
  pipeline needs no state of its own: its position is the step."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)))


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state: TrainState,
                       expected_meta: dict[str, Any], step: int | None = None
                       ) -> tuple[int, TrainState] | None:
  """`(step, state)` of the latest (or given) checkpoint to resume, or None if there is
  none.

  The state is restored onto the shardings of `abstract_state` (any device count, any
  number of processes). Raises ValueError, before anything is overwritten, if the
  checkpoint belongs to another model or dataset, or if the run settings in
  `expected_meta['resume']` changed in a way an exact resume cannot follow
  (`check_resume`).
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  meta = read_meta(manager, step)
  where = _check_meta(manager, step, expected_meta, meta)
  check_resume(meta, expected_meta['resume'], where)
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  return step, _restore(manager, step, where, items)['state']


def _restore(manager: ocp.CheckpointManager, step: int, where: str,
             items: dict[str, Any]) -> Any:
  """`manager.restore` of `items`; a tree that does not fit raises naming the checkpoint."""
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'The checkpoint in {where} does not fit the model of this config '
                     f'({type(e).__name__}: {e}). Use another --workdir.') from e


def _check_meta(manager: ocp.CheckpointManager, step: int, expected_meta: dict[str, Any],
                meta: dict[str, Any] | None = None) -> str:
  """The checkpoint's folder, after checking that its `meta` (read if not given) is of the
  config's model and dataset; raises ValueError naming the differences otherwise."""
  where = os.path.join(str(manager.directory), str(step))
  meta = read_meta(manager, step) if meta is None else meta
  expected_meta = json.loads(json.dumps(expected_meta))  # as stored: tuples become lists
  diffs = {k: (meta.get(k), expected_meta[k]) for k in _COMPATIBLE_KEYS
           if meta.get(k) != expected_meta[k]}
  if diffs:
    detail = '; '.join(f'{k}: checkpoint has {a!r}, config asks for {b!r}'
                       for k, (a, b) in diffs.items())
    raise ValueError(f'The checkpoint in {where} is of an incompatible model ({detail}). '
                     'Use another --workdir, or the config that wrote it.')
  return where


def restore_model_state(manager: ocp.CheckpointManager, abstract_model_state: Any,
                        expected_meta: dict[str, Any], step: int,
                        meta: dict[str, Any] | None = None) -> Any:
  """The model's part of a saved train state (the first of `(model, optimizer)`), onto
  the shardings of `abstract_model_state`; the optimizer state is not read (AdamW's is
  twice the model's size). `meta`: the checkpoint's, if already read. Raises as
  `restore_checkpoint` does."""
  where = _check_meta(manager, step, expected_meta, meta)
  target = nnx.State({0: abstract_model_state})
  state = ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)
  return _restore(manager, step, where, {'state': state})['state'][0]


# ---------------------------------------------------------------------------
# The best checkpoint
# ---------------------------------------------------------------------------

class BestCheckpoint:
  """Keeps `workdir/best/` holding the save with the best value of one eval metric.

  The best value survives a resume (it is read back from the saved meta), so a resumed
  run never replaces a better checkpoint with a worse one.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.metric = config.best_metric
    if config.best_mode not in ('max', 'min'):
      raise ValueError(f"config.best_mode must be 'max' or 'min', got {config.best_mode!r}")
    self.sign = 1.0 if config.best_mode == 'max' else -1.0
    self.manager = checkpoint_manager(workdir, config, folder='best', max_to_keep=1)
    step = self.manager.latest_step()
    self.value = None if step is None else read_meta(self.manager, step).get(self.metric)

  def update(self, step: int, state: TrainState, meta: dict[str, Any],
             results: dict[str, Any]) -> bool:
    """Saves `state` if `results[metric]` beats the best so far; True if it did."""
    if self.metric not in results:
      raise KeyError(f'config.best_metric={self.metric!r} is not among the evaluation '
                     f'results during training: {", ".join(sorted(results))}')
    value = float(results[self.metric])
    if self.value is not None and self.sign * value <= self.sign * self.value:
      return False
    self.value = value
    save_checkpoint(self.manager, step, state, {**meta, self.metric: value})
    return True

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# ---------------------------------------------------------------------------
# Initialisation from another run
# ---------------------------------------------------------------------------

def param_path(path: tuple) -> str:
  """'trunk/conv1/conv/kernel' from a jax key path (nnx's Variable `value` left out, as an
  attribute of a live model or as a key of a restored checkpoint)."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      names.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      names.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      names.append(key.name)
  if names and names[-1] == 'value':
    names.pop()
  return '/'.join(names)


def checkpoint_location(path: str) -> tuple[str, int | None]:
  """`(folder of steps, step or None for the latest)` of a workdir, its checkpoints/ or
  best/ folder, or one step folder (`.../checkpoints/600`)."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, 'meta')):
    return os.path.dirname(path), int(base)
  if os.path.isdir(path):
    return path, None
  raise FileNotFoundError(f'checkpoint {path} does not exist: give a workdir, its '
                          'checkpoints/ or best/ folder, or one step folder')


def load_params_from(model: nnx.Module, directory: str, step: int | None,
                     reinit: tuple[str, ...]) -> list[str]:
  """Copies every parameter of the checkpoint in `directory` (`checkpoint_location`: a
  workdir, its checkpoints/ or best/ folder, or one step folder) into `model`, except
  those whose path matches one of the `reinit` regexes (default config: the head), which
  keep their fresh initialisation.

  Returns the paths copied. Raises naming the parameter when the checkpoint lacks one or
  holds another shape. BatchNorm statistics are copied with the weights.
  """
  directory, path_step = checkpoint_location(directory)
  step = path_step if step is None else step
  handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'config.init_from.workdir: no checkpoint in {directory}')
    meta = read_meta(manager, step)
    # Restored with the shapes it was saved with (the other model's head may differ), on
    # one device whatever the device count that wrote it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          manager.item_metadata(step)['state'])
    saved = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
  saved_model = saved['0']  # the state is (model, optimizer)
  flat_saved = {}
  jax.tree_util.tree_map_with_path(
      lambda p, x: flat_saved.__setitem__(param_path(p), x), saved_model)
  patterns = [re.compile(r) for r in reinit]
  copied = []

  def take(path, variable):
    name = param_path(path)
    if any(p.fullmatch(name) for p in patterns):
      return variable
    if name not in flat_saved:
      raise KeyError(f'config.init_from: the checkpoint {directory}/{step} ({meta.get("model")}) '
                     f'has no parameter {name!r}; add it to config.init_from.reinit to '
                     'initialise it afresh')
    value = np.asarray(flat_saved[name])
    if value.shape != variable.shape:
      raise ValueError(f'config.init_from: {name!r} has shape {value.shape} in the checkpoint '
                       f'{directory}/{step}, {variable.shape} in this model; add it to '
                       'config.init_from.reinit to initialise it afresh')
    copied.append(name)
    return value.astype(variable.dtype)

  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  nnx.update(model, jax.tree_util.tree_map_with_path(take, state))
  logging.info('Initialised %d parameters from %s/%d (%s); kept fresh: %s', len(copied),
               directory, step, meta.get('model'), ', '.join(reinit) or 'none')
  return copied
