"""Process-wide memory settings for fast CPU inference, and telling an allocation failure
from other errors.

Eager PyTorch on the CPU allocates every intermediate tensor of a forward pass with
malloc and frees it soon after. glibc's malloc serves large blocks with fresh mmap'd pages
or returns the freed top of the heap to the kernel, so every forward pass page-faults its
activations in again, a large part of the forward pass (bench/bench_malloc.py measures it).
keep_freed_memory() makes malloc keep freed memory for reuse instead.

It changes the whole process (the heap stays at its peak size, as a GPU caching allocator
does), so library code never calls it: the inference scripts do when the network runs on the CPU,
and so can a program that runs the detector on the CPU.
"""
import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap, not from fresh mmap'd pages: the largest value
# every 64-bit glibc accepts (DEFAULT_MMAP_THRESHOLD_MAX), above the largest activation of
# mobile0.25 at the test scale.
MMAP_THRESHOLD = 32 * 1024 * 1024
# Freed memory at the top of the heap is returned to the kernel only above this.
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied = None

# How the libraries the detector runs on report a failed allocation when it is not a
# MemoryError: torch's CPU allocator and onnxruntime's arena raise plain runtime errors with
# these words, torch's CUDA allocator a torch.OutOfMemoryError.
_OUT_OF_MEMORY_PHRASES = ("can't allocate memory", 'not enough memory', 'Failed to allocate memory',
                          'out of memory', 'std::bad_alloc')
_OUT_OF_MEMORY_CLASS = 'OutOfMemoryError'
# OpenCV's error code for a failed allocation (cv::Error::StsNoMem).
_CV_NO_MEMORY = -4
# The longest reason out_of_memory_reason gives.
_MAX_REASON_CHARS = 160


def is_out_of_memory(error: BaseException) -> bool:
    """Whether error is a failed allocation: a MemoryError (numpy's too), torch's
    OutOfMemoryError or CPU allocator failure, onnxruntime's failed arena allocation, or
    OpenCV's Insufficient memory. Reads the error only; imports nothing."""
    if isinstance(error, MemoryError):
        return True
    kind = type(error)
    if any(c.__name__ == _OUT_OF_MEMORY_CLASS for c in kind.__mro__):
        return True
    if kind.__module__.split('.')[0] == 'cv2':
        return getattr(error, 'code', None) == _CV_NO_MEMORY
    if isinstance(error, RuntimeError) or kind.__module__.split('.')[0] == 'onnxruntime':
        text = str(error)
        return any(phrase in text for phrase in _OUT_OF_MEMORY_PHRASES)
    return False


def out_of_memory_reason(error: BaseException) -> str:
    """A short account of an allocation failure: its type and the words of its message that
    say what failed (a library's message may hold file paths and node names before them)."""
    text = ' '.join(str(error).split())
    for phrase in _OUT_OF_MEMORY_PHRASES + ('Unable to allocate', 'Failed to allocate'):
        start = text.find(phrase)
        if start >= 0:
            text = text[start:]
            break
    if len(text) > _MAX_REASON_CHARS:
        text = text[:_MAX_REASON_CHARS - 3] + '...'
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def keep_freed_memory():
    """Make glibc's malloc keep freed memory for reuse (once per process).

    Returns:
        bool: whether the setting is in effect (False off Linux/glibc, where it does nothing).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        logger.debug("no mallopt in this C library: malloc settings left as they are")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Both or neither: setting either one alone turns off glibc's adaptive threshold and
    # leaves the other at its small default, which is slower than the default behaviour.
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        _applied = True
        logger.debug("malloc keeps freed memory (mmap threshold %d, trim threshold %d)",
                     MMAP_THRESHOLD, TRIM_THRESHOLD)
    return _applied
