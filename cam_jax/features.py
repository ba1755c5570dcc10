"""Deep features of a trained or converted network over a dataset (paper Sec. 4).

`extract` runs the network over a split on every device of every process and returns,
per image, the output of its global pooling layer (`pooled_NK`: what the linear head
reads, GAP or GMP), its label, its index in the split and its file name, and on request
the last convolutional maps (`maps_NhwK`, what CAMs weight). Images are seen as the
evaluation sees them (`config.data.eval_crop`), or through given crops (`crop_boxes`,
the CAM and ground-truth crops of Table 4).

Cache. With `cache_dir`, each process writes its rows as chunk files
`part-P-of-N.chunk-C.npz` (every `CHUNK_BATCHES` batches, atomically) beside a
`meta.json` that fingerprints what they were computed from (checkpoint, network, data,
crop); a rerun reads the finished chunks and computes only the rest, and a cache whose
fingerprint differs is discarded. The collective pass stays in step across processes:
they all resume from the chunk that every one of them has finished. Every process then
reads every part, so the cache folder must be one that every process sees (as
checkpoints must).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from cam_jax import io_utils
from cam_jax import sharding
from cam_jax.data import conventions
from cam_jax.data import pipeline
from cam_jax.models import layers

CHUNK_BATCHES = 16  # batches of a process per cache chunk file
_META = 'meta.json'


@dataclasses.dataclass
class Features:
  """One split's features, in index order (row i is the i-th image of the split)."""
  pooled_NK: np.ndarray  # float32: the global pooling's output, the head's input
  labels_N: np.ndarray  # int64
  indices_N: np.ndarray  # int64: the image's position in the split
  file_names: list[str]
  maps_NhwK: np.ndarray | None = None  # float32 last conv maps, when asked for

  def __len__(self) -> int:
    return len(self.labels_N)


def pooling_of(model: nnx.Module) -> str:
  """The global pooling ('avg' or 'max') between `aux['features']` and the linear head;
  raises, naming the network, where there is none (fully connected classifiers, NIN)."""
  pooling = getattr(model, 'pooling', None)
  if pooling is None or not isinstance(getattr(model, 'head', None), nnx.Linear):
    raise TypeError(f'{type(model).__name__} has no global pooling layer before a linear '
                    'head: its features are not the GAP features of the paper (Sec. 4). Use '
                    'a GAP/GMP network (e.g. googlenet_gap, vgg16_gap, small_gap) or the '
                    'original GoogLeNet (its average pool).')
  layers.check_pooling(pooling)
  return pooling


def make_features_fn(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, pooling: str, *,
                     with_maps: bool = False) -> Callable:
  """`features(state, images_BHWC) -> {'pooled_BK'[, 'maps_BhwK']}` (float32), jitted over
  the mesh."""

  def features(state, images_BHWC):
    model = nnx.merge(graphdef, state)
    _, aux = model(images_BHWC, train=False)
    feats_BhwK = aux['features']
    out = {'pooled_BK': layers.global_pool(feats_BhwK, pooling).astype(jnp.float32)}
    if with_maps:
      out['maps_BhwK'] = feats_BhwK.astype(jnp.float32)
    return out

  batch = sharding.batch_sharding(mesh)
  return jax.jit(features, in_shardings=(sharding.replicated(mesh), batch), out_shardings=batch)


def _part_prefix(cache_dir: str) -> str:
  return os.path.join(cache_dir, f'part-{jax.process_index()}-of-{jax.process_count()}')


def _chunk_path(cache_dir: str, chunk: int) -> str:
  return f'{_part_prefix(cache_dir)}.chunk-{chunk:05d}.npz'


def _finished_chunks(cache_dir: str) -> int:
  """How many leading chunks this process has on disk."""
  n = 0
  while os.path.exists(_chunk_path(cache_dir, n)):
    n += 1
  return n


def _prepare_cache(cache_dir: str, fingerprint: dict[str, Any]) -> int:
  """The chunk every process resumes from (0 for a new or stale cache)."""
  fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from disk
  meta_path = os.path.join(cache_dir, _META)
  if jax.process_index() == 0:
    if os.path.exists(meta_path):
      with open(meta_path, encoding='utf-8') as f:
        try:
          stale = json.load(f) != fingerprint
        except json.JSONDecodeError:
          stale = True
      if stale:
        logging.warning('%s: features cached from another checkpoint, network, data or crop; '
                        'computing them afresh', cache_dir)
        shutil.rmtree(cache_dir)
    else:
      # No meta: whatever is there was not written by a pass that started properly.
      shutil.rmtree(cache_dir, ignore_errors=True)
    if not os.path.exists(meta_path):
      io_utils.atomic_write_json(meta_path, fingerprint)
  sharding.barrier('features-cache-ready')
  # The smallest count of finished chunks over processes: a one-hot sum gathers them all.
  done = np.zeros(jax.process_count(), np.int64)
  done[jax.process_index()] = _finished_chunks(cache_dir)
  return int(sharding.sum_across_processes({'done': done})['done'].min())


