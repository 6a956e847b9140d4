"""Compiled host-side stages of the detection pipeline (cpu_pipeline.pyx).

`compiled` is the built module, or None when it is not built (or built from an older
cpu_pipeline.pyx); the pipeline then runs the numpy versions of the same stages, which
give the same bits, more slowly, and warn_not_built says so once. The pipeline looks each
stage up in `compiled` when it runs, so a benchmark can switch one off. Build the kernels
with utils.compiled.BUILD_COMMAND (.ci/setup does).
"""
import numpy as np

from utils.compiled import load_kernel
from utils.compiled import warn_not_built as _warn_not_built

# Elements per torch.exp call. torch computes exp through its vectorised math library,
# which splits more than 2048 elements across its OpenMP threads; those threads then
# spin, waiting for more work, on the cores the next forward pass needs (an onnxruntime
# forward pass right after one such call is markedly slower; bench/README.md). Chunks stay
# on the calling thread; exp is elementwise, so the chunking changes no value.
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


# cpu_pipeline.pyx's API_VERSION: the interface of the stages this package's callers use.
API_VERSION = 3


def up_to_date(module):
    """Whether a built cpu_pipeline is from the current cpu_pipeline.pyx (its API_VERSION):
    an older build may hold stages that were removed (they saved too little to keep, see
    bench/README.md) or take other arguments."""
    return getattr(module, 'API_VERSION', None) == API_VERSION


compiled = load_kernel('utils.kernels.cpu_pipeline')
if compiled is not None and not up_to_date(compiled):  # treated as not built until rebuilt
    compiled = None


def warn_not_built():
    """Say once that the pipeline runs its numpy stages, and how to build the kernels."""
    _warn_not_built('pipeline kernel (utils/kernels/cpu_pipeline.pyx)', 'its numpy version')
