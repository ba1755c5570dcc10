"""The CAM kernel against a float64 numpy reference, and the CAM identity of GAP models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax import cam, models


def _numpy_cams(feats_BhwK, kernel_KC, class_ids_BT):
  """Reference: M_c(x, y) = sum_k w[k, c] f_k(x, y), in float64, one class at a time."""
  f = feats_BhwK.astype(np.float64)
  w = kernel_KC.astype(np.float64)
  B, h, wd, _ = f.shape
  out = np.zeros((B, class_ids_BT.shape[1], h, wd))
  for b in range(B):
    for t, c in enumerate(class_ids_BT[b]):
      out[b, t] = (f[b] * w[:, c]).sum(-1)
  return out


def _bilinear_half_pixel(img_hw, out_h, out_w):
  """Reference bilinear upsampling with half-pixel centres and edge clamping
  (cv2.resize INTER_LINEAR when enlarging)."""
  h, w = img_hw.shape
  def coords(n_out, n_in):
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.clip(x, 0, n_in - 1)
    x0 = np.floor(x).astype(int)
    x1 = np.minimum(x0 + 1, n_in - 1)
    return x0, x1, x - x0
  y0, y1, fy = coords(out_h, h)
  x0, x1, fx = coords(out_w, w)
  top = img_hw[y0][:, x0] * (1 - fx) + img_hw[y0][:, x1] * fx
  bot = img_hw[y1][:, x0] * (1 - fx) + img_hw[y1][:, x1] * fx
  return top * (1 - fy[:, None]) + bot * fy[:, None]


def test_cams_equal_numpy_reference():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(3, 5, 4, 16)).astype(np.float32)
  kernel = rng.normal(size=(16, 10)).astype(np.float32)
  ids = np.array([[9, 0], [3, 3], [5, 1]], np.int32)
  got = np.asarray(cam.class_activation_maps(feats, kernel, ids))
  np.testing.assert_allclose(got, _numpy_cams(feats, kernel, ids), rtol=1e-5, atol=1e-5)


def test_cams_resized_equal_bilinear_reference():
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(2, 4, 6, 8)).astype(np.float32)
  kernel = rng.normal(size=(8, 5)).astype(np.float32)
  ids = np.array([[4], [2]], np.int32)
  got = np.asarray(cam.class_activation_maps(feats, kernel, ids, out_hw=(16, 24)))
  assert got.shape == (2, 1, 16, 24)
  ref = _numpy_cams(feats, kernel, ids)
  for b in range(2):
    np.testing.assert_allclose(got[b, 0], _bilinear_half_pixel(ref[b, 0], 16, 24),
                               rtol=1e-4, atol=1e-4)


def test_top_k_classes_best_first():
  logits = jnp.array([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
  np.testing.assert_array_equal(cam.top_k_classes(logits, 2), [[1, 3], [0, 1]])


@pytest.mark.parametrize('name', ['tiny_gap', 'small_gap'])
def test_gap_identity_mean_cam_plus_bias_is_logit(name):
  """For GAP, mean_hw(M_c) + b_c = logit c: pooling and the linear head commute."""
  model = models.get_model(name, num_classes=7, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  logits, aux = model(images, train=False)
  kernel, bias = models.head_params(model)
  ids = jnp.tile(jnp.arange(7)[None], (2, 1))
  cams = np.asarray(cam.class_activation_maps(aux['features'], kernel, ids), np.float64)
  np.testing.assert_allclose(cams.mean((2, 3)) + np.asarray(bias), logits, rtol=1e-4, atol=1e-4)


def test_gmp_logits_are_head_of_max_pooled_features():
  """For GMP the CAM identity does not hold; the head sees max_hw(features) instead."""
  model = models.get_model('tiny_gmp', num_classes=5, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  logits, aux = model(images, train=False)
  kernel, bias = models.head_params(model)
  pooled = np.asarray(aux['features'], np.float64).max((1, 2))
  np.testing.assert_allclose(pooled @ np.asarray(kernel, np.float64) + np.asarray(bias),
                             logits, rtol=1e-4, atol=1e-4)
