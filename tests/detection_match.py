"""Compare two sets of detections the way float rounding allows, and no further.

Network outputs differ between CPUs (and thread counts) in the last bits, about 1e-5.
Downstream of the network that can do exactly three things, and these are all that
`compare_detections` forgives:

1. move a box, landmark or score by a tiny amount: matched detections must agree within
   the stated tolerances (`box_atol` pixels, `score_atol`);
2. reorder detections whose scores are nearly equal: detections are matched by position,
   not by row;
3. make a candidate appear or vanish where a threshold decides by a hair:
   - its score lies within `score_band` of the confidence threshold, or
   - NMS decided it by an IoU within `iou_band` of the NMS threshold, or
   - it swapped places with a near-equal-score neighbour it overlaps (> nms threshold),
     which then vanished or appeared in its stead, or
   - the box that suppresses it in one set is itself one that appeared for one of
     these reasons (a cascade, followed from the highest score down).

Anything else, such as a dropped detection, a box decoded with the wrong variance,
landmarks swapped left/right or an NMS with a different overlap formula, is a mismatch.
"""
import numpy as np

CONFIDENCE_THRESHOLD = 0.02
NMS_THRESHOLD = 0.4


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


def _match_by_position(a, b, box_atol, score_atol):
    """Pairs (i, j) of rows of a and b whose boxes and scores agree within the tolerances.

    Kept detections overlap each other by at most the NMS threshold, so within one set no
    two boxes lie within a pixel of each other and the nearest candidate is the only one.
    """
    pairs = []
    taken = np.zeros(len(b), dtype=bool)
    for i in range(len(a)):
        if len(b) == 0:
            break
        dist = np.abs(b[:, :4] - a[i, :4]).max(axis=1)
        ok = (dist <= box_atol) & (np.abs(b[:, 4] - a[i, 4]) <= score_atol) & ~taken
        if ok.any():
            j = int(np.argmin(np.where(ok, dist, np.inf)))
            taken[j] = True
            pairs.append((i, j))
    return pairs


def _unexplained(own, own_lost, other, other_found, other_lost_explained, tol):
    """Rows of `own` (indices own_lost) that the other set lacks and rounding cannot explain.

    other_found: rows of `other` that `own` lacks. Walks own_lost from the highest score down,
    so that a cascade can rest on a higher-scoring row that is already explained.
    """
    conf, nms = tol['confidence_threshold'], tol['nms_threshold']
    explained_other = set(other_lost_explained)
    bad = []
    for i in sorted(own_lost, key=lambda k: -own[k, 4]):
        s = own[i, 4]
        if abs(s - conf) <= tol['score_band']:
            continue
        if len(other):
            iou = iou_plus_one(own[i, :4], other[:, :4])
            higher = other[:, 4] >= s - tol['score_atol']
            # NMS decided by a hair: the other set's box that suppressed this one.
            if np.any(higher & (np.abs(iou - nms) <= tol['iou_band'])):
                continue
            extra = np.zeros(len(other), dtype=bool)
            extra[list(other_found)] = True
            # A near-tie swap: the other set kept its overlapping twin instead.
            if np.any(extra & (iou > nms) & (np.abs(other[:, 4] - s) <= tol['score_atol'])):
                continue
            # A cascade: suppressed by a box that is itself a rounding-decided extra.
            casc = np.zeros(len(other), dtype=bool)
            casc[list(explained_other)] = True
            if np.any(casc & higher & (iou > nms - tol['iou_band'])):
                continue
        bad.append(i)
    return bad


def compare_detections(dets, golden, box_atol, score_atol, landmark_atol=None, score_band=1e-4,
                       iou_band=1e-3, confidence_threshold=CONFIDENCE_THRESHOLD,
                       nms_threshold=NMS_THRESHOLD):
    """Compare detections with golden ones up to float rounding (see the module docstring).

    Args:
        dets, golden (ndarray[N, 5+]): (x1, y1, x2, y2) pixels, score, then optionally the
            five landmarks as (x, y) pixel pairs.
        box_atol (float): pixels a matched box corner may move.
        score_atol (float): how far a matched score may move.
        landmark_atol (float | None): pixels a matched landmark may move (None: not compared).
        score_band, iou_band: how close to the confidence and NMS thresholds a score or IoU
            must lie for a detection to appear or vanish.
    Returns:
        list[str]: the mismatches, empty when the sets agree.
    """
    tol = dict(score_atol=score_atol, score_band=score_band, iou_band=iou_band,
               confidence_threshold=confidence_threshold, nms_threshold=nms_threshold)
    dets = np.asarray(dets, dtype=np.float64)
    golden = np.asarray(golden, dtype=np.float64)
    pairs = _match_by_position(golden, dets, box_atol, score_atol)
    problems = []
    if landmark_atol is not None:
        for g, d in pairs:
            err = np.abs(dets[d, 5:15] - golden[g, 5:15]).max()
            if err > landmark_atol:
                problems.append(f"golden row {g}: landmarks differ by {err:.3g} px (> {landmark_atol})")
    vanished = sorted(set(range(len(golden))) - {g for g, _ in pairs})
    appeared = sorted(set(range(len(dets))) - {d for _, d in pairs})
    # Explain the appeared rows first against nothing, then each side with the other's
    # explained rows available for cascades; two passes reach the fixpoint for one level
    # of cascade on each side.
    bad_appeared = _unexplained(dets, appeared, golden, vanished, [], tol)
    bad_vanished = _unexplained(golden, vanished, dets, appeared,
                                sorted(set(appeared) - set(bad_appeared)), tol)
    bad_appeared = _unexplained(dets, appeared, golden, vanished,
                                sorted(set(vanished) - set(bad_vanished)), tol)
    for g in bad_vanished:
        problems.append(f"golden row {g} {np.round(golden[g, :5], 4).tolist()} has no match")
    for d in bad_appeared:
        problems.append(f"row {d} {np.round(dets[d, :5], 4).tolist()} is not in the golden set")
    return problems


def assert_detections_match(dets, golden, **tolerances):
    problems = compare_detections(dets, golden, **tolerances)
    assert not problems, f"{len(problems)} mismatches, first ones:\n" + "\n".join(problems[:10])


# The stated end-to-end tolerances against the reference's detections. Across the CPUs and
# thread counts tried, matched boxes and landmarks moved by at most a few 1e-4 px and scores
# by about 1e-6; these limits leave room for other CPUs and still catch a wrong variance, a
# shifted pixel or a swapped landmark.
DETECTION_TOLERANCES = dict(box_atol=0.01, landmark_atol=0.01, score_atol=2e-5)

# The result files hold truncated integer boxes: a corner may move by one pixel, and an IoU
# computed from them is only good to a few percent for small faces, so the NMS band is wider.
FILE_TOLERANCES = dict(box_atol=1.0, score_atol=2e-5, iou_band=0.05)


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
