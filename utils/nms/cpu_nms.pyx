# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled greedy NMS returning exactly the reference py_cpu_nms's keep list.

A box is kept by greedy NMS exactly when no earlier KEPT box (in py_cpu_nms's order,
scores.argsort()[::-1]) overlaps it by more than the threshold. The IoU is computed with
py_cpu_nms's operations in the same order and precision (C float for float32 dets, no
fast-math, no FMA contraction; see setup.py), so every comparison gives numpy's answer:

    xx1 = max(x1[i], x1[j]) ...  w = max(0, xx2 - xx1 + 1)  h = max(0, yy2 - yy1 + 1)
    inter = w * h   ovr = inter / (areas[i] + areas[j] - inter)   suppressed unless ovr <= thresh

The IoU is symmetric (addition commutes, inter is symmetric), so each candidate need only
be compared with the kept boxes that can overlap it. With thresh >= 0 and positive widths
and heights, boxes whose pixel ranges x1..x2+1 do not overlap have inter 0 and IoU 0, which
never suppresses; a uniform grid over the kept boxes (cells about the median box size)
finds the kept boxes that share a cell with a candidate, and every overlapping pair does.
Inputs where that reasoning does not hold (thresh < 0 or NaN, widths or heights <= 0,
non-finite or huge coordinates, boxes spanning too many cells) take the plain loop over all
kept boxes, which is still exact.
"""
import numpy as np

from cython cimport floating
from libc.stdint cimport int64_t

# Grids needing more cells than this many per box (huge boxes) are not worth building.
MAX_CELLS_PER_BOX = 64
# Coordinates of at most this magnitude keep floor(x / cell) exact in int64 and x + 1
# exact in double; larger (or non-finite) ones take the plain loop.
MAX_COORDINATE = 1e7


cdef inline floating _max(floating a, floating b) noexcept nogil:
    # np.maximum: NaN if either is NaN, else the larger.
    return a if (a >= b or a != a) else b


cdef inline floating _min(floating a, floating b) noexcept nogil:
    # np.minimum: NaN if either is NaN, else the smaller.
    return a if (a <= b or a != a) else b


cdef inline bint _suppresses(const floating[::1] x1, const floating[::1] y1, const floating[::1] x2,
                             const floating[::1] y2, const floating[::1] areas, Py_ssize_t i, Py_ssize_t j,
                             floating thresh) noexcept nogil:
    """Whether kept box i suppresses box j: py_cpu_nms's `not ovr <= thresh`, op for op."""
    cdef floating one = 1, zero = 0
    cdef floating xx1 = _max(x1[i], x1[j])
    cdef floating yy1 = _max(y1[i], y1[j])
    cdef floating xx2 = _min(x2[i], x2[j])
    cdef floating yy2 = _min(y2[i], y2[j])
    cdef floating w = _max(zero, (xx2 - xx1) + one)
    cdef floating h = _max(zero, (yy2 - yy1) + one)
    cdef floating inter = w * h
    cdef floating ovr = inter / ((areas[i] + areas[j]) - inter)
    return not (ovr <= thresh)


cdef Py_ssize_t _plain(const floating[::1] x1, const floating[::1] y1, const floating[::1] x2,
                       const floating[::1] y2, const floating[::1] areas, floating thresh,
                       int64_t[::1] keep) noexcept nogil:
    """Every candidate against every kept box; returns the number kept (in keep[:k])."""
    cdef Py_ssize_t n = x1.shape[0], nk = 0, j, t
    cdef bint kept
    for j in range(n):
        kept = True
        for t in range(nk):
            if _suppresses(x1, y1, x2, y2, areas, keep[t], j, thresh):
                kept = False
                break
        if kept:
            keep[nk] = j
            nk += 1
    return nk


cdef Py_ssize_t _gridded(const floating[::1] x1, const floating[::1] y1, const floating[::1] x2,
                         const floating[::1] y2, const floating[::1] areas, floating thresh,
                         const int64_t[::1] gx0, const int64_t[::1] gy0, const int64_t[::1] gx1,
                         const int64_t[::1] gy1, Py_ssize_t width, int64_t[::1] head, int64_t[::1] entry_box,
                         int64_t[::1] entry_next, int64_t[::1] stamp, int64_t[::1] keep) noexcept nogil:
    """Candidates against the kept boxes sharing a grid cell; returns the number kept.

    head[cell] starts a linked list (entry_next, -1 ends it) of entries, each naming a
    kept box (entry_box) that covers the cell; stamp[k] == j marks kept box k as already
    compared with candidate j (a pair may share several cells).
    """
    cdef Py_ssize_t n = x1.shape[0], nk = 0, n_entries = 0, j, k, cx, cy, cell
    cdef int64_t e
    cdef bint kept
    for j in range(n):
        kept = True
        cy = gy0[j]
        while kept and cy <= gy1[j]:
            cx = gx0[j]
            while kept and cx <= gx1[j]:
                e = head[cy * width + cx]
                while e >= 0:
                    k = entry_box[e]
                    if stamp[k] != j:
                        stamp[k] = j
                        if _suppresses(x1, y1, x2, y2, areas, k, j, thresh):
                            kept = False
                            break
                    e = entry_next[e]
                cx += 1
            cy += 1
        if kept:
            keep[nk] = j
            nk += 1
            for cy in range(gy0[j], gy1[j] + 1):
                for cx in range(gx0[j], gx1[j] + 1):
                    cell = cy * width + cx
                    entry_box[n_entries] = j
                    entry_next[n_entries] = head[cell]
                    head[cell] = n_entries
                    n_entries += 1
    return nk


