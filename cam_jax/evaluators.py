"""Evaluators declared in the config, as big_vision declares them:

  config.evals.official = dict(type='cam_official', thresholds=(20, 100, 110))
  config.evals.wsol = dict(type='wsolevaluation', cam_curve_interval=0.001)

Each entry names a registered evaluator (`EVALUATORS`) and its keyword arguments;
`run_evaluators` runs them all on a model and returns their numbers as `NAME/metric`, which
evaluate_and_report adds to eval.json and prints as one table each. Adding a protocol
adds an entry here, never a line in the trainer.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from cam_jax.protocols import official_eval
from cam_jax.protocols import wsol_eval

EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
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
                   mesh: jax.sharding.Mesh, *, num_examples: int | None = None
                   ) -> dict[str, dict[str, Any]]:
  """`{name: results}` of every evaluator in `config.evals`, in the config's order."""
  out = {}
  for name, spec in (config.get('evals') or {}).items():
    spec = dict(spec)
    if 'type' not in spec:
      raise ValueError(f'config.evals.{name} has no type; known types: '
                       f'{", ".join(sorted(EVALUATORS))}')
    fn = get_evaluator(spec.pop('type'))
    spec.setdefault('num_examples', num_examples)
    try:
      out[name] = fn(config, model, mesh, **spec)
    except TypeError as e:
      raise ValueError(f'config.evals.{name}: {e}') from e
  return out
