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

A checkpoint whose files cannot be read (truncated, deleted, corrupted) raises
DamagedCheckpointError naming its folder; a resume skips it for the newest one that
restores, and renames it `<step>.damaged`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from cam_jax import models
from cam_jax import sharding
from cam_jax.data import conventions

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
                 'optimizer.new_layers_lr_multiplier', 'label_smoothing', 'progressive_resizing',
                 'model.dtype')
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
  # The pixels the network is fed (a resume must not switch to another normalisation).
  settings['input'] = conventions.from_config(config.data).to_meta()
  return json.loads(json.dumps(settings))


def checkpoint_meta(config: ml_collections.ConfigDict, num_classes: int, step: int,
                    class_names: tuple[str, ...] = ()) -> dict[str, Any]:
  """What a checkpoint must agree on with the config that restores it, what a resume
  needs unchanged (`resume`), the class names, so that a checkpoint alone can name its
  predictions (--mode=localize), and the input convention its network was trained with
  (`input`, cam_jax.data.conventions), which every entry point preprocesses by."""
  return {'step': step, 'model': config.model.name,
          'model_kwargs': models.given_options(config.model.get('kwargs')),
          'num_classes': num_classes, 'dataset': config.data.name,
          'class_names': list(class_names),
          'input': conventions.from_config(config.data).to_meta(),
          # How its predictions are made, for `cam_jax.load` without the config.
          'inference': {'eval_crop': config.data.get('eval_crop', 'resize'),
                        'eval_resize_shorter': config.data.get('eval_resize_shorter'),
                        'cam_threshold': (config.get('eval') or {}).get('cam_threshold', 0.2)},
          'resume': resume_settings(config)}


