"""Golden cases for cam_jax.metrics, each expected value worked out by hand in the comments.

In the manner of wsolevaluation's evaluation_test.py: small hand-made inputs with the
exact counts and metric values expected, plus a brute-force reference (every threshold,
every pixel) for the histogram method.
"""

import numpy as np
import pytest

from cam_jax import metrics

# --- threshold_grid -------------------------------------------------------------------


@pytest.mark.parametrize('interval, size', [(0.001, 1000), (0.01, 100)])
def test_threshold_grid_is_wsolevaluations_arange(interval, size):
  # wsolevaluation: cam_threshold_list = list(np.arange(0, 1, cam_curve_interval)).
  grid_T = metrics.threshold_grid(interval)
  assert grid_T.dtype == np.float64 and grid_T.size == size
  np.testing.assert_array_equal(grid_T, np.arange(0, 1, interval))
  assert grid_T[0] == 0 and grid_T[-1] < 1


def test_threshold_grid_values_are_not_decimal():
  # Element k is k * 0.01 in float64: 35 * 0.01 = 0.35000000000000003, one ulp above
  # the double nearest 0.35, so a float64 score of 0.35 is below τ_35 (docstring, 5).
  grid_T = metrics.threshold_grid(0.01)
  assert grid_T[35] == 35 * 0.01 and grid_T[35] > 0.35
  assert grid_T[50] == 0.5


def test_threshold_grid_rejects_bad_interval():
  for bad in (0.0, -0.1, 1.5):
    with pytest.raises(ValueError, match='interval'):
      metrics.threshold_grid(bad)


# --- BoxAccuracy ----------------------------------------------------------------------

_TAUS_T = np.array([0.0, 0.25, 0.5, 0.75])
# Four images x four thresholds. Per cell the IoU's level: 0 below 0.3, 1 in [0.3, 0.5),
# 2 in [0.5, 0.7), 3 at 0.7 or more. IoUs exactly at δ (0.30, 0.50, 0.70) are hits.
#               τ=0   τ=.25   τ=.5  τ=.75      levels
_IOUS_NT = np.array([
    [0.30, 0.50, 0.70, 0.29],    # 1 2 3 0
    [0.45, 0.69, 0.55, 0.00],    # 1 2 2 0
    [0.31, 0.60, 0.20, 0.10],    # 1 2 0 0
    [0.49, 0.2999, 0.00, 0.00],  # 1 0 0 0
])
# Hits at δ are the cells of level >= 1 / 2 / 3, counted down each column:
#   δ=0.3: [4, 3, 2, 0]  -> max 4 at τ=0     -> 4/4 = 1
#   δ=0.5: [0, 3, 2, 0]  -> max 3 at τ=0.25  -> 3/4
#   δ=0.7: [0, 0, 1, 0]  -> max 1 at τ=0.5   -> 1/4
# MaxBoxAcc = 3/4 (δ = 0.5). MaxBoxAccV2 = (4 + 3 + 1) / (3 * 4) = 2/3, each δ at its own
# τ; one τ for all δs would give at most (3 + 3 + 0) / 12 = 1/2 (at τ = 0.25).
_COUNTS_DT = np.array([[4, 3, 2, 0], [0, 3, 2, 0], [0, 0, 1, 0]])


def test_box_accuracy_golden():
  acc = metrics.BoxAccuracy(_TAUS_T)
  acc.update(_IOUS_NT)
  np.testing.assert_array_equal(acc.counts_DT, _COUNTS_DT)
  res = acc.result()
  np.testing.assert_array_equal(res['box_acc_DT'], _COUNTS_DT / 4)
  np.testing.assert_array_equal(res['max_box_acc_D'], [1.0, 0.75, 0.25])
  np.testing.assert_array_equal(res['best_threshold_D'], [0.0, 0.25, 0.5])
  assert res['max_box_acc'] == 0.75
  assert res['max_box_acc_v2'] == 2 / 3
  assert res['num_images'] == 4


def test_box_accuracy_v2_is_one_division():
  # Three images, one τ: IoUs 0.8, 0.4, 0.1 -> hits δ=0.3: 2, δ=0.5: 1, δ=0.7: 1.
  # V2 = (2 + 1 + 1) / 9 = 4/9, one rounding.
  acc = metrics.BoxAccuracy([0.2])
  acc.update([[0.8], [0.4], [0.1]])
  assert acc.result()['max_box_acc_v2'] == 4 / 9


