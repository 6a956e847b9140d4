"""Accurate mode (an image pyramid with flips, merged by box voting) and tiling.

Both are options of models.detector.Detector; the default pipeline never comes here.

Pyramid (insightface's RetinaFace "mode 1" test, the one behind its published WIDER numbers):

    image -> for each scale of pyramid_scales(h, w): the image resized, and its mirror image
          -> every candidate above the confidence threshold of every pass, decoded and mapped
             back to the original image (mirror_candidates for the flipped passes)
          -> merged across passes: box_vote (the default) or NMS

Tiles (large photos at their original size without the memory of one huge forward pass):

    image -> tile_grid: overlapping N x N windows -> candidates of each window whose centre
          lies in the window's core (tile_cores) -> the pipeline's own NMS over all of them

Detection rows are ndarray[N, 15] float32 as everywhere: x1 y1 x2 y2 score, then five
landmark (x, y) pairs in the order left eye, right eye, nose, left mouth corner, right
mouth corner.
"""
from math import ceil

import numpy as np
from numpy.typing import ArrayLike

from layers.functions.detection import empty_detections
from utils.nms import fast_nms

# insightface's pyramid: the base scale brings the short side to PYRAMID_TARGET pixels (the
# long side to at most PYRAMID_MAX); the passes then run at base * s / PYRAMID_TARGET.
PYRAMID_TARGET = 800
PYRAMID_MAX = 1200
PYRAMID_SIZES = (500, 800, 1100, 1400, 1700)
# insightface stops voting after this many detections; used when keep_top_k is not set.
PYRAMID_KEEP_TOP_K = 750
PYRAMID_MERGES = ('vote', 'nms')
# Where a landmark of a mirrored face comes from: the mirror image's left eye is the
# face's right eye, and its left mouth corner the face's right one.
MIRRORED_LANDMARKS = (1, 0, 2, 4, 3)


def pyramid_scales(height: int, width: int) -> list[float]:
    """The resize factors of the pyramid's passes for an image of height x width.

    The base factor b brings the short side to PYRAMID_TARGET, or the long side to
    PYRAMID_MAX when it would otherwise round to more; the passes run at b * s / PYRAMID_TARGET
    for s in PYRAMID_SIZES, smallest first.
    """
    short, long_ = min(height, width), max(height, width)
    base = float(PYRAMID_TARGET) / float(short)
    if np.round(base * long_) > PYRAMID_MAX:
        base = float(PYRAMID_MAX) / float(long_)
    return [float(s) / PYRAMID_TARGET * base for s in PYRAMID_SIZES]


def mirror_candidates(dets: np.ndarray, width: float) -> np.ndarray:
    """Detections of a horizontally flipped image, mapped into the unflipped one.

    x becomes width - x, the box's x1 and x2 trade places, and so do the landmarks that a
    mirror swaps (the eyes, the mouth corners). Applying it twice gives the detections back.

    width - x, not width - 1 - x: the network was trained with this mirror
    (data.data_augment._mirror), so its coordinates are those of a continuous image whose
    mirror axis is at width / 2. With width - 1 - x every mirrored box lands one original
    pixel to the left, which on small faces costs more AP than the flipped passes bring
    (bench/README.md, "Accurate mode").

    Args:
        dets (ndarray[N, 15] float32): detections in the mirror image's pixels.
        width (float): the width of the flipped image, in the pixels of dets (a resized pass:
            its input width / its resize factor).
    Returns:
        ndarray[N, 15] float32: a new array.
    """
    out = np.empty_like(dets)
    edge = np.float32(width)
    out[:, 0] = edge - dets[:, 2]
    out[:, 2] = edge - dets[:, 0]
    out[:, [1, 3, 4]] = dets[:, [1, 3, 4]]
    points = dets[:, 5:].reshape(-1, 5, 2)
    mirrored = out[:, 5:].reshape(-1, 5, 2)  # a view into out
    mirrored[:, :, 0] = edge - points[:, MIRRORED_LANDMARKS, 0]
    mirrored[:, :, 1] = points[:, MIRRORED_LANDMARKS, 1]
    return out


def _iou_with_first(boxes):
    """IoU (+1 pixel convention) of boxes[0] with every row of boxes ([N, >=4]), as NMS computes it."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    w = np.maximum(0.0, np.minimum(x2[0], x2) - np.maximum(x1[0], x1) + 1)
    h = np.maximum(0.0, np.minimum(y2[0], y2) - np.maximum(y1[0], y1) + 1)
    inter = w * h
    return inter / (areas[0] + areas - inter)


def score_order(scores: ArrayLike) -> np.ndarray:
    """Indices of scores, highest first; equal scores keep their order (a stable sort)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind='stable')