def input_convention(meta: dict[str, Any]) -> conventions.InputConvention | None:
  """The convention a checkpoint's meta records; None for checkpoints written before
  checkpoints recorded it (they were all trained with the default, 'imagenet')."""
  return conventions.from_meta(meta['input']) if meta.get('input') else None


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


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The checkpoint's `meta`; DamagedCheckpointError if it cannot be read."""
  where = _step_dir(manager, step)
  with _restore_event_loops():
    try:
      return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    except Exception as e:  # pylint: disable=broad-exception-caught
      if not os.path.isdir(where):
        raise FileNotFoundError(f'No checkpoint of step {step} in {manager.directory}') from e
      raise DamagedCheckpointError(where, _reason(e)) from None


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

  Without `step`, damaged checkpoints are skipped, newest first, each named in a warning;
  once an older one restores, the damaged ones are renamed `<step>.damaged` (orbax then
  no longer lists them, and this run can save those steps again). If none restores,
  DamagedCheckpointError names them all and nothing is renamed. With `step`: that
  checkpoint, or an error.
  """
  if step is not None:
    return step, _restore_step(manager, abstract_state, expected_meta, step)
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = _restore_step(manager, abstract_state, expected_meta, step)
    except DamagedCheckpointError as e:
      logging.warning('Skipping the damaged checkpoint %s (%s); trying the previous one.',
                      e.directory, e.reason)
      damaged.append(e)
      continue
    if damaged:
      for e in damaged:
        logging.warning('Resuming from step %d: moved the damaged %s to %s', step,
                        e.directory, _move_aside(e.directory))
      manager.reload()
    return step, state
  if damaged:
    steps = '; '.join(f'{os.path.basename(e.directory)} ({e.reason})' for e in damaged)
    raise DamagedCheckpointError(
        str(manager.directory), damaged[0].reason,
        f'no checkpoint in {manager.directory} can be read: {steps}. Move the damaged step '
        'folders aside to start afresh, or use another --workdir.')
  return None


def _restore_step(manager: ocp.CheckpointManager, abstract_state: TrainState,
                  expected_meta: dict[str, Any], step: int) -> TrainState:
  meta = read_meta(manager, step)
  if meta.get('pretrained'):
    raise ValueError(
        f'{_step_dir(manager, step)} holds converted weights ({meta["pretrained"].get("source")}), '
        'not a training run to resume: start from them with '
        f'--config.init_from.workdir={os.path.dirname(str(manager.directory))} and another '
        '--workdir.')
  where = _check_meta(manager, step, expected_meta, meta)
  check_resume(meta, expected_meta['resume'], where)
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  return _restore(manager, step, where, items)['state']


def _move_aside(where: str) -> str:
  """Renames a damaged step folder to `<step>.damaged` (`.damaged-2`, ... if taken), a
  name orbax does not list, kept for inspection. Process 0 renames; all wait."""
  aside, n = f'{where}.damaged', 1
  while os.path.exists(aside):
    n += 1
    aside = f'{where}.damaged-{n}'
  if jax.process_index() == 0:
    os.rename(where, aside)
  sharding.barrier(f'cam_jax: moved aside {where}')
  return aside


def _restore(manager: ocp.CheckpointManager, step: int, where: str,
             items: dict[str, Any], partial: bool = False) -> Any:
  """`manager.restore` of `items` (`state` among them). Raises ValueError naming the
  checkpoint if the tree of `state` does not fit it, DamagedCheckpointError if its files
  cannot be read; either way with nothing left running and no asyncio noise.
  `partial`: `state` is a part of the saved tree (the model without the optimizer)."""
  with _restore_event_loops():  # _misfit reads through orbax too
    try:
      return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-exception-caught
      misfit = _misfit(where, items['state'].item, partial)
      if misfit:
        raise ValueError(f'The checkpoint in {where} does not fit the model of this config '
                         f'({misfit}). Use another --workdir.') from e
      # orbax wraps TensorStore's one-line cause in a 60-line spec: the cause is named,
      # the rest stays reachable as __context__ without being printed.
      raise DamagedCheckpointError(where, _reason(e)) from None


def _check_meta(manager: ocp.CheckpointManager, step: int, expected_meta: dict[str, Any],
                meta: dict[str, Any] | None = None) -> str:
  """The checkpoint's folder, after checking that its `meta` (read if not given) is of the
  config's model and dataset; raises ValueError naming the differences otherwise."""
  where = _step_dir(manager, step)
  meta = read_meta(manager, step) if meta is None else meta
  expected_meta = json.loads(json.dumps(expected_meta))  # as stored: tuples become lists
  diffs = {k: (meta.get(k), expected_meta[k]) for k in _COMPATIBLE_KEYS
           if meta.get(k) != expected_meta[k]}
  if 'model_kwargs' in diffs and meta.get('model') == expected_meta['model']:
    # Options spelt out or left to their defaults build the same network: a converted
    # GoogLeNet-GAP records {} where its config says {'variant': 'caffe'}.
    resolve = lambda kwargs: json.loads(json.dumps(models.resolved_options(  # pylint: disable=unnecessary-lambda-assignment
        meta['model'], kwargs or {}), default=str))
    if resolve(meta.get('model_kwargs')) == resolve(expected_meta['model_kwargs']):
      del diffs['model_kwargs']
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
  return _restore(manager, step, where, {'state': state}, partial=True)['state'][0]


# ---------------------------------------------------------------------------
# Damaged checkpoints: telling them from other models, and orbax's event loops
# ---------------------------------------------------------------------------

class DamagedCheckpointError(RuntimeError):
  """A checkpoint whose files cannot be read: truncated, deleted or corrupted.

  Not raised for a checkpoint of another model (that is the ValueError "does not fit the
  model of this config"). `directory`: the step folder (the folder of steps when none of
  them restores); `reason`: `Type: first line` of the innermost cause.
  """

  def __init__(self, directory: str, reason: str, message: str | None = None):
    self.directory, self.reason = str(directory), reason
    super().__init__(message or f'checkpoint {directory} cannot be read ({reason})')


