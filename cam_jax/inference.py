"""The Python API: a trained or converted network's top-k classes, CAMs and boxes for any
images, in a few lines, writing nothing.

  import cam_jax
  cam = cam_jax.load('runs/synthetic')            # a workdir, checkpoints/, best/, a step
  [pred] = cam.predict(['photo.jpg'], top_k=5)     # paths, PIL images or uint8 arrays
  pred.names, pred.scores, pred.boxes              # top-k, best first; boxes (x0, y0, x1, y1)
  pred.cams.shape                                  # (5, H, W): each class's CAM on the image
  pred.show()                                      # the paper's Fig. 4 strip, inline

`load` restores the model alone (never the optimizer), with the input convention it was
trained with (`cam_jax.data.conventions`) and its class names, from the checkpoint itself:
no config and no dataset are needed (pass `config=` to override, e.g. `eval.top_k`,
`eval.cam_threshold`, `data.eval_crop`). `predict` preprocesses as the evaluation does
(`data.eval_crop`), runs one jitted pass per batch over every local device, and boxes
each top-k class's map on the ORIGINAL image (the paper's box: `eval.cam_threshold` of
the map's max, largest component; inclusive integer corners), whatever the network saw.

`--mode=localize` (`cam_jax.localize`) is this API over files, several processes and
pictures on disk.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image
from scipy import special

from cam_jax import box_stage
from cam_jax import checkpoints
from cam_jax import evaluate as evaluate_lib
from cam_jax import models
from cam_jax import restore
from cam_jax import sharding
from cam_jax import viz
from cam_jax import windows
from cam_jax.data import conventions
from cam_jax.data import images as images_lib
from cam_jax.data import pipeline

# Pictures of small images (cam_synth's 64×64) are upscaled by an integer factor to about
# this long side, so that the maps and boxes are visible.
PICTURE_MIN_SIDE = 192
# Images per device pass when the config does not say (a multiple of the devices).
DEFAULT_BATCH_PER_DEVICE = 8

ImageLike = Any  # a path (str or os.PathLike), a PIL image, or an H×W(×3|4) uint8 array


@dataclasses.dataclass
class Prepared:
  """One image, decoded and transformed, reduced to what the batch and the pictures need."""
  source: str | None  # its path, or None for an image given in memory
  orig_hw: tuple[int, int]
  window_4: np.ndarray  # what the network saw, in the original's continuous coordinates
  input_SS3: np.ndarray | None  # normalised network input; None once batched
  picture_HW3: np.ndarray  # shrunk to viz.max_side (or upscaled if small): originals are not kept
  scale: float  # picture long side / original long side


@dataclasses.dataclass
class Prediction:
  """One image's top-k classes (best first), their maps and boxes.

  `maps_khw` are the network's maps at their own resolution, covering `window_4` of the
  image; `cams` resamples them onto the original pixels (bilinear through the window, as
  every box is scored). `boxes` are on the original image, `(x0, y0, x1, y1)` inclusive.
  """
  source: str | None
  orig_hw: tuple[int, int]
  window_4: np.ndarray
  classes: np.ndarray  # (k,) int
  names: list[str]
  scores: np.ndarray  # (k,) softmax probabilities
  boxes: np.ndarray  # (k, 4) int
  maps_khw: np.ndarray  # (k, h, w) float32
  picture_HW3: np.ndarray  # the image, shrunk (or enlarged) for drawing
  scale: float  # picture long side / original long side
  viz_style: dict[str, Any] = dataclasses.field(default_factory=dict)

  @functools.cached_property
  def _on_image(self) -> tuple[np.ndarray, np.ndarray]:
    placed = [windows.map_on_image(m, self.window_4, self.orig_hw) for m in self.maps_khw]
    return np.stack([map_HW for map_HW, _ in placed]), placed[0][1]

  @property
  def cams(self) -> np.ndarray:
    """`(k, H, W)` float32: each class's map on the original image's pixels; 0 where the
    network did not look (outside a centre crop's window, see `valid`)."""
    return self._on_image[0]

  @property
  def valid(self) -> np.ndarray:
    """`(H, W)` bool: the pixels the network saw."""
    return self._on_image[1]

  def picture_maps(self) -> tuple[list[np.ndarray], np.ndarray]:
    """Each map resampled onto the picture's pixels, and the pixels the network saw.

    The picture is the original resized, so the window is resized with it (per axis, as
    the picture was rounded to whole pixels): the same resampling as onto the original,
    without ever building an original-sized map for a picture.
    """
    pic_h, pic_w = self.picture_HW3.shape[:2]
    sx, sy = pic_w / self.orig_hw[1], pic_h / self.orig_hw[0]
    window_4 = np.asarray(self.window_4, np.float64) * [sx, sy, sx, sy]
    placed = [windows.map_on_image(m, window_4, (pic_h, pic_w)) for m in self.maps_khw]
    return [map_HW for map_HW, _ in placed], placed[0][1]

  def picture_boxes(self) -> np.ndarray:
    """`boxes` in the picture's pixels."""
    return viz.scale_boxes(self.boxes, self.scale, self.picture_HW3.shape[:2])

  def overlay(self, rank: int = 0) -> np.ndarray:
    """The map of the `rank`-th class over the picture (`config.viz`), its box red."""
    maps, valid_HW = self.picture_maps()
    hw = self.picture_HW3.shape[:2]
    out = viz.overlay(self.picture_HW3, maps[rank], valid_HW=valid_HW, **self.viz_style)
    return viz.draw_boxes(out, self.picture_boxes()[rank:rank + 1], viz.PRED_COLOR,
                          viz.box_width(hw))

  def figure(self, title: str | None = None) -> np.ndarray:
    """The paper's Fig. 4 layout: the image, then each top-k class's map with its name,
    score and box."""
    maps, valid_HW = self.picture_maps()
    title = title if title is not None else (os.path.basename(self.source)
                                             if self.source else '')
    return viz.top_k_figure(self.picture_HW3, maps,
                            [f'{n} {s:.2f}' for n, s in zip(self.names, self.scores)],
                            list(self.picture_boxes()), image_title=title, valid_HW=valid_HW,
                            **self.viz_style)

  def show(self, rank: int | None = None) -> Image.Image:
    """A PIL image (shown inline by Jupyter): the Fig. 4 strip, or one class's overlay."""
    return Image.fromarray(self.figure() if rank is None else self.overlay(rank))

  def record(self) -> dict[str, Any]:
    """A JSON-ready summary: `{"file", "height", "width", "top_k": [{"class", "name",
    "score", "box"}, ...]}`."""
    return {'file': self.source, 'height': int(self.orig_hw[0]), 'width': int(self.orig_hw[1]),
            'top_k': [{'class': int(c), 'name': n, 'score': float(s),
                       'box': [int(v) for v in b]}
                      for c, n, s, b in zip(self.classes, self.names, self.scores, self.boxes)]}


def as_pixels(image: ImageLike, name: str = 'image') -> tuple[np.ndarray, str | None]:
  """`(H×W×3 uint8 pixels, path or None)` of a path, a PIL image or an array; raises
  images.BadImageError (a file) or ValueError (an array) saying what was expected."""
  if isinstance(image, (str, os.PathLike)):
    path = os.fspath(image)
    if not os.path.isfile(path):  # also keeps a FIFO from blocking the read
      raise images_lib.BadImageError(f'{path}: not a regular file')
    try:
      with open(path, 'rb') as f:
        encoded = f.read()
    except OSError as e:
      raise images_lib.BadImageError(f'{path}: unreadable ({e.strerror or e})') from e
    return images_lib.decode_image(encoded, path, exif_orientation=True), path
  if isinstance(image, Image.Image):
    return np.asarray(image.convert('RGB')), None
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f'{name}: expected uint8 pixels (H×W, H×W×3 or H×W×4), got dtype '
                     f'{array.dtype}; convert floats with (x * 255).round().astype(np.uint8)')
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 1:
    raise ValueError(f'{name}: expected H×W, H×W×3 or H×W×4 uint8 pixels, got shape '
                     f'{array.shape}')
  return np.ascontiguousarray(array[..., :3]), None


