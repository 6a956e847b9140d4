"""The compiled (Cython) kernels: loading them, and saying once when one is not built.

Every kernel has an exact fallback in numpy or plain Python (the same results, bit for bit,
more slowly), so a checkout that was never built still runs; it logs one warning per
kernel, naming BUILD_COMMAND, the one command that builds them all (setup.py at the
repository root; .ci/setup runs it).

This module imports nothing from the project, so that every package can use it.
"""
import importlib
import logging
from functools import lru_cache

logger = logging.getLogger(__name__)

BUILD_COMMAND = "python setup.py build_ext --inplace"


def load_kernel(module):
    """The compiled module named module (e.g. 'utils.nms.cpu_nms'), or None when it is not built."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


@lru_cache(maxsize=None)
def warn_not_built(kernel, fallback):
    """Log, once per kernel, that kernel (its .pyx) is not built and fallback runs instead."""
    logger.warning("the compiled %s is not built (or is out of date), using %s, which gives the same results "
                   "more slowly; build the compiled kernels with `%s` at the repository root",
                   kernel, fallback, BUILD_COMMAND)
