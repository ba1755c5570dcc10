r"""The cost of CAMs against the backbone's forward pass.

  python benchmarks/cam_kernel.py [--model=googlenet_gap] [--batch=64] [--size=224]
      [--rounds=3] [--top_k=5] [--dtype=float32]

About 2 min as is on 2 CPU cores (GoogLeNet-GAP, batch 64: ~3 s a forward); `--batch=8`
about 30 s.

The model is `restore.create_model` of the network's config (`configs/<model>.py` where
there is one, else the common defaults), randomly initialised, with `--dtype` as
`config.model.dtype`; the inputs are normal noise and random labels. T = top_k + 1
classes per image, the top k and the label, as evaluation asks for. Times per batch,
the median over rounds; each round times every method once, in an order rotated from
round to round, so that load on the machine falls on all of them alike:

  (a) forward: jitted `model(images, train=False)`, returning the logits;
  (b) (a) + top k + CAMs of the T classes at the feature resolution
      (`cam.class_activation_maps(feats, cam_weights, class_ids)`), in one jitted
      function: `evaluate.make_predict_fn` with `map_top=k` (evaluation itself asks for
      the top-1 map only, T = 2);
  (c) (b) with the CAMs resized on device to size × size;
  (d) the CAM kernel alone on precomputed features and class ids, at the feature
      resolution (d1) and resized (d2); each timed as the mean of `--kernel_calls` calls.

The goal is ((b) - (a)) / (a) <= 5 % for top-5 at batch 64. Before timing, the CAMs of
(b) and (c) are checked equal to those of (d1) and (d2).
"""

import importlib
import os
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax import cam as cam_lib
from cam_jax import evaluate, models, restore, sharding
from configs import common

_MODEL = flags.DEFINE_string('model', 'googlenet_gap', 'Registry name (cam_jax.models.MODELS).')
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch size.')
_SIZE = flags.DEFINE_integer('size', 224, 'Input side; resized CAMs have it too.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds; the median is reported.')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'CAMs of the top k classes (and the label).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', list(restore.COMPUTE_DTYPES),
                           'config.model.dtype: activations and matmuls.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classes of the head.')
_KERNEL_CALLS = flags.DEFINE_integer('kernel_calls', 10, 'Calls per timing of (d).')


def model_config(name: str):
  """The network's own config where `configs/<name>.py` exists (e.g. GoogLeNet-GAP's
  caffe layout), else the common defaults with `model.name = name`."""
  try:
    return importlib.import_module(f'configs.{name}').get_config()
  except ModuleNotFoundError:
    config = common.get_common()
    config.model.name = name
    return config


def _time(fn, calls: int = 1) -> float:
  t = time.perf_counter()
  for _ in range(calls):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / calls


def make_fns(graphdef: nnx.GraphDef, top_k: int, out_hw: tuple[int, int]) -> dict:
  """The jitted functions of (a), (b), (c), each `fn(state, images_BHWC, labels_B)`; (b) and
  (c) are evaluation's own `make_predict_fn`, asked for the maps of all top k classes."""
  mesh = sharding.make_mesh(jax.devices()[:1])

  def forward(state, images_BHWC, labels_B):
    del labels_B
    return nnx.merge(graphdef, state)(images_BHWC, train=False)[0]

  return {'a': jax.jit(forward),
          'b': evaluate.make_predict_fn(graphdef, mesh, top_k=top_k, map_top=top_k),
          'c': evaluate.make_predict_fn(graphdef, mesh, top_k=top_k, map_top=top_k,
                                        map_hw=out_hw)}


