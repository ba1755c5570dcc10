"""Network in Network (nin_imagenet): count by hand, mapping resolution, GAP of class maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax import models
from cam_jax.models import layers, nin


def test_parameter_count_counted_by_hand():
  # Each conv: cin·cout·k·k + cout (no groups in NIN).
  expected = (
      3 * 96 * 11 * 11 + 96           # conv1:        34,944
      + 2 * (96 * 96 + 96)            # cccp1, cccp2: 18,624
      + 96 * 256 * 5 * 5 + 256        # conv2:       614,656
      + 2 * (256 * 256 + 256)         # cccp3, cccp4: 131,584
      + 256 * 384 * 3 * 3 + 384       # conv3:       885,120
      + 2 * (384 * 384 + 384)         # cccp5, cccp6: 295,680
      + 384 * 1024 * 3 * 3 + 1024     # conv4-1024: 3,539,968
      + 1024 * 1024 + 1024            # cccp7-1024: 1,049,600
      + 1024 * 1000 + 1000)           # cccp8-1024: 1,025,000
  assert expected == 7_595_176
  model = nnx.eval_shape(lambda: nin.NIN(1000, rngs=nnx.Rngs(0)))
  assert layers.num_params(model) == expected
  assert not hasattr(model, 'head')
  with pytest.raises(TypeError):
    models.head_params(model)


@pytest.mark.parametrize('size, hw', [(224, 6), (227, 6), (320, 9)])
def test_mapping_resolution(size, hw):
  # 224 -> conv1 54 -> pool 27 -> pool 13 -> pool 6 (pools round up, as Caffe's do).
  def forward(images):
    return nin.NIN(1000, rngs=nnx.Rngs(0))(images)

  logits, aux = jax.eval_shape(forward, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert logits.shape == (2, 1000)
  assert aux['features'].shape == aux['class_maps'].shape == (2, hw, hw, 1000)


def test_logits_are_the_mean_of_the_class_maps(random_model):
  # 99 -> conv1 23 -> pool 11 -> pool 5 -> pool 2.
  model = random_model(lambda: nin.NIN(5, rngs=nnx.Rngs(0, dropout=1)))
  images = jax.random.normal(jax.random.key(0), (2, 99, 99, 3))
  logits, aux = model(images, train=False)
  assert aux['features'].shape == (2, 2, 2, 5)
  assert (aux['features'] >= 0).all() and (aux['features'] > 0).any()  # ReLU after cccp8
  np.testing.assert_allclose(aux['features'].mean((1, 2)), logits, rtol=1e-6, atol=1e-6)
