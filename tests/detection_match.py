"""Compare two sets of detections the way float rounding allows, and no further.

Network outputs differ between CPUs (and thread counts) in the last bits, about 1e-5.
Downstream of the network that can do exactly three things, and these are all that
`compare_detections` forgives:

1. move a box, landmark or score by a tiny amount: detections are paired by position (every
   box corner within `box_atol` pixels, score within `score_atol`), and a pair's landmarks
   must agree within `landmark_atol`;
2. reorder detections whose scores are nearly equal: pairing is by position, not by row;
3. make a candidate appear or vanish where a threshold decides by a hair:
   - its score lies within `score_band` of the confidence threshold, or
   - NMS decided it by an IoU within `iou_band` of the NMS threshold, or
   - it swapped places with a different candidate of nearly equal score that it overlaps
     (IoU > the NMS threshold): one set kept the one, the other set the other, so a swap
     pairs one row that vanished with one row that appeared. A swap needs two candidates
     whose scores tie within rounding, which is rare, so only a few rows (`swap_rate` of
     them, plus one) may be swaps; many more are boxes that moved, or
   - the box that suppresses it in one set is itself a row that appeared or vanished for
     one of these reasons (a cascade).

A detection that is in both sets but moved is none of these, although its two rows look like
a vanished row and an appeared row that overlap with equal scores. So before anything is
explained, an unpaired golden row and an unpaired row of the other set are taken for one
detection that changed (a mismatch) when
   - their boxes agree within box_atol but their scores do not, or
   - their scores agree within score_atol and their boxes lie within TWIN_PX pixels (on top
     of box_atol) or overlap with IoU >= TWIN_IOU, or their landmarks agree within
     landmark_atol (the box moved without them), or box and landmarks moved by one common
     shift.
Only a genuine swap of two different candidates this close would be misread, and it needs
their scores to tie within rounding: among the candidates of the golden images, at the
original size and at the test scale, pairs this close have scores several times further
apart than rounding moves scores of their height.

Anything else, such as a dropped detection, a box shifted by a fraction of a pixel, a box
decoded with the wrong variance, landmarks swapped left/right or an NMS with a different
overlap formula, is a mismatch.
"""
import numpy as np

CONFIDENCE_THRESHOLD = 0.02
NMS_THRESHOLD = 0.4
# How close an unpaired golden row and an unpaired row of the other set with the same score
# must be to count as one detection that moved, rather than two candidates that swapped.
TWIN_PX = 1.0
TWIN_IOU = 0.95
# Landmark columns: the x and the y coordinates of the five points.
_LANDMARK_X = [5, 7, 9, 11, 13]
_LANDMARK_Y = [6, 8, 10, 12, 14]


def iou_plus_one(box, boxes):
    """IoU as the reference's NMS computes it: areas and overlaps with the +1 pixel convention.

    Args:
        box (ndarray[4]) and boxes (ndarray[N, 4]): (x1, y1, x2, y2) pixels.
    Returns:
        ndarray[N] float64: IoU of box with each row of boxes.
    """
    box = box.astype(np.float64)
    boxes = boxes.astype(np.float64)
    w = np.maximum(0.0, np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1)
    h = np.maximum(0.0, np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1)
    inter = w * h
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return inter / (area + areas - inter)


def _as_detections(arr, what):
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, arr.shape[-1] if arr.ndim == 2 else 5)
    if arr.ndim != 2 or arr.shape[1] not in (5, 15):
        raise ValueError(f"{what}: expected detections of shape [N, 5] or [N, 15], got {arr.shape}")
    return arr


def _corner_dist(row, rows):
    return np.abs(rows[:, :4] - row[:4]).max(axis=1)


def _pair_by_position(a, b, box_atol, score_atol):
    """Pairs (i, j) of rows of a and b whose boxes and scores agree within the tolerances.

    Kept detections overlap each other by at most the NMS threshold, so within one set no
    two boxes lie within a pixel of each other and the nearest candidate is the only one.
    """
    pairs = []
    taken = np.zeros(len(b), dtype=bool)
    for i in range(len(a)):
        if len(b) == 0:
            break
        dist = _corner_dist(a[i], b)
        ok = (dist <= box_atol) & (np.abs(b[:, 4] - a[i, 4]) <= score_atol) & ~taken
        if ok.any():
            j = int(np.argmin(np.where(ok, dist, np.inf)))
            taken[j] = True
            pairs.append((i, j))
    return pairs