def inference_config(meta: dict[str, Any]) -> ml_collections.ConfigDict:
  """What inference needs of a config, from a checkpoint's meta: its network, input size
  and convention, and the evaluation settings it was trained with (where the meta
  records them; else the defaults of configs/common.py)."""
  resume = meta.get('resume') or {}
  settings = meta.get('inference') or {}
  convention = checkpoints.input_convention(meta)
  config = ml_collections.ConfigDict()
  config.seed = int(resume.get('seed') or 0)
  config.keep_checkpoints = 1
  config.model = ml_collections.ConfigDict({
      'name': meta['model'], 'kwargs': ml_collections.ConfigDict(meta.get('model_kwargs') or {}),
      'dtype': resume.get('model.dtype') or 'float32'})
  config.data = ml_collections.ConfigDict()
  config.data.name = meta['dataset']
  # The size it was trained at; a converted network's convention may fix one (Caffe
  # AlexNet's 227) or not (torchvision's: 224, as they were trained).
  config.data.image_size = int(resume.get('data.image_size') or
                               (convention and convention.image_size) or 224)
  config.data.eval_crop = settings.get('eval_crop', 'resize')
  config.data.eval_resize_shorter = ml_collections.FieldReference(
      settings.get('eval_resize_shorter'), field_type=int)
  config.data.input_convention = ml_collections.FieldReference(None, field_type=str)
  config.data.max_boxes = 1
  config.data.prepare = False
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.builder_config = ml_collections.FieldReference(None, field_type=str)
  config.data.eval_split = 'test'
  config.eval = ml_collections.ConfigDict()
  config.eval.top_k = 5
  config.eval.cam_threshold = float(settings.get('cam_threshold', 0.2))
  config.eval.batch_size = ml_collections.FieldReference(None, field_type=int)
  config.eval.saliency = 'cam'
  config.viz = ml_collections.ConfigDict({'colormap': 'jet', 'heat_weight': 0.3,
                                          'image_weight': 0.5, 'max_side': 512})
  return config


