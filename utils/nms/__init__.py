"""Non-maximum suppression with the reference's +1 pixel convention.

- py_cpu_nms.py_cpu_nms: the reference implementation, kept as the specification, and the
  fallback when the compiled kernel is not built;
- cpu_nms.cpu_nms: the compiled kernel (cpu_nms.pyx), exactly py_cpu_nms's keep list,
  without comparing every pair (bench/bench_kernels.py times what it saves).

fast_nms picks the compiled kernel when it is built; the detection pipeline uses it.
"""
import numpy as np

from utils.compiled import load_kernel, warn_not_built
from utils.nms.py_cpu_nms import py_cpu_nms

# The built cpu_nms module, or None (see utils.compiled).
compiled = load_kernel('utils.nms.cpu_nms')
# The dtypes the compiled kernel takes (others go to py_cpu_nms).
_COMPILED_DTYPES = (np.float32, np.float64)


def fast_nms(dets, thresh):
    """Greedy NMS returning exactly py_cpu_nms(dets, thresh).

    Args:
        dets (ndarray[N, 5]): (x1, y1, x2, y2, score) in pixels.
        thresh (float): a box is suppressed when its IoU with a kept box is > thresh.
    Returns:
        ndarray[K] int64: indices into dets of the kept boxes, highest score first.
    """
    if compiled is not None and dets.dtype in _COMPILED_DTYPES:
        return compiled.cpu_nms(dets, thresh)
    if compiled is None:
        warn_not_built('NMS (utils/nms/cpu_nms.pyx)', 'the reference py_cpu_nms')
    return np.asarray(py_cpu_nms(dets, thresh), dtype=np.int64)
