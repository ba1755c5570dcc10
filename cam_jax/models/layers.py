"""Building blocks shared by the model families."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cam_jax.models import cpu_ops


class ConvBNReLU(nnx.Module):
  """Convolution, optional BatchNorm, optional ReLU.

  With BatchNorm the convolution has no bias (BN's shift replaces it). `padding` is an
  int (symmetric, as in Caffe and torchvision) or 'SAME'/'VALID'; `groups` gives the
  grouped convolutions of Caffe's AlexNet.
  """

  def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1,
               padding: int | str = 'SAME', groups: int = 1, batch_norm: bool = False,
               bn_epsilon: float = 1e-5, relu: bool = True, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    pad = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
    self.conv = nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=(stride, stride),
                         padding=pad, feature_group_count=groups, use_bias=not batch_norm,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                         # XLA's own op except on CPU, where its gradients are slow.
                         conv_general_dilated=cpu_ops.conv_general_dilated)
    self.bn = (nnx.BatchNorm(out_ch, momentum=0.9, epsilon=bn_epsilon, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs) if batch_norm else None)
    self.relu = relu

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x, use_running_average=not train)
    return nnx.relu(x) if self.relu else x


class GAPNetwork(nnx.Module):
  """The paper's recipe on top of a backbone: the added conv (`cam_conv`), global average
  (or max) pooling, dropout and one linear layer (`head`).

  Subclasses build `self.trunk` (or override `backbone`) and call `add_cam_head`. The
  model contract follows: `model(images_BHWC, train) -> (logits_BC, {'features': ...})`
  with the features the ReLU'd `cam_conv` map, so that `models.head_params` applies.
  """

  def add_cam_head(self, in_ch: int, num_classes: int, *, cam_channels: int,
                   cam_groups: int, pooling: str, batch_norm: bool, dropout_rate: float,
                   dtype, param_dtype, rngs: nnx.Rngs) -> None:
    check_pooling(pooling)
    self.pooling = pooling
    self.cam_conv = ConvBNReLU(in_ch, cam_channels, 3, padding=1, groups=cam_groups,
                               batch_norm=batch_norm, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.head = nnx.Linear(cam_channels, num_classes, dtype=dtype, param_dtype=param_dtype,
                           rngs=rngs)

  def backbone(self, images_BHWC: jax.Array, train: bool) -> jax.Array:
    return self.trunk(images_BHWC, train)

  def __call__(self, images_BHWC: jax.Array, train: bool = False):
    feats_BhwK = self.cam_conv(self.backbone(images_BHWC, train), train)
    return self.logits_from_features(feats_BhwK, train), {'features': feats_BhwK}

  def logits_from_features(self, feats_BhwK: jax.Array, train: bool = False) -> jax.Array:
    """What follows `aux['features']`: global pooling, dropout, `head` (Grad-CAM's d/df)."""
    pooled_BK = self.dropout(global_pool(feats_BhwK, self.pooling), deterministic=not train)
    return self.head(pooled_BK)


def check_pooling(kind: str) -> None:
  """Raises unless `kind` is 'avg' (GAP) or 'max' (GMP); models call it when built."""
  if kind not in ('avg', 'max'):
    raise ValueError(f"pooling must be 'avg' or 'max', got {kind!r}")


def global_pool(feats_BhwK: jax.Array, kind: str) -> jax.Array:
  """Global average ('avg', GAP) or max ('max', GMP) pooling over h and w: `B×K`."""
  check_pooling(kind)
  return (jnp.mean if kind == 'avg' else jnp.max)(feats_BhwK, axis=(1, 2))


def max_pool(x: jax.Array, window: int, stride: int, *, padding: int = 0,
             ceil_mode: bool = False) -> jax.Array:
  """Max pooling with Caffe's/torchvision's `ceil_mode` output sizes.

  Caffe always rounds the output size up (GoogLeNet, AlexNet relied on it); torchvision
  asks for it with ceil_mode=True. The extra window is padded with -inf.
  """
  pads = []
  for size in x.shape[1:3]:
    span = size + 2 * padding - window
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if out < 1:
      raise ValueError(f'max_pool: a {size}-pixel side (padding {padding}) is smaller than '
                       f'the {window}-pixel window; use a larger input image')
    # PyTorch: the last window must start inside the (left-padded) input.
    if ceil_mode and (out - 1) * stride >= size + padding:
      out -= 1
    extra = max(0, (out - 1) * stride + window - size - 2 * padding)
    pads.append((padding, padding + extra))
  if any(pads_ != (0, 0) for pads_ in pads):
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  return cpu_ops.max_pool(x, window, stride)


def adaptive_avg_pool(x_BHWC: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d: bin i covers rows [floor(i·H/out), ceil((i+1)·H/out)).

  The originals' classifiers see a fixed map (6×6, 7×7); this lets them take other
  input sizes, as torchvision's do. The identity when the map already has that size.
  """
  H, W = x_BHWC.shape[1:3]
  oh, ow = out_hw
  if (H, W) == (oh, ow):
    return x_BHWC
  rows = []
  for i in range(oh):
    h0, h1 = (i * H) // oh, -(-((i + 1) * H) // oh)
    cols = [jnp.mean(x_BHWC[:, h0:h1, (j * W) // ow:-(-((j + 1) * W) // ow)], axis=(1, 2))
            for j in range(ow)]
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


def local_response_norm(x_BHWC: jax.Array, size: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75, k: float = 1.0) -> jax.Array:
  """Caffe's LRN across channels: `x / (k + alpha / size * sum_window x^2) ** beta`.

  The window of `size` channels is centred on each channel (as Caffe and
  torch.nn.LocalResponseNorm do); channels past the ends count as zeros.
  """
  sq = jnp.square(x_BHWC.astype(jnp.float32))
  half = size // 2
  padded = jnp.pad(sq, ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
  window_sum = jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                     'VALID')
  return (x_BHWC / (k + alpha / size * window_sum) ** beta).astype(x_BHWC.dtype)


def num_params(module: nnx.Module) -> int:
  """Number of trainable parameters (nnx.Param leaves; BatchNorm statistics excluded)."""
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))

