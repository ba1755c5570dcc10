"""Streaming localization metrics of Choe et al. (CVPR 2020): MaxBoxAcc, MaxBoxAccV2, PxAP.

Definitions ("Evaluating Weakly Supervised Object Localization Methods Right" and its
code, clovaai/wsolevaluation `evaluation.py`), with s the min-max normalised CAM:

- BoxAcc(τ, δ) = fraction of images whose box from `s >= τ` has IoU >= δ with some
  ground-truth box of the image. MaxBoxAcc = max_τ BoxAcc(τ, 0.5), the box being the
  largest component's. MaxBoxAccV2 = mean over δ in {0.3, 0.5, 0.7} of max_τ BoxAcc(τ, δ),
  each δ with its own best τ, and at each τ every component gives a box (the best one
  counts).
- PxAP = Σ_l PxPrec(τ_l) (PxRec(τ_l) - PxRec(τ_{l-1})) over thresholds in descending
  order, PxPrec and PxRec being the pixel precision and recall of `s >= τ` against the
  foreground masks of all images pooled (not averaged per image).

Nothing here sees a map twice or keeps one: `BoxAccuracy` keeps a (D, T) table of hit
counts, `PixelAP` two histograms of T + 1 bins, all int64. `state()` returns these as
plain arrays that add up across processes (sum each array elementwise, then
`from_state`), and `merge` does the same in one process.

The box stage (threshold, components, boxes, IoU) is `cam_jax.boxes`, not this module;
`BoxAccuracy` takes the IoUs it produces. wsolevaluation's box stage differs from its
paper's `s >= τ`: it quantises the map to uint8, keeps
`> int(τ * max)` (strict; max is 255 once normalised) and takes OpenCV contours
(`RETR_TREE`, hole contours included, the largest by polygon area); its code also sets
the right/bottom corner to `x + w` / `y + h`, one pixel past the contour, clipped to
the image, and gives an empty map the box `[0, 0, 0, 0]`. Two consequences worth knowing: at
τ = 0 cam_jax's mask is the whole image (`s >= 0` everywhere) where wsolevaluation keeps
only `s > 0`; and RETR_TREE's hole contours never win "largest" (the outer contour
encloses them) but do add boxes to its multi-contour MaxBoxAccV2. Each difference has a
golden case in tests/test_protocol_parity.py.

Where this module differs from wsolevaluation's code, or its code from its paper:

1. Fractions in [0, 1]; wsolevaluation prints and returns percentages.
2. Zero images: wsolevaluation's BoxAcc divides by zero (nan); `result()` raises.
3. Best τ: wsolevaluation returns only the maxima; `result()` also gives the τ that
   attains each, the lowest one on ties.
4. IoU test `>= δ` as in wsolevaluation (which writes δ as integer percent / 100, the
   same doubles 0.3, 0.5, 0.7). IoUs are compared in float64; pass float64 IoUs
   (`cam_jax.boxes.iou` gives them): an IoU of exactly 7/10 computed in float32 is
   0.69999999 and misses δ = 0.7.
5. The threshold grid is wsolevaluation's `np.arange(0, 1, interval)` kept bit for bit
   (`threshold_grid`): element k is `k * interval` in float64, not the decimal, e.g.
   with interval 0.01 element 35 is 0.35000000000000003, above a float64 score of 0.35.
   Its defaults differ between entry points: 0.001 in `evaluate_wsol`, `config.py` and
   inference, 0.01 on the `evaluation.py` command line. `PixelAP` defaults to 0.001;
   `BoxAccuracy` takes the grid explicitly; evaluation passes the grid of
   `config.eval.box_threshold_step` (0.01 by default, 0.001 as an option).
6. PxAP thresholds are non-strict, `s >= τ`, as in the paper and as in wsolevaluation,
   whose `np.histogram` bins `[t_i, t_{i+1})` are closed on the left. wsolevaluation
   appends the edges 1, 2 and 3, which adds two operating points: τ = 1 (only pixels
   scoring exactly 1) and τ = 2, where nothing is predicted and the recall is 0, the
   start of the curve. Here the τ = 1 point is kept as the last bin and the τ = 2 point
   is implicit. The grid must start at 0 and stay below 1: np.histogram would silently
   drop scores below its first edge, from the totals too.
7. Comparison precision: wsolevaluation demands float64 maps. A float32 map is compared
   here in float32, against the grid rounded once to float32, as `cam_jax.boxes`'
   `threshold_mask` compares (`norm >= float(τ)`), so that the pixels counted as
   predicted at τ are those the box stage keeps at τ; float32(0.7) counts at τ = 0.7.
   Every other dtype is compared in float64, which for float64 maps is exactly
   wsolevaluation's comparison.
8. PxAP is the right-endpoint rectangle sum of the raw curve, as in the paper and the
   code: no interpolated (running-maximum) precision as in PASCAL VOC, and no point at
   recall 0 with precision 1; the first rectangle, from recall 0 to the recall of the
   strictest threshold that predicts any foreground pixel, takes that threshold's
   precision. Thresholds that predict nothing add no recall and are skipped
   (wsolevaluation masks them out; they would be 0 * nan).
9. Ignore pixels are neither positive nor negative. wsolevaluation builds its ignore
   region as the ignore boxes minus the foreground, so where a caller's `ignore_HW`
   overlaps `mask_HW` the foreground wins here too.
10. No foreground pixel in the whole set: wsolevaluation raises RuntimeError, so does
    `result()`; PxAP is undefined then. A set without background pixels gives PxAP 1.
11. wsolevaluation evaluates PxAP at 224 x 224: masks resized (nearest), CAMs resized
    (bicubic) and then min-max normalised. Here the caller picks the resolution; the
    scores and masks only have to share it.
12. Counts are int64 (exact at any size); wsolevaluation keeps float64 histograms.
13. wsolevaluation reports no best threshold and no pixel IoU for PxAP; neither is
    computed here (`result()` returns the curve).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

# MaxBoxAccV2's IoU thresholds (wsolevaluation's default `iou_threshold_list` 30 50 70).
WSOL_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
# MaxBoxAcc (the CVPR version) is the accuracy at this δ.
_MAX_BOX_ACC_IOU = 0.5


def threshold_grid(interval: float = 0.001) -> np.ndarray:
  """wsolevaluation's CAM threshold grid `np.arange(0, 1, interval)`, float64, ascending.

  Bit for bit theirs, including its non-decimal values (module docstring, item 5).
  """
  interval = float(interval)
  if not 0 < interval <= 1:
    raise ValueError(f'interval must be in (0, 1], got {interval}')
  return np.arange(0, 1, interval)


def _check_grid(thresholds: ArrayLike, name: str) -> np.ndarray:
  grid_T = np.asarray(thresholds, dtype=np.float64)
  if grid_T.ndim != 1 or grid_T.size == 0:
    raise ValueError(f'{name} must be a non-empty 1-D array, got shape {grid_T.shape}')
  if not np.all(np.isfinite(grid_T)):
    raise ValueError(f'{name} must be finite')
  # Ascending order is what makes "the lowest τ on ties" and the histogram bins meaningful.
  if np.any(np.diff(grid_T) <= 0):
    raise ValueError(f'{name} must be strictly increasing')
  return grid_T


def _check_same(name: str, mine: np.ndarray, theirs: np.ndarray) -> None:
  if not np.array_equal(mine, theirs):
    raise ValueError(f'cannot merge accumulators with different {name}')


def _check_counts(state: Mapping[str, ArrayLike], key: str, shape: tuple[int, ...]) -> np.ndarray:
  if key not in state:
    raise ValueError(f'state lacks {key!r}; it has {sorted(state)}')
  counts = np.asarray(state[key])
  if counts.shape != shape:
    raise ValueError(f'state[{key!r}] must have shape {shape}, got {counts.shape}')
  if counts.dtype.kind not in 'iu' or np.any(counts < 0):
    raise ValueError(f'state[{key!r}] must hold non-negative integer counts')
  return counts.astype(np.int64)


def _check_mask(mask_HW: ArrayLike, name: str, shape: tuple[int, ...]) -> np.ndarray:
  mask_HW = np.asarray(mask_HW)
  # A 0/1/255 uint8 annotation read as bool would make the ignore pixels foreground.
  if mask_HW.dtype != bool:
    raise TypeError(f'{name} must be a bool array, got dtype {mask_HW.dtype}')
  if mask_HW.shape != shape:
    raise ValueError(f'{name} has shape {mask_HW.shape}, scores_HW {shape}')
  return mask_HW


class BoxAccuracy:
  """BoxAcc(τ, δ) accumulated over images; MaxBoxAcc and MaxBoxAccV2 from it.

  The caller computes the boxes: per image and τ, the best IoU between the box(es) at τ
  and any ground-truth box. With the largest component's box per τ the result's
  `max_box_acc` is MaxBoxAcc; with every component's box per τ (the max IoU over them)
  and the default δs, `max_box_acc_v2` is MaxBoxAccV2. The accumulator cannot tell
  which was fed: use one instance per box scheme.

  Attributes:
    thresholds_T: the CAM threshold grid τ, float64, ascending.
    iou_thresholds_D: the IoU thresholds δ, float64.
    counts_DT: int64, images whose IoU at τ_t is >= δ_d.
    num_images: images accumulated.
  """

  def __init__(self, thresholds: ArrayLike,
               iou_thresholds: Sequence[float] = WSOL_IOU_THRESHOLDS):
    self.thresholds_T = _check_grid(thresholds, 'thresholds')
    self.iou_thresholds_D = np.asarray(iou_thresholds, dtype=np.float64)
    if self.iou_thresholds_D.ndim != 1 or self.iou_thresholds_D.size == 0:
      raise ValueError(f'iou_thresholds must be a non-empty sequence, got {iou_thresholds!r}')
    if not np.all((self.iou_thresholds_D >= 0) & (self.iou_thresholds_D <= 1)):
      raise ValueError(f'iou_thresholds must lie in [0, 1], got {iou_thresholds!r}')
    self.counts_DT = np.zeros((self.iou_thresholds_D.size, self.thresholds_T.size), np.int64)
    self.num_images = 0

  def update(self, ious_NT: ArrayLike) -> None:
    """Adds N images; `ious_NT[n, t]` is image n's best IoU at threshold τ_t, in [0, 1]."""
    ious_NT = np.asarray(ious_NT)
    num_thresholds = self.thresholds_T.size
    if ious_NT.ndim != 2 or ious_NT.shape[1] != num_thresholds:
      raise ValueError(f'ious_NT must have shape (N, {num_thresholds}), got {ious_NT.shape}')
    ious_NT = ious_NT.astype(np.float64, copy=False)
    # Also catches nan, which would otherwise count silently as a miss at every δ.
    if not np.all((ious_NT >= 0) & (ious_NT <= 1)):
      raise ValueError('ious_NT must lie in [0, 1] (no nan)')
    for d, iou_threshold in enumerate(self.iou_thresholds_D):
      self.counts_DT[d] += np.count_nonzero(ious_NT >= iou_threshold, axis=0)
    self.num_images += ious_NT.shape[0]

  def merge(self, other: BoxAccuracy) -> BoxAccuracy:
    """Adds `other`'s counts (same grids) to this accumulator; returns self."""
    _check_same('thresholds', self.thresholds_T, other.thresholds_T)
    _check_same('iou_thresholds', self.iou_thresholds_D, other.iou_thresholds_D)
    self.counts_DT += other.counts_DT
    self.num_images += other.num_images
    return self

  def state(self) -> dict[str, np.ndarray]:
    """The counts as int64 arrays; states of several processes add up elementwise."""
    return {'counts_DT': self.counts_DT.copy(),
            'num_images': np.array(self.num_images, np.int64)}

  @classmethod
  def from_state(cls, state: Mapping[str, ArrayLike], thresholds: ArrayLike,
                 iou_thresholds: Sequence[float] = WSOL_IOU_THRESHOLDS) -> BoxAccuracy:
    """An accumulator holding `state` (e.g. the sum of every process's `state()`)."""
    acc = cls(thresholds, iou_thresholds)
    acc.counts_DT = _check_counts(state, 'counts_DT', acc.counts_DT.shape)
    acc.num_images = int(_check_counts(state, 'num_images', ()))
    if np.any(acc.counts_DT > acc.num_images):
      raise ValueError('state counts more hits than images')
    return acc

  def result(self) -> dict[str, Any]:
    """The metrics, fractions in [0, 1].

    Returns:
      box_acc_DT: BoxAcc(τ_t, δ_d).
      max_box_acc_D: max over τ, for each δ.
      best_threshold_D: the τ attaining it, the lowest on ties.
      max_box_acc: max_box_acc_D at δ = 0.5 (absent if 0.5 is not among the δs).
      max_box_acc_v2: the mean of max_box_acc_D.
      num_images: N.

    Raises:
      RuntimeError: if no image was accumulated.
    """
    n = self.num_images
    if n == 0:
      raise RuntimeError('BoxAccuracy.result() with no images: the accuracy is 0/0')
    best_D = np.argmax(self.counts_DT, axis=1)  # the first maximum: lowest τ
    max_counts_D = self.counts_DT[np.arange(self.counts_DT.shape[0]), best_D]
    out = {
        'box_acc_DT': self.counts_DT / n,
        'max_box_acc_D': max_counts_D / n,
        'best_threshold_D': self.thresholds_T[best_D],
        # One division of the summed counts: 4 of 3 x 3 reads 4/9 exactly.
        'max_box_acc_v2': float(max_counts_D.sum() / (max_counts_D.size * n)),
        'num_images': n,
    }
    half = np.flatnonzero(self.iou_thresholds_D == _MAX_BOX_ACC_IOU)
    if half.size:
      out['max_box_acc'] = float(max_counts_D[half[0]] / n)
    return out


