# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled host-side stages of the detection pipeline, bit for bit the numpy ones.

utils/inference.py describes each stage with numpy (the specification, and the fallback
when this module is not built). These kernels do the same IEEE float32 operations in the
same order (C float, no fast-math, no FMA contraction; see the root setup.py), so they give the
same bits, in one pass each instead of a dozen numpy calls and temporaries:

- to_input: BGR HWC image minus the mean, into one CHW plane set of the network input;
- select_scores: the candidates above the score threshold (np.flatnonzero(conf[:, 1] > t));
- decode_dets: boxes of the chosen candidates with their scores, [K, 5];
- assemble: the kept detections with their decoded landmarks, [N, 15].

exp is the caller's exp_ (numpy's may round differently from torch's): the torch backend
passes utils.kernels.torch_exp_, the torch-free path utils.kernels.float_exp_.
"""
import numpy as np

from libc.stdint cimport int64_t

# The interface of these kernels that utils/kernels/__init__.py expects (a build whose
# version differs, or that has none, counts as not built): raise it whenever a function's
# arguments or results change.
API_VERSION = 2

cdef extern from *:
    void __builtin_prefetch(const void* address) nogil

# Rows gathered ahead by assemble's prefetches.
cdef Py_ssize_t PREFETCH_AHEAD = 8

ctypedef fused pixel:
    unsigned char
    float


cdef extern from "to_input.h" nogil:
    void rf_to_input_u8(const unsigned char* src, Py_ssize_t h, Py_ssize_t w, Py_ssize_t src_row,
                        float* d0, float* d1, float* d2, Py_ssize_t dst_row, float m0, float m1, float m2)
    void rf_to_input_f32(const float* src, Py_ssize_t h, Py_ssize_t w, Py_ssize_t src_row,
                         float* d0, float* d1, float* d2, Py_ssize_t dst_row, float m0, float m1, float m2)


def to_input(const pixel[:, :, ::1] src, float[:, :, :] dst, mean):
    """dst[c, y, x] = src[y, x, c] - mean[c] in float32: the reference's
    `np.float32(img) - (104, 117, 123)` laid out as CHW.

    Args:
        src (ndarray[H, W, 3] uint8 | float32, C-contiguous): the BGR image.
        dst (ndarray[3, >=H, >=W] float32 whose rows are contiguous): the image's planes
            in the network input, e.g. batch[i]; only dst[:, :H, :W] is written.
        mean (sequence of 3 numbers): the BGR mean, rounded to float32.
    """
    cdef Py_ssize_t h = src.shape[0], w = src.shape[1]
    if src.shape[2] != 3 or dst.shape[0] != 3 or dst.shape[1] < h or dst.shape[2] < w:
        raise ValueError(f"to_input: source {tuple(src.shape)[:3]} does not fit destination {tuple(dst.shape)[:3]}")
    if dst.strides[2] != sizeof(float) or dst.strides[1] % sizeof(float) or dst.strides[0] % sizeof(float):
        raise ValueError("to_input: destination rows must be contiguous float32")
    if h == 0 or w == 0:
        return
    cdef float m0 = <float>mean[0], m1 = <float>mean[1], m2 = <float>mean[2]
    cdef Py_ssize_t dst_row = dst.strides[1] // sizeof(float)
    with nogil:
        if pixel is float:
            rf_to_input_f32(&src[0, 0, 0], h, w, src.strides[0] // sizeof(float), &dst[0, 0, 0], &dst[1, 0, 0],
                            &dst[2, 0, 0], dst_row, m0, m1, m2)
        else:
            rf_to_input_u8(&src[0, 0, 0], h, w, src.strides[0], &dst[0, 0, 0], &dst[1, 0, 0], &dst[2, 0, 0],
                           dst_row, m0, m1, m2)


def select_scores(const float[:, ::1] conf, threshold):
    """The candidates whose face score is above threshold, in index order.

    Exactly `inds = np.flatnonzero(conf[:, 1] > threshold); scores = conf[inds, 1]`, with
    numpy's comparison of float32 against a Python float (in float32).

    Args:
        conf (ndarray[P, 2] float32, C-contiguous): (background, face) probabilities.
        threshold (float): the confidence threshold.
    Returns:
        (inds ndarray[K] int64, scores ndarray[K] float32).
    """
    cdef Py_ssize_t p = conf.shape[0], i, k = 0
    cdef float t = np.float32(threshold)
    inds_a = np.empty(p, dtype=np.int64)
    scores_a = np.empty(p, dtype=np.float32)
    cdef int64_t[::1] inds = inds_a
    cdef float[::1] scores = scores_a
    cdef float s
    if conf.shape[1] != 2:
        raise ValueError(f"select_scores: conf must be [P, 2], got {tuple(conf.shape)[:2]}")
    with nogil:
        # Branch-free: every prior is written at k, and k moves on only past the selected
        # ones (which candidates pass is unpredictable, so a branch would often mispredict).
        for i in range(p):
            s = conf[i, 1]
            inds[k] = i
            scores[k] = s
            k += s > t
    return inds_a[:k], scores_a[:k]


def decode_dets(const float[:, ::1] loc, const float[:, ::1] priors, const int64_t[::1] inds,
                const float[::1] scores, const int64_t[::1] order, variance, size, resize, exp_):
    """Boxes and scores of the candidates, in score order, in original-image pixels.

    Row k is, for r = inds[order[k]], `decode(loc[r], priors[r], variance) * scale / resize`
    and scores[order[k]], with decode's operations in decode's order (utils/box_utils.py):

        centre = prior_c + loc_c * v0 * prior_wh     wh = prior_wh * exp(loc_wh * v1)
        x1y1 = centre - wh / 2                       x2y2 = wh + x1y1
        then * (w, h, w, h) / resize

    Args:
        loc (ndarray[P, 4] float32): predicted (dcx, dcy, dw, dh).
        priors (ndarray[P, 4] float32): (cx, cy, w, h) relative to the input.
        inds (ndarray[K] int64), scores (ndarray[K] float32): the candidates and their
            scores, as select_scores returns them.
        order (ndarray[K'] int64): positions in inds, in output order (K' <= K).
        variance (sequence of 2 floats): cfg['variance'].
        size (tuple[int, int]): (h, w) of the network input; resize (float): its scale factor.
        exp_ (callable): replaces a C-contiguous float32 ndarray by its exp in place
            (utils.kernels.torch_exp_ or utils.kernels.float_exp_).
    Returns:
        ndarray[K', 5] float32: x1 y1 x2 y2 score.
    """
    cdef Py_ssize_t k_all = inds.shape[0], n = order.shape[0], j, k, c
    cdef int64_t p = loc.shape[0]
    cdef float v0 = np.float32(variance[0]), v1 = np.float32(variance[1])
    cdef float fh = np.float32(size[0]), fw = np.float32(size[1]), rs = np.float32(resize), two = 2
    cdef float x, y, bw, bh
    if loc.shape[1] != 4 or priors.shape[1] != 4 or priors.shape[0] != p or scores.shape[0] != k_all:
        raise ValueError("decode_dets: loc and priors must be [P, 4] and scores as long as inds")
    for j in range(k_all):
        if not 0 <= inds[j] < p:
            raise ValueError(f"decode_dets: candidate {inds[j]} out of range for {p} priors")
    for k in range(n):
        if not 0 <= order[k] < k_all:
            raise ValueError(f"decode_dets: order entry {order[k]} out of range for {k_all} candidates")
    # The candidates' rows first, in index order: a stream through loc and priors rather
    # than a random read per candidate (they are larger than the core's cache).
    cand_a = np.empty((k_all, 8), dtype=np.float32)
    cdef float[:, ::1] cand = cand_a
    exp_a = np.empty((n, 2), dtype=np.float32)
    cdef float[:, ::1] e = exp_a
    with nogil:
        for j in range(k_all):
            for c in range(4):
                cand[j, c] = loc[inds[j], c]
                cand[j, 4 + c] = priors[inds[j], c]
        for k in range(n):
            e[k, 0] = cand[order[k], 2] * v1
            e[k, 1] = cand[order[k], 3] * v1
    exp_(exp_a)
    dets_a = np.empty((n, 5), dtype=np.float32)
    cdef float[:, ::1] d = dets_a
    cdef const float* q
    with nogil:
        for k in range(n):
            q = &cand[order[k], 0]  # loc (4), then the prior (4)
            bw = q[6] * e[k, 0]
            bh = q[7] * e[k, 1]
            x = q[4] + (q[0] * v0) * q[6]
            y = q[5] + (q[1] * v0) * q[7]
            x = x - bw / two
            y = y - bh / two
            d[k, 0] = (x * fw) / rs
            d[k, 1] = (y * fh) / rs
            d[k, 2] = ((bw + x) * fw) / rs
            d[k, 3] = ((bh + y) * fh) / rs
            d[k, 4] = scores[order[k]]
    return dets_a


def assemble(const float[:, ::1] dets, const int64_t[::1] keep, const float[:, ::1] landms,
             const float[:, ::1] priors, const int64_t[::1] inds, const int64_t[::1] order, variance, size,
             resize):
    """The kept detections with their landmarks: rows of ndarray[N, 15].

    Row i is dets[keep[i]] followed by `decode_landm(landms[r], priors[r], variance) *
    scale1 / resize` for r = inds[order[keep[i]]], in decode_landm's order:
    (prior_c + landm * v0 * prior_wh) * (w, h) / resize.

    Args:
        dets (ndarray[K', 5] float32): from decode_dets; keep (ndarray[N] int64): rows of dets.
        landms (ndarray[P, 10] float32), priors (ndarray[P, 4] float32): indexed by inds.
        inds (ndarray[K] int64), order (ndarray[K'] int64): as for decode_dets.
        variance, size, resize: as for decode_dets.
    Returns:
        ndarray[N, 15] float32.
    """
    cdef Py_ssize_t n = keep.shape[0], kd = dets.shape[0], k_all = inds.shape[0], i, j
    cdef int64_t k, r, p = landms.shape[0]
    cdef float v0 = np.float32(variance[0])
    cdef float fh = np.float32(size[0]), fw = np.float32(size[1]), rs = np.float32(resize)
    if dets.shape[1] != 5 or landms.shape[1] != 10 or priors.shape[1] != 4 or priors.shape[0] != p \
            or order.shape[0] != kd:
        raise ValueError("assemble: dets must be [K', 5], landms [P, 10], priors [P, 4] and order [K']")
    for i in range(n):
        if not (0 <= keep[i] < kd and 0 <= order[keep[i]] < k_all and 0 <= inds[order[keep[i]]] < p):
            raise ValueError(f"assemble: kept row {keep[i]} out of range")
    out_a = np.empty((n, 15), dtype=np.float32)
    cdef float[:, ::1] o = out_a
    with nogil:
        for i in range(n):
            # The kept candidates' rows are scattered over landms (larger than the core's
            # cache): ask for a row PREFETCH_AHEAD iterations before it is needed.
            if i + PREFETCH_AHEAD < n:
                r = inds[order[keep[i + PREFETCH_AHEAD]]]
                __builtin_prefetch(&landms[r, 0])
                __builtin_prefetch(&priors[r, 0])
            k = keep[i]
            r = inds[order[k]]
            for j in range(5):
                o[i, j] = dets[k, j]
            for j in range(5):
                o[i, 5 + 2 * j] = ((priors[r, 0] + (landms[r, 2 * j] * v0) * priors[r, 2]) * fw) / rs
                o[i, 6 + 2 * j] = ((priors[r, 1] + (landms[r, 2 * j + 1] * v0) * priors[r, 3]) * fh) / rs
    return out_a
