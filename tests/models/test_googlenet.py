"""GoogLeNet, GoogLeNet-GAP/-GMP: parameter counts, mapping resolutions, the CAM identity.

Full-size models are only built and run under `nnx.eval_shape` / `jax.eval_shape`
(nothing allocated, nothing computed); real forward passes use 2×64×64 inputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax.models import googlenet


def _abstract_num_params(build):
  """Parameters of `build()`, built abstractly. Params are conv kernels and biases, Linear
  kernel and bias, BatchNorm scale and bias; BN running mean/var are BatchStat, not Param."""
  model = nnx.eval_shape(build)
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# Inception blocks read off bvlc_googlenet / deploy_googlenetCAM.prototxt (num_output of
# inception_Xy/1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj), with the input channels.
_PROTOTXT_BLOCKS = (
    ('3a', 192, 64, 96, 128, 16, 32, 32),
    ('3b', 256, 128, 128, 192, 32, 96, 64),
    ('4a', 480, 192, 96, 208, 16, 48, 64),
    ('4b', 512, 160, 112, 224, 24, 64, 64),
    ('4c', 512, 128, 128, 256, 24, 64, 64),
    ('4d', 512, 112, 144, 288, 32, 64, 64),
    ('4e', 528, 256, 160, 320, 32, 128, 128),
    ('5a', 832, 256, 160, 320, 32, 128, 128),
    ('5b', 832, 384, 192, 384, 48, 128, 128),
)


def _trunk_convs(last, k5):
  """(in, out, k) of every convolution from conv1 through inception `last`."""
  convs = [(3, 64, 7), (64, 64, 1), (64, 192, 3)]  # conv1/7x7_s2, conv2/3x3_reduce, conv2/3x3
  for name, cin, c1, c3r, c3, c5r, c5, proj in _PROTOTXT_BLOCKS:
    convs += [(cin, c1, 1), (cin, c3r, 1), (c3r, c3, 3), (cin, c5r, 1), (c5r, c5, k5),
              (cin, proj, 1)]
    if name == last:
      return convs
  raise AssertionError(last)


def _count(convs, per_channel):
  """Kernels i·o·k·k plus `per_channel` Params per output: 1 (bias) or 2 (BN scale, bias)."""
  return sum(i * o * k * k + per_channel * o for i, o, k in convs)


def test_parameter_count_helper_by_hand():
  # The helper against layer-by-layer arithmetic for the Caffe stem and inception_3a:
  # conv1 7·7·3·64 + 64 = 9,472; conv2/3x3_reduce 64·64 + 64 = 4,160;
  # conv2/3x3 3·3·64·192 + 192 = 110,784; inception_3a: 1x1 192·64 + 64 = 12,352,
  # 3x3_reduce 192·96 + 96 = 18,528, 3x3 9·96·128 + 128 = 110,720,
  # 5x5_reduce 192·16 + 16 = 3,088, 5x5 25·16·32 + 32 = 12,832, pool_proj 192·32 + 32 = 6,176.
  assert _count(_trunk_convs('3a', 5), 1) == (9472 + 4160 + 110784 + 12352 + 18528 + 110720
                                               + 3088 + 12832 + 6176) == 288112


def test_torchvision_googlenet_parameter_count():
  # torchvision.models.googlenet(aux_logits=False): 6,624,904 published. Convs have no bias;
  # every conv has a BatchNorm (scale + bias are Params, running statistics are not);
  # the "5×5" branch is 3×3; fc 1024·1000 + 1000.
  expected = _count(_trunk_convs('5b', 3), 2) + 1024 * 1000 + 1000
  assert expected == 6_624_904
  assert _abstract_num_params(
      lambda: googlenet.GoogLeNet(1000, variant='torchvision', rngs=nnx.Rngs(0))) == expected


def test_caffe_googlenet_parameter_count():
  # bvlc_googlenet without loss1/loss2: convs with biases, 5×5 convs, no BN.
  # Stem 124,416; inception 3a 163,696, 3b 388,736, 4a 376,176, 4b 449,160, 4c 510,104,
  # 4d 605,376, 4e 868,352, 5a 1,043,456, 5b 1,444,080; loss3/classifier 1,025,000.
  expected = _count(_trunk_convs('5b', 5), 1) + 1024 * 1000 + 1000
  assert expected == 6_998_552
  assert _abstract_num_params(lambda: googlenet.GoogLeNet(1000, rngs=nnx.Rngs(0))) == expected


@pytest.mark.parametrize('build, cam_conv, expected', [
    # Official CAM_conv: 832 → 1024, 3×3, group 2: 9·416·1024 + 1024 = 3,834,880.
    (lambda: googlenet.GoogLeNetGAP(1000, rngs=nnx.Rngs(0)), 9 * 416 * 1024 + 1024,
     8_345_896),
    (lambda: googlenet.GoogLeNetGMP(1000, rngs=nnx.Rngs(0)), 9 * 416 * 1024 + 1024,
     8_345_896),
    # The paper's text (one group): 9·832·1024 + 1024 = 7,668,736.
    (lambda: googlenet.GoogLeNetGAP(1000, cam_groups=1, rngs=nnx.Rngs(0)),
     9 * 832 * 1024 + 1024, 12_179_752),
])
def test_caffe_gap_parameter_count(build, cam_conv, expected):
  # Trunk through inception_4e (124,416 + 3,361,600 = 3,486,016), CAM_conv, CAM_fc
  # 1024·1000 + 1000 = 1,025,000.
  trunk = _count(_trunk_convs('4e', 5), 1)
  assert trunk == 3_486_016
  assert trunk + cam_conv + 1024 * 1000 + 1000 == expected
  assert _abstract_num_params(build) == expected


def test_torchvision_gap_parameter_count():
  expected = _count(_trunk_convs('4e', 3), 2) + 9 * 416 * 1024 + 1024 + 1024 * 1000 + 1000
  assert _abstract_num_params(
      lambda: googlenet.GoogLeNetGAP(1000, variant='torchvision', rngs=nnx.Rngs(0))) == expected


@pytest.mark.parametrize('cls, kwargs, size, hw', [
    (googlenet.GoogLeNetGAP, {}, 224, 14),
    (googlenet.GoogLeNetGAP, {}, 448, 28),
    (googlenet.GoogLeNetGMP, {'variant': 'torchvision'}, 224, 14),
    (googlenet.GoogLeNet, {}, 224, 7),
    (googlenet.GoogLeNet, {'variant': 'torchvision'}, 224, 7),
    # pool4 differs: Caffe 3×3/2 gives ceil((15-3)/2)+1 = 7, torchvision 2×2/2 gives 8.
    (googlenet.GoogLeNet, {}, 240, 7),
    (googlenet.GoogLeNet, {'variant': 'torchvision'}, 240, 8),
])
def test_mapping_resolution(cls, kwargs, size, hw):
  def forward(images):  # built and run under eval_shape: nothing is allocated or computed
    return cls(1000, rngs=nnx.Rngs(0), **kwargs)(images, train=False)

  logits, aux = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  assert logits.shape == (1, 1000)
  assert aux['features'].shape == (1, hw, hw, 1024)


def test_five_by_five_branch_per_variant():
  block = lambda v: nnx.eval_shape(lambda: googlenet.Inception(
      *_PROTOTXT_BLOCKS[0][1:], variant=v, rngs=nnx.Rngs(0)))
  caffe, tv = block('caffe'), block('torchvision')
  assert caffe.conv5x5.conv.kernel.shape == (5, 5, 16, 32)
  assert caffe.conv5x5.conv.bias is not None and caffe.conv5x5.bn is None
  assert tv.conv5x5.conv.kernel.shape == (3, 3, 16, 32)
  assert tv.conv5x5.conv.bias is None and tv.conv5x5.bn is not None


def test_unknown_variant_and_pooling_raise():
  with pytest.raises(ValueError, match='variant'):
    googlenet.GoogLeNet(5, variant='keras', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='pooling'):
    googlenet.GoogLeNetGAP(5, pooling='sum', rngs=nnx.Rngs(0))


def _images():
  return np.random.default_rng(1).uniform(size=(2, 64, 64, 3)).astype(np.float32)


@pytest.fixture
def fast_compile():
  """XLA without most optimisations: compiling a GoogLeNet takes half as long."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


