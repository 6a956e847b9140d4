"""tests/detection_match.py, the end-to-end matcher: it forgives what float rounding does to
detections (tiny moves, reordered near-ties, candidates decided by a hair at a threshold)
and nothing else. Every perturbation a bug makes must fail, every rounding-sized one pass.

Synthetic sets are hand-made [N, 15] rows (x1 y1 x2 y2 score, five landmark (x, y)); the
real cases are the golden detections, and the golden network outputs of the portable run,
post-processed here (exact on every machine): a second kernel path's real rounding.
"""
import numpy as np
import pytest

from data import cfg_mnet
from layers.functions.detection import Detect
from layers.functions.prior_box import prior_boxes
from test_widerface import wider_text
from tests.conftest import GOLDEN_IMAGES, VAL416_PREFIX, golden_image_path, need_shared
from tests.detection_match import (CONFIDENCE_THRESHOLD, DETECTION_TOLERANCES, FILE_TOLERANCES, assert_wider_files_match,
                                   compare_detections, iou_plus_one, parse_wider_rows)
from utils.image import read_image

# Where the five points sit in a frontal face box, as fractions of its width and height.
LANDMARK_PLACES = [(0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8)]


def _face(x1, y1, x2, y2, score):
    w, h = x2 - x1, y2 - y1
    points = [c for fx, fy in LANDMARK_PLACES for c in (x1 + fx * w, y1 + fy * h)]
    return [x1, y1, x2, y2, score, *points]


# Eight faces after NMS (none overlap), from large and sure to tiny and doubtful, highest
# score first, with fractional corners like decoded boxes have.
FACES = np.array([
    _face(40.37, 30.81, 220.55, 255.12, 0.99996),
    _face(300.14, 40.66, 390.92, 152.27, 0.9987),
    _face(450.73, 60.29, 498.61, 120.44, 0.93),
    _face(560.48, 80.93, 584.26, 110.58, 0.71),
    _face(620.05, 90.17, 636.39, 110.71, 0.42),
    _face(700.62, 300.34, 711.83, 314.09, 0.18),
    _face(760.21, 320.75, 769.44, 332.16, 0.064),
    _face(820.88, 330.52, 830.97, 343.35, 0.031),
], dtype=np.float32)
BOX, SCORE, POINTS = slice(0, 4), 4, slice(5, 15)
XS, YS = [0, 2, 5, 7, 9, 11, 13], [1, 3, 6, 8, 10, 12, 14]


def _rounded(dets, seed=0):
    """dets as another CPU gives them: coordinates moved by up to 3e-4 px and scores by up to
    2e-6 (a little more than any CPU and thread count tried moved them), in float32."""
    rng = np.random.default_rng(seed)
    out = dets.astype(np.float64)
    out[:, BOX] += rng.uniform(-3e-4, 3e-4, out[:, BOX].shape)
    out[:, POINTS] += rng.uniform(-3e-4, 3e-4, out[:, POINTS].shape)
    out[:, SCORE] += rng.uniform(-2e-6, 2e-6, len(out))
    return out.astype(np.float32)


def _golden(name):
    return np.load(need_shared('golden', 'mnet', f'{name}_dets.npy'))


def _problems(dets, golden):
    return compare_detections(dets, golden, **DETECTION_TOLERANCES)


def _assert_fails(dets, golden):
    assert _problems(dets, golden), "a wrong set of detections matched"


def _assert_passes(dets, golden):
    problems = _problems(dets, golden)
    assert not problems, problems[:5]


@pytest.fixture(params=['synthetic', 'test', 'kids_group'])
def reference(request):
    return FACES if request.param == 'synthetic' else _golden(request.param)


def _some_rows(dets):
    """The rows a one-box bug is tried on: the first, the smallest and largest box, and the
    last one whose score is clear of the threshold (rows within the score band of it may
    vanish through rounding, see test_a_detection_at_the_score_threshold_may_appear_or_vanish)."""
    clear = np.flatnonzero(dets[:, SCORE] > CONFIDENCE_THRESHOLD + 1e-4)
    area = (dets[clear, 2] - dets[clear, 0]) * (dets[clear, 3] - dets[clear, 1])
    return sorted({0, int(clear[-1]), int(clear[np.argmin(area)]), int(clear[np.argmax(area)])})


