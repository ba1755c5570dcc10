"""The Python API (`cam_jax.load(...).predict`): the hand-made square detector's classes,
CAMs and boxes for paths, arrays and PIL images, with nothing written."""

import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import cam_jax
from cam_jax import boxes as boxes_lib
from cam_jax import checkpoints
from cam_jax import train
from cam_jax import windows
from cam_jax.data import images as images_lib
from cam_jax.data import pipeline
from cam_jax.data import synthetic
from configs import synthetic_gap
from tests.square_detector import CLASS_NAMES, STEP, config, square_image
from tests.square_detector import workdir  # pylint: disable=unused-import (a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(path):
  return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)


def test_load_needs_no_config_and_predicts_paths_arrays_and_pil_images(workdir, tmp_path):
  path = str(tmp_path / 'wide.png')
  square_image().save(path)
  before = _tree(workdir) + _tree(str(tmp_path))
  cam = cam_jax.load(workdir)  # everything from the checkpoint's meta
  assert cam.class_names == CLASS_NAMES
  assert cam.checkpoint == os.path.join(workdir, 'checkpoints', str(STEP))
  assert cam.config.data.image_size == 32 and cam.convention.name == 'imagenet'
  preds = cam.predict([path, np.asarray(square_image()), square_image(), square_image(mode='L')])
  assert _tree(workdir) + _tree(str(tmp_path)) == before  # predict writes nothing
  assert [p.source for p in preds] == [path, None, None, None]
  for p in preds:
    # tests/test_localize.py works this image out by hand: the square (x 24..47,
    # y 12..35) of the 96×48 image gives the box (22, 11, 49, 36) at 0.2 of the max, and
    # classes rank 0, 1, 2, 3 by the head's bias.
    assert list(p.classes) == [0, 1, 2, 3] and p.names == CLASS_NAMES
    assert p.boxes[0].tolist() == [22, 11, 49, 36] and p.boxes.dtype == np.int64
    assert p.scores[0] > p.scores[1] > p.scores[2] > p.scores[3]
    assert abs(p.scores.sum() - 1) < 1e-6  # all 4 classes: the whole softmax
    # The CAMs on the original pixels: the box is the paper box of the first one.
    assert p.cams.shape == (4, 48, 96) and p.cams.dtype == np.float32
    assert boxes_lib.paper_box(p.cams[0], 0.2).tolist() == [22, 11, 49, 36]
    assert p.cams[0][12:36, 24:48].min() > 0 and p.cams[0][:, :20].max() == 0
    assert p.valid.all()  # the whole image was seen (data.eval_crop 'resize')
    assert p.record()['top_k'][0] == {'class': 0, 'name': 'square',
                                      'score': pytest.approx(float(p.scores[0])),
                                      'box': [22, 11, 49, 36]}
  assert preds[0].record()['file'] == path
  # Pictures: the small image is upscaled ×2 for drawing; the Fig. 4 strip is 5 tiles.
  assert preds[0].overlay().shape == (96, 192, 3)
  assert preds[0].figure().shape == (14 + 96, 5 * 192 + 4 * 2, 3)
  shown = preds[0].show()
  assert isinstance(shown, Image.Image) and shown.size == (5 * 192 + 4 * 2, 14 + 96)


def test_the_default_configs_model_on_a_jpeg_and_an_array(tmp_path):
  """`cam_jax.load(workdir).predict(['a.jpg', array])` on the default config's network
  (SmallGAP at 64×64, 10 classes; initial weights): the top 5 are the model's own top 5
  on the image resized to 64×64 and normalised, and each box lies in its image."""
  config = synthetic_gap.get_config()
  workdir = str(tmp_path / 'default')
  graphdef, state = train.create_train_state(config, 10)
  with checkpoints.checkpoint_manager(workdir, config) as manager:
    checkpoints.save_checkpoint(manager, 1, state, checkpoints.checkpoint_meta(
        config, 10, 1, tuple(synthetic.CLASS_NAMES)))
    manager.wait_until_finished()
  rng = np.random.default_rng(0)
  photo = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
  Image.fromarray(photo).save(tmp_path / 'a.jpg', quality=95)
  array = (rng.random((40, 30, 3)) * 255).astype(np.uint8)
  cam = cam_jax.load(workdir)
  preds = cam.predict([str(tmp_path / 'a.jpg'), array])
  model = nnx.merge(graphdef, state)[0]
  decoded = np.asarray(Image.open(tmp_path / 'a.jpg').convert('RGB'))
  for p, pixels in zip(preds, [decoded, array]):
    inputs = pipeline.normalize(pipeline.crop_resize(
        pixels, windows.whole_window(pixels.shape[:2]), 64), pipeline.DEFAULT_INPUT)
    logits = np.asarray(model(inputs[None], train=False)[0][0])
    assert list(p.classes) == list(np.argsort(-logits)[:5])
    assert p.names == [synthetic.CLASS_NAMES[c] for c in p.classes]
    h, w = pixels.shape[:2]
    assert p.cams.shape == (5, h, w)
    assert ((p.boxes[:, :2] >= 0) & (p.boxes[:, 2:] < [w, h])).all()
    assert (p.boxes[:, :2] <= p.boxes[:, 2:]).all()


def test_top_k_and_a_config_override(workdir):
  cfg = config()
  cfg.eval.cam_threshold = 0.5
  cam = cam_jax.load(os.path.join(workdir, 'checkpoints', str(STEP)), cfg)
  [p] = cam.predict(np.asarray(square_image()), top_k=2)
  batch = cam.predict(np.stack([np.asarray(square_image())] * 3), top_k=2)  # N×H×W×3
  assert len(batch) == 3 and all(b.boxes.tolist() == p.boxes.tolist() for b in batch)
  assert list(p.classes) == [0, 1] and p.cams.shape == (2, 48, 96)
  # At half the max: x + 0.5 >= (3.5 + 0.5) × 6 = 24 and <= (7.5 + 0.5) × 6 = 48,
  # y + 0.5 >= 4 × 3 = 12 and <= 12 × 3 = 36: the square itself.
  assert p.boxes[0].tolist() == [24, 12, 47, 35]


def test_bad_input_is_named(workdir, tmp_path):
  cam = cam_jax.load(workdir)
  with pytest.raises(ValueError, match=r'images\[1\]: expected uint8'):
    cam.predict([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
  with pytest.raises(ValueError, match=r'images\[0\]: expected H×W, H×W×3'):
    cam.predict([np.zeros((8, 8, 2), np.uint8)])
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'not an image')
  with pytest.raises(images_lib.BadImageError, match='bad.jpg'):
    cam.predict(str(bad))
  with pytest.raises(FileNotFoundError):
    cam_jax.load(str(tmp_path / 'nothing here'))


def test_inference_imports_nothing_from_training():
  code = ('import sys; import cam_jax.inference, cam_jax.localize, cam_jax.evaluate, '
          'cam_jax.evaluators, cam_jax.figures, cam_jax.restore; '
          'assert "cam_jax.train" not in sys.modules')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
