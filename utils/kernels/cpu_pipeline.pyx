# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled host-side stages of the detection pipeline, bit for bit the numpy ones.

layers/functions/detection.py describes each stage with numpy and OpenCV (the
specification, and the fallback when this module is not built). The kernel here does the
same IEEE float32 operations in the same order (C float, no fast-math, no FMA contraction;
see the root setup.py), so it gives the same bits, in one pass instead of several OpenCV
calls:

- to_input: BGR HWC image minus the mean, into one CHW plane set of the network input.

Only stages that save about 3% or more of a detection end to end are compiled
(bench/bench_kernels.py; the others run in numpy).
"""

# The interface of these kernels that utils/kernels/__init__.py expects (a build whose
# version differs, or that has none, counts as not built): raise it whenever a stage is
# added or removed, or a stage's arguments or results change.
API_VERSION = 3

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