def _same_detection(g, rows, box_atol, score_atol, landmark_atol):
    """Which of `rows` are golden row g after a change that rounding cannot make (see the
    module docstring): ndarray[len(rows)] bool."""
    dist = _corner_dist(g, rows)
    same_score = np.abs(rows[:, 4] - g[4]) <= score_atol
    near = (dist <= box_atol + TWIN_PX) | (iou_plus_one(g[:4], rows[:, :4]) >= TWIN_IOU)
    if len(g) == 15:
        near |= np.abs(rows[:, 5:15] - g[5:15]).max(axis=1) <= landmark_atol
        # One shift (dx, dy) of box and landmarks together, as an offset in the image grid gives.
        xs, ys = [0, 2] + _LANDMARK_X, [1, 3] + _LANDMARK_Y
        near |= ((np.ptp(rows[:, xs] - g[xs], axis=1) <= 2 * box_atol)
                 & (np.ptp(rows[:, ys] - g[ys], axis=1) <= 2 * box_atol))
    return np.where(same_score, near, dist <= box_atol)


def _pair_changed(golden, dets, vanished, appeared, box_atol, score_atol, landmark_atol):
    """Pairs (g, d) of unpaired rows that are one detection that changed, nearest box first."""
    pairs = []
    free = np.array(appeared, dtype=np.int64)
    for g in sorted(vanished, key=lambda k: -golden[k, 4]):
        if free.size == 0:
            break
        same = _same_detection(golden[g], dets[free], box_atol, score_atol, landmark_atol)
        if same.any():
            k = int(np.argmin(np.where(same, _corner_dist(golden[g], dets[free]), np.inf)))
            pairs.append((g, int(free[k])))
            free = np.delete(free, k)
    return pairs


def _pair_swaps(golden, dets, vanished, appeared, tol):
    """Near-tie swaps: pairs (g, d) of a vanished and an appeared row that overlap by more
    than the NMS threshold with scores within score_atol, each row in at most one swap."""
    pairs = []
    free = set(appeared)
    for g in sorted(vanished, key=lambda k: -golden[k, 4]):
        cand = sorted(free)
        if not cand:
            break
        iou = iou_plus_one(golden[g, :4], dets[cand, :4])
        ok = (iou > tol['nms_threshold']) & (np.abs(dets[cand, 4] - golden[g, 4]) <= tol['score_atol'])
        if ok.any():
            d = cand[int(np.argmax(np.where(ok, iou, -1.0)))]
            free.discard(d)
            pairs.append((g, d))
    return pairs


def _explained_by_threshold(row, other, other_explained, tol):
    """Whether a row that one set holds and `other` lacks may have been decided by a hair:
    a score at the confidence threshold, an IoU at the NMS threshold, or a suppressor in
    `other` that is itself an explained extra row (other_explained: its row indices)."""
    s = row[4]
    if abs(s - tol['confidence_threshold']) <= tol['score_band']:
        return True
    if len(other) == 0:
        return False
    nms = tol['nms_threshold']
    iou = iou_plus_one(row[:4], other[:, :4])
    higher = other[:, 4] >= s - tol['score_atol']
    # NMS decided by a hair: the other set's box that suppressed this one.
    if np.any(higher & (np.abs(iou - nms) <= tol['iou_band'])):
        return True
    # A cascade: suppressed by a box that is itself a rounding-decided extra.
    idx = sorted(other_explained)
    return bool(idx) and bool(np.any(higher[idx] & (iou[idx] > nms - tol['iou_band'])))