# -- rounding passes -----------------------------------------------------------------------------

def test_the_same_and_the_rounded_detections_match(reference):
    _assert_passes(reference, reference)
    _assert_passes(_rounded(reference), reference)
    _assert_passes(_rounded(reference, seed=1)[::-1], reference)  # order does not matter


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
def test_another_kernel_path_s_real_rounding_matches(name):
    """The portable run's network outputs differ from the golden ones in the last bits
    (another kernel path); its detections, and its WIDER file, match the golden ones."""
    stem = name[len(VAL416_PREFIX):] if name.startswith(VAL416_PREFIX) else name
    raw = np.load(need_shared('golden', 'mnet_portable', 'raw', f'{stem}_raw.npz'))
    h, w = read_image(golden_image_path(name)).shape[:2]
    priors = prior_boxes(cfg_mnet, (h, w))
    dets = Detect(cfg_mnet['variance'])(raw['loc'][0], raw['conf'][0], raw['landms'][0], priors, (h, w), 1)
    golden = _golden(name)
    assert not np.array_equal(dets, golden)
    _assert_passes(dets, golden)
    golden_text = need_shared('golden', 'mnet', f'{name}_wider.txt').read_text()
    assert_wider_files_match(wider_text(name, dets), golden_text)


# -- a moved box fails ---------------------------------------------------------------------------

@pytest.mark.parametrize('shift', [0.02, 0.5, 1, 2])
@pytest.mark.parametrize('points_too', [False, True], ids=['box', 'box_and_landmarks'])
def test_every_box_moved_fails(reference, shift, points_too):
    moved = reference.copy()
    moved[:, BOX] += np.float32(shift)
    if points_too:
        moved[:, POINTS] += np.float32(shift)
    _assert_fails(moved, reference)
    _assert_fails(_rounded(moved), reference)


@pytest.mark.parametrize('shift', [0.02, 0.5, 1, 2])
@pytest.mark.parametrize('points_too', [False, True], ids=['box', 'box_and_landmarks'])
def test_one_box_moved_fails(reference, shift, points_too):
    rows = range(len(reference)) if reference is FACES else _some_rows(reference)
    for row in rows:
        moved = reference.copy()
        moved[row, BOX] += np.float32(shift)
        if points_too:
            moved[row, POINTS] += np.float32(shift)
        problems = _problems(moved, reference)
        assert len(problems) == 1 and f"golden row {row} " in problems[0], (row, problems)


@pytest.mark.parametrize('columns', [XS[:2] + YS[:2], XS + YS], ids=['box', 'box_and_landmarks'])
def test_a_one_percent_scale_fails(reference, columns):
    scaled = reference.copy()
    scaled[:, columns] *= np.float32(1.01)
    _assert_fails(scaled, reference)


def test_boxes_one_percent_larger_about_their_centres_fail(reference):
    grown = reference.copy()
    half = (grown[:, 2:4] - grown[:, 0:2]) * np.float32(0.005)
    grown[:, 0:2] -= half
    grown[:, 2:4] += half
    _assert_fails(grown, reference)


# -- wrong landmarks, scores and counts fail -----------------------------------------------------