def main(argv):
  del argv
  config = model_config(_MODEL.value)
  config.model.dtype = _DTYPE.value
  model = restore.create_model(config, _NUM_CLASSES.value, seed=0)
  weights = models.cam_weights(model)
  if weights is None:
    raise ValueError(f'{_MODEL.value} has no GAP/GMP head: CAM does not apply')
  kernel_KC = weights[0]
  graphdef, state = nnx.split(model)
  B, S, k = _BATCH.value, _SIZE.value, _TOP_K.value
  rng = np.random.default_rng(0)
  images_BHWC = jnp.asarray(rng.normal(size=(B, S, S, 3)), jnp.float32)
  labels_B = jnp.asarray(rng.integers(0, _NUM_CLASSES.value, size=B), jnp.int32)
  out_hw = (S, S)
  fns = make_fns(graphdef, k, out_hw)

  # Precomputed inputs of (d), and a check that (b), (c) compute what (d) does.
  feats_BhwK = jax.jit(
      lambda s, x: nnx.merge(graphdef, s)(x, train=False)[1]['features'])(state, images_BHWC)
  out_b = fns['b'](state, images_BHWC, labels_B)
  classes_Bk, cams_b = out_b['classes_Bk'], out_b['maps_BThw']
  cams_c = fns['c'](state, images_BHWC, labels_B)['maps_BThw']
  class_ids_BT = jnp.concatenate([classes_Bk, labels_B[:, None]], 1)
  kernel = {'d1': lambda: cam_lib.class_activation_maps(feats_BhwK, kernel_KC, class_ids_BT),
            'd2': lambda: cam_lib.class_activation_maps(feats_BhwK, kernel_KC, class_ids_BT,
                                                        out_hw)}
  for name, cams in (('d1', cams_b), ('d2', cams_c)):
    want = kernel[name]()
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(np.asarray(cams), np.asarray(want), rtol=0,
                               atol=1e-3 * scale if _DTYPE.value == 'float32' else 3e-2 * scale)

  # name -> (fn, calls per timing)
  timed = {name: (lambda f=f: f(state, images_BHWC, labels_B), 1) for name, f in fns.items()}
  timed.update({name: (f, _KERNEL_CALLS.value) for name, f in kernel.items()})
  order = list(timed)
  for name in order:  # Warm-up: every function compiled and run once more.
    _time(*timed[name])
  times = {name: [] for name in order}
  for r in range(_ROUNDS.value):
    for name in order[r % len(order):] + order[:r % len(order)]:
      times[name].append(_time(*timed[name]))
  ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}

  dev = jax.devices()[0]
  h, w, K = feats_BhwK.shape[1:]
  T = k + 1
  print(f'# {_MODEL.value}, {dev.device_kind} ({dev.platform}), {os.cpu_count()} cores, '
        f'{time.strftime("%Y-%m-%d %H:%M %Z")}, jax {jax.__version__}')
  print(f'# batch {B}, input {S}x{S}x3, {_DTYPE.value}, features {h}x{w}x{K}, '
        f'{_NUM_CLASSES.value} classes, T = top {k} + label = {T}; median of '
        f'{_ROUNDS.value} rounds (d: mean of {_KERNEL_CALLS.value} calls each)')
  print('| what | ms/batch | CAM overhead vs (a) |')
  print('|---|---:|---:|')
  rows = [('a', '(a) forward', None),
          ('b', f'(b) forward + top-{k} + {T} CAMs at {h}x{w}', ms['b'] - ms['a']),
          ('c', f'(c) forward + top-{k} + {T} CAMs at {S}x{S}', ms['c'] - ms['a']),
          ('d1', f'(d1) CAM kernel alone, {T} maps at {h}x{w}', ms['d1']),
          ('d2', f'(d2) CAM kernel alone, {T} maps at {S}x{S}', ms['d2'])]
  for name, label, extra in rows:
    overhead = '' if extra is None else f'{100 * extra / ms["a"]:+.2f} %'
    print(f'| {label} | {ms[name]:.2f} | {overhead} |')
  print('# per round (ms): ' + ', '.join(
      f'{name} ' + '/'.join(f'{1e3 * t:.1f}' for t in times[name]) for name in order))


if __name__ == '__main__':
  app.run(main)
