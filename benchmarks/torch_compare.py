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

Experiments (the goal is a train step at least as fast as PyTorch's, >= 1.0×):
- `XLA_FLAGS` is read by jax at start, so set it in the environment.
- `--dtype=bfloat16` runs cam_jax with bf16 compute (`config.model.dtype`; parameters stay
  float32) and PyTorch under CPU autocast to bf16.
- `--jax_layout=NHWC|NCHW` times a functional copy of the same network instead of the
  cam_jax step (same parameters, loss and optimizer, checked to give the same logits; no
  dropout), convolving NHWC/HWIO or NCHW/OIHW, to see what the layout alone changes.
- `--jax_tricks=split_groups,dw_taps,pool_taps` (with `--jax_layout=NHWC`) rewrites
  that copy: the grouped CAM conv as one convolution per group; kernel gradients as one
  matmul per kernel tap (`_kernel_grad_by_taps`) instead of XLA's kernel-gradient
  convolution; max-pool gradients one window tap at a time (`_max_pool_taps_bwd`)
  instead of XLA:CPU's argmax reduce-window and scatter.
"""
import functools
import os
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax import sharding, train
from cam_jax.models import googlenet, layers, vgg
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
_JAX_LAYOUT = flags.DEFINE_enum(
    'jax_layout', None, ['NHWC', 'NCHW'],
    'Experiment: time a functional copy of the network in this layout instead of the '
    'cam_jax step (default: the cam_jax step).')
_JAX_TRICKS = flags.DEFINE_list(
    'jax_tricks', [],
    'Experiment, with --jax_layout: split_groups, dw_taps (NHWC), pool_taps (NHWC).')

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
# Experiments: a functional copy of the cam_jax network, in either layout, with
# other ways of writing the convolution
# ---------------------------------------------------------------------------

def _conv(x, kernel, stride, padding, groups, dn):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                      dimension_numbers=dn, feature_group_count=groups)


def _kernel_grad_by_taps(x_BHWC, g_BhwO, kh, kw, stride, padding):
  """dL/dkernel (HWIO) as one matmul per kernel tap: the padded input, shifted to the tap and
  strided, `(C, B·h·w) @ (B·h·w, O)`. Same sums as XLA's kernel-gradient convolution."""
  B, _, _, C = x_BHWC.shape
  _, h, w, O = g_BhwO.shape
  x_p = jnp.pad(x_BHWC, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  g_NO = g_BhwO.reshape(-1, O)
  taps = [[jax.lax.slice(x_p, (0, i, j, 0), (B, i + (h - 1) * stride + 1,
                                             j + (w - 1) * stride + 1, C),
                         (1, stride, stride, 1)).reshape(-1, C).T @ g_NO
           for j in range(kw)] for i in range(kh)]
  return jnp.stack([jnp.stack(row) for row in taps])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_taps(x_BHWC, kernel_HWIO, stride, padding):
  return _conv(x_BHWC, kernel_HWIO, stride, padding, 1, ('NHWC', 'HWIO', 'NHWC'))


def _conv_taps_fwd(x, kernel, stride, padding):
  return _conv_taps(x, kernel, stride, padding), (x, kernel)


def _conv_taps_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  _, input_vjp = jax.vjp(
      lambda x: _conv(x, kernel, stride, padding, 1, ('NHWC', 'HWIO', 'NHWC')), x)
  return (input_vjp(g)[0],
          _kernel_grad_by_taps(x, g, *kernel.shape[:2], stride, padding).astype(kernel.dtype))


_conv_taps.defvjp(_conv_taps_fwd, _conv_taps_bwd)


def _max_pool(x_BHWC, window, stride, pads):
  return jax.lax.reduce_window(x_BHWC, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), ((0, 0), *pads, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_taps(x_BHWC, window, stride, pads):
  return _max_pool(x_BHWC, window, stride, pads)


def _max_pool_taps_fwd(x, window, stride, pads):
  y = _max_pool(x, window, stride, pads)
  return y, (x, y)


def _max_pool_taps_bwd(window, stride, pads, residuals, g_BhwC):
  """The max pool's gradient one window tap at a time: each output's gradient goes to the
  first tap (in row-major window order) that holds the max, as XLA's own gradient does,
  added back at that tap's input positions. XLA:CPU instead runs an argmax reduce-window
  over four full-size index arrays (iotas) and a scatter."""
  x, y = residuals
  B, _, _, C = x.shape
  _, h, w, _ = y.shape
  (top, bottom), (left, right) = pads
  x_p = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  Hp, Wp = x_p.shape[1:3]
  taken = jnp.zeros(y.shape, bool)
  dx_p = jnp.zeros(x_p.shape, g_BhwC.dtype)
  zero = jnp.zeros((), g_BhwC.dtype)
  for i in range(window):
    for j in range(window):
      x_tap = jax.lax.slice(x_p, (0, i, j, 0), (B, i + (h - 1) * stride + 1,
                                                j + (w - 1) * stride + 1, C),
                            (1, stride, stride, 1))
      chosen = (x_tap == y) & ~taken
      taken = taken | chosen
      dx_p = dx_p + jax.lax.pad(jnp.where(chosen, g_BhwC, zero), zero, (
          (0, 0, 0), (i, Hp - i - (h - 1) * stride - 1, stride - 1),
          (j, Wp - j - (w - 1) * stride - 1, stride - 1), (0, 0, 0)))
  return (dx_p[:, top:Hp - bottom, left:Wp - right],)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


def functional_forward(name: str, params, images, layout: str, dtype, tricks=()):
  """The same network as cam_jax's, as free functions over `params` (a list of
  (kernel, bias) in forward order, kernels HWIO for NHWC and OIHW for NCHW).

  `tricks`: 'split_groups' convolves each group on its own and concatenates (XLA:CPU
  otherwise runs a grouped convolution far slower than its groups apart); 'dw_taps'
  computes kernel gradients with `_kernel_grad_by_taps`; 'pool_taps' takes max pooling
  gradients from `_max_pool_taps_bwd` (both NHWC only).
  """
  c = 1 if layout == 'NCHW' else 3  # channel axis
  spatial = (2, 3) if layout == 'NCHW' else (1, 2)
  dn = ('NCHW', 'OIHW', 'NCHW') if layout == 'NCHW' else ('NHWC', 'HWIO', 'NHWC')
  k_out = 0 if layout == 'NCHW' else 3  # output-channel axis of the kernel
  it = iter(params)

  def one_conv(x, k, stride, padding):
    if 'dw_taps' in tricks:
      return _conv_taps(x, k, stride, padding)
    return _conv(x, k, stride, padding, 1, dn)

  def conv(x, stride=1, padding=0, groups=1):
    k, b = next(it)
    k = k.astype(dtype)
    if groups == 1:
      y = one_conv(x, k, stride, padding)
    elif 'split_groups' in tricks:
      y = jnp.concatenate([one_conv(xg, kg, stride, padding) for xg, kg in
                           zip(jnp.split(x, groups, c), jnp.split(k, groups, k_out))], c)
    else:
      y = _conv(x, k, stride, padding, groups, dn)
    shape = [1, 1, 1, 1]
    shape[c] = -1
    return jax.nn.relu(y + b.astype(dtype).reshape(shape))

  def pool(x, window, stride, padding=0):
    # Caffe's ceil-mode sizes, as layers.max_pool: -inf past the end where windows need it.
    pads, dims, strides = [(0, 0)] * 4, [1] * 4, [1] * 4
    for ax in spatial:
      size = x.shape[ax]
      out = -(-(size + 2 * padding - window) // stride) + 1
      if (out - 1) * stride >= size + padding:
        out -= 1
      pads[ax] = (padding, max(padding, (out - 1) * stride + window - size - padding))
      dims[ax], strides[ax] = window, stride
    if 'pool_taps' in tricks:
      return _max_pool_taps(x, window, stride, tuple(pads[1:3]))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, pads)

  def lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    pads, dims = [(0, 0)] * 4, [1] * 4
    pads[c], dims[c] = (size // 2, size - 1 - size // 2), size
    s = jax.lax.reduce_window(jnp.square(x.astype(jnp.float32)), 0.0, jax.lax.add, dims,
                              (1, 1, 1, 1), pads)
    return (x / (k + alpha / size * s) ** beta).astype(x.dtype)

  x = images.astype(dtype)
  if name == 'googlenet_gap':
    x = lrn(pool(conv(x, 2, 3), 3, 2))
    x = pool(lrn(conv(conv(x), padding=1)), 3, 2)
    for block in googlenet.INCEPTION_CFG:
      if block == '4a':
        x = pool(x, 3, 2)
      p = pool(x, 3, 1, 1)
      x = jnp.concatenate([conv(x), conv(conv(x), padding=1), conv(conv(x), padding=2),
                           conv(p)], axis=c)
      if block == '4e':
        break
  else:
    for v in vgg.VGG16_CFG:
      x = pool(x, 2, 2) if v == 'M' else conv(x, padding=1)
  x = conv(x, padding=1, groups=2)
  kernel, bias = next(it)
  return jnp.mean(x, axis=spatial).astype(jnp.float32) @ kernel + bias


def functional_step(name: str, model, layout: str, dtype, tricks):
  """`(step, carry)`: SGD on the functional copy with cam_jax's optimizer and loss."""
  params = [(l.kernel[...], l.bias[...]) for l in _jax_layers(model)]
  if layout == 'NCHW':
    params = [(k.transpose(3, 2, 0, 1) if k.ndim == 4 else k, b) for k, b in params]
  config = common.get_common()
  config.optimizer.learning_rate = LEARNING_RATE
  config.optimizer.momentum = MOMENTUM
  config.optimizer.weight_decay = WEIGHT_DECAY
  tx = train.create_optimizer(config)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, images, labels):
    def loss_fn(p):
      logits = functional_forward(name, p, images, layout, dtype, tricks)
      return train.cross_entropy_loss(logits, labels)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step, (params, tx.init(params))


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

  if _JAX_LAYOUT.value:
    step, carry = functional_step(name, model, _JAX_LAYOUT.value, jdtype,
                                  tuple(_JAX_TRICKS.value))
    images_j = jnp.asarray(images_np.transpose(0, 3, 1, 2) if _JAX_LAYOUT.value == 'NCHW'
                           else images_np)
    logits_f = jax.jit(functools.partial(functional_forward, name, layout=_JAX_LAYOUT.value,
                                         dtype=jnp.float32))(carry[0], images_j)
    err_f = float(np.max(np.abs(np.asarray(logits_f) - logits_j)) / np.max(np.abs(logits_j)))
    assert err_f < tol, (name, err_f)
    labels_j = jnp.asarray(labels_np.astype(np.int32))
    holder = [carry]

    def jax_step():
      params, opt_state, loss = step(*holder[0], images_j, labels_j)
      holder[0] = (params, opt_state)
      jax.block_until_ready(loss)
  else:
    state = sharding.replicate(state, mesh)
    step = train.make_train_step(graphdef, mesh)
    batch_ = sharding.shard_batch({'image': images_np, 'label': labels_np.astype(np.int32)},
                                  mesh)
    holder = [state]

    def jax_step():
      holder[0], metrics = step(holder[0], batch_)
      jax.block_until_ready(metrics['loss'])

  fns = {'jax': jax_step, 'torch': torch_step}
  fns = {k: fns[k] for k in _FRAMEWORKS.value}
  compile_s = _timed(fns['jax']) if 'jax' in fns else float('nan')
  result = {'params': jax_params, 'compile_s': compile_s, 'logits_err': err,
            **_images_per_s(fns, _WARMUP.value, batch, 'train')}

  if _FORWARD.value:
    forward = jax.jit(lambda s, x: nnx.merge(m_graphdef, s)(x, train=False)[0])
    images_j = jnp.asarray(images_np)
    net.eval()

    def torch_forward():
      with torch.no_grad(), autocast():
        net(x_t)

    fwd = {'jax': lambda: jax.block_until_ready(forward(m_state, images_j)),
           'torch': torch_forward}
    fwd = {k: fwd[k] for k in fns}
    result.update(_images_per_s(fwd, 1, batch, 'forward'))
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
  tricks = set(_JAX_TRICKS.value)
  if (tricks - {'split_groups', 'dw_taps', 'pool_taps'} or (tricks and not _JAX_LAYOUT.value)
      or (tricks & {'dw_taps', 'pool_taps'} and _JAX_LAYOUT.value == 'NCHW')):
    raise app.UsageError('--jax_tricks: split_groups, dw_taps (NHWC), pool_taps (NHWC); '
                         'with --jax_layout')
  experiment = (f'functional copy, {_JAX_LAYOUT.value} {"+".join(_JAX_TRICKS.value)}'
                if _JAX_LAYOUT.value
                else 'train.make_train_step')
  print(f'# {time.strftime("%Y-%m-%d %H:%M")}, {os.cpu_count()} cores, load '
        f'{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; jax {jax.__version__} '
        f'({experiment}), XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; torch '
        f'{torch.__version__} with {torch.get_num_threads()} threads; input {_SIZE.value}, '
        f'batch {_BATCH.value}, {_DTYPE.value}, median of {_STEPS.value} steps')
  print('| network | params | cam_jax train img/s | torch train img/s | ratio | '
        'cam_jax fwd img/s | torch fwd img/s | cam_jax step/fwd | torch step/fwd | '
        'compile s |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  nan = float('nan')
  for name in _MODELS.value:
    r = measure(name)
    jt, tt = r.get('jax_train', nan), r.get('torch_train', nan)
    jf, tf = r.get('jax_forward', nan), r.get('torch_forward', nan)
    print(f'| {name} | {r["params"]:,} | {jt:.2f} | {tt:.2f} | {jt / tt:.2f}× | {jf:.1f} | '
          f'{tf:.1f} | {jf / jt:.1f} | {tf / tt:.1f} | {r["compile_s"]:.1f} |', flush=True)
  load = os.getloadavg()
  print(f'# load after: {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}')


if __name__ == '__main__':
  app.run(main)