def test_landmarks_moved_by_a_twentieth_of_a_pixel_fail(reference):
    moved = reference.copy()
    moved[:, POINTS] += np.float32(0.05)
    assert len(_problems(moved, reference)) == len(reference)
    one = reference.copy()
    one[len(one) // 2, 9] += np.float32(0.05)  # the nose's x of one detection
    assert len(_problems(one, reference)) == 1


def test_landmarks_swapped_left_right_fail(reference):
    swapped = reference.copy()
    swapped[:, [5, 6, 7, 8, 11, 12, 13, 14]] = reference[:, [7, 8, 5, 6, 13, 14, 11, 12]]
    _assert_fails(swapped, reference)


def test_scores_scaled_by_0_9999_fail(reference):
    scaled = reference.copy()
    scaled[:, SCORE] *= np.float32(0.9999)
    _assert_fails(scaled, reference)


def test_a_dropped_detection_fails(reference):
    rows = range(len(reference)) if reference is FACES else _some_rows(reference)
    for row in rows:
        _assert_fails(np.delete(reference, row, axis=0), reference)
        _assert_fails(np.delete(_rounded(reference), row, axis=0), reference)
        _assert_fails(reference, np.delete(reference, row, axis=0))  # one too many


# -- near-tie swaps pass, moved twins do not -----------------------------------------------------

def _other_candidate(row, score_delta):
    """A different candidate for the same face: another prior's box, a few pixels off on each
    side (not one shift), with landmarks placed in it, and a score score_delta away."""
    x1, y1, x2, y2 = (float(v) for v in row[BOX])
    w, h = x2 - x1, y2 - y1
    return np.array(_face(x1 + 0.04 * w, y1 - 0.03 * h, x2 + 0.07 * w, y2 + 0.01 * h,
                          float(row[SCORE]) + score_delta), dtype=np.float32)


def test_a_near_tie_swap_passes():
    """Two different overlapping candidates whose scores tie within rounding: one set kept
    the one, the other set the other."""
    dets = _rounded(FACES)
    dets[1] = _other_candidate(FACES[1], 5e-7)
    assert 0.4 < iou_plus_one(dets[1, BOX], FACES[1:2, BOX])[0] < 0.95
    _assert_passes(dets, FACES)
    _assert_passes(FACES, dets)


def test_near_ties_in_the_other_order_pass():
    golden = FACES.copy()
    golden[3, SCORE] = golden[2, SCORE] + np.float32(1e-6)  # rows 2 and 3 tie
    dets = _rounded(golden)
    dets[[2, 3]] = dets[[3, 2]]
    dets[2, SCORE], dets[3, SCORE] = golden[3, SCORE] - np.float32(1e-6), golden[2, SCORE] + np.float32(1e-6)
    _assert_passes(dets, golden)


def test_a_swap_whose_scores_do_not_tie_fails():
    dets = FACES.copy()
    dets[1] = _other_candidate(FACES[1], 1e-3)
    _assert_fails(dets, FACES)


@pytest.mark.parametrize('shift', [0.02, 0.3, 0.9])
def test_a_moved_copy_is_not_a_swap_even_with_other_landmarks(shift):
    """The same box moved by under a pixel, same score, landmarks moved another way: one
    detection changed, not two candidates that traded places."""
    dets = FACES.copy()
    dets[2, BOX] += np.float32(shift)
    dets[2, POINTS] += np.linspace(0.1, 0.5, 10, dtype=np.float32)
    problems = _problems(dets, FACES)
    assert len(problems) == 1 and 'golden row 2 ' in problems[0] and 'changed' in problems[0]


def test_many_swaps_fail():
    """Ties within rounding are rare: every row swapped is boxes that moved."""
    dets = np.stack([_other_candidate(row, 0.0) for row in FACES])
    problems = _problems(dets, FACES)
    assert any('near-tie swaps' in p for p in problems)


def test_a_swap_with_its_cascade_passes():
    """Golden kept A (suppressing B) and C, which B would have suppressed; the other set
    kept B, which suppressed A and C."""
    a = _face(1000.5, 100.5, 1039.5, 139.5, 0.9)
    b = _face(1010.5, 100.5, 1051.5, 139.5, 0.9 + 4e-7)
    c = _face(1022.5, 100.5, 1061.5, 139.5, 0.85)
    boxes = np.array([a, b, c], dtype=np.float64)[:, BOX]
    assert iou_plus_one(boxes[0], boxes[1:2])[0] > 0.4 and iou_plus_one(boxes[1], boxes[2:3])[0] > 0.4
    assert iou_plus_one(boxes[0], boxes[2:3])[0] <= 0.4
    golden = np.vstack([FACES, np.array([a, c], dtype=np.float32)])
    dets = np.vstack([_rounded(FACES), np.array([b], dtype=np.float32)])
    _assert_passes(dets, golden)
    _assert_passes(golden, dets)
    # Without its swap partner, C's vanishing has no reason.
    _assert_fails(np.vstack([_rounded(FACES), np.array([a], dtype=np.float32)]), golden)


# -- candidates decided by a hair at a threshold pass --------------------------------------------

@pytest.mark.parametrize('score,passes', [(0.02003, True), (0.02009, True), (0.0203, False)])
def test_a_detection_at_the_score_threshold_may_appear_or_vanish(score, passes):
    extra = np.array([_face(900.3, 400.6, 910.9, 413.8, score)], dtype=np.float32)
    golden = np.vstack([FACES, extra])
    for dets, ref in ((_rounded(FACES), golden), (np.vstack([_rounded(FACES), extra]), FACES)):
        assert (not _problems(dets, ref)) == passes


@pytest.mark.parametrize('iou,passes', [(0.3996, True), (0.4004, True), (0.39, False)])
def test_a_detection_that_nms_decides_by_a_hair_may_appear_or_vanish(iou, passes):
    """X suppresses Y when their IoU is > 0.4: at an IoU within the band of the threshold,
    rounding may keep Y in one set and drop it in the other."""
    side = 40.0  # X's width and height with the +1 convention
    dx = side * (1 - iou) / (1 + iou)  # IoU of X and X moved right by dx
    x = _face(1000.25, 200.25, 1039.25, 239.25, 0.8)
    y = _face(1000.25 + dx, 200.25, 1039.25 + dx, 239.25, 0.6)
    assert iou_plus_one(np.array(x[:4]), np.array([y[:4]]))[0] == pytest.approx(iou, abs=1e-6)
    with_x = np.vstack([FACES, np.array([x], dtype=np.float32)])
    with_both = np.vstack([FACES, np.array([x, y], dtype=np.float32)])
    assert (not _problems(_rounded(with_x), with_both)) == passes
    assert (not _problems(_rounded(with_both), with_x)) == passes


# -- WIDER files: truncated integer boxes ---------------------------------------------------------

def _file_problems(dets, golden, name='test'):
    return compare_detections(parse_wider_rows(wider_text(name, dets)), parse_wider_rows(wider_text(name, golden)),
                              **FILE_TOLERANCES)


def test_wider_files_of_rounded_detections_match():
    golden = _golden('test')
    assert not _file_problems(golden, golden)
    assert not _file_problems(_rounded(golden), golden)


@pytest.mark.parametrize('shift', [0.1, 0.5, 1, 2, 4])
def test_wider_files_of_moved_boxes_fail(shift):
    """Rounding flips a truncated corner only where it lies within a hair of an integer, so a
    shift shows as many flipped corners, or as boxes that moved."""
    golden = _golden('test')
    moved = golden.copy()
    moved[:, BOX] += np.float32(shift)
    assert _file_problems(moved, golden)
    with pytest.raises(AssertionError):
        assert_wider_files_match(wider_text('test', moved), wider_text('test', golden))


def test_wider_files_of_a_dropped_detection_or_scaled_scores_fail():
    golden = _golden('test')
    assert _file_problems(np.delete(golden, 3, axis=0), golden)
    scaled = golden.copy()
    scaled[:, SCORE] *= np.float32(0.9999)
    assert _file_problems(scaled, golden)


# -- bad input -----------------------------------------------------------------------------------

def test_detections_of_the_wrong_shape_are_a_clear_error():
    with pytest.raises(ValueError, match=r'\[N, 5\] or \[N, 15\].*\(8, 7\)'):
        compare_detections(FACES[:, :7], FACES[:, :7], **DETECTION_TOLERANCES)
    with pytest.raises(ValueError, match='15 columns, the golden ones 5'):
        compare_detections(FACES, FACES[:, :5], **DETECTION_TOLERANCES)


def test_empty_sets():
    empty = np.zeros((0, 15), dtype=np.float32)
    assert not _problems(empty, empty)
    assert len(_problems(empty, FACES)) == len(FACES)
    assert len(_problems(FACES, empty)) == len(FACES)