def box_vote(dets: np.ndarray, threshold: float, keep_top_k: int | None = PYRAMID_KEEP_TOP_K,
             keep_singletons: bool = False) -> np.ndarray:
    """Merge overlapping candidates by score-weighted voting (insightface's bbox_vote, with
    the landmarks voted as well instead of thrown away).

    Until no candidate is left: take the highest-scoring one (equal scores: the earlier
    row); its group is every remaining candidate whose IoU with it is >= threshold (+1
    pixel convention), itself included; the group leaves the pool and becomes one detection:
    the score-weighted mean of its boxes and of its landmarks, with the group's highest
    score. A group of one is dropped (a face the other passes do not confirm), unless
    keep_singletons. At most keep_top_k detections are made.

    Args:
        dets (ndarray[N, 15] float32): candidates of every pass, any order.
        threshold (float): the IoU at which a candidate joins a group.
        keep_top_k (int | None): the most detections to make (None: no limit).
        keep_singletons (bool): keep groups of one as they are.
    Returns:
        ndarray[M, 15] float32, highest score first.
    """
    if len(dets) == 0:
        return empty_detections()
    pool = dets[score_order(dets[:, 4])]
    out = []
    while len(pool) and (not keep_top_k or len(out) < keep_top_k):
        members = _iou_with_first(pool) >= threshold
        members[0] = True  # NaN boxes still form their own group, so the loop ends
        group = pool[members]
        pool = pool[~members]
        if len(group) == 1:
            if keep_singletons:
                out.append(group[0])
            continue
        weights = group[:, 4:5].astype(np.float64)
        merged = (group.astype(np.float64) * weights).sum(axis=0) / weights.sum()
        merged[4] = group[0, 4]  # the group's highest score: the first one taken
        out.append(merged.astype(np.float32))
    if not out:
        return empty_detections()
    return np.stack(out).astype(np.float32, copy=False)


def nms_merge(dets: np.ndarray, threshold: float, keep_top_k: int | None = PYRAMID_KEEP_TOP_K,
              top_k: int | None = None) -> np.ndarray:
    """Merge candidates with the pipeline's NMS (+1 pixel convention): sorted by score (equal
    scores keep their order), at most top_k of them, then fast_nms, then at most keep_top_k.

    Args:
        dets (ndarray[N, 15] float32): candidates, any order.
        threshold (float): a box is suppressed when its IoU with a kept box is > threshold.
        keep_top_k (int | None): the most detections to keep (None: all).
        top_k (int | None): the most candidates to consider (None: all).
    Returns:
        ndarray[M, 15] float32, highest score first.
    """
    if len(dets) == 0:
        return empty_detections()
    dets = dets[score_order(dets[:, 4])[:top_k]]
    keep = fast_nms(np.ascontiguousarray(dets[:, :5]), threshold)
    if keep_top_k:
        keep = keep[:keep_top_k]
    return dets[keep]


# ---------------------------------------------------------------------------------------
# Tiles

def tile_overlap(tile: int, largest_anchor: float) -> int:
    """How much neighbouring tiles overlap: the network's largest anchor, at most half a tile.

    A face at most `overlap` pixels wide and high lies whole inside the tile whose core
    (tile_cores) holds its centre: the core ends overlap / 2 before the tile does, and the
    face reaches at most overlap / 2 beyond its centre. Faces much larger than the largest
    anchor are beyond what the network finds reliably at any position (the anchors are its
    prior on face sizes), so a larger overlap would buy little and cost more tiles.
    """
    return min(int(largest_anchor), tile // 2)


def _axis_starts(length, tile, overlap):
    """Tile origins along one axis: steps of tile - overlap, the last tile flush with the end."""
    if length <= tile:
        return [0]
    n = ceil((length - tile) / (tile - overlap)) + 1
    return [min(k * (tile - overlap), length - tile) for k in range(n)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """The tiles covering a height x width image: [(y0, x0, y1, x1)] row by row.

    Each tile is tile x tile pixels (or the image's whole height or width where it is
    smaller); neighbours overlap by at least overlap pixels.
    """
    ys, xs = _axis_starts(height, tile, overlap), _axis_starts(width, tile, overlap)
    return [(y, x, min(y + tile, height), min(x + tile, width)) for y in ys for x in xs]


def _axis_cores(starts, tile, length):
    """Per tile along one axis, [lo, hi): the coordinates closer to its own middle than any
    neighbour's, split half way through each overlap; the outer tiles reach the image edges."""
    cores = []
    for k, s in enumerate(starts):
        lo = -np.inf if k == 0 else (s + min(starts[k - 1] + tile, length)) / 2
        hi = np.inf if k == len(starts) - 1 else (starts[k + 1] + min(s + tile, length)) / 2
        cores.append((lo, hi))
    return cores


def tile_cores(height: int, width: int, tile: int, overlap: int) -> list[tuple[float, float, float, float]]:
    """The core of each tile_grid tile, [(y_lo, x_lo, y_hi, x_hi)] in image pixels: the
    cores partition the image, so a candidate is kept by the one tile whose core holds its
    box centre."""
    ys, xs = _axis_starts(height, tile, overlap), _axis_starts(width, tile, overlap)
    ycores, xcores = _axis_cores(ys, tile, height), _axis_cores(xs, tile, width)
    return [(ylo, xlo, yhi, xhi) for ylo, yhi in ycores for xlo, xhi in xcores]


def in_core(dets: np.ndarray, core: tuple[float, float, float, float]) -> np.ndarray:
    """Rows of dets (in image pixels) whose box centre lies in core (y_lo, x_lo, y_hi, x_hi)."""
    ylo, xlo, yhi, xhi = core
    cx = (dets[:, 0] + dets[:, 2]) / 2
    cy = (dets[:, 1] + dets[:, 3]) / 2
    return (cx >= xlo) & (cx < xhi) & (cy >= ylo) & (cy < yhi)
