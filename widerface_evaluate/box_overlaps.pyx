# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Box-overlap (IoU) kernels for the WIDER FACE evaluation.

Boxes are float64 arrays of corner coordinates ``[x1, y1, x2, y2]`` in pixels.
Widths and heights follow the reference's inclusive-pixel ``+1`` convention:
``area = (x2 - x1 + 1) * (y2 - y1 + 1)``. The arithmetic (and its order) is
the reference kernel's, so the overlaps are bit-identical to it.
"""
import numpy as np

cimport numpy as cnp

cnp.import_array()

DTYPE = np.float64
ctypedef cnp.float64_t DTYPE_t
ctypedef cnp.int64_t INDEX_t


cdef inline DTYPE_t _overlap(DTYPE_t[:, ::1] boxes, Py_ssize_t n,
                             DTYPE_t[:, ::1] query_boxes, Py_ssize_t k,
                             DTYPE_t query_area) noexcept nogil:
    """IoU of boxes[n] and query_boxes[k]; 0 when they do not intersect."""
    cdef DTYPE_t iw, ih, ua
    iw = (min(boxes[n, 2], query_boxes[k, 2]) -
          max(boxes[n, 0], query_boxes[k, 0]) + 1)
    if iw > 0:
        ih = (min(boxes[n, 3], query_boxes[k, 3]) -
              max(boxes[n, 1], query_boxes[k, 1]) + 1)
        if ih > 0:
            ua = ((boxes[n, 2] - boxes[n, 0] + 1) *
                  (boxes[n, 3] - boxes[n, 1] + 1) +
                  query_area - iw * ih)
            return iw * ih / ua
    return 0.0


cdef inline DTYPE_t _area(DTYPE_t[:, ::1] boxes, Py_ssize_t k) noexcept nogil:
    return (boxes[k, 2] - boxes[k, 0] + 1) * (boxes[k, 3] - boxes[k, 1] + 1)


def bbox_overlaps(boxes, query_boxes):
    """Pairwise IoU, the reference kernel.

    Args:
        boxes: (N, 4) float64 ``[x1, y1, x2, y2]``.
        query_boxes: (K, 4) float64 ``[x1, y1, x2, y2]``.

    Returns:
        (N, K) float64 overlaps.
    """
    cdef DTYPE_t[:, ::1] b = np.ascontiguousarray(boxes, dtype=DTYPE)
    cdef DTYPE_t[:, ::1] q = np.ascontiguousarray(query_boxes, dtype=DTYPE)
    if b.shape[1] != 4 or q.shape[1] != 4:
        raise ValueError(f"boxes must have 4 columns, got {b.shape[1]} and {q.shape[1]}")
    cdef Py_ssize_t N = b.shape[0], K = q.shape[0], n, k
    overlaps_arr = np.zeros((N, K), dtype=DTYPE)
    cdef DTYPE_t[:, ::1] overlaps = overlaps_arr
    cdef DTYPE_t box_area
    with nogil:
        for k in range(K):
            box_area = _area(q, k)
            for n in range(N):
                overlaps[n, k] = _overlap(b, n, q, k, box_area)
    return overlaps_arr


def max_overlaps_segmented(boxes, query_boxes, box_image, query_start, query_count):
    """For every box, its best overlap among the query boxes of the same image.

    Equivalent to ``o = bbox_overlaps(boxes_i, query_boxes_i); o.max(1), o.argmax(1)``
    per image, without building the matrices (argmax keeps the first maximum).

    Args:
        boxes: (N, 4) float64 ``[x1, y1, x2, y2]``, all images concatenated.
        query_boxes: (K, 4) float64 ``[x1, y1, x2, y2]``, all images concatenated.
        box_image: (N,) int64 image index of every box.
        query_start: (I,) int64 first query row of every image.
        query_count: (I,) int64 number of query boxes of every image.

    Returns:
        ``(max_overlap, argmax)``: (N,) float64 and (N,) int64, the argmax local
        to the image's query boxes; 0.0 and -1 for images without query boxes.
    """
    cdef DTYPE_t[:, ::1] b = np.ascontiguousarray(boxes, dtype=DTYPE)
    cdef DTYPE_t[:, ::1] q = np.ascontiguousarray(query_boxes, dtype=DTYPE)
    cdef INDEX_t[::1] img = np.ascontiguousarray(box_image, dtype=np.int64)
    cdef INDEX_t[::1] qs = np.ascontiguousarray(query_start, dtype=np.int64)
    cdef INDEX_t[::1] qc = np.ascontiguousarray(query_count, dtype=np.int64)
    if b.shape[1] != 4 or q.shape[1] != 4:
        raise ValueError(f"boxes must have 4 columns, got {b.shape[1]} and {q.shape[1]}")
    if img.shape[0] != b.shape[0] or qs.shape[0] != qc.shape[0]:
        raise ValueError("box_image must have one entry per box, query_start/query_count one per image")
    cdef Py_ssize_t N = b.shape[0], n, k, first, last, i
    best_arr = np.zeros(N, dtype=DTYPE)
    arg_arr = np.full(N, -1, dtype=np.int64)
    cdef DTYPE_t[::1] best = best_arr
    cdef INDEX_t[::1] arg = arg_arr
    cdef DTYPE_t o
    for n in range(N):
        i = img[n]
        if i < 0 or i >= qs.shape[0] or qs[i] < 0 or qs[i] + qc[i] > q.shape[0]:
            raise ValueError(f"box {n}: image index {i} or its query range is out of bounds")
    with nogil:
        for n in range(N):
            i = img[n]
            first = qs[i]
            last = first + qc[i]
            for k in range(first, last):
                o = _overlap(b, n, q, k, _area(q, k))
                # Strict '>' keeps the first maximum, as numpy's argmax does.
                if k == first or o > best[n]:
                    best[n] = o
                    arg[n] = k - first
    return best_arr, arg_arr