class PixelAP:
  """PxAP, the area under the pixel precision-recall curve, over streamed score maps.

  Histograms, not maps: a pixel of score s falls in bin k with
  `thresholds_K[k] <= s < thresholds_K[k + 1]`, the last bin holding s == 1, so the
  pixels predicted at `τ = thresholds_K[k]` (`s >= τ`) are those of bins k and up.

  Attributes:
    thresholds_T: the grid, float64, ascending, from 0 and below 1.
    thresholds_K: the operating points, the grid and 1.0 (K = T + 1).
    positive_K: int64 histogram of the foreground pixels' scores.
    negative_K: int64 histogram of the background pixels' scores (ignore excluded).
    num_images: maps accumulated.
  """

  def __init__(self, thresholds: ArrayLike | None = None):
    grid_T = threshold_grid() if thresholds is None else _check_grid(thresholds, 'thresholds')
    if grid_T[0] != 0 or grid_T[-1] >= 1:
      raise ValueError('thresholds must start at 0 and stay below 1, so that every pixel '
                       f'falls in a bin; got {grid_T[0]} .. {grid_T[-1]}')
    self.thresholds_T = grid_T
    self.thresholds_K = np.append(grid_T, 1.0)
    # float32 maps are binned against the grid rounded to float32 (module docstring, 7).
    self._thresholds32_K = self.thresholds_K.astype(np.float32)
    if np.any(np.diff(self._thresholds32_K) <= 0):
      raise ValueError('thresholds closer together than float32 can tell apart')
    self.positive_K = np.zeros(self.thresholds_K.size, np.int64)
    self.negative_K = np.zeros(self.thresholds_K.size, np.int64)
    self.num_images = 0

  def update(self, scores_HW: ArrayLike, mask_HW: ArrayLike,
             ignore_HW: ArrayLike | None = None) -> None:
    """Adds one map.

    Args:
      scores_HW: the min-max normalised CAM in [0, 1] at the mask's resolution.
      mask_HW: bool, the foreground (the union of the instances' masks).
      ignore_HW: bool or None, pixels that count neither way; foreground wins where it
        overlaps `mask_HW`.
    """
    scores_HW = np.asarray(scores_HW)
    if scores_HW.ndim != 2:
      raise ValueError(f'scores_HW must be 2-D, got shape {scores_HW.shape}')
    positive_HW = _check_mask(mask_HW, 'mask_HW', scores_HW.shape)
    negative_HW = ~positive_HW
    if ignore_HW is not None:
      negative_HW &= ~_check_mask(ignore_HW, 'ignore_HW', scores_HW.shape)
    if scores_HW.dtype == np.float32:
      edges_K = self._thresholds32_K
    else:
      scores_HW = scores_HW.astype(np.float64, copy=False)
      edges_K = self.thresholds_K
    if not np.all((scores_HW >= 0) & (scores_HW <= 1)):
      raise ValueError('scores_HW must lie in [0, 1] (no nan); min-max normalise the CAM')
    # side='right' counts the edges <= s: bin k holds thresholds_K[k] <= s, i.e. `>=`.
    bins_HW = np.searchsorted(edges_K, scores_HW, side='right') - 1
    num_bins = self.thresholds_K.size
    self.positive_K += np.bincount(bins_HW[positive_HW], minlength=num_bins)
    self.negative_K += np.bincount(bins_HW[negative_HW], minlength=num_bins)
    self.num_images += 1

  def merge(self, other: PixelAP) -> PixelAP:
    """Adds `other`'s histograms (same grid) to this accumulator; returns self."""
    _check_same('thresholds', self.thresholds_T, other.thresholds_T)
    self.positive_K += other.positive_K
    self.negative_K += other.negative_K
    self.num_images += other.num_images
    return self

  def state(self) -> dict[str, np.ndarray]:
    """The histograms as int64 arrays; states of several processes add up elementwise."""
    return {'positive_K': self.positive_K.copy(), 'negative_K': self.negative_K.copy(),
            'num_images': np.array(self.num_images, np.int64)}

  @classmethod
  def from_state(cls, state: Mapping[str, ArrayLike],
                 thresholds: ArrayLike | None = None) -> PixelAP:
    """An accumulator holding `state` (e.g. the sum of every process's `state()`)."""
    acc = cls(thresholds)
    acc.positive_K = _check_counts(state, 'positive_K', acc.positive_K.shape)
    acc.negative_K = _check_counts(state, 'negative_K', acc.negative_K.shape)
    acc.num_images = int(_check_counts(state, 'num_images', ()))
    return acc

  def result(self) -> dict[str, Any]:
    """PxAP and its curve.

    Returns:
      pxap: the area under the precision-recall curve, in [0, 1].
      thresholds_K: the operating points τ, ascending (the grid and 1.0).
      precision_K: pixel precision of `s >= τ`; nan where no pixel is predicted.
      recall_K: pixel recall of `s >= τ`; recall_K[0] is 1.
      num_images, num_positive_pixels, num_negative_pixels.

    Raises:
      RuntimeError: if no map was accumulated or no pixel is foreground (the recall is
        0/0; wsolevaluation raises too).
    """
    if self.num_images == 0:
      raise RuntimeError('PixelAP.result() with no maps accumulated')
    num_positive = int(self.positive_K.sum())
    if num_positive == 0:
      raise RuntimeError('PixelAP.result() with no foreground pixel: recall is 0/0')
    # Pixels predicted at thresholds_K[k] are those in bins k and up: suffix sums.
    tp_K = np.cumsum(self.positive_K[::-1])[::-1]
    fp_K = np.cumsum(self.negative_K[::-1])[::-1]
    predicted_K = tp_K + fp_K
    precision_K = np.divide(tp_K, predicted_K, out=np.full(tp_K.shape, np.nan),
                            where=predicted_K > 0)
    recall_K = tp_K / num_positive
    # Walk from the strictest point (τ = 1) to τ = 0 (recall 1), starting at recall 0:
    # the point "τ = 2" of wsolevaluation, where nothing is predicted. Each point adds
    # its precision times the recall it gained over the next stricter point.
    gain_K = recall_K - np.append(recall_K[1:], 0.0)
    # A gain needs a new true positive, so its precision is defined; the points with
    # no gain, those predicting nothing among them, add nothing.
    gained_K = gain_K > 0
    pxap = float(np.sum((precision_K[gained_K] * gain_K[gained_K])[::-1]))
    return {
        'pxap': pxap,
        'thresholds_K': self.thresholds_K.copy(),
        'precision_K': precision_K,
        'recall_K': recall_K,
        'num_images': self.num_images,
        'num_positive_pixels': num_positive,
        'num_negative_pixels': int(self.negative_K.sum()),
    }
