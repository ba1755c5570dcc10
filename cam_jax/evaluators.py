"""Evaluators declared in the config, as big_vision declares them:

  config.evals.official = dict(type='cam_official', thresholds=(20, 100, 110))
  config.evals.wsol = dict(type='wsolevaluation', cam_curve_interval=0.001)

Each entry names a registered evaluator (`EVALUATORS`) and its keyword arguments;
`run_evaluators` runs them all on a model and returns their numbers by name;
`evaluate_and_report` (what training ends with and `--mode=evaluate` runs) writes the main
evaluation (the `cam_jax` protocol, `cam_jax.evaluate`) and theirs, as `NAME/metric`, to
eval.json and prints one table each. Adding a protocol adds an entry here, never a line
in the trainer.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable

import jax
import ml_collections
from absl import logging
from flax import nnx

from cam_jax import data as data_lib
from cam_jax import evaluate as evaluate_lib
from cam_jax import figures
from cam_jax import io_utils
from cam_jax import restore
from cam_jax import sharding
from cam_jax import viz
from cam_jax.protocols import official_eval
from cam_jax.protocols import wsol_eval

def cam_jax_protocol(config: ml_collections.ConfigDict, model: nnx.Module,
                     mesh: jax.sharding.Mesh, *, split: str | None = None,
                     num_examples: int | None = None, **eval_fields: Any) -> dict[str, Any]:
  """Our protocol (`cam_jax.evaluate`) as an evaluator: on `split`, with fields of
  `config.eval` overridden (e.g. `cam_threshold=0.3`, `saliency='gradcam'`)."""
  config = config.copy_and_resolve_references()
  for key, value in eval_fields.items():
    if key not in config.eval:
      raise ValueError(f'{key!r} is not a field of config.eval; the cam_jax evaluator takes '
                       f'split, num_examples and: {", ".join(sorted(config.eval))}')
    config.eval[key] = value
  results = evaluate_lib.evaluate(config, model, mesh, localization=True,
                                  num_examples=num_examples, split=split,
                                  predictions_file=eval_fields.get('predictions_file'))
  return {'protocol': 'cam_jax', **results}


def classification(config: ml_collections.ConfigDict, model: nnx.Module,
                   mesh: jax.sharding.Mesh, *, split: str | None = None,
                   num_examples: int | None = None) -> dict[str, Any]:
  """Top-1 and top-5 classification error on `split`, no maps."""
  results = evaluate_lib.evaluate(config, model, mesh, localization=False,
                                  num_examples=num_examples, split=split)
  return {'protocol': 'classification', **results}


EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    # Ours (README, "Definitions"): one view, the original image grid, components.
    'cam_jax': cam_jax_protocol,
    'classification': classification,
    # zhoubolei/CAM's released pipeline: ten crops, MATLAB resizes, dt_box (Tables 2-3).
    'cam_official': official_eval.evaluate_official,
    # clovaai/wsolevaluation's MaxBoxAcc and MaxBoxAccV2 (OpenCV contours at 224).
    'wsolevaluation': wsol_eval.evaluate_wsol,
}


def get_evaluator(kind: str) -> Callable[..., dict[str, Any]]:
  """The registered evaluator `kind`; raises listing the known ones."""
  if kind not in EVALUATORS:
    raise ValueError(f'Unknown evaluator type {kind!r}; known: {", ".join(sorted(EVALUATORS))}')
  return EVALUATORS[kind]


def run_evaluators(config: ml_collections.ConfigDict, model: nnx.Module,
                   mesh: jax.sharding.Mesh, *, num_examples: int | None = None,
                   during_training: bool = False, split: str | None = None
                   ) -> dict[str, dict[str, Any]]:
  """`{name: results}` of every evaluator in `config.evals`, in name order (ConfigDict
  sorts its keys).

  `during_training`: only the entries with `during_training=True`, each on `split` (the
  selection split, never the reported one) and `num_examples` images, whatever the entry
  says; their numbers join the training-time evaluation (metrics.jsonl, TensorBoard, and
  `best_metric` may name one as `NAME/metric`). Without it, every entry runs as declared.
  """
  out = {}
  for name, spec in (config.get('evals') or {}).items():
    spec = dict(spec)
    if 'type' not in spec:
      raise ValueError(f'config.evals.{name} has no type; known types: '
                       f'{", ".join(sorted(EVALUATORS))}')
    fn = get_evaluator(spec.pop('type'))
    if spec.pop('during_training', False):
      if during_training:
        spec.update(split=split, num_examples=num_examples)
    elif during_training:
      continue
    spec.setdefault('num_examples', num_examples)
    try:  # a misspelt argument is a config error, named before anything runs
      inspect.signature(fn).bind(config, model, mesh, **spec)
    except TypeError as e:
      raise ValueError(f'config.evals.{name}: {e}') from e
    out[name] = fn(config, model, mesh, **spec)
  return out


def curve_pictures(name: str, numbers: dict[str, Any]) -> dict[str, Any]:
  """Plots of an evaluator's curves: BoxAcc(τ) (largest contour at IoU 0.5 and every
  contour at each IoU) and PxAP's precision-recall, where it has them."""
  pictures = {}
  taus = None
  box = {k: v for k, v in numbers.items() if k.endswith('_curve') and k.startswith('box_acc')}
  if box:
    step = numbers.get('cam_curve_interval') or 1 / len(next(iter(box.values())))
    taus = [i * step for i in range(len(next(iter(box.values()))))]
    labels = {k: k[:-len('_curve')].replace('box_acc_v2_iou', 'V2 IoU ').replace(
        'box_acc', 'MaxBoxAcc IoU 50') for k in box}
    pictures['box_acc'] = viz.curve_plot(
        {labels[k]: (taus, v) for k, v in box.items()}, f'{name}: BoxAcc(tau)', 'tau',
        'BoxAcc')
  if 'pxap_precision_curve' in numbers:
    pictures['pxap'] = viz.curve_plot(
        {f'PxAP {100 * numbers["pxap"]:.1f}': (numbers['pxap_recall_curve'],
                                                numbers['pxap_precision_curve'])},
        f'{name}: pixel precision-recall', 'recall', 'precision')
  return pictures


