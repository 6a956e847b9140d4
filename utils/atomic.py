"""Atomic file writes: a temporary file beside the target, flushed, then renamed over it.

A crash or Ctrl-C in the middle leaves the previous file (or none), never half a file.
"""
import os
import tempfile

import torch


def atomic_write(path, write, binary=True):
    """Call write(f) on a temporary file beside path, then rename it to path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb' if binary else 'w', **({} if binary else {'newline': ''})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj, path):
    """torch.save obj to path atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text):
    """Write text to path atomically."""
    atomic_write(path, lambda f: f.write(text), binary=False)
