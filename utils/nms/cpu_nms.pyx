# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled greedy NMS returning exactly the reference py_cpu_nms's keep list.

A box is kept by greedy NMS exactly when no earlier KEPT box (in py_cpu_nms's order,
scores.argsort()[::-1]) overlaps it by more than the threshold. The IoU is computed with
py_cpu_nms's operations in the same order and precision (C float for float32 dets, no
fast-math, no FMA contraction; see the root setup.py), so every comparison gives numpy's answer:

    xx1 = max(x1[i], x1[j]) ...  w = max(0, xx2 - xx1 + 1)  h = max(0, yy2 - yy1 + 1)
    inter = w * h   ovr = inter / (areas[i] + areas[j] - inter)   suppressed unless ovr <= thresh

The IoU is symmetric (addition commutes, inter is symmetric), so each candidate need only
be compared with the kept boxes that can overlap it. With thresh >= 0 and positive widths
and heights, boxes whose pixel ranges x1..x2+1 do not overlap have inter 0 and IoU 0, which
never suppresses; a uniform grid over the kept boxes (cells half the median box size)
finds the kept boxes that share a cell with a candidate, and every overlapping pair does.
Inputs where that reasoning does not hold (thresh < 0 or NaN, widths or heights <= 0,
non-finite or huge coordinates, boxes spanning too many cells) take the plain loop over all
kept boxes, which is still exact.
"""
import numpy as np

from cython cimport floating
from libc.math cimport fabs, floor
from libc.stdint cimport int32_t, int64_t, INT32_MAX

# Grid cells are this many times the median box size (smaller cells mean fewer pairs to
# compare but more cells per box; 0.5 was fastest on the crowd photo).
CELL_PER_MEDIAN_SIZE = 0.5
# The median box size is estimated from every SIZE_SAMPLE_STRIDE-th box (any cell size is
# exact; only speed depends on it).
cdef Py_ssize_t SIZE_SAMPLE_STRIDE = 8
# Grids needing more cells than this many per box (huge boxes) are not worth building.
cdef Py_ssize_t MAX_CELLS_PER_BOX = 64
# Coordinates of at most this magnitude keep the cell indices small int64s; larger (or
# non-finite) ones take the plain loop.
cdef double MAX_COORDINATE = 1e7


cdef inline floating _max(floating a, floating b) noexcept nogil:
    # np.maximum: NaN if either is NaN, else the larger.
    return a if (a >= b or a != a) else b


cdef inline floating _min(floating a, floating b) noexcept nogil:
    # np.minimum: NaN if either is NaN, else the smaller.
    return a if (a <= b or a != a) else b


cdef inline floating _max_finite(floating a, floating b) noexcept nogil:
    # _max for operands that are not NaN (the same result), without the NaN test: a
    # compare-and-select the compiler can make branch-free.
    return a if a >= b else b


cdef inline floating _min_finite(floating a, floating b) noexcept nogil:
    # _min for operands that are not NaN (the same result), likewise.
    return a if a <= b else b


# Columns of the boxes array the kernels work on: the sorted dets' coordinates and areas.
cdef enum:
    NCOL = 5  # x1, y1, x2, y2, area
# Columns of the cell-range array: first and last cell column and row of each box.
cdef enum:
    NGRID = 4  # gx0, gy0, gx1, gy1
# Columns of the grid entries' int32 array (see _gridded): next entry, box's gx0, gy0.
cdef enum:
    NMETA = 3


cdef inline bint _suppresses(const floating* b, Py_ssize_t i, Py_ssize_t j, floating thresh) noexcept nogil:
    """Whether kept box i suppresses box j: py_cpu_nms's `not ovr <= thresh`, op for op.

    b is the boxes array (row r at b + NCOL * r: x1, y1, x2, y2, area).
    """
    cdef const floating* p = b + NCOL * i
    cdef const floating* q = b + NCOL * j
    cdef floating one = 1, zero = 0
    cdef floating xx1 = _max(p[0], q[0])
    cdef floating yy1 = _max(p[1], q[1])
    cdef floating xx2 = _min(p[2], q[2])
    cdef floating yy2 = _min(p[3], q[3])
    cdef floating w = _max(zero, (xx2 - xx1) + one)
    cdef floating h = _max(zero, (yy2 - yy1) + one)
    cdef floating inter = w * h
    cdef floating ovr = inter / ((p[4] + q[4]) - inter)
    return not (ovr <= thresh)


cdef Py_ssize_t _plain(const floating* b, Py_ssize_t n, floating thresh, int64_t* keep) noexcept nogil:
    """Every candidate against every kept box; returns the number kept (in keep[:k])."""
    cdef Py_ssize_t nk = 0, j, t
    cdef bint kept
    for j in range(n):
        kept = True
        for t in range(nk):
            if _suppresses(b, keep[t], j, thresh):
                kept = False
                break
        if kept:
            keep[nk] = j
            nk += 1
    return nk


cdef inline bint _none_suppresses(const floating* entry_box, const int32_t* entry_meta, int32_t e,
                                  floating qx1, floating qy1, floating qx2, floating qy2, floating qa,
                                  floating thresh, Py_ssize_t cx, Py_ssize_t cy, bint first_x,
                                  bint first_y) noexcept nogil:
    """Whether no kept box in the cell list starting at entry e suppresses the candidate
    (qx1, qy1, qx2, qy2, area qa): py_cpu_nms's `not ovr <= thresh`, op for op, kept box
    first. The gridded path only sees finite coordinates (see _cell_ranges), so no operand
    of the max / min is NaN. With cx >= 0 only boxes whose first shared cell with the candidate is (cx, cy)
    are compared (first_x / first_y: cx / cy is the candidate's first column / row); with
    cx < 0, every box in the list.
    """
    cdef const floating* p
    cdef const int32_t* m
    cdef floating one = 1, zero = 0
    cdef floating xx1, yy1, xx2, yy2, w, h, inter, ovr
    while e >= 0:
        m = entry_meta + NMETA * e
        if cx < 0 or ((first_x or m[1] == cx) and (first_y or m[2] == cy)):
            p = entry_box + NCOL * e
            xx1 = _max_finite(p[0], qx1)
            yy1 = _max_finite(p[1], qy1)
            xx2 = _min_finite(p[2], qx2)
            yy2 = _min_finite(p[3], qy2)
            w = _max_finite(zero, (xx2 - xx1) + one)
            h = _max_finite(zero, (yy2 - yy1) + one)
            inter = w * h
            ovr = inter / ((p[4] + qa) - inter)
            if not (ovr <= thresh):
                return False
        e = m[0]
    return True


cdef Py_ssize_t _gridded(const floating* b, Py_ssize_t n, floating thresh, const int64_t* g, Py_ssize_t width,
                         int32_t* head, int32_t* tail, floating* entry_box, int32_t* entry_meta,
                         int64_t* keep) noexcept nogil:
    """Candidates against the kept boxes sharing a grid cell; returns the number kept.

    g holds each box's cell range (row r at g + NGRID * r: gx0, gy0, gx1, gy1; cell id
    gy * width + gx). head[cell] starts a linked list (-1 ends it) of entries, each a kept
    box that covers the cell, in the order they were kept (tail[cell] is the last entry): a
    candidate is most often suppressed by the best box near it, which comes first. Entry e
    stores the kept box inline (no indirect loads): its coordinates and area at
    entry_box + NCOL * e, and at entry_meta + NMETA * e the next entry and the box's first
    cell column and row. A candidate and a kept box sharing several cells are compared
    only in the first cell of the rectangle they share (the one whose column and row are
    each the larger of the two boxes' first), so each pair once, with no marks to write.
    """
    cdef Py_ssize_t nk = 0, n_entries = 0, j, cx, cy, cell, jx0, jy0, jx1, jy1, ccx, ccy
    cdef int32_t e
    cdef const int64_t* r
    cdef const floating* q
    cdef const floating* p
    cdef const int32_t* m
    cdef floating* pe
    cdef int32_t* me
    cdef floating one = 1, zero = 0
    cdef floating qx1, qy1, qx2, qy2, qa, xx1, yy1, xx2, yy2, w, h, inter, ovr
    cdef bint kept
    for j in range(n):
        r = g + NGRID * j
        jx0 = r[0]
        jy0 = r[1]
        jx1 = r[2]
        jy1 = r[3]
        q = b + NCOL * j
        qx1 = q[0]
        qy1 = q[1]
        qx2 = q[2]
        qy2 = q[3]
        qa = q[4]
        # The centre cell first, every entry there: the box that suppresses a candidate
        # overlaps it by more than the threshold and most often covers its centre cell.
        ccx = (jx0 + jx1) // 2
        ccy = (jy0 + jy1) // 2
        kept = _none_suppresses(entry_box, entry_meta, head[ccy * width + ccx], qx1, qy1, qx2, qy2, qa, thresh,
                                -1, -1, 0, 0)
        # Then the other cells, each pair in the first cell the two boxes share (a pair
        # first sharing the centre cell was compared there already).
        cy = jy0
        while kept and cy <= jy1:
            cx = jx0
            while kept and cx <= jx1:
                if cx != ccx or cy != ccy:
                    kept = _none_suppresses(entry_box, entry_meta, head[cy * width + cx], qx1, qy1, qx2, qy2, qa,
                                            thresh, cx, cy, cx == jx0, cy == jy0)
                cx += 1
            cy += 1
        if kept:
            keep[nk] = j
            nk += 1
            for cy in range(jy0, jy1 + 1):
                for cx in range(jx0, jx1 + 1):
                    cell = cy * width + cx
                    pe = entry_box + NCOL * n_entries
                    pe[0] = qx1
                    pe[1] = qy1
                    pe[2] = qx2
                    pe[3] = qy2
                    pe[4] = qa
                    me = entry_meta + NMETA * n_entries
                    me[0] = -1
                    me[1] = <int32_t>jx0
                    me[2] = <int32_t>jy0
                    if tail[cell] >= 0:
                        entry_meta[NMETA * tail[cell]] = <int32_t>n_entries
                    else:
                        head[cell] = <int32_t>n_entries
                    tail[cell] = <int32_t>n_entries
                    n_entries += 1
    return nk


cdef Py_ssize_t _cell_ranges(const floating* b, Py_ssize_t n, double cell, int64_t* g, Py_ssize_t* width,
                             Py_ssize_t* height) noexcept nogil:
    """Each box's cell range into g (see _gridded), and the grid's width and height.

    Returns the number of (box, cell) entries, or -1 where pruning is unsafe (a
    coordinate non-finite or above MAX_COORDINATE in magnitude, a width, height or area
    <= 0) or not worth it (more than MAX_CELLS_PER_BOX entries per box).
    Computed in double, where x2 + 1 (exact for float32 coordinates) and floor(x / cell)
    are monotonic in x, so boxes whose pixel ranges [x1, x2 + 1) overlap always share a cell.
    """
    cdef Py_ssize_t r, c, entries = 0
    cdef const floating* p
    cdef int64_t* q
    cdef int64_t min_x = 0, min_y = 0, max_x = 0, max_y = 0
    cdef floating one = 1, zero = 0
    for r in range(n):
        p = b + NCOL * r
        for c in range(4):
            if not (fabs(<double>p[c]) <= MAX_COORDINATE):  # also NaN
                return -1
        if not ((p[2] - p[0]) + one > zero and (p[3] - p[1]) + one > zero and p[4] > zero):
            return -1
        q = g + NGRID * r
        q[0] = <int64_t>floor(<double>p[0] / cell)
        q[1] = <int64_t>floor(<double>p[1] / cell)
        q[2] = <int64_t>floor((<double>p[2] + 1) / cell)
        q[3] = <int64_t>floor((<double>p[3] + 1) / cell)
        if r == 0 or q[0] < min_x:
            min_x = q[0]
        if r == 0 or q[1] < min_y:
            min_y = q[1]
        if r == 0 or q[2] > max_x:
            max_x = q[2]
        if r == 0 or q[3] > max_y:
            max_y = q[3]
        entries += (q[2] - q[0] + 1) * (q[3] - q[1] + 1)
        if entries > MAX_CELLS_PER_BOX * n:  # not worth it (and no int64 overflow)
            return -1
    for r in range(n):
        q = g + NGRID * r
        q[0] -= min_x
        q[1] -= min_y
        q[2] -= min_x
        q[3] -= min_y
    width[0] = max_x - min_x + 1
    height[0] = max_y - min_y + 1
    return entries


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
    boxes = np.empty((n, NCOL), dtype=dets.dtype)
    sizes = np.empty((n + SIZE_SAMPLE_STRIDE - 1) // SIZE_SAMPLE_STRIDE, dtype=np.float64)
    _gather(dets, order, boxes, sizes)
    thr = float(np.asarray(thresh, dtype=dets.dtype))
    keep = np.empty(n, dtype=np.int64)
    # The cell size: any is exact; only speed depends on it (NaN or huge sizes come with
    # boxes that take the plain loop anyway).
    cell = CELL_PER_MEDIAN_SIZE * float(np.partition(sizes, sizes.size // 2)[sizes.size // 2])
    if not 1.0 <= cell <= MAX_COORDINATE:
        cell = 1.0
    nk = _run(boxes, thr, cell, keep)
    return order[keep[:nk]]


def _gather(const floating[:, :] dets, const int64_t[:] order, floating[:, ::1] boxes, double[::1] sizes):
    """Fill boxes (ndarray[N, NCOL]) with dets' boxes in order and their areas, and sizes
    with the size (the larger side, +1) of every SIZE_SAMPLE_STRIDE-th of them."""
    cdef Py_ssize_t r, n = order.shape[0]
    cdef floating one = 1
    cdef floating* q
    with nogil:
        for r in range(n):
            q = &boxes[r, 0]
            q[0] = dets[order[r], 0]
            q[1] = dets[order[r], 1]
            q[2] = dets[order[r], 2]
            q[3] = dets[order[r], 3]
            q[4] = ((q[2] - q[0]) + one) * ((q[3] - q[1]) + one)  # py_cpu_nms's areas, op for op
            if r % SIZE_SAMPLE_STRIDE == 0:
                sizes[r // SIZE_SAMPLE_STRIDE] = max(<double>q[2] - <double>q[0], <double>q[3] - <double>q[1]) + 1


def _run(const floating[:, ::1] boxes, double thresh, double cell, int64_t[::1] keep):
    """Runs the gridded kernel with square cells of side cell, or the plain one where
    pruning is unsafe (see _cell_ranges; also thresh < 0 or NaN, or a grid that would need
    more than MAX_CELLS_PER_BOX cells or entries per box).

    Returns:
        int: the number kept (their rows in keep[:k]).
    """
    cdef floating thr = <floating>thresh  # exact: thresh was rounded to the dtype already
    cdef Py_ssize_t n = boxes.shape[0], nk, width = 0, height = 0, n_entries = -1
    cdef int64_t[:, ::1] g = np.empty((n, NGRID), dtype=np.int64)
    cdef int32_t[::1] head, tail
    cdef floating[:, ::1] entry_box
    cdef int32_t[:, ::1] entry_meta
    # With thresh >= 0 (not NaN) disjoint boxes (IoU 0) never suppress each other.
    if thresh >= 0:
        with nogil:
            n_entries = _cell_ranges(&boxes[0, 0], n, cell, &g[0, 0], &width, &height)
    # Entries and cells are int32 indices (see _gridded): fall back where they would not fit.
    if n_entries < 0 or width * height > MAX_CELLS_PER_BOX * n or n_entries > INT32_MAX or width * height > INT32_MAX:
        with nogil:
            nk = _plain(&boxes[0, 0], n, thr, &keep[0])
        return nk
    head, tail = np.full(width * height, -1, dtype=np.int32), np.full(width * height, -1, dtype=np.int32)
    # Only kept boxes make entries, at most n_entries of them.
    if floating is float:
        entry_box = np.empty((max(n_entries, 1), NCOL), dtype=np.float32)
    else:
        entry_box = np.empty((max(n_entries, 1), NCOL), dtype=np.float64)
    entry_meta = np.empty((max(n_entries, 1), NMETA), dtype=np.int32)
    with nogil:
        nk = _gridded(&boxes[0, 0], n, thr, &g[0, 0], width, &head[0], &tail[0], &entry_box[0, 0],
                      &entry_meta[0, 0], &keep[0])
    return nk