def test_box_accuracy_ties_go_to_lowest_threshold():
  # Two images, IoUs [0.6, 0.6, 0.2] and [0.6, 0.6, 0.6]: δ=0.5 counts [2, 2, 1], a tie
  # between τ = 0.1 and τ = 0.2; the lower one is reported.
  acc = metrics.BoxAccuracy([0.1, 0.2, 0.3], iou_thresholds=(0.5,))
  acc.update([[0.6, 0.6, 0.2], [0.6, 0.6, 0.6]])
  np.testing.assert_array_equal(acc.counts_DT, [[2, 2, 1]])
  res = acc.result()
  np.testing.assert_array_equal(res['best_threshold_D'], [0.1])
  assert res['max_box_acc'] == 1.0 and res['max_box_acc_v2'] == 1.0


def test_box_accuracy_without_half_has_no_max_box_acc():
  acc = metrics.BoxAccuracy(_TAUS_T, iou_thresholds=(0.3, 0.7))
  acc.update(_IOUS_NT)
  res = acc.result()
  assert 'max_box_acc' not in res
  # Rows δ=0.3 and δ=0.7 of the golden table: (4 + 1) / 8.
  assert res['max_box_acc_v2'] == 5 / 8


def test_box_accuracy_streaming_merge_and_state_equal_one_batch():
  whole = metrics.BoxAccuracy(_TAUS_T)
  whole.update(_IOUS_NT)
  streamed = metrics.BoxAccuracy(_TAUS_T)
  streamed.update(_IOUS_NT[:1])
  streamed.update(_IOUS_NT[1:])
  streamed.update(np.zeros((0, 4)))  # an empty batch changes nothing
  # Two "processes", combined by summing their states as a multi-host reduction would.
  a, b = metrics.BoxAccuracy(_TAUS_T), metrics.BoxAccuracy(_TAUS_T)
  a.update(_IOUS_NT[:3])
  b.update(_IOUS_NT[3:])
  summed = {k: a.state()[k] + b.state()[k] for k in a.state()}
  from_state = metrics.BoxAccuracy.from_state(summed, _TAUS_T)
  merged = metrics.BoxAccuracy(_TAUS_T).merge(a).merge(b)
  for acc in (streamed, from_state, merged):
    np.testing.assert_array_equal(acc.counts_DT, _COUNTS_DT)
    assert acc.num_images == 4
    assert acc.result()['max_box_acc_v2'] == whole.result()['max_box_acc_v2']


def test_box_accuracy_merge_rejects_other_grids():
  with pytest.raises(ValueError, match='thresholds'):
    metrics.BoxAccuracy(_TAUS_T).merge(metrics.BoxAccuracy(_TAUS_T + 0.01))
  with pytest.raises(ValueError, match='iou_thresholds'):
    metrics.BoxAccuracy(_TAUS_T).merge(metrics.BoxAccuracy(_TAUS_T, (0.5,)))


def test_box_accuracy_from_state_rejects_bad_counts():
  with pytest.raises(ValueError, match='shape'):
    metrics.BoxAccuracy.from_state({'counts_DT': np.zeros((3, 5), int), 'num_images': 1},
                                   _TAUS_T)
  with pytest.raises(ValueError, match='more hits than images'):
    metrics.BoxAccuracy.from_state({'counts_DT': np.full((3, 4), 2), 'num_images': 1}, _TAUS_T)


def test_box_accuracy_zero_images_raises():
  with pytest.raises(RuntimeError, match='no images'):
    metrics.BoxAccuracy(_TAUS_T).result()


@pytest.mark.parametrize('bad', [np.nan, -0.1, 1.1])
def test_box_accuracy_rejects_bad_ious(bad):
  acc = metrics.BoxAccuracy(_TAUS_T)
  with pytest.raises(ValueError, match='ious_NT'):
    acc.update([[0.5, bad, 0.5, 0.5]])
  assert acc.num_images == 0


def test_box_accuracy_rejects_bad_shapes_and_grids():
  with pytest.raises(ValueError, match=r'\(N, 4\)'):
    metrics.BoxAccuracy(_TAUS_T).update(np.zeros(4))
  with pytest.raises(ValueError, match='strictly increasing'):
    metrics.BoxAccuracy([0.0, 0.5, 0.5])
  with pytest.raises(ValueError, match='iou_thresholds'):
    metrics.BoxAccuracy(_TAUS_T, iou_thresholds=(50,))


