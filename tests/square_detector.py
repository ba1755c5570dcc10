"""A tiny_gap network whose weights are set by hand so that its CAM is known exactly: it
lights up where the image is bright. Shared by the tests of localize and the Python API."""

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from cam_jax import checkpoints
from cam_jax import sharding
from cam_jax import train
from cam_jax.data import pipeline
from configs import synthetic_gap

CLASS_NAMES = ['square', 'half square', 'other', 'nothing']
STEP = 7


def config():
  return synthetic_gap.get_config('tiny')  # tiny_gap on 32×32 inputs, eval batch 16


def square_detector(config):
  """The train state of a tiny_gap network that responds to bright pixels, every layer
  passing one channel through its centre tap:

  conv 1: channel 0 = mean of the three normalised colours, BatchNorm (mean 0, var 1)
  shifts it by minus the midpoint of black and white, so after the ReLU it is positive
  exactly on input pixels more than half bright; the later convs copy channel 0, max
  pooling halves it to the 16×16 feature grid. Head: logit c = w_c · mean(channel 0) +
  b_c with w = (1, 0.5, 0, 0), b = (0, -0.5, -1, -1.5): classes rank 0, 1, 2, 3, and the
  CAM of class 0 is channel 0 itself.
  """
  # Zeros everywhere (a valid optimizer state), then the weights: no initialiser runs.
  graphdef, abstract = train.abstract_train_state(config, len(CLASS_NAMES),
                                                  sharding.make_mesh())
  model, optimizer = nnx.merge(graphdef,
                               jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract))
  white = ((255 - np.float32(pipeline.DEFAULT_INPUT.mean)) / np.float32(pipeline.DEFAULT_INPUT.std)).mean()
  black = (-np.float32(pipeline.DEFAULT_INPUT.mean) / np.float32(pipeline.DEFAULT_INPUT.std)).mean()
  layers = [block for stage in model.stages for block in stage] + [model.cam_conv]
  for i, layer in enumerate(layers):
    kernel = np.zeros(layer.conv.kernel.shape, np.float32)
    if i == 0:
      kernel[1, 1, :, 0] = 1 / 3
    else:
      kernel[1, 1, 0, 0] = 1
    layer.conv.kernel[...] = kernel
    if layer.bn is not None:
      if i == 0:
        layer.bn.bias[0] = -(white + black) / 2
      layer.bn.scale[...] = 1.0
      layer.bn.var[...] = 1.0
  head = np.zeros(model.head.kernel.shape, np.float32)
  head[0, :2] = [1.0, 0.5]
  model.head.kernel[...] = head
  model.head.bias[...] = np.array([0.0, -0.5, -1.0, -1.5], np.float32)
  return nnx.state((model, optimizer))


def save(config, workdir, class_names=CLASS_NAMES):
  with checkpoints.checkpoint_manager(workdir, config) as manager:
    checkpoints.save_checkpoint(
        manager, STEP, square_detector(config),
        checkpoints.checkpoint_meta(config, len(CLASS_NAMES), STEP, tuple(class_names)))
    manager.wait_until_finished()


def square_image(hw=(48, 96), square=(24, 12, 47, 35), mode='RGB'):
  """Black, with a white square `(x0, y0, x1, y1)` (inclusive corners)."""
  pixels = np.zeros((*hw, 3), np.uint8)
  x0, y0, x1, y1 = square
  pixels[y0:y1 + 1, x0:x1 + 1] = 255
  return Image.fromarray(pixels).convert(mode)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir whose checkpoints/7 holds the square detector (a fixture: import it)."""
  path = str(tmp_path_factory.mktemp('square'))
  save(config(), path)
  return path