def _grid(d, areas, thresh):
    """The grid of the sorted boxes d (ndarray[N, >=4]), or None where pruning is unsafe.

    Returns (gx0, gy0, gx1, gy1 ndarray[N] int64 cell ranges, width, n_cells, n_entries).
    """
    n = d.shape[0]
    if not thresh >= 0:  # thresh < 0 or NaN: even disjoint boxes suppress each other
        return None
    if not (np.abs(d[:, :4]) <= MAX_COORDINATE).all():  # also catches NaN and inf
        return None
    if not ((d[:, 2] - d[:, 0] + 1 > 0).all() and (d[:, 3] - d[:, 1] + 1 > 0).all() and (areas > 0).all()):
        return None
    # Computed in float64, where x2 + 1 is exact and floor(x / cell) is monotonic in x, so
    # boxes whose pixel ranges [x1, x2 + 1) overlap always share a cell.
    c64 = d[:, :4].astype(np.float64)
    cell = max(1.0, float(np.median(np.maximum(c64[:, 2] - c64[:, 0], c64[:, 3] - c64[:, 1]) + 1)))
    gx0 = np.floor(c64[:, 0] / cell).astype(np.int64)
    gy0 = np.floor(c64[:, 1] / cell).astype(np.int64)
    gx1 = np.floor((c64[:, 2] + 1) / cell).astype(np.int64)
    gy1 = np.floor((c64[:, 3] + 1) / cell).astype(np.int64)
    ox, oy = gx0.min(), gy0.min()
    gx0 -= ox
    gx1 -= ox
    gy0 -= oy
    gy1 -= oy
    width = int(gx1.max()) + 1
    n_cells = width * (int(gy1.max()) + 1)
    n_entries = int(((gx1 - gx0 + 1) * (gy1 - gy0 + 1)).sum())
    if n_entries > MAX_CELLS_PER_BOX * n or n_cells > MAX_CELLS_PER_BOX * n:
        return None
    return gx0, gy0, gx1, gy1, width, n_cells, n_entries


def cpu_nms(dets, thresh):
    """Greedy NMS with the +1 pixel convention: exactly py_cpu_nms(dets, thresh), as an array.

    Args:
        dets (ndarray[N, >=5] float32 | float64): (x1, y1, x2, y2, score) in pixels.
        thresh (float): a box is suppressed when its IoU with a kept box is > thresh; a
            Python float, compared (as py_cpu_nms does) after rounding to dets' dtype.
    Returns:
        ndarray[K] int64: indices into dets of the kept boxes, in py_cpu_nms's order.
    Raises:
        TypeError: dets is not float32 or float64.
    """
    if dets.dtype != np.float32 and dets.dtype != np.float64:
        raise TypeError(f"cpu_nms needs float32 or float64 dets, got {dets.dtype}")
    n = dets.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    order = dets[:, 4].argsort()[::-1]  # py_cpu_nms's processing order (ties included)
    d = dets[order]
    x1, y1 = np.ascontiguousarray(d[:, 0]), np.ascontiguousarray(d[:, 1])
    x2, y2 = np.ascontiguousarray(d[:, 2]), np.ascontiguousarray(d[:, 3])
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)  # py_cpu_nms's expression, elementwise
    thr = float(np.asarray(thresh, dtype=dets.dtype))
    keep = np.empty(n, dtype=np.int64)
    grid = _grid(d, areas, thr)
    if grid is None:
        nk = _dispatch_plain(x1, y1, x2, y2, areas, thr, keep)
    else:
        gx0, gy0, gx1, gy1, width, n_cells, n_entries = grid
        nk = _dispatch_gridded(x1, y1, x2, y2, areas, thr, gx0, gy0, gx1, gy1, width,
                               np.full(n_cells, -1, dtype=np.int64), np.empty(n_entries, dtype=np.int64),
                               np.empty(n_entries, dtype=np.int64), np.full(n, -1, dtype=np.int64), keep)
    return order[keep[:nk]]


def _dispatch_plain(const floating[::1] x1, const floating[::1] y1, const floating[::1] x2,
                    const floating[::1] y2, const floating[::1] areas, double thresh, int64_t[::1] keep):
    cdef floating thr = <floating>thresh  # exact: thresh was rounded to the dtype already
    cdef Py_ssize_t nk
    with nogil:
        nk = _plain(x1, y1, x2, y2, areas, thr, keep)
    return nk


def _dispatch_gridded(const floating[::1] x1, const floating[::1] y1, const floating[::1] x2,
                      const floating[::1] y2, const floating[::1] areas, double thresh,
                      const int64_t[::1] gx0, const int64_t[::1] gy0, const int64_t[::1] gx1,
                      const int64_t[::1] gy1, Py_ssize_t width, int64_t[::1] head, int64_t[::1] entry_box,
                      int64_t[::1] entry_next, int64_t[::1] stamp, int64_t[::1] keep):
    cdef floating thr = <floating>thresh
    cdef Py_ssize_t nk
    with nogil:
        nk = _gridded(x1, y1, x2, y2, areas, thr, gx0, gy0, gx1, gy1, width, head, entry_box, entry_next,
                      stamp, keep)
    return nk
