"""Non-maximum suppression with the reference's +1 pixel convention.

- py_cpu_nms.py_cpu_nms: the reference implementation, kept as the specification;
- cpu_nms.cpu_nms: the compiled kernel (cpu_nms.pyx, built by setup.py), exactly
  py_cpu_nms's keep list, ~0.7 ms for the 10,185 candidates of a crowd photo;
- py_cpu_nms.nms: torchvision's NMS made exact, the fallback when the kernel is not built
  (~40 ms on that crowd).

fast_nms picks the best one available; the detection pipeline uses it.
"""
import logging
from functools import lru_cache

import numpy as np

from utils.nms.py_cpu_nms import nms

try:
    from utils.nms.cpu_nms import cpu_nms as _compiled_nms
except ImportError:  # not built: see fast_nms
    _compiled_nms = None

logger = logging.getLogger(__name__)
# The dtypes the compiled kernel takes (others go to torchvision).
_COMPILED_DTYPES = (np.float32, np.float64)
BUILD_COMMAND = "cd utils/nms && python setup.py build_ext --inplace"


@lru_cache(maxsize=None)
def _warn_not_built():
    logger.warning("the compiled NMS (utils/nms/cpu_nms.pyx) is not built, using torchvision's NMS, "
                   "which gives the same detections but is slower on crowded images; build it with: %s",
                   BUILD_COMMAND)


def fast_nms(dets, thresh):
    """Greedy NMS returning exactly py_cpu_nms(dets, thresh).

    Args:
        dets (ndarray[N, 5] float32 | float64): (x1, y1, x2, y2, score) in pixels.
        thresh (float): a box is suppressed when its IoU with a kept box is > thresh.
    Returns:
        ndarray[K] int64: indices into dets of the kept boxes, highest score first.
    """
    if _compiled_nms is not None and dets.dtype in _COMPILED_DTYPES:
        return _compiled_nms(dets, thresh)
    if _compiled_nms is None:
        _warn_not_built()
    return nms(dets, thresh)