def _reason(e: BaseException) -> str:
  """`Type: first line` of the innermost cause of `e`: TensorStore's error names the array
  and the file ('OUT_OF_RANGE: Error reading "0.cam_conv.conv.kernel.value/0.0.0.0" in
  OCDBT database at local file ...'), orbax's wrapper only a slice and a spec."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0]}' if text else type(e).__name__


def _misfit(where: str, target: Any, partial: bool) -> str | None:
  """How `target` (a tree of ShapeDtypeStructs) differs from the arrays the checkpoint's
  `state` records (its _METADATA), or None if it fits or that record cannot be read.

  Called only after a restore failed: an intact record that differs means a checkpoint of
  another model (a config change); an unreadable record, or one that fits, means a
  damaged checkpoint. `partial`: the target may be part of the saved tree."""
  try:
    stored = ocp.StandardCheckpointHandler().metadata(epath.Path(where) / 'state')
  except Exception:  # pylint: disable=broad-exception-caught
    return None

  def shapes(tree):
    return {param_path(p): tuple(getattr(x, 'shape', ()))
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

  have, want = shapes(stored), shapes(target)
  other = [k for k in want if k in have and have[k] != want[k]]
  missing = [k for k in want if k not in have]
  extra = [] if partial else [k for k in have if k not in want]
  parts = []
  if other:
    parts.append(f'{len(other)} array(s) of another shape, e.g. {other[0]!r}: checkpoint '
                 f'{have[other[0]]}, this config {want[other[0]]}')
  if missing:
    parts.append(f'{len(missing)} array(s) missing from the checkpoint, e.g. {missing[0]!r}')
  if extra:
    parts.append(f'{len(extra)} array(s) this config does not have, e.g. {extra[0]!r}')
  return '; '.join(parts) or None


class _RestoreEventLoop(asyncio.SelectorEventLoop):
  """The event loop of a restore: closed, it first cancels and awaits what is pending, and
  a TensorStore read completing after the close is dropped.

  orbax runs each restore in a fresh loop, `run_until_complete` then `close`. When one
  read fails, `asyncio.gather` raises at once and the loop is closed with the other reads
  in flight: TensorStore's threads then call `call_soon_threadsafe` on the closed loop
  ("RuntimeError: Event loop is closed", one traceback per read, through
  sys.unraisablehook), and the abandoned coroutines are finalised at interpreter exit
  ("Exception ignored in: <coroutine object _read_array_index_and_device_put>", each with
  a 60-line spec): hundreds of lines that buried the one error that matters. A restore
  that succeeds leaves nothing pending: then this loop is a plain one.
  """

  def call_soon_threadsafe(self, callback, *args, context=None):
    try:
      return super().call_soon_threadsafe(callback, *args, context=context)
    except RuntimeError:
      if self.is_closed():
        return None  # the result of a read that a failed restore abandoned
      raise

  def call_exception_handler(self, context):
    if self.is_closed():
      return  # "Task exception was never retrieved" of such a read
    super().call_exception_handler(context)

  def close(self) -> None:
    if not self.is_closed() and not self.is_running():
      pending = asyncio.all_tasks(self)
      for task in pending:
        task.cancel()
      if pending:
        self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    super().close()


class _RestoreEventLoopPolicy(asyncio.DefaultEventLoopPolicy):

  def new_event_loop(self) -> asyncio.AbstractEventLoop:
    return _RestoreEventLoop()


@contextlib.contextmanager
def _restore_event_loops() -> Iterator[None]:
  """Within: the event loops orbax makes (asyncio.new_event_loop) are _RestoreEventLoops."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_RestoreEventLoopPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


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
    self.value = None
    if step is not None:
      try:
        self.value = read_meta(self.manager, step).get(self.metric)
      except DamagedCheckpointError as e:
        logging.warning('The best checkpoint %s cannot be read (%s); moved to %s. The next '
                        'evaluation saves a new best.', e.directory, e.reason,
                        _move_aside(e.directory))
        self.manager.reload()

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


def read_meta_at(path: str, step: int | None = None) -> tuple[dict[str, Any], str]:
  """`(meta, step folder)` of the checkpoint at `path` (`checkpoint_location`), the latest
  unless the path or `step` names one."""
  directory, path_step = checkpoint_location(path)
  step = path_step if step is None else step
  handlers = {'meta': ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {directory}')
    return read_meta(manager, step), _step_dir(manager, step)


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
