"""orbax checkpoints of the train state: save, resume, the best one, and initialisation
from another run's weights.

Layout of a workdir:
  checkpoints/<step>/  the last `config.keep_checkpoints` saves: `state` (model and
                       optimizer, replicated arrays), `meta` (JSON: what the checkpoint
                       must agree on with the config that restores it), `data` (the input
                       iterator's state, one JSON file per process).
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

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

TrainState = Any  # nnx.State of (model, optimizer)
_COMPATIBLE_KEYS = ('model', 'model_kwargs', 'num_classes', 'dataset')


def checkpoint_meta(config: ml_collections.ConfigDict, num_classes: int, step: int,
                    class_names: tuple[str, ...] = ()) -> dict[str, Any]:
  """What a checkpoint must agree on with the config that restores it, and the class
  names, so that a checkpoint alone can name its predictions (--mode=localize)."""
  return {'step': step, 'model': config.model.name,
          'model_kwargs': config.model.get('kwargs', ml_collections.ConfigDict()).to_dict(),
          'num_classes': num_classes, 'dataset': config.data.name,
          'class_names': list(class_names)}


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict, *,
                       folder: str = 'checkpoints',
                       max_to_keep: int | None = None) -> ocp.CheckpointManager:
  """The manager of `workdir/folder`; saves are asynchronous."""
  keep = config.keep_checkpoints if max_to_keep is None else max_to_keep
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), folder), options=options)


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: TrainState,
                    meta: dict[str, Any], data_iterator: grain.DatasetIterator | None = None
                    ) -> None:
  """Saves asynchronously (orbax: temporary folder, renamed when complete).

  With `data_iterator`, its state (one small JSON file per process) is saved too, so that
  a resumed run reads the batches an uninterrupted one would have read.
  """
  items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(meta)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items))


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state: TrainState,
                       expected_meta: dict[str, Any], step: int | None = None,
                       data_iterator: grain.DatasetIterator | None = None
                       ) -> tuple[int, TrainState] | None:
  """`(step, state)` of the latest (or given) checkpoint, or None if there is none.

  The state is restored onto the shardings of `abstract_state` (any device count). With
  `data_iterator`, the input pipeline's saved state is restored into it. Raises
  ValueError if the checkpoint belongs to another model or dataset, before anything is
  overwritten.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  where = _check_meta(manager, step, expected_meta)
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    if not os.path.isdir(os.path.join(where, 'data')):
      raise ValueError(f'The checkpoint in {where} has no input pipeline state, so the data '
                       'order cannot be resumed. Use another --workdir.')
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
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
