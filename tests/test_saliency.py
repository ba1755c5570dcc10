"""Backprop saliency and Grad-CAM: closed forms, per-class gradients, the CAM identity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax import cam, models, saliency
from tests import model_params


class _Linear(nnx.Module):
  """`logits = flatten(x) @ w`; its "features" are the pixels, so both methods have
  closed forms: d logit_c / d x = w[:, c] reshaped, for every image."""

  def __init__(self, w_DC):
    self.w = nnx.Param(jnp.asarray(w_DC))

  def __call__(self, images_BHWC, train=False):
    return self.logits_from_features(images_BHWC), {'features': images_BHWC}

  def logits_from_features(self, feats_BhwK, train=False):
    return feats_BhwK.reshape(feats_BhwK.shape[0], -1) @ self.w[...]


# Jitted: an eager first call compiles every op on its own, several times slower.
_forward = nnx.jit(lambda model, images: model(images, train=False))
_head = nnx.jit(lambda model, feats: model.logits_from_features(feats))


def _tiny(name, num_classes=5):
  return model_params.random_model(lambda: models.get_model(name, num_classes=num_classes,
                                                rngs=nnx.Rngs(0, dropout=1)))


def _images(shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape)


_IDS = jnp.array([[4, 0, 2], [1, 1, 3]], jnp.int32)  # T = 3, a class repeated


# --- closed forms on a linear model ------------------------------------------------------

def test_backprop_of_a_linear_model_is_its_weights():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4 * 5 * 3, 6)).astype(np.float32)
  images = _images((2, 4, 5, 3))
  maps = saliency.backprop_saliency(_Linear(w), images, _IDS)
  assert maps.shape == (2, 3, 4, 5) and maps.dtype == jnp.float32
  expected = np.abs(w.T.reshape(6, 4, 5, 3)).max(-1)[np.asarray(_IDS)]
  np.testing.assert_allclose(maps, expected, rtol=1e-6)
  # Resized as the CAM kernel resizes; the requested size equal to the input is the identity.
  big = saliency.backprop_saliency(_Linear(w), images, _IDS, out_hw=(8, 15))
  np.testing.assert_allclose(big, jax.image.resize(expected, (2, 3, 8, 15), 'bilinear'),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(
      saliency.backprop_saliency(_Linear(w), images, _IDS, out_hw=(4, 5)), maps)


def test_grad_cam_of_a_linear_model():
  # alpha_kc = mean_hw w[h, w, k, c]; map = ReLU(sum_k alpha_kc x_k).
  rng = np.random.default_rng(1)
  w = rng.normal(size=(4 * 5 * 3, 6)).astype(np.float32)
  images = _images((2, 4, 5, 3))
  maps = saliency.grad_cam(_Linear(w), images, _IDS)
  alpha_CK = w.T.reshape(6, 4, 5, 3).mean((1, 2))
  x = np.asarray(images)
  expected = np.stack([np.stack([np.maximum(x[b] @ alpha_CK[c], 0) for c in _IDS[b]])
                       for b in range(2)])
  assert maps.shape == (2, 3, 4, 5) and maps.dtype == jnp.float32
  np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)


# --- real networks -----------------------------------------------------------------------

def test_backprop_equals_per_class_grad_in_eval_mode():
  model = _tiny('tiny_gap')
  images = _images((2, 32, 32, 3))
  # Statistics that matter: eval mode must use them, not the batch's.
  rng = np.random.default_rng(2)
  for path, stat in nnx.iter_graph(model):
    if isinstance(stat, nnx.BatchStat):
      value = rng.normal(0, 0.2, stat.shape) if path[-1] == 'mean' else rng.uniform(
          0.5, 1.5, stat.shape)
      stat[...] = jnp.asarray(value, stat.dtype)
  before = jax.tree.map(np.asarray, nnx.state(model))
  # As the evaluator calls it: inside its own jit, on a model merged from (graphdef, state).
  graphdef, state = nnx.split(model)
  predict = jax.jit(lambda state, images, ids: saliency.backprop_saliency(
      nnx.merge(graphdef, state), images, ids))
  maps = np.asarray(predict(state, images, _IDS))
  grad = jax.jit(jax.grad(lambda x, b, c: model(x, train=False)[0][b, c]))
  for b in range(2):
    for t, c in enumerate(np.asarray(_IDS[b])):
      np.testing.assert_allclose(maps[b, t], np.abs(grad(images, b, c)[b]).max(-1),
                                 rtol=1e-5, atol=1e-7)
  assert maps.max() > 0
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray,
                                                                   nnx.state(model)))


@pytest.mark.parametrize('name', ['tiny_gap', 'tiny_gmp'])
def test_grad_cam_of_a_gap_network_is_relu_cam_over_hw(name):
  # d logit_c / d f_k(x, y) = kernel[k, c] / (h·w) for GAP (and summed over h, w the same for
  # GMP: the gradient sits on the argmax), so alpha_kc = kernel[k, c] / (h·w).
  model = _tiny(name, num_classes=7)
  images = _images((2, 32, 32, 3))
  _, aux = model(images, train=False)
  kernel, _ = models.head_params(model)
  _, h, w, _ = aux['features'].shape
  relu_cams = jax.nn.relu(cam.class_activation_maps(aux['features'], kernel, _IDS)) / (h * w)
  assert relu_cams.min() == 0 and relu_cams.max() > 0  # the ReLU matters, the maps are not 0
  np.testing.assert_allclose(saliency.grad_cam(model, images, _IDS), relu_cams,
                             rtol=1e-5, atol=1e-7)
  resized = saliency.grad_cam(model, images, _IDS, out_hw=(32, 32))
  np.testing.assert_allclose(resized, jax.image.resize(relu_cams, (2, 3, 32, 32), 'bilinear'),
                             rtol=1e-5, atol=1e-7)


def test_grad_cam_through_a_fully_connected_classifier():
  # The original AlexNet (pool5, fc6, fc7, fc8), where CAM does not apply.
  model = _tiny('alexnet')
  images = _images((2, 99, 99, 3))
  maps = np.asarray(saliency.grad_cam(model, images, _IDS, out_hw=(99, 99)))
  assert maps.shape == (2, 3, 99, 99) and (maps >= 0).all() and maps.max() > 0
  feats = _forward(model, images)[1]['features']
  grad = jax.jit(jax.grad(lambda f, b, c: model.logits_from_features(f)[b, c]))
  for b in range(2):
    for t, c in enumerate(np.asarray(_IDS[b])):
      expected = jax.nn.relu(feats[b] @ grad(feats, b, c)[b].mean((0, 1)))
      np.testing.assert_allclose(
          maps[b, t], jax.image.resize(expected, (99, 99), 'bilinear'), rtol=1e-4, atol=1e-6)
  assert models.cam_weights(model) is None


@pytest.mark.parametrize('method', ['cam', 'backprop', 'gradcam'])
def test_registry_methods_give_logits_and_maps_shaped_like_cams(method):
  model = _tiny('tiny_gap')
  images = _images((2, 32, 32, 3))
  graphdef, state = nnx.split(model)

  @jax.jit
  def predict(state, images):  # the evaluator's order: logits, then top-k, then maps
    logits_BC, maps_fn = saliency.get_saliency(method)(nnx.merge(graphdef, state), images,
                                                      (48, 40))
    return logits_BC, maps_fn(cam.top_k_classes(logits_BC, 2))

  logits, maps = predict(state, images)
  np.testing.assert_allclose(logits, model(images)[0], rtol=1e-5, atol=1e-6)
  assert maps.shape == (2, 2, 48, 40) and maps.dtype == jnp.float32
  if method == 'cam':
    kernel, _ = models.head_params(model)
    # Jitted against eager: XLA fuses the einsum and the resize differently, a few float32
    # ulps of the maps' largest values (about 2 here), so the tolerance is absolute.
    np.testing.assert_allclose(
        maps, cam.class_activation_maps(model(images)[1]['features'], kernel,
                                        cam.top_k_classes(logits, 2), (48, 40)),
        rtol=1e-5, atol=1e-5)


def test_unknown_method_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"Unknown saliency 'gradient'.*backprop, cam, gradcam"):
    saliency.get_saliency('gradient')


def test_cam_refuses_a_fully_connected_classifier():
  def run(images):
    model = models.get_model('vgg16', num_classes=5, rngs=nnx.Rngs(0))
    return saliency.cam_maps(model, images)[0]
  with pytest.raises(ValueError, match="no GAP/GMP head.*'gradcam' or 'backprop'"):
    jax.eval_shape(run, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))


# --- every registered model: logits_from_features and the maps' shapes ----------------------

# Tiny inputs that survive each family's strides, for real forward passes.
_NUMERIC = {
    'tiny_gap': 32, 'tiny_gmp': 32, 'small_gap': 32, 'small_gmp': 32,
    'nin': 99, 'alexnet': 99, 'alexnet_star_gap_official': 99, 'vgg16': 32,
    'googlenet': 64,
}


@pytest.mark.parametrize('name', sorted(_NUMERIC))
def test_logits_from_features_equal_the_logits(name):
  model = _tiny(name, num_classes=4)
  size = _NUMERIC[name]
  logits, aux = _forward(model, _images((2, size, size, 3)))
  np.testing.assert_allclose(_head(model, aux['features']), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_every_model_at_full_size_under_eval_shape(name):
  def run(images):
    model = models.get_model(name, num_classes=10, rngs=nnx.Rngs(0))
    logits, aux = model(images, train=False)
    class_ids = cam.top_k_classes(logits, 2)
    return (logits, model.logits_from_features(aux['features']),
            saliency.backprop_saliency(model, images, class_ids, out_hw=(100, 90)),
            saliency.grad_cam(model, images, class_ids, out_hw=(100, 90)))

  logits, head_logits, backprop, gradcam = jax.eval_shape(
      run, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert head_logits.shape == logits.shape == (1, 10)
  assert backprop.shape == gradcam.shape == (1, 2, 100, 90)
  assert backprop.dtype == gradcam.dtype == jnp.float32
