"""Compiled host-side stages of the detection pipeline (cpu_pipeline.pyx).

`compiled` is the built module, or None when it is not built; utils/inference.py then
runs the numpy versions of the same stages, which give the same bits, more slowly.
Build it with BUILD_COMMAND (.ci/setup does).
"""
import logging
from functools import lru_cache

import numpy as np

# Elements per torch.exp call. torch computes exp through its vectorised math library,
# which splits more than 2048 elements across its OpenMP threads; those threads then
# spin, waiting for more work, on the cores the next forward pass needs (onnxruntime's
# test.jpg forward took 20 instead of 14 ms after one such call). Chunks stay on the
# calling thread; exp is elementwise, so the chunking changes no value.
EXP_CHUNK = 2048


def torch_exp_(x):
    """Replace ndarray x (float32, C-contiguous) by torch.exp(x), in place; returns x."""
    import torch  # only the torch backend's pipeline calls this

    if not x.flags.c_contiguous:  # reshape would copy, and the copy would get the exp
        raise ValueError(f"torch_exp_ works in place on a C-contiguous array, got strides {x.strides}")
    flat = torch.from_numpy(x.reshape(-1))
    for start in range(0, flat.numel(), EXP_CHUNK):
        flat[start:start + EXP_CHUNK].exp_()
    return x


def float_exp_(x):
    """Replace ndarray x (float32, C-contiguous) by exp(x), in place, without torch; returns x.

    The exp of the torch-free path (onnxruntime): computed in float64 and rounded once to
    float32, so it is the correctly rounded value on any CPU (but for ties too close for
    float64 to settle). numpy's own float32 exp is less accurate, and its rounding depends
    on the instruction set it picks. torch's exp rounds the last bit differently from this
    one for a small fraction of inputs, so the two backends' exps are not interchangeable.
    """
    if not x.flags.c_contiguous:
        raise ValueError(f"float_exp_ works in place on a C-contiguous array, got strides {x.strides}")
    flat = x.reshape(-1)
    flat[:] = np.exp(flat.astype(np.float64))
    return x


def up_to_date(module):
    """Whether a built cpu_pipeline is from the current cpu_pipeline.pyx: an older build has
    no exp_ argument in decode_dets, so it cannot run the torch-free path."""
    return 'exp_ (callable' in (getattr(module.decode_dets, '__doc__', None) or '')


# After torch_exp_: the compiled module uses it.
try:
    from utils.kernels import cpu_pipeline as compiled
except ImportError:  # not built: see warn_not_built
    compiled = None
if compiled is not None and not up_to_date(compiled):  # treated as not built until rebuilt
    compiled = None

logger = logging.getLogger(__name__)
BUILD_COMMAND = "cd utils/kernels && python setup.py build_ext --inplace"


@lru_cache(maxsize=None)
def warn_not_built():
    """Say once that the pipeline runs its slower numpy stages, and how to build the kernels."""
    logger.warning("the compiled pipeline stages (utils/kernels/cpu_pipeline.pyx) are not built (or built from "
                   "an older cpu_pipeline.pyx), using numpy, "
                   "which gives the same detections but adds 1-2 ms per photo; build them with: %s", BUILD_COMMAND)
