"""Models back from checkpoints, for every user that is not training: evaluation,
localization, figures and the Python API (`cam_jax.inference`). Training imports this
module; nothing here imports training.

- `create_model`: the config's network (`config.model`), in `config.model.dtype`.
- `restore_model_at` / `restore_model`: the model alone from a checkpoint folder (the
  optimizer state is never read), checked against the config's network and dataset.
- `restore_for_inference`: any checkpoint (a workdir, checkpoints/ or best/, one step, a
  converted pretrained one), the network taken from the checkpoint itself.
- `class_names`: the names a checkpoint's predictions are labelled with.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx

from cam_jax import checkpoints
from cam_jax import data as data_lib
from cam_jax import models
from cam_jax import sharding
from cam_jax.data import conventions

COMPUTE_DTYPES = ('float32', 'bfloat16')


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """`config.model.dtype`: the dtype of activations and matmuls. Parameters and optimizer
  state stay float32 whatever it is (mixed precision)."""
  name = config.model.get('dtype', 'float32')
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'config.model.dtype={name!r}; expected one of {COMPUTE_DTYPES}')
  return jnp.dtype(name)


def create_model(config: ml_collections.ConfigDict, num_classes: int, seed: int) -> nnx.Module:
  return models.get_model(config.model.name, num_classes=num_classes, rngs=nnx.Rngs(seed),
                          dtype=compute_dtype(config),
                          **models.given_options(config.model.get('kwargs')))


def abstract(build: Callable[[], Any], mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, Any]:
  """`nnx.split` of what `build` makes, as replicated shapes and dtypes: nothing allocated."""
  graphdef, state = nnx.split(nnx.eval_shape(build))
  repl = sharding.replicated(mesh)
  return graphdef, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)


def restore_model(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
                  num_classes: int) -> tuple[nnx.Module, int, ml_collections.ConfigDict]:
  """`(model, step, config)` from the latest checkpoint in `workdir`, the config with the
  checkpoint's input convention resolved (`conventions.resolve`); raises if there is
  none."""
  directory = os.path.join(workdir, 'checkpoints')
  model, step, meta = restore_model_at(config, directory, mesh, num_classes=num_classes)
  where = os.path.join(directory, str(step))
  return model, step, conventions.resolve(config, checkpoints.input_convention(meta), where)


def restore_model_at(config: ml_collections.ConfigDict, directory: str,
                     mesh: jax.sharding.Mesh, *, step: int | None = None,
                     num_classes: int | None = None,
                     model_from_meta: bool = False) -> tuple[nnx.Module, int, dict[str, Any]]:
  """`(model, step, meta)` of a checkpoint in `directory` (a folder of steps:
  checkpoints/ or best/), the latest unless `step` is given.

  `num_classes` None takes the checkpoint's own (its meta), so that no dataset needs to
  be at hand (--mode=localize). `model_from_meta`: the network (name, kwargs) and dataset
  are the checkpoint's, whatever the config says (inference on a converted or foreign
  checkpoint). Raises FileNotFoundError if there is no such checkpoint, ValueError if it
  belongs to another model or dataset than the config's.
  """
  directory = os.path.abspath(directory)
  with checkpoints.checkpoint_manager(os.path.dirname(directory), config,
                                      folder=os.path.basename(directory)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {directory}: train first '
                              '(--mode=train_and_evaluate).')
    if step not in manager.all_steps():
      raise FileNotFoundError(f'No checkpoint of step {step} in {directory}')
    meta = checkpoints.read_meta(manager, step)
    if num_classes is None:
      num_classes = int(meta['num_classes'])
    if model_from_meta:
      config = config.copy_and_resolve_references()
      config.model.name = meta['model']
      config.model.kwargs = ml_collections.ConfigDict(meta.get('model_kwargs') or {})
      config.data.name = meta['dataset']
    # The model alone: evaluation and localize never read the optimizer state.
    graphdef, abstract_state = abstract(lambda: create_model(config, num_classes, config.seed),
                                         mesh)
    state = checkpoints.restore_model_state(
        manager, abstract_state, checkpoints.checkpoint_meta(config, num_classes, 0), step,
        meta)
  return nnx.merge(graphdef, state), step, meta


def checkpoint_path(workdir: str, checkpoint: str | None) -> str:
  """`checkpoint` if given, else `workdir`'s checkpoints/ folder; FileNotFoundError
  saying what to do when there is none."""
  if checkpoint is not None:
    return checkpoint
  checkpoint = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(f'No checkpoint in {os.path.abspath(checkpoint)}: train first '
                            '(--mode=train_and_evaluate), or pass --checkpoint')
  return checkpoint


def restore_for_inference(config: ml_collections.ConfigDict, path: str,
                          mesh: jax.sharding.Mesh
                          ) -> tuple[nnx.Module, dict[str, Any], str, ml_collections.ConfigDict]:
  """`(model, meta, step folder, config)` of the checkpoint at `path`
  (`checkpoints.checkpoint_location`): the checkpoint's own network and number of classes
  (a converted checkpoint works with any config), and the config with its input convention
  resolved (`conventions.resolve`)."""
  directory, step = checkpoints.checkpoint_location(path)
  try:
    model, step, meta = restore_model_at(config, directory, mesh, step=step,
                                               model_from_meta=True)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{e} Or pass --checkpoint.') from e
  where = os.path.join(directory, str(step))
  config = conventions.resolve(config, checkpoints.input_convention(meta), where)
  return model, meta, where, config


def class_names(config: ml_collections.ConfigDict, meta: dict[str, Any]) -> list[str]:
  """The checkpoint's class names; else the dataset's (never prepared for this); else
  'class <id>', with a warning."""
  num_classes = int(meta['num_classes'])
  names = list(meta.get('class_names') or ())
  if len(names) == num_classes:
    return names
  data_config = config.data.copy_and_resolve_references()
  data_config.prepare = False  # names alone are not worth preparing a dataset
  try:
    _, info = data_lib.load_source(data_config, data_config.eval_split)
    if len(info.class_names) == num_classes:
      return list(info.class_names)
    why = f'the dataset has {len(info.class_names)} class names'
  except Exception as e:  # pylint: disable=broad-except
    # Missing or unprepared data, an unreadable names file...: names only label pictures.
    why = f'the dataset could not be read ({type(e).__name__}: {e})'
  logging.warning('The checkpoint holds no class names and %s: classes are named '
                  '"class <id>".', why)
  return [f'class {i}' for i in range(num_classes)]
