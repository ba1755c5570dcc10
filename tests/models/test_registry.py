"""Model registry, the model contract, parameter counts and mapping resolutions."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cam_jax import models


def _num_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_unknown_model_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet'.*small_gap.*tiny_gap"):
    models.get_model('resnet', num_classes=3, rngs=nnx.Rngs(0))


def test_tiny_gap_parameter_count_counted_by_hand():
  # Convs with BatchNorm have no bias; BN has scale + bias (running stats are not Params).
  # stage 1: 3*8*9 + 16 = 232, 8*8*9 + 16 = 592; stage 2: 8*16*9 + 32 = 1184,
  # 16*16*9 + 32 = 2336; added conv (bias, no BN): 16*32*9 + 32 = 4640; head 32*4 + 4 = 132.
  model = models.get_model('tiny_gap', num_classes=4, rngs=nnx.Rngs(0))
  assert _num_params(model) == 232 + 592 + 1184 + 2336 + 4640 + 132 == 9116


@pytest.mark.parametrize('kwargs, size, hw', [
    ({}, 64, 16),                                                  # 3 stages: input / 4
    ({'stage_strides': (1, 2, 1)}, 64, 32),                         # one pooling: input / 2
    ({'widths': (8, 16, 32, 64)}, 96, 12),                          # 4 stages: input / 8
])
def test_mapping_resolution(kwargs, size, hw):
  def forward(images):  # built and run under eval_shape: nothing is allocated or computed
    model = models.get_model('small_gap', num_classes=10, rngs=nnx.Rngs(0), **kwargs)
    return model(images, train=False)

  logits, aux = jax.eval_shape(forward, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert logits.shape == (2, 10)
  assert aux['features'].shape[:3] == (2, hw, hw)


def test_bad_options_are_named():
  with pytest.raises(ValueError, match='stage_strides'):
    models.get_model('small_gap', num_classes=2, rngs=nnx.Rngs(0), stage_strides=(1, 2))
  with pytest.raises(ValueError, match='pooling'):
    models.get_model('small_gap', num_classes=2, rngs=nnx.Rngs(0), pooling='median')


def test_head_params_shapes_and_pooling_kind():
  model = models.get_model('tiny_gmp', num_classes=6, rngs=nnx.Rngs(0))
  kernel, bias = models.head_params(model)
  assert kernel.shape == (32, 6) and bias.shape == (6,)
  assert model.pooling == 'max'


def test_cam_weights_per_kind_of_network():
  # GAP: the linear head; NIN: the identity (class map c is feature c); FC classifier: None.
  gap = models.get_model('tiny_gap', num_classes=7, rngs=nnx.Rngs(0))
  kernel, bias = models.cam_weights(gap)
  assert (kernel == gap.head.kernel[...]).all() and (bias == gap.head.bias[...]).all()
  nin = nnx.eval_shape(lambda: models.get_model('nin', num_classes=7, rngs=nnx.Rngs(0)))
  kernel, bias = models.cam_weights(nin)
  assert (kernel == jnp.eye(7)).all() and (bias == 0).all()
  for name in ('alexnet', 'vgg16'):
    fc = nnx.eval_shape(lambda: models.get_model(name, num_classes=7, rngs=nnx.Rngs(0)))
    assert models.cam_weights(fc) is None
