r"""The threshold sweep against labelling, on CAM-like 224 x 224 maps.

  python benchmarks/box_sweep.py [--maps=20] [--rounds=5] [--interval=0.01]
                                 [--baseline=FILE] [--numba]

About 10 s as is on 2 cores; `--interval=0.001 --maps=8 --rounds=3` about 1 min.

Maps: a 14 x 14 normal random map upsampled bilinearly to 224 x 224 with half-pixel
centres (`box_stage.on_input_grid`, as `cam.class_activation_maps` resizes), then min-max
normalised (`boxes.normalize_map`). Thresholds: wsolevaluation's grid
`np.arange(0, 1, interval)` (100 at 0.01). Times per map, the median over rounds; each
round times every method over all maps, one after the other, so that load on the
machine falls on all of them alike:

  (a) one threshold: `largest_component_box(map >= 0.2)` (threshold + scipy labelling);
  (b) labelling at each τ: (a) for every τ of the grid (what wsolevaluation does);
  (c) the sweep: `box_sweep.sweep_largest_boxes(map, grid)`;
  (d) every component's box at each τ by labelling: `ndimage.label` + `find_objects`;
  (e) the sweep of every component: `box_sweep.sweep_boxes(map, grid)`.

The goal is (c) <= 5 x (a). Before timing, (c) and (e) are checked equal to (b) and
(d) on every map. `--baseline=FILE` adds (c0) and (e0), (c) and (e) from another
version of box_sweep.py, checked and timed alongside: a before/after in one process,
for instance with `git show HEAD:cam_jax/box_sweep.py > /tmp/box_sweep_head.py`.
`--numba` (numba installed; not a dependency of cam_jax) adds

  (f) a largest-box sweep compiled with numba: union-find over the pixels in level
      order, to tell what compiling the obvious algorithm would buy.

The sweep keeps its map-sized temporaries from one call to the next; before it did,
page faults on fresh ones cost ~0.3 ms per map on the 2-core VM, depending on how glibc
hands memory back (MALLOC_MMAP_THRESHOLD_=100000000 MALLOC_TRIM_THRESHOLD_=1000000000 in
the environment showed it).
"""

import importlib.util
import os
import sys
import time

from absl import app, flags
import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax import box_stage, box_sweep, boxes

_MAPS = flags.DEFINE_integer('maps', 20, 'Number of maps.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds; the median is reported.')
_INTERVAL = flags.DEFINE_float('interval', 0.01, 'Threshold grid step.')
_SIZE = flags.DEFINE_integer('size', 224, 'Map side.')
_BASELINE = flags.DEFINE_string('baseline', None,
                                'Another box_sweep.py to time alongside, as (c0) and (e0).')
_NUMBA = flags.DEFINE_bool('numba', False, 'Also time a numba union-find (needs numba).')

_EIGHT_CONNECTED = np.ones((3, 3), bool)


def labelled_component_boxes(mask_HW: np.ndarray) -> np.ndarray:
  labels_HW, num = ndimage.label(mask_HW, structure=_EIGHT_CONNECTED)
  if num == 0:
    height, width = mask_HW.shape
    return np.array([[0, 0, width - 1, height - 1]], np.int32)
  return np.array([[cols.start, rows.start, cols.stop - 1, rows.stop - 1]
                   for rows, cols in ndimage.find_objects(labels_HW)], np.int32)


