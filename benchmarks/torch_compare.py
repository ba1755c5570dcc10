r"""Train step of GoogLeNet-GAP and VGGnet-GAP: cam_jax against the same network in PyTorch.

  python benchmarks/torch_compare.py [--models=googlenet_gap,vgg16_gap] [--steps=5]

About 3 to 5 minutes on a quiet 2-core CPU (benchmarks/RESULTS.md, "Train step against
PyTorch"). PyTorch is a benchmark-only dependency, never a requirement of the package.
Install it beside cam_jax, e.g. in a venv that sees the system's packages, so that the
same jax runs:

  python -m venv --system-site-packages /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch
  /tmp/torchvenv/bin/python benchmarks/torch_compare.py

One process runs both frameworks, alternating one timed step of each so that they share
any machine noise. cam_jax runs the real `train.make_train_step` (SGD momentum 0.9,
weight decay 5e-4 on kernels, over a 1-device mesh); PyTorch runs forward, cross-entropy,
backward and `optimizer.step()` with the same optimizer, in `model.train()` mode, NCHW as
PyTorch users write it. Both networks get the same weights: the PyTorch copy is loaded from
the cam_jax model, its parameter count is asserted equal and its logits are checked
against cam_jax's before anything is timed. Speeds are images/s from the median of
`--steps` timed steps after `--warmup` untimed ones (the first cam_jax call compiles).
Torch's OpenMP threads lose far more than XLA's to a second busy process on the same
cores: compare only runs made on a quiet machine (the header prints the load).

Experiments (the goal is a train step and a forward at least as fast as PyTorch's, >= 1.0×):
- `--cpu_ops=on|off|both`: cam_jax with its CPU forms of convolution and max pooling
  (cam_jax.models.cpu_ops: grouped convolutions split, kernel gradients by taps, max-pool
  gradients by window taps; the package's default), with XLA's own ops (off), or both,
  timed in turn with torch (A B A B): the `cam_jax (XLA ops)` columns.
- `XLA_FLAGS` is read by jax at start, so set it in the environment.
- `--dtype=bfloat16` runs cam_jax with bf16 compute (`config.model.dtype`; parameters stay
  float32) and PyTorch under CPU autocast to bf16.
The functional copy of earlier experiments (`--jax_layout`, `--jax_tricks`) is gone: its
rewrites are the package's now (git history, before issue 17, has it).
"""
import functools
import os
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax import sharding, train
from cam_jax.models import cpu_ops, googlenet, layers, vgg
from configs import common

_MODELS = flags.DEFINE_list('models', ['googlenet_gap', 'vgg16_gap'],
                            'googlenet_gap and/or vgg16_gap.')
_SIZE = flags.DEFINE_integer('size', 224, 'Input side.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per framework and network.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps first (cam_jax compiles in the first).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classes of the head.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', os.cpu_count(), 'torch.set_num_threads.')
_FRAMEWORKS = flags.DEFINE_list('frameworks', ['jax', 'torch'], 'Which to time.')
_FORWARD = flags.DEFINE_bool('forward', True, 'Also time the inference forward of each.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_CPU_OPS = flags.DEFINE_enum(
    'cpu_ops', 'on', ['on', 'off', 'both'],
    "cam_jax's CPU forms of convolution and max pooling (cam_jax.models.cpu_ops): on (the "
    "package's default), off (XLA's own ops), or both, timed in turn.")

WEIGHT_DECAY, MOMENTUM, LEARNING_RATE = 5e-4, 0.9, 1e-3


# ---------------------------------------------------------------------------
# The networks in PyTorch, in the order of the cam_jax modules' parameters
# ---------------------------------------------------------------------------

def _conv_relu(in_ch, out_ch, kernel, stride=1, padding=0, groups=1):
  return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups),
                       nn.ReLU(inplace=True))


class TorchInception(nn.Module):
  """Caffe's Inception block: 1×1; 1×1 → 3×3; 1×1 → 5×5; 3×3/1 max pool → 1×1."""

  def __init__(self, in_ch, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
    super().__init__()
    self.branch1 = _conv_relu(in_ch, ch1x1, 1)
    self.branch2 = nn.Sequential(_conv_relu(in_ch, ch3x3red, 1),
                                 _conv_relu(ch3x3red, ch3x3, 3, padding=1))
    self.branch3 = nn.Sequential(_conv_relu(in_ch, ch5x5red, 1),
                                 _conv_relu(ch5x5red, ch5x5, 5, padding=2))
    self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1, ceil_mode=True),
                                 _conv_relu(in_ch, pool_proj, 1))

  def forward(self, x):
    return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def _gap_head(in_ch, num_classes, cam_groups, dropout_rate):
  """CAM_conv (3×3, 1024, groups) + ReLU, global average pooling, dropout, CAM_fc."""
  return [_conv_relu(in_ch, 1024, 3, padding=1, groups=cam_groups),
          nn.AdaptiveAvgPool2d(1), nn.Flatten(),
          nn.Dropout(dropout_rate) if dropout_rate else nn.Identity(),
          nn.Linear(1024, num_classes)]


