"""VGG16 and VGGnet-GAP: parameter counts from the definition, mapping resolution, CAM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax import models
from cam_jax.models import layers, vgg


def _count(cls, **kwargs):
  return layers.num_params(nnx.eval_shape(lambda: cls(1000, rngs=nnx.Rngs(0), **kwargs)))


# (in, out) of the 13 3×3 convolutions of VGG16, from the paper's configuration D.
_VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
_TRUNK = sum(i * o * 9 + o for i, o in _VGG16_CONVS)  # weights + biases = 14,714,688


def test_vgg16_matches_torchvision_count():
  # fc6 25088·4096 + 4096, fc7 4096·4096 + 4096, fc8 4096·1000 + 1000: torchvision's
  # published vgg16 total is 138,357,544.
  fc = (7 * 7 * 512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
  assert _TRUNK == 14_714_688
  assert _count(vgg.VGG16) == _TRUNK + fc == 138_357_544


def test_vgg16_gap_count_as_official_prototxt():
  # CAM_conv 3×3, 1024 outputs, group 2: (512 / 2)·1024·9 + 1024; CAM_fc 1024·1000 + 1000.
  assert _count(vgg.VGG16GAP) == _TRUNK + (256 * 1024 * 9 + 1024) + 1_025_000 == 18_100_008
  # Without groups (as NOTES.md's benchmark measured it): 512·1024·9 + 1024.
  assert _count(vgg.VGG16GAP, cam_groups=1) == _TRUNK + 4_719_616 + 1_025_000 == 20_459_304


@pytest.mark.parametrize('size, hw', [(224, 14), (448, 28), (160, 10)])
def test_mapping_resolution(size, hw):
  out = jax.eval_shape(lambda x: vgg.VGG16GAP(1000, rngs=nnx.Rngs(0))(x),
                       jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  assert out[0].shape == (1, 1000) and out[1]['features'].shape == (1, hw, hw, 1024)


def test_original_runs_at_other_sizes_and_has_no_cam_head():
  out = jax.eval_shape(lambda x: vgg.VGG16(1000, rngs=nnx.Rngs(0))(x),
                       jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32))
  assert out[0].shape == (1, 1000) and out[1]['features'].shape == (1, 16, 16, 512)
  model = nnx.eval_shape(lambda: vgg.VGG16(10, rngs=nnx.Rngs(0)))
  with pytest.raises(TypeError, match='no linear `head`'):
    models.head_params(model)


@pytest.mark.parametrize('pooling', ['avg', 'max'])
def test_cam_identity_on_a_small_input(pooling):
  model = vgg.VGG16GAP(5, cam_channels=64, pooling=pooling, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  logits, aux = model(images, train=False)
  kernel, bias = (np.asarray(a, np.float64) for a in models.head_params(model))
  feats = np.asarray(aux['features'], np.float64)
  pooled = feats.mean((1, 2)) if pooling == 'avg' else feats.max((1, 2))
  np.testing.assert_allclose(pooled @ kernel + bias, logits, rtol=1e-4, atol=1e-5)