def compare_detections(dets, golden, box_atol, score_atol, landmark_atol=None, score_band=1e-4,
                       iou_band=1e-3, confidence_threshold=CONFIDENCE_THRESHOLD,
                       nms_threshold=NMS_THRESHOLD, changed_corner_rate=None, swap_rate=0.01):
    """Compare detections with golden ones up to float rounding (see the module docstring).

    Args:
        dets, golden (ndarray[N, 5] or [N, 15]): (x1, y1, x2, y2) pixels, score, then
            optionally the five landmarks as (x, y) pixel pairs; both the same width.
        box_atol (float): pixels a paired box corner may move.
        score_atol (float): how far a paired score may move.
        landmark_atol (float | None): pixels a paired landmark may move (None: box_atol).
        score_band, iou_band: how close to the confidence and NMS thresholds a score or IoU
            must lie for a detection to appear or vanish.
        changed_corner_rate (float | None): for boxes truncated to integers (box_atol 1),
            where rounding flips a corner only when it lies within a hair of an integer:
            at most this fraction of the paired corners, plus one, may differ at all
            (None: no limit).
        swap_rate (float): at most this fraction of the golden rows, plus one, may be
            explained as near-tie swaps (see the module docstring).
    Returns:
        list[str]: the mismatches, empty when the sets agree.
    """
    dets = _as_detections(dets, 'detections')
    golden = _as_detections(golden, 'golden detections')
    if dets.shape[1] != golden.shape[1]:
        raise ValueError(f"detections have {dets.shape[1]} columns, the golden ones {golden.shape[1]}")
    if landmark_atol is None:
        landmark_atol = box_atol
    tol = dict(score_atol=score_atol, score_band=score_band, iou_band=iou_band,
               confidence_threshold=confidence_threshold, nms_threshold=nms_threshold)
    problems = []
    pairs = _pair_by_position(golden, dets, box_atol, score_atol)
    if golden.shape[1] == 15:
        for g, d in pairs:
            err = np.abs(dets[d, 5:15] - golden[g, 5:15]).max()
            if err > landmark_atol:
                problems.append(f"golden row {g}: landmarks differ by {err:.3g} px (> {landmark_atol})")
    if changed_corner_rate is not None and pairs:
        g_rows, d_rows = (list(t) for t in zip(*pairs))
        changed = int(np.count_nonzero(dets[d_rows, :4] != golden[g_rows, :4]))
        allowed = 1 + changed_corner_rate * 4 * len(pairs)
        if changed > allowed:
            problems.append(f"{changed} of {4 * len(pairs)} paired box corners differ (rounding flips "
                            f"at most {allowed:.3g}): the boxes moved")
    vanished = sorted(set(range(len(golden))) - {g for g, _ in pairs})
    appeared = sorted(set(range(len(dets))) - {d for _, d in pairs})

    for g, d in _pair_changed(golden, dets, vanished, appeared, box_atol, score_atol, landmark_atol):
        vanished.remove(g)
        appeared.remove(d)
        msg = (f"golden row {g} {np.round(golden[g, :5], 4).tolist()} changed in row {d} "
               f"{np.round(dets[d, :5], 4).tolist()}: box by {np.abs(dets[d, :4] - golden[g, :4]).max():.3g} px, "
               f"score by {abs(dets[d, 4] - golden[g, 4]):.3g}")
        if golden.shape[1] == 15:
            msg += f", landmarks by {np.abs(dets[d, 5:15] - golden[g, 5:15]).max():.3g} px"
        problems.append(msg)

    swaps = _pair_swaps(golden, dets, vanished, appeared, tol)
    allowed = 1 + swap_rate * len(golden)
    if len(swaps) > allowed:
        problems.append(f"{len(swaps)} rows would be near-tie swaps (rounding makes at most {allowed:.3g}): "
                        f"the boxes moved, e.g. golden row {swaps[0][0]} {np.round(golden[swaps[0][0], :5], 4).tolist()} "
                        f"to row {swaps[0][1]} {np.round(dets[swaps[0][1], :5], 4).tolist()}")
    explained = {'golden': {g for g, _ in swaps}, 'dets': {d for _, d in swaps}}
    sides = (('golden', golden, vanished, 'dets', dets), ('dets', dets, appeared, 'golden', golden))
    # Each explanation rests only on the other set's explained rows, so repeating until
    # nothing changes follows cascades of any depth on both sides.
    grew = True
    while grew:
        grew = False
        for side, own, lost, other_side, other in sides:
            for i in sorted(set(lost) - explained[side], key=lambda k: -own[k, 4]):
                if _explained_by_threshold(own[i], other, explained[other_side], tol):
                    explained[side].add(i)
                    grew = True
    for g in vanished:
        if g not in explained['golden']:
            problems.append(f"golden row {g} {np.round(golden[g, :5], 4).tolist()} has no match")
    for d in appeared:
        if d not in explained['dets']:
            problems.append(f"row {d} {np.round(dets[d, :5], 4).tolist()} is not in the golden set")
    return problems


def assert_detections_match(dets, golden, **tolerances):
    problems = compare_detections(dets, golden, **tolerances)
    assert not problems, f"{len(problems)} mismatches, first ones:\n" + "\n".join(problems[:10])


# The stated end-to-end tolerances against the reference's detections. Across the CPUs and
# thread counts tried, paired boxes and landmarks moved by at most a few 1e-4 px and scores
# by about 1e-6; these limits leave room for other CPUs and still catch a wrong variance, a
# shifted pixel or a swapped landmark.
DETECTION_TOLERANCES = dict(box_atol=0.01, landmark_atol=0.01, score_atol=2e-5)

# The result files hold truncated integer boxes: a corner may move by one pixel where it lies
# within rounding of an integer, which is rare, and an IoU computed from them is only good to
# a few percent for small faces, so the NMS band is wider.
FILE_TOLERANCES = dict(box_atol=1.0, score_atol=2e-5, iou_band=0.05, changed_corner_rate=0.01)


def parse_wider_rows(text):
    """The detections of a WIDER prediction file as ndarray[N, 5]: (x1, y1, x2, y2, score)."""
    lines = text.splitlines()
    n = int(lines[1])
    rows = [[float(v) for v in line.split()] for line in lines[2:2 + n]]
    arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    arr[:, 2] += arr[:, 0]  # w, h -> x2, y2
    arr[:, 3] += arr[:, 1]
    return arr


def assert_wider_files_match(text, golden_text):
    """Same image name and the same detections up to float rounding (FILE_TOLERANCES)."""
    assert text.splitlines()[0] == golden_text.splitlines()[0]
    assert_detections_match(parse_wider_rows(text), parse_wider_rows(golden_text), **FILE_TOLERANCES)
