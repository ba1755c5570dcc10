"""`--mode=localize`: CAMs, boxes and pictures for image files, from a trained checkpoint.

  python -m cam_jax.main --config=CONFIG --workdir=DIR --mode=localize --images=PATH_OR_GLOB

`--images` is one file, a folder (its files, sorted, not recursive; hidden files left out,
as a glob's `*` does) or a glob. Each image, of any size and colour mode, goes through the
eval transform of the config (`data.eval_crop`), in batches of `eval.batch_size`; the
device gives the top-k classes (`eval.top_k`) and their maps, and the host writes, in
the output folder (default DIR/localize/):

- `<name>.overlay.png`: the top-1 class's map over the image (`config.viz`), its box red;
- `<name>.top5.png`: the paper's Fig. 4 layout, one overlay per top-k class with its
  name, softmax score and box;
- `predictions.jsonl`: one line per image, `{"file", "height", "width", "top_k":
  [{"class", "name", "score", "box"}, ...], "overlay", "figure"}`, written atomically.

`<name>` is the file's stem, with `-2`, `-3`, ... added when stems collide. Boxes are the
paper's (`eval.cam_threshold` of each map's max, largest component), `(x0, y0, x1, y1)`
with inclusive integer corners in the ORIGINAL image's pixel grid,
whatever the network saw. Pictures of images longer than `viz.max_side` are shrunk,
those shorter than `inference.PICTURE_MIN_SIDE` upscaled by an integer factor.

Images are turned upright as their EXIF Orientation tag says (a phone's photo, as a
viewer shows it); boxes are in that upright grid. Files that cannot be used (not an
image, truncated, unreadable, not a regular file) are skipped with a warning naming
each; `main` then exits with status `EXIT_SKIPPED` (3).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os

import jax
import ml_collections
from absl import logging

from cam_jax import inference
from cam_jax import io_utils
from cam_jax import restore
from cam_jax import sharding
from cam_jax import viz

EXIT_SKIPPED = 3  # main's exit status when some file was skipped
PREDICTIONS = 'predictions.jsonl'


@dataclasses.dataclass
class Summary:
  """What `localize` did: images written (by every process), and `(path, why)` of each
  file skipped (all of them in process 0, its own elsewhere; `num_skipped` counts all)."""
  output_dir: str
  checkpoint: str
  written: int
  skipped: list[tuple[str, str]]
  num_skipped: int = 0


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

def list_images(spec: str) -> list[str]:
  """The paths `--images` names: a file, a folder's entries (sorted, not recursive, no
  hidden ones), or a glob's matches (sorted). Raises FileNotFoundError if none."""
  if os.path.isdir(spec):
    paths = sorted(os.path.join(spec, n) for n in os.listdir(spec) if not n.startswith('.'))
    if not paths:
      raise FileNotFoundError(f'--images={spec!r}: the folder holds no file')
    return paths
  if os.path.lexists(spec):
    return [spec]
  paths = sorted(glob.glob(spec))
  if not paths:
    raise FileNotFoundError(f'--images={spec!r} matches no file (expected an image file, a '
                            'folder of images or a glob such as "photos/*.jpg")')
  return paths


def output_names(paths: list[str]) -> list[str]:
  """Unique output stems: each file's stem, then `-2`, `-3`, ... for stems seen before.

  Compared case-insensitively, so that 'A.png' and 'a.jpg' do not overwrite each other's
  pictures on macOS or Windows file systems.
  """
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  taken = {s.casefold() for s in stems}
  seen: collections.Counter[str] = collections.Counter()
  names = []
  for stem in stems:
    key = stem.casefold()
    seen[key] += 1
    name = stem
    if seen[key] > 1:
      n = seen[key]
      while f'{stem}-{n}'.casefold() in taken:
        n += 1
      name = f'{stem}-{n}'
      taken.add(name.casefold())
    names.append(name)
  return names


# ---------------------------------------------------------------------------
# Pictures and records
# ---------------------------------------------------------------------------

def _write_image(prediction: inference.Prediction, name: str, output_dir: str
                 ) -> dict[str, object]:
  """Writes the two pictures of one image; returns its JSON record."""
  files = {'overlay': f'{name}.overlay.png', 'figure': f'{name}.top5.png'}
  viz.save_png(os.path.join(output_dir, files['overlay']), prediction.overlay())
  viz.save_png(os.path.join(output_dir, files['figure']), prediction.figure())
  return {**prediction.record(), **files}


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

def _part_path(output_dir: str, index: int, count: int) -> str:
  return os.path.join(output_dir, f'.{PREDICTIONS}.part-{index}-of-{count}.tmp')