def make_numba_sweeps():
  """(f): largest box at every τ (non-strict), as a function of (map, grid)."""
  import numba  # pylint: disable=g-import-not-at-top

  @numba.njit
  def find(parent, p):
    while parent[p] != p:
      parent[p] = parent[parent[p]]
      p = parent[p]
    return p

  @numba.njit
  def sweep_levels(level, height, width, num_levels):
    n = height * width
    starts = np.zeros(num_levels + 2, np.int64)
    for p in range(n):
      starts[level[p] + 1] += 1
    for j in range(num_levels + 1):
      starts[j + 1] += starts[j]
    order = np.empty(n, np.int64)
    fill = starts.copy()
    for p in range(n):
      order[fill[level[p]]] = p
      fill[level[p]] += 1
    parent = np.full(n, -1, np.int64)
    stats = np.empty((n, 6), np.int64)  # size, x0, y0, x1, y1, first raster index
    out = np.empty((num_levels, 4), np.int32)
    best = -1
    for j in range(num_levels):
      for k in range(starts[j], starts[j + 1]):
        p = order[k]
        y = p // width
        x = p - y * width
        parent[p] = p
        stats[p, 0] = 1
        stats[p, 1] = x
        stats[p, 2] = y
        stats[p, 3] = x
        stats[p, 4] = y
        stats[p, 5] = p
        r = p
        for yy in range(max(y - 1, 0), min(y + 2, height)):
          for xx in range(max(x - 1, 0), min(x + 2, width)):
            q = yy * width + xx
            if parent[q] < 0:
              continue
            rq = find(parent, q)
            if rq == r:
              continue
            if stats[rq, 0] > stats[r, 0]:
              r, rq = rq, r
            parent[rq] = r
            stats[r, 0] += stats[rq, 0]
            stats[r, 1] = min(stats[r, 1], stats[rq, 1])
            stats[r, 2] = min(stats[r, 2], stats[rq, 2])
            stats[r, 3] = max(stats[r, 3], stats[rq, 3])
            stats[r, 4] = max(stats[r, 4], stats[rq, 4])
            stats[r, 5] = min(stats[r, 5], stats[rq, 5])
        # Only the component of the new pixel changed: it is the only challenger.
        if best >= 0:
          b = find(parent, best)
          if stats[r, 0] < stats[b, 0] or (stats[r, 0] == stats[b, 0] and
                                            stats[r, 5] > stats[b, 5]):
            r = b
        best = r
      if best < 0:
        out[j] = (0, 0, width - 1, height - 1)
      else:
        best = find(parent, best)
        out[j] = (stats[best, 1], stats[best, 2], stats[best, 3], stats[best, 4])
    return out

  def sweep(map_HW, grid_T):
    # Thresholds rounded to the map's dtype, ascending, and each τ's level, as box_sweep.
    values_HW, plan, _ = box_sweep._check_inputs(map_HW, grid_T)  # pylint: disable=protected-access
    num_levels = plan.ascending_T.size
    level_N = num_levels - plan.ascending_T.searchsorted(values_HW.ravel(), 'right')
    return sweep_levels(level_N, *values_HW.shape, num_levels)[plan.level_T]

  return sweep


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  maps = [boxes.normalize_map(box_stage.on_input_grid(rng.normal(size=(14, 14)), _SIZE.value))
          for _ in range(_MAPS.value)]
  grid_T = np.arange(0, 1, _INTERVAL.value)

  methods = {
      '(a) one threshold (0.2), scipy label': lambda m: boxes.largest_component_box(m >= 0.2),
      # float(τ): a Python float compares in the map's float32, as box_sweep and
      # boxes.threshold_mask do; a numpy float64 τ would compare in float64.
      '(b) labelling at each τ': lambda m: [boxes.largest_component_box(m >= t)
                                            for t in grid_T.tolist()],
      '(c) sweep, largest box': lambda m: box_sweep.sweep_largest_boxes(m, grid_T),
      '(d) labelling at each τ, every component': lambda m: [
          labelled_component_boxes(m >= t) for t in grid_T.tolist()],
      '(e) sweep, every component': lambda m: box_sweep.sweep_boxes(m, grid_T),
  }
  checked = ['(c) sweep, largest box']
  if _BASELINE.value:
    spec = importlib.util.spec_from_file_location('baseline_box_sweep', _BASELINE.value)
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    methods['(c0) baseline sweep, largest box'] = (
        lambda m: baseline.sweep_largest_boxes(m, grid_T))
    methods['(e0) baseline sweep, every component'] = lambda m: baseline.sweep_boxes(m, grid_T)
    checked.append('(c0) baseline sweep, largest box')
  if _NUMBA.value:
    union_find_sweep = make_numba_sweeps()
    methods['(f) numba union-find, largest box'] = lambda m: union_find_sweep(m, grid_T)
    checked.append('(f) numba union-find, largest box')

  for map_HW in maps:  # exactness first (and warm-up, numba's compile included)
    labelled_T4 = methods['(b) labelling at each τ'](map_HW)
    for name in checked:
      np.testing.assert_array_equal(methods[name](map_HW), labelled_T4, err_msg=name)
    labelled = methods['(d) labelling at each τ, every component'](map_HW)
    for name in methods:
      if name.startswith('(e'):
        for got, want in zip(methods[name](map_HW).components, labelled):
          np.testing.assert_array_equal(got, want, err_msg=name)

  times = {name: [] for name in methods}
  for _ in range(_ROUNDS.value):
    for name, fn in methods.items():
      start = time.perf_counter()
      for map_HW in maps:
        fn(map_HW)
      times[name].append((time.perf_counter() - start) / len(maps))
  per_map = {name: float(np.median(t)) for name, t in times.items()}
  one = per_map['(a) one threshold (0.2), scipy label']

  print(f'# {_MAPS.value} maps {_SIZE.value}x{_SIZE.value} (14x14 upsampled), '
        f'{grid_T.size} thresholds, median of {_ROUNDS.value} rounds, '
        f'{os.cpu_count()} cores, numpy {np.__version__}, {time.strftime("%Y-%m-%d")}')
  print('| method | ms per map | x (a) |')
  print('|---|---:|---:|')
  for name, seconds in per_map.items():
    print(f'| {name} | {seconds * 1e3:.3f} | {seconds / one:.2f} |')
  print(f'sweep vs labelling at each τ: largest box {per_map["(b) labelling at each τ"] / per_map["(c) sweep, largest box"]:.1f}x faster, '
        f'every component {per_map["(d) labelling at each τ, every component"] / per_map["(e) sweep, every component"]:.1f}x faster')


if __name__ == '__main__':
  app.run(main)