def torch_googlenet_gap(num_classes, cam_groups, dropout_rate):
  """bvlc_googlenet through inception4e (LRN, ceil-mode pools) + the GAP head."""
  pool = functools.partial(nn.MaxPool2d, 3, 2, ceil_mode=True)
  lrn = functools.partial(nn.LocalResponseNorm, 5, alpha=1e-4, beta=0.75, k=1.0)
  blocks = []
  for name, cfg in googlenet.INCEPTION_CFG.items():
    if name == '4a':
      blocks.append(pool())
    blocks.append(TorchInception(*cfg))
    if name == '4e':
      break
  return nn.Sequential(
      _conv_relu(3, 64, 7, stride=2, padding=3), pool(), lrn(),
      _conv_relu(64, 64, 1), _conv_relu(64, 192, 3, padding=1), lrn(), pool(),
      *blocks, *_gap_head(832, num_classes, cam_groups, dropout_rate))


def torch_vgg16_gap(num_classes, cam_groups, dropout_rate):
  """VGG16 conv1_1 .. conv5_3 (no pool5) + the GAP head."""
  trunk, ch = [], 3
  for v in vgg.VGG16_CFG:
    if v == 'M':
      trunk.append(nn.MaxPool2d(2, 2))
    else:
      trunk.append(_conv_relu(ch, v, 3, padding=1))
      ch = v
  return nn.Sequential(*trunk, *_gap_head(ch, num_classes, cam_groups, dropout_rate))


TORCH_MODELS = {'googlenet_gap': torch_googlenet_gap, 'vgg16_gap': torch_vgg16_gap}


def _jax_layers(model):
  """cam_jax's nnx.Conv and nnx.Linear layers in forward order (PyTorch's module order)."""
  if isinstance(model, googlenet.GoogLeNetGAP):
    t = model.trunk
    convs = [t.conv1, t.conv2, t.conv3]
    for b in t.blocks:
      convs += [b.conv1x1, b.reduce3x3, b.conv3x3, b.reduce5x5, b.conv5x5, b.pool_proj]
  else:
    convs = [layer for layer in model.trunk.layers if layer is not None]
  return [c.conv for c in convs + [model.cam_conv]] + [model.head]


def torch_copy(name: str, model) -> nn.Module:
  """The PyTorch network with the cam_jax model's weights: kernels HWIO → OIHW, dense
  (in, out) → (out, in)."""
  cam_groups = model.cam_conv.conv.feature_group_count
  net = TORCH_MODELS[name](_NUM_CLASSES.value, cam_groups, model.dropout.rate)
  t_layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
  j_layers = _jax_layers(model)
  assert len(t_layers) == len(j_layers), (len(t_layers), len(j_layers))
  with torch.no_grad():
    for t, j in zip(t_layers, j_layers):
      w = np.asarray(j.kernel[...])
      w = w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T
      assert t.weight.shape == w.shape, (t, w.shape)
      t.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
      t.bias.copy_(torch.from_numpy(np.array(j.bias[...])))
  return net


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------