def _merge_parts(output_dir: str, count: int) -> list[tuple[str, str]]:
  """Process 0: every process's part, in file order, into predictions.jsonl (atomic);
  the parts are removed. Returns every `(path, why)` skipped."""
  entries = []
  for index in range(count):
    part = _part_path(output_dir, index, count)
    if not os.path.exists(part):
      raise FileNotFoundError(f'{part} (the predictions of process {index}) is missing: '
                              '--output_dir must be a folder every process sees')
    with open(part, encoding='utf-8') as f:
      entries += [json.loads(line) for line in f]
  entries.sort(key=lambda e: e['position'])
  io_utils.atomic_write_text(
      os.path.join(output_dir, PREDICTIONS),
      ''.join(json.dumps(e['record']) + '\n' for e in entries if 'record' in e))
  for index in range(count):
    os.remove(_part_path(output_dir, index, count))
  return [(e['skipped'], e['why']) for e in entries if 'skipped' in e]


def localize(config: ml_collections.ConfigDict, workdir: str, images: str, *,
             checkpoint: str | None = None, output_dir: str | None = None) -> Summary:
  """Localizes the top-k classes of every image `images` names (module docstring).

  `checkpoint`: a workdir, its checkpoints/ or best/ folder, or a step folder (default:
  the latest in `workdir`/checkpoints). `output_dir` default: `workdir`/localize.
  Raises FileNotFoundError if `images` names no file or there is no checkpoint; bad
  files are skipped and listed in the summary.

  With several processes (a multi-host run), each process reads and draws every P-th
  file, the devices of all of them compute together, and process 0 writes
  predictions.jsonl; `images` and `output_dir` must be paths every process sees.
  """
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  paths = list_images(images)
  names = output_names(paths)
  mesh = sharding.make_mesh()
  model, meta, where, config = restore.restore_for_inference(
      config, restore.checkpoint_path(workdir, checkpoint), mesh)
  cam = inference.CamModel(model, config, meta, where, restore.class_names(config, meta),
                           mesh)
  top_k = cam.top_k()
  output_dir = os.path.abspath(output_dir or os.path.join(workdir, 'localize'))
  os.makedirs(output_dir, exist_ok=True)
  count, index = jax.process_count(), jax.process_index()
  positions = list(range(index, len(paths), count))  # this process's files
  logging.info('Localizing %d files (%d in this process) with %s (%d classes, top %d, %s) '
               'into %s', len(paths), len(positions), where, len(cam.class_names), top_k,
               cam.method, output_dir)

  skipped: list[tuple[str, str]] = []
  written = 0
  position_of = {paths[i]: i for i in positions}
  name_of = {paths[i]: names[i] for i in positions}
  # Lines go to a part file as they come (no batch's records wait in memory); process 0
  # merges the parts into predictions.jsonl at the end, atomically: a reader never sees
  # a half-written one.
  part = _part_path(output_dir, index, count)
  try:
    with open(part, 'w', encoding='utf-8') as f:
      batches = cam.batches([paths[i] for i in positions], skipped)
      for batch, out in cam.predict_batches(batches, top_k):
        for i, image in enumerate(batch):
          prediction = cam.prediction(image, out['logits_BC'][i], out['classes_Bk'][i],
                                      out['maps_BThw'][i, :top_k])
          record = _write_image(prediction, name_of[image.source], output_dir)
          f.write(json.dumps({'position': position_of[image.source], 'record': record})
                  + '\n')
        written += len(batch)
        f.flush()
        logging.info('%d/%d files: %d localized, %d skipped', written + len(skipped),
                     len(positions), written, len(skipped))
      for path, why in skipped:
        f.write(json.dumps({'position': position_of[path], 'skipped': path, 'why': why}) + '\n')
      f.flush()
      os.fsync(f.fileno())
    # A collective: once every process is here, every part is complete.
    totals = sharding.sum_across_processes({'written': written, 'skipped': len(skipped)})
    if index == 0:
      skipped = _merge_parts(output_dir, count)
  except BaseException:
    if os.path.exists(part):
      os.unlink(part)
    raise

  logging.info('Localized %d of %d files: pictures and %s in %s', totals['written'],
               len(paths), PREDICTIONS, output_dir)
  if skipped:
    logging.warning('Skipped %d bad file(s): %s', len(skipped),
                    ', '.join(path for path, _ in skipped))
  return Summary(output_dir=output_dir, checkpoint=where, written=totals['written'],
                 skipped=skipped, num_skipped=totals['skipped'])