class CamModel:
  """A network restored for inference (`load`): `model`, `config` (its input convention
  resolved), `class_names`, `checkpoint` (the step folder), `meta`."""

  def __init__(self, model: nnx.Module, config: ml_collections.ConfigDict,
               meta: dict[str, Any], checkpoint: str, class_names: Sequence[str],
               mesh: jax.sharding.Mesh):
    self.model, self.config, self.meta, self.checkpoint = model, config, meta, checkpoint
    self.class_names = list(class_names)
    self.mesh = mesh
    self.method = config.eval.get('saliency', 'cam')
    if self.method == 'cam' and models.cam_weights(model) is None:
      raise ValueError(f'{type(model).__name__} (checkpoint {checkpoint}) has a fully '
                       "connected classifier: CAM does not apply; use "
                       "config.eval.saliency='gradcam'")
    self.convention = conventions.from_config(config.data)
    self.preprocess = pipeline.EvalPreprocess(
        config.data.image_size, max(1, int(config.data.get('max_boxes', 1))),
        crop=config.data.eval_crop, resize_shorter=config.data.get('eval_resize_shorter'),
        convention=self.convention)
    self.batch_size = sharding.check_batch_size(
        config.eval.get('batch_size') or DEFAULT_BATCH_PER_DEVICE * mesh.size, mesh,
        'eval.batch_size')
    self._graphdef, self._state = nnx.split(model)
    self._predict_fns: dict[int, Callable] = {}

  def __repr__(self) -> str:
    return (f'CamModel({self.meta["model"]}, {len(self.class_names)} classes, input '
            f'{self.config.data.image_size}² {self.convention.name}, {self.checkpoint})')

  def _predict_fn(self, top_k: int) -> Callable:
    """The jitted pass for `top_k` classes, made once per k."""
    if top_k not in self._predict_fns:
      self._predict_fns[top_k] = evaluate_lib.make_predict_fn(
          self._graphdef, self.mesh, top_k=top_k, saliency=self.method)
    return self._predict_fns[top_k]

  def top_k(self, top_k: int | None = None) -> int:
    return min(top_k or self.config.eval.top_k, len(self.class_names))

  def prepare(self, image: ImageLike, name: str = 'image') -> Prepared:
    """Decodes and transforms one image (`as_pixels`; raises naming it if unusable)."""
    pixels_HW3, source = as_pixels(image, name)
    orig_hw = pixels_HW3.shape[:2]
    window_4 = self.preprocess.window(orig_hw)
    input_SS3 = pipeline.normalize(
        pipeline.crop_resize(pixels_HW3, window_4, self.preprocess.image_size),
        self.convention)
    picture_HW3, scale = viz.fit(pixels_HW3, self.config.viz.max_side, PICTURE_MIN_SIDE)
    return Prepared(source, orig_hw, window_4, input_SS3, picture_HW3, scale)

  def batches(self, images: Iterable[ImageLike],
              skipped: list[tuple[str, str]] | None = None) -> Iterator[list[Prepared]]:
    """Lists of up to `batch_size` prepared images, read one batch at a time. An unusable
    image raises, naming it; with `skipped`, a bad file is logged and `(path, why)`
    appended to it instead."""
    batch = []
    for i, image in enumerate(images):
      try:
        batch.append(self.prepare(image, f'images[{i}]'))
      except images_lib.BadImageError as e:
        if skipped is None:
          raise
        logging.warning('skipped: %s', e)
        skipped.append((os.fspath(image), str(e)))
        continue
      if len(batch) == self.batch_size:
        yield batch
        batch = []
    if batch:
      yield batch

  def predict_batches(self, batches: Iterator[list[Prepared]], top_k: int | None = None
                      ) -> Iterator[tuple[list[Prepared], dict[str, np.ndarray]]]:
    """`(images, host outputs)` per batch of at most `batch_size` prepared images: the
    top k classes and their maps (`evaluate.make_predict_fn`). A short batch is padded
    by repeating its last image (one compiled shape), the padding's outputs dropped.

    The next batch is dispatched before the previous one's outputs are fetched, so that
    the device works while the host decodes and draws. With several processes every
    process makes the same (collective) calls: one whose images are done feeds blank
    batches until every process is done.
    """
    predict = self._predict_fn(self.top_k(top_k))
    size = self.preprocess.image_size
    blank = np.zeros((size, size, 3), np.float32)
    pending = None
    while True:
      batch = next(batches, None)
      if jax.process_count() > 1:
        if not sharding.sum_across_processes({'left': int(batch is not None)})['left']:
          break
      elif batch is None:
        break
      batch = batch or []
      if len(batch) > self.batch_size:
        raise ValueError(f'a batch of {len(batch)} images; at most {self.batch_size}')
      inputs = [im.input_SS3 for im in batch] or [blank]
      inputs += [inputs[-1]] * (self.batch_size - len(inputs))
      for im in batch:
        im.input_SS3 = None  # in the device batch now
      arrays = sharding.shard_batch({'image': np.stack(inputs),
                                     'label': np.zeros(self.batch_size, np.int32)}, self.mesh)
      out = predict(self._state, arrays['image'], arrays['label'])
      if pending is not None:
        yield pending[0], sharding.to_host(pending[1], self.mesh)
      pending = (batch, out)
    if pending is not None:
      yield pending[0], sharding.to_host(pending[1], self.mesh)

  def prediction(self, image: Prepared, logits_C: np.ndarray, classes_k: np.ndarray,
                 maps_khw: np.ndarray) -> Prediction:
    """One image's `Prediction` from the device's outputs: probabilities, names, boxes."""
    probs_C = special.softmax(logits_C.astype(np.float64))
    boxes_k4 = np.concatenate([
        box_stage.paper_boxes_on_original(m, image.window_4, image.orig_hw,
                                          (self.config.eval.cam_threshold,))
        for m in maps_khw]).astype(np.int64)
    viz_style = dict(colormap=self.config.viz.colormap,
                     heat_weight=self.config.viz.heat_weight,
                     image_weight=self.config.viz.image_weight)
    classes_k = np.asarray(classes_k, np.int64)
    return Prediction(source=image.source, orig_hw=tuple(image.orig_hw),
                      window_4=np.asarray(image.window_4), classes=classes_k,
                      names=[self.class_names[c] for c in classes_k],
                      scores=probs_C[classes_k], boxes=boxes_k4,
                      maps_khw=np.asarray(maps_khw, np.float32),
                      picture_HW3=image.picture_HW3, scale=image.scale, viz_style=viz_style)

  def predict(self, images: ImageLike | Iterable[ImageLike], top_k: int | None = None
              ) -> list[Prediction]:
    """The `Prediction` of each image (one image, or a list), in order.

    Images: paths, PIL images or uint8 arrays (H×W, H×W×3, H×W×4), of any size, or one
    N×H×W×3 array. Raises
    on an unusable one, naming it (images.BadImageError for a file, ValueError for an
    array). `top_k` default `config.eval.top_k`; at most the number of classes.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
      images = list(images)  # a batch of same-sized images
    elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
      images = [images]
    k = self.top_k(top_k)
    out = []
    for batch, host in self.predict_batches(self.batches(images), k):
      out += [self.prediction(im, host['logits_BC'][i], host['classes_Bk'][i],
                              host['maps_BThw'][i, :k]) for i, im in enumerate(batch)]
    return out


def load(path: str, config: ml_collections.ConfigDict | None = None, *,
         mesh: jax.sharding.Mesh | None = None) -> CamModel:
  """A network restored for inference from `path`: a workdir (its latest checkpoint), its
  checkpoints/ or best/ folder, one step folder, or a converted pretrained checkpoint
  (`python -m cam_jax.convert`).

  `config`: None reads everything from the checkpoint (`inference_config`); a config
  (e.g. the file the run was trained with) sets the evaluation fields (`eval.top_k`,
  `eval.cam_threshold`, `eval.batch_size`, `data.eval_crop`, `viz.*`). `mesh`: default
  every local device. Raises FileNotFoundError if there is no checkpoint at `path`.
  """
  mesh = mesh or sharding.make_mesh()
  if config is None:
    meta, _ = checkpoints.read_meta_at(path)
    config = inference_config(meta)
  model, meta, where, config = restore.restore_for_inference(config, path, mesh)
  return CamModel(model, config, meta, where, restore.class_names(config, meta), mesh)