def scalars(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """`NAME/metric` of the evaluators' numbers and strings (curves left out): what a
  training-time record holds."""
  return {f'{name}/{k}': v for name, numbers in results.items() for k, v in numbers.items()
          if isinstance(v, (int, float, str))}


def evaluate_and_report(config: ml_collections.ConfigDict, model: nnx.Module,
                        mesh: jax.sharding.Mesh, workdir: str, *, step: int,
                        baselines: tuple[str, ...] = ()) -> dict[str, Any]:
  """Full evaluation: eval.json, the printed table and the CAM pictures in workdir/cams/;
  with `baselines` (saliency methods), their localization rows beside CAM's. A relative
  `eval.predictions_file` is under `workdir`."""
  # Written by this evaluation alone: not by the baselines' (nor training's) passes.
  predictions = config.eval.get('predictions_file') or None
  if predictions:
    predictions = os.path.join(workdir, predictions)  # a relative path: under workdir
  results = evaluate_lib.evaluate(config, model, mesh, localization=True,
                                  num_examples=config.eval.get('num_examples'),
                                  num_pictures=config.eval.num_pictures,
                                  predictions_file=predictions)
  pictures = results.pop('pictures', [])
  results['step'] = step
  for method in baselines:
    # The same network, its maps from another method, through the same box stage.
    baseline_config = config.copy_and_resolve_references()
    baseline_config.eval.saliency = method
    baseline = evaluate_lib.evaluate(baseline_config, model, mesh, localization=True,
                                     num_examples=config.eval.get('num_examples'))
    results.update({f'{method}/{k}': baseline[k] for k in evaluate_lib.BASELINE_KEYS
                    if k in baseline})
  protocols = run_evaluators(config, model, mesh,
                             num_examples=config.eval.get('num_examples'))
  for name, numbers in protocols.items():
    results.update({f'{name}/{k}': v for k, v in numbers.items()})
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, 'eval.json'), results)
    for j, picture in enumerate(pictures):
      viz.save_png(os.path.join(workdir, 'cams', f'{j:02d}.png'), picture)
    for name, numbers in protocols.items():
      for kind, picture in curve_pictures(name, numbers).items():
        viz.save_png(os.path.join(workdir, 'figures', f'{name}_{kind}.png'), picture)
    # The paper's numbers are ten-crop numbers of the released pipeline: they are printed
    # beside the cam_official evaluator's only, never beside this single-view protocol.
    table = evaluate_lib.format_table(results)
    print(f'\nEvaluation of {config.model.name} on {config.data.name}/'
          f'{config.data.eval_split} at step {step} (protocol cam_jax):\n{table}\n',
          flush=True)
    for name, numbers in protocols.items():
      print(f'{name} ({numbers.get("protocol")}):\n'
            f'{evaluate_lib.format_protocol_table(numbers, config.eval.get("paper_row"))}\n',
            flush=True)
    logging.info('Wrote %s and %d pictures in %s', os.path.join(workdir, 'eval.json'),
                 len(pictures), os.path.join(workdir, 'cams'))
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`--mode=evaluate`: the latest checkpoint in `workdir`, evaluated and reported."""
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  mesh = sharding.make_mesh()
  _, info = data_lib.load_source(config.data, config.data.eval_split)
  model, step, config = restore.restore_model(config, workdir, mesh, info.num_classes)
  results = evaluate_and_report(config, model, mesh, workdir, step=step,
                                baselines=tuple(config.eval.get('baselines', ())))
  figures.write_evaluation_figures(config, model, mesh, workdir)
  return results