# --- PixelAP --------------------------------------------------------------------------

_GRID_T = np.array([0.0, 0.25, 0.5, 0.75])
# Scores on grid edges (0.5, 0.25, 0), at 1, and between edges (0.1).
_SCORES_HW = np.array([[1.0, 0.5, 0.25],
                       [0.5, 0.1, 0.0]])
_MASK_HW = np.array([[True, True, False],
                     [False, True, False]])
# Foreground scores 1.0, 0.5, 0.1 (P = 3); background 0.25, 0.5, 0.0 (N = 3).
# Operating points τ = 1, .75, .5, .25, 0 (the grid and 1), `s >= τ`:
#   τ=1    tp 1 fp 0  prec 1    rec 1/3  gain 1/3  -> 1/3
#   τ=.75  tp 1 fp 0  prec 1    rec 1/3  gain 0
#   τ=.5   tp 2 fp 1  prec 2/3  rec 2/3  gain 1/3  -> 2/9
#   τ=.25  tp 2 fp 2  prec 1/2  rec 2/3  gain 0
#   τ=0    tp 3 fp 3  prec 1/2  rec 1    gain 1/3  -> 1/6
# PxAP = 1/3 + 2/9 + 1/6 = 13/18. With a strict `>` it would be 1/3 + 2/9 + 1/5 = 34/45
# (at τ=.75 tp 1; τ=.25 tp 2 fp 1; τ=0 tp 3 fp 2), so the case pins `>=`.
_PXAP = 13 / 18