_forward = nnx.jit(lambda model, images, train: model(images, train=train),
                   static_argnames='train')


# The torchvision GMP is the model of the train-mode test below: its eval program is reused.
_TV_GMP = dict(variant='torchvision', dropout_rate=0.5)


@pytest.mark.parametrize('cls, kwargs, reduce', [
    (googlenet.GoogLeNetGAP, {}, np.mean),
    (googlenet.GoogLeNetGMP, _TV_GMP, np.max),
    (googlenet.GoogLeNet, {}, np.mean),
])
@pytest.mark.usefixtures('fast_compile')
def test_cam_identity(cls, kwargs, reduce, random_model):
  model = random_model(lambda: cls(5, rngs=nnx.Rngs(0), **kwargs))
  logits, aux = _forward(model, _images(), train=False)
  feats = np.asarray(aux['features'])
  assert feats.shape[1:3] == ((4, 4) if cls is not googlenet.GoogLeNet else (2, 2))
  assert feats.max() > 0
  kernel, bias = np.asarray(model.head.kernel[...]), np.asarray(model.head.bias[...])
  np.testing.assert_allclose(reduce(feats, axis=(1, 2)) @ kernel + bias, logits,
                             rtol=1e-4, atol=1e-4)
  # The same through the class activation maps: mean_hw(M_c) + b_c == logit c for GAP.
  if reduce is np.mean:
    cams = np.einsum('bhwk,kc->bhwc', feats, kernel)
    np.testing.assert_allclose(cams.mean((1, 2)) + bias, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures('fast_compile')
def test_train_mode_dropout_and_batch_norm(random_model):
  model = random_model(lambda: googlenet.GoogLeNetGMP(5, rngs=nnx.Rngs(0), **_TV_GMP))
  images = _images()
  stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))

  eval_a, _ = _forward(model, images, train=False)
  eval_b, _ = _forward(model, images, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  for a, b in zip(jax.tree.leaves(stats_before),
                  jax.tree.leaves(nnx.state(model, nnx.BatchStat))):
    np.testing.assert_array_equal(a, b)

  train_a, _ = _forward(model, images, train=True)
  train_b, _ = _forward(model, images, train=True)
  assert not np.allclose(train_a, train_b)  # a fresh dropout mask each call
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(stats_before), jax.tree.leaves(nnx.state(model, nnx.BatchStat)))]
  assert all(changed)