def _concatenated(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def _write_chunk(path: str, rows: list[dict[str, np.ndarray]]) -> None:
  f = io.BytesIO()
  np.savez(f, **_concatenated(rows))
  io_utils.atomic_write_bytes(path, f.getvalue())


def _features(rows: dict[str, np.ndarray], with_maps: bool) -> Features:
  """Features from merged rows (`pooled`, `labels`, `indices`, `file_names`[, `maps`])."""
  return Features(pooled_NK=rows['pooled'], labels_N=rows['labels'],
                  indices_N=rows['indices'], file_names=[str(s) for s in rows['file_names']],
                  maps_NhwK=rows['maps'] if with_maps else None)


def _read_parts(cache_dir: str, with_maps: bool) -> Features:
  """Every process's chunks, merged in index order."""
  paths = sorted(glob.glob(os.path.join(cache_dir, 'part-*.chunk-*.npz')))
  keys = ['pooled', 'labels', 'indices', 'file_names'] + (['maps'] if with_maps else [])
  parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
  for path in paths:
    with np.load(path, allow_pickle=False) as z:
      for k in keys:
        if k not in z.files:
          raise ValueError(f'{path} has no {k!r}: a cache written without maps; delete '
                           f'{cache_dir} or pass cache=False')
        parts[k].append(z[k])
  if not parts['labels']:
    raise ValueError(f'{cache_dir} holds no features')
  merged = {k: np.concatenate(v) for k, v in parts.items()}
  order = np.argsort(merged['indices'], kind='stable')
  merged = {k: v[order] for k, v in merged.items()}
  if len(np.unique(merged['indices'])) != len(order):
    raise ValueError(f'{cache_dir}: the same image in two chunks (parts of two passes with '
                     'different process counts?); delete the folder')
  return _features(merged, with_maps)


def extract(model: nnx.Module, mesh: jax.sharding.Mesh, source: Any, *, image_size: int,
            batch_size: int, convention: conventions.InputConvention,
            crop: str = 'resize', resize_shorter: int | None = None,
            crop_boxes: np.ndarray | None = None, num_examples: int | None = None,
            with_maps: bool = False, cache_dir: str | None = None,
            fingerprint: dict[str, Any] | None = None, max_boxes: int = 32,
            num_threads: int = 4, num_workers: int = 0) -> Features:
  """The features of `source` (every image, or the first `num_examples`) through `model`.

  `batch_size` is global (split over every device of every process). `crop_boxes`
  (N×4 inclusive pixel boxes, one per image) replaces `crop`. With `cache_dir`, the
  pass is resumable (module docstring); `fingerprint` (JSON-able) names what the
  features depend on besides the arguments here (the checkpoint, the dataset's files).
  Several processes need `cache_dir` (a folder they all see): they exchange their rows
  through it.
  """
  pooling = pooling_of(model)
  if cache_dir is None and jax.process_count() > 1:
    raise ValueError('features of several processes are gathered through a cache folder '
                     'that every process sees: pass cache_dir')
  process_batch = sharding.check_batch_size(batch_size, mesh, 'transfer.batch_size')
  graphdef, state = nnx.split(model)
  fn = make_features_fn(graphdef, mesh, pooling, with_maps=with_maps)
  start = 0
  if cache_dir is not None:
    fingerprint = {
        **(fingerprint or {}), 'image_size': image_size, 'batch_size': batch_size,
        'crop': crop, 'resize_shorter': resize_shorter, 'num_examples': num_examples,
        'with_maps': with_maps, 'num_images': len(source),
        'convention': dataclasses.asdict(convention),
        'crop_boxes': None if crop_boxes is None else hashlib.sha256(
            np.ascontiguousarray(crop_boxes, np.int64).tobytes()).hexdigest(),
        'process_count': jax.process_count(),
    }
    start = _prepare_cache(cache_dir, fingerprint)
    if start:
      logging.info('%s: %d chunk(s) of features already computed, resuming', cache_dir, start)
  batches = pipeline.eval_batches(
      source, image_size=image_size, process_batch_size=process_batch, max_boxes=max_boxes,
      num_examples=num_examples, crop=crop, resize_shorter=resize_shorter,
      convention=convention, num_threads=num_threads, num_workers=num_workers,
      crop_boxes=crop_boxes, with_names=True, start_batch=start * CHUNK_BATCHES)
  rows: list[dict[str, np.ndarray]] = []
  chunk = start
  try:
    for i, (batch, n) in enumerate(batches, start=start * CHUNK_BATCHES):
      images = sharding.shard_batch({'image': batch['image']}, mesh)['image']
      out = sharding.to_host(fn(state, images), mesh)
      row = {'pooled': out['pooled_BK'][:n], 'labels': batch['label'][:n].astype(np.int64),
             'indices': batch['index'][:n].astype(np.int64),
             'file_names': np.asarray(batch['file_name'][:n], dtype=str)}
      if with_maps:
        row['maps'] = out['maps_BhwK'][:n]
      rows.append(row)
      if cache_dir is not None and (i + 1) % CHUNK_BATCHES == 0:
        _write_chunk(_chunk_path(cache_dir, chunk), rows)
        rows, chunk = [], chunk + 1
  finally:
    batches.close()
  if cache_dir is None:
    if not rows:
      raise ValueError('no images to extract features of')
    return _features(_concatenated(rows), with_maps)
  if rows:
    _write_chunk(_chunk_path(cache_dir, chunk), rows)
  sharding.barrier('features-written')
  return _read_parts(cache_dir, with_maps)