def test_pixel_ap_golden():
  acc = metrics.PixelAP(_GRID_T)
  acc.update(_SCORES_HW, _MASK_HW)
  # Bins [0, .25) [.25, .5) [.5, .75) [.75, 1) {1}: foreground 0.1 | - | 0.5 | - | 1.0.
  np.testing.assert_array_equal(acc.positive_K, [1, 0, 1, 0, 1])
  np.testing.assert_array_equal(acc.negative_K, [1, 1, 1, 0, 0])
  res = acc.result()
  np.testing.assert_array_equal(res['thresholds_K'], [0.0, 0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(res['precision_K'], [1 / 2, 1 / 2, 2 / 3, 1, 1], rtol=1e-15)
  np.testing.assert_allclose(res['recall_K'], [1, 2 / 3, 2 / 3, 1 / 3, 1 / 3], rtol=1e-15)
  assert res['pxap'] == pytest.approx(_PXAP, rel=1e-15)
  assert (res['num_images'], res['num_positive_pixels'], res['num_negative_pixels']) == (1, 3, 3)


def test_pixel_ap_ignore_pixels_count_neither_way():
  # Ignore (1, 0), a background pixel of score 0.5, and (0, 0), which is foreground and
  # stays so. Background left: 0.25, 0.0 (N = 2), foreground unchanged:
  #   τ=1   tp 1 fp 0  prec 1    gain 1/3 -> 1/3
  #   τ=.5  tp 2 fp 0  prec 1    gain 1/3 -> 1/3
  #   τ=.25 tp 2 fp 1            gain 0
  #   τ=0   tp 3 fp 2  prec 3/5  gain 1/3 -> 1/5
  # PxAP = 2/3 + 1/5 = 13/15.
  ignore_HW = np.array([[True, False, False],
                        [True, False, False]])
  acc = metrics.PixelAP(_GRID_T)
  acc.update(_SCORES_HW, _MASK_HW, ignore_HW)
  res = acc.result()
  assert (res['num_positive_pixels'], res['num_negative_pixels']) == (3, 2)
  assert res['pxap'] == pytest.approx(13 / 15, rel=1e-15)


@pytest.mark.parametrize('value', [0.0, 0.5, 1.0])
def test_pixel_ap_constant_map_is_foreground_fraction(value):
  # wsolevaluation's constant-scoremap cases: every threshold predicts all pixels or
  # none, so the curve is one point, recall 1 at precision P / (P + N): here 2 / 6.
  mask_HW = np.zeros((2, 3), bool)
  mask_HW[0, :2] = True
  acc = metrics.PixelAP()
  acc.update(np.full((2, 3), value), mask_HW)
  assert acc.result()['pxap'] == pytest.approx(1 / 3, rel=1e-15)


@pytest.mark.parametrize('ignore_score', [0.0, 1.0])
def test_pixel_ap_perfect_map_is_one(ignore_score):
  # wsolevaluation's perfect-scoremap case: score 1 on the foreground, 0 on the
  # background, anything on ignore pixels. At τ = 1 precision 1 and recall 1.
  mask_HW = np.array([[True, False, False], [True, True, False]])
  ignore_HW = np.array([[False, True, False], [False, False, False]])
  scores_HW = mask_HW.astype(float)
  scores_HW[ignore_HW] = ignore_score
  acc = metrics.PixelAP()
  acc.update(scores_HW, mask_HW, ignore_HW)
  assert acc.result()['pxap'] == 1.0


def test_pixel_ap_without_background_is_one():
  acc = metrics.PixelAP(_GRID_T)
  acc.update(_SCORES_HW, np.ones((2, 3), bool))
  assert acc.result()['pxap'] == 1.0


def test_pixel_ap_float32_scores_compare_in_float32():
  # float32(0.7) = 0.69999999 is below the double 0.7 but is "0.7" to the box stage,
  # which thresholds a float32 map with `norm >= float(τ)` in float32: it counts at
  # τ = 0.7. A float64 0.69999999 does not. Grid [0, 0.7]: bins [0, .7) [.7, 1) {1}.
  mask_HW = np.array([[True, False]])
  for scores_HW, expected in ((np.float32([[0.7, 0.0]]), [0, 1, 0]),
                              (np.float64([[np.float32(0.7), 0.0]]), [1, 0, 0])):
    acc = metrics.PixelAP([0.0, 0.7])
    acc.update(scores_HW, mask_HW)
    np.testing.assert_array_equal(acc.positive_K, expected)


def _brute_force_counts(scores, masks, ignores, taus_K):
  """tp, fp at every τ by thresholding every pixel of every map: no histogram."""
  tp_K = np.zeros(len(taus_K), np.int64)
  fp_K = np.zeros(len(taus_K), np.int64)
  for scores_HW, mask_HW, ignore_HW in zip(scores, masks, ignores):
    # Compare as the module documents: in float32 for a float32 map, else float64.
    taus = taus_K.astype(scores_HW.dtype)
    for k, tau in enumerate(taus):
      predicted_HW = scores_HW >= tau
      tp_K[k] += np.sum(predicted_HW & mask_HW)
      fp_K[k] += np.sum(predicted_HW & ~mask_HW & ~ignore_HW)
  return tp_K, fp_K


def _ap_from_counts(tp_K, fp_K):
  """PxAP from the counts, point by point from the strictest τ down (the paper's sum)."""
  ap, previous_recall = 0.0, 0.0
  for k in range(len(tp_K) - 1, -1, -1):
    recall = tp_K[k] / tp_K[0]
    if tp_K[k] + fp_K[k] > 0:
      ap += tp_K[k] / (tp_K[k] + fp_K[k]) * (recall - previous_recall)
    previous_recall = recall
  return ap


def _wsolevaluation_counts(scores, masks, ignores, grid_T):
  """tp, fp the way wsolevaluation bins them: np.histogram on the grid + [1, 2, 3]."""
  edges = np.append(grid_T, [1.0, 2.0, 3.0])
  pos = sum(np.histogram(s[m], bins=edges)[0] for s, m, _ in zip(scores, masks, ignores))
  neg = sum(np.histogram(s[~m & ~i], bins=edges)[0] for s, m, i in zip(scores, masks, ignores))
  # Descending: index 0 is τ = 2 (nothing), 1 is τ = 1, ..., the last τ = 0. Drop τ = 2
  # and flip to the module's ascending order.
  return np.cumsum(pos[::-1])[1:][::-1], np.cumsum(neg[::-1])[1:][::-1]


@pytest.mark.parametrize('dtype', [np.float64, np.float32])
def test_pixel_ap_histograms_equal_brute_force(dtype):
  rng = np.random.default_rng(0)
  acc = metrics.PixelAP()  # wsolevaluation's default grid, step 0.001
  taus_K = acc.thresholds_K
  scores, masks, ignores = [], [], []
  for shape in ((17, 23), (9, 31), (12, 12)):
    # A third uniform, a third exactly on grid values (including 0), the rest 0 or 1.
    uniform = rng.uniform(size=shape)
    on_grid = taus_K[rng.integers(0, len(taus_K), size=shape)]
    extreme = rng.integers(0, 2, size=shape).astype(float)
    pick = rng.integers(0, 3, size=shape)
    scores_HW = np.choose(pick, [uniform, on_grid, extreme]).astype(dtype)
    mask_HW = rng.uniform(size=shape) < 0.4
    ignore_HW = rng.uniform(size=shape) < 0.1
    acc.update(scores_HW, mask_HW, ignore_HW)
    scores.append(scores_HW)
    masks.append(mask_HW)
    ignores.append(ignore_HW)
  tp_K, fp_K = _brute_force_counts(scores, masks, ignores, taus_K)
  np.testing.assert_array_equal(np.cumsum(acc.positive_K[::-1])[::-1], tp_K)
  np.testing.assert_array_equal(np.cumsum(acc.negative_K[::-1])[::-1], fp_K)
  res = acc.result()
  assert res['pxap'] == pytest.approx(_ap_from_counts(tp_K, fp_K), rel=1e-12)
  np.testing.assert_allclose(res['recall_K'], tp_K / tp_K[0], rtol=1e-15)
  if dtype == np.float64:
    # Same maps binned as wsolevaluation bins them: the same counts.
    wsol_tp_K, wsol_fp_K = _wsolevaluation_counts(scores, masks, ignores, acc.thresholds_T)
    np.testing.assert_array_equal(wsol_tp_K, tp_K)
    np.testing.assert_array_equal(wsol_fp_K, fp_K)


def test_pixel_ap_streaming_merge_and_state_equal_one_map():
  # The golden map in two halves (columns 0-1 and 2) is the same set of pixels.
  halves = [np.s_[:, :2], np.s_[:, 2:]]
  streamed = metrics.PixelAP(_GRID_T)
  parts = []
  for half in halves:
    streamed.update(_SCORES_HW[half], _MASK_HW[half])
    part = metrics.PixelAP(_GRID_T)
    part.update(_SCORES_HW[half], _MASK_HW[half])
    parts.append(part)
  merged = metrics.PixelAP(_GRID_T).merge(parts[0]).merge(parts[1])
  summed = {k: parts[0].state()[k] + parts[1].state()[k] for k in parts[0].state()}
  from_state = metrics.PixelAP.from_state(summed, _GRID_T)
  for acc in (streamed, merged, from_state):
    np.testing.assert_array_equal(acc.positive_K, [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(acc.negative_K, [1, 1, 1, 0, 0])
    assert acc.num_images == 2
    assert acc.result()['pxap'] == pytest.approx(_PXAP, rel=1e-15)
  with pytest.raises(ValueError, match='thresholds'):
    metrics.PixelAP(_GRID_T).merge(metrics.PixelAP())


def test_pixel_ap_degenerate_cases_raise():
  with pytest.raises(RuntimeError, match='no maps'):
    metrics.PixelAP().result()
  # wsolevaluation's zero-GT case: no foreground pixel anywhere, recall is 0/0.
  acc = metrics.PixelAP()
  acc.update(np.zeros((2, 3)), np.zeros((2, 3), bool))
  with pytest.raises(RuntimeError, match='no foreground'):
    acc.result()
  # Every pixel ignored: no foreground either.
  acc = metrics.PixelAP()
  acc.update(np.zeros((2, 3)), np.zeros((2, 3), bool), np.ones((2, 3), bool))
  with pytest.raises(RuntimeError, match='no foreground'):
    acc.result()


def test_pixel_ap_rejects_bad_inputs():
  acc = metrics.PixelAP(_GRID_T)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    acc.update(np.full((2, 3), np.nan), _MASK_HW)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    acc.update(_SCORES_HW + 0.1, _MASK_HW)
  with pytest.raises(TypeError, match='bool'):
    acc.update(_SCORES_HW, _MASK_HW.astype(np.uint8))
  with pytest.raises(TypeError, match='ignore_HW'):
    acc.update(_SCORES_HW, _MASK_HW, np.zeros((2, 3), np.uint8))
  with pytest.raises(ValueError, match='shape'):
    acc.update(_SCORES_HW, _MASK_HW[:, :2])
  with pytest.raises(ValueError, match='2-D'):
    acc.update(_SCORES_HW[None], _MASK_HW[None])
  assert acc.num_images == 0 and not acc.positive_K.any()
  for bad_grid in ([0.1, 0.5], [0.0, 0.5, 1.0], [0.0, 0.5, 0.4]):
    with pytest.raises(ValueError, match='thresholds'):
      metrics.PixelAP(bad_grid)