def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def measure(name: str) -> dict:
  batch, size = _BATCH.value, _SIZE.value
  jdtype = jnp.bfloat16 if _DTYPE.value == 'bfloat16' else jnp.float32
  config = common.get_common()
  config.model.name = name
  config.optimizer.learning_rate = LEARNING_RATE
  config.optimizer.momentum = MOMENTUM
  config.optimizer.weight_decay = WEIGHT_DECAY
  config.model.dtype = _DTYPE.value
  mesh = sharding.make_mesh(jax.devices()[:1])
  graphdef, state = train.create_train_state(config, _NUM_CLASSES.value)
  model = nnx.merge(graphdef, state)[0]
  assert model.head.dtype == jdtype, (model.head.dtype, jdtype)
  jax_params = layers.num_params(model)

  rng = np.random.default_rng(0)
  images_np = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  labels_np = rng.integers(0, _NUM_CLASSES.value, size=(batch,)).astype(np.int64)

  net = torch_copy(name, model)
  torch_params = sum(p.numel() for p in net.parameters())
  assert torch_params == jax_params, (name, torch_params, jax_params)
  x_t = torch.from_numpy(np.ascontiguousarray(images_np.transpose(0, 3, 1, 2)))
  y_t = torch.from_numpy(labels_np)
  # Same weights, same input: the same logits (LRN, ceil-mode pools, groups all agree).
  net.eval()
  with torch.no_grad():
    logits_t = net(x_t).numpy()
  logits_j = np.asarray(model(jnp.asarray(images_np), train=False)[0])
  err = float(np.max(np.abs(logits_t - logits_j)) / (np.max(np.abs(logits_j)) + 1e-12))
  tol = 1e-3 if _DTYPE.value == 'float32' else 5e-2
  assert err < tol, (name, err)
  # The train step donates the state: the forward keeps its own copy of the model.
  m_graphdef, m_state = nnx.split(model)
  m_state = jax.tree.map(jnp.copy, m_state)
  net.train()
  decay = [p for p in net.parameters() if p.ndim > 1]
  no_decay = [p for p in net.parameters() if p.ndim <= 1]
  opt = torch.optim.SGD([{'params': decay, 'weight_decay': WEIGHT_DECAY},
                         {'params': no_decay, 'weight_decay': 0.0}],
                        lr=LEARNING_RATE, momentum=MOMENTUM)
  autocast = functools.partial(torch.autocast, 'cpu', dtype=torch.bfloat16,
                               enabled=_DTYPE.value == 'bfloat16')

  def torch_step():
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = F.cross_entropy(net(x_t), y_t)
    loss.backward()
    opt.step()

  variants = {'on': [('jax', True)], 'off': [('jax', False)],
              'both': [('jax', True), ('jax_plain', False)]}[_CPU_OPS.value]
  images_j = jnp.asarray(images_np)
  batch_ = sharding.shard_batch({'image': images_np, 'label': labels_np.astype(np.int32)},
                                mesh)
  fns, forwards, compile_s = {}, {}, {}
  for key, enabled in variants:
    # The switch is read when tracing: each variant is compiled now, under its setting.
    cpu_ops.ENABLED = enabled
    try:
      state_v = sharding.replicate(jax.tree.map(jnp.copy, state), mesh)
      t0 = time.perf_counter()
      step = train.make_train_step(graphdef, mesh).lower(state_v, batch_).compile()
      forward = jax.jit(lambda s, x: nnx.merge(m_graphdef, s)(x, train=False)[0]).lower(
          m_state, images_j).compile()
      compile_s[key] = time.perf_counter() - t0
    finally:
      cpu_ops.ENABLED = True
    holder = {'state': state_v}

    def jax_step(step=step, holder=holder):
      holder['state'], metrics = step(holder['state'], batch_)
      jax.block_until_ready(metrics['loss'])

    fns[key] = jax_step
    forwards[key] = (lambda forward=forward: jax.block_until_ready(forward(m_state, images_j)))

  def torch_forward():
    with torch.no_grad(), autocast():
      net(x_t)

  if 'torch' in _FRAMEWORKS.value:
    fns['torch'] = torch_step
    forwards['torch'] = torch_forward
  if 'jax' not in _FRAMEWORKS.value:
    fns = {k: v for k, v in fns.items() if not k.startswith('jax')}
  result = {'params': jax_params, 'compile_s': compile_s.get('jax', float('nan')),
            'logits_err': err, **_images_per_s(fns, _WARMUP.value, batch, 'train')}
  if _FORWARD.value:
    net.eval()
    forwards = {k: forwards[k] for k in fns}
    result.update(_images_per_s(forwards, 1, batch, 'forward'))
  return result


def _images_per_s(fns: dict, warmup: int, batch: int, suffix: str) -> dict[str, float]:
  """`{'<name>_<suffix>': images/s}`: `warmup` rounds, then `--steps` timed rounds, each
  calling every function once in turn (load falls on all alike); the median per function."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {k: [] for k in fns}
  for _ in range(_STEPS.value):
    for k, fn in fns.items():
      times[k].append(_timed(fn))
  return {f'{k}_{suffix}': batch / float(np.median(v)) for k, v in times.items()}


def main(argv):
  del argv
  torch.set_num_threads(_TORCH_THREADS.value)
  load = os.getloadavg()
  print(f'# {time.strftime("%Y-%m-%d %H:%M")}, {os.cpu_count()} cores, load '
        f'{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; jax {jax.__version__} '
        f'(train.make_train_step, cpu_ops={_CPU_OPS.value}), '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; torch {torch.__version__} with '
        f'{torch.get_num_threads()} threads; input {_SIZE.value}, batch {_BATCH.value}, '
        f'{_DTYPE.value}, median of {_STEPS.value} steps')
  plain = _CPU_OPS.value == 'both'
  print('| network | params | cam_jax train img/s | torch train img/s | train ratio | '
        'cam_jax fwd img/s | torch fwd img/s | fwd ratio | '
        + ('cam_jax (XLA ops) train | cam_jax (XLA ops) fwd | ' if plain else '')
        + 'compile s |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|' + ('---:|---:|' if plain else '') + '---:|')
  nan = float('nan')
  for name in _MODELS.value:
    r = measure(name)
    jt, tt = r.get('jax_train', nan), r.get('torch_train', nan)
    jf, tf = r.get('jax_forward', nan), r.get('torch_forward', nan)
    extra = (f'{r.get("jax_plain_train", nan):.2f} | {r.get("jax_plain_forward", nan):.1f} | '
             if plain else '')
    print(f'| {name} | {r["params"]:,} | {jt:.2f} | {tt:.2f} | {jt / tt:.2f}× | {jf:.1f} | '
          f'{tf:.1f} | {jf / tf:.2f}× | {extra}{r["compile_s"]:.1f} |', flush=True)
  load = os.getloadavg()
  print(f'# load after: {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}')


if __name__ == '__main__':
  app.run(main)
