"""Atomic file writes: a temporary file beside the target, flushed, then renamed over it.

A crash or Ctrl-C in the middle leaves the previous file (or none), never half a file.
The file gets the permissions a plain open(path, 'w') would give it, not mkstemp's 0600.
"""
import os
import stat
import tempfile


def current_umask():
    """The process's umask, read without changing it where the system allows."""
    try:
        # Linux reports it in /proc; setting and restoring it would briefly give any
        # file another thread creates meanwhile the wrong permissions.
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path):
    """The permission bits open(path, 'w') would leave: the existing file's, or 0666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write(path, write, binary=True):
    """Call write(f) on a temporary file beside path, then rename it to path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        # mkstemp makes the file private (0600); results and checkpoints are meant to be
        # read by colleagues and evaluation jobs like any other file the user writes.
        os.fchmod(fd, _final_mode(path))
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
    import torch  # only checkpoints need it; the inference scripts write text

    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text):
    """Write text to path atomically."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def check_writable(path, what=None, folder=False):
    """Check, before any work, that a file (folder=True: a folder and files in it) can be
    created at path; raise ValueError with one clear line if not.

    Walks up from path to the nearest folder that exists (the missing ones would be
    created) and creates and removes a temporary file there, as atomic_write will: a
    permission check alone would not see read-only file systems, or pass as root where
    writing still fails.

    Args:
        path (str | PathLike): the file (or folder) the work will write.
        what (str | None): how to name it in the message, e.g. '--json'.
        folder (bool): path is a folder to write files into, not a file.
    Raises:
        ValueError: path (or a folder on the way) is a file where a folder is needed, a
            folder where a file is needed, or its nearest existing folder is not writable.
    """
    path = os.fspath(path)
    label = f"{what} {path}" if what else path
    target = os.path.abspath(path)
    if folder:
        if os.path.exists(target) and not os.path.isdir(target):
            raise ValueError(f"cannot write {label}: it is a file, not a folder")
        nearest = target
    else:
        if os.path.isdir(target):
            raise ValueError(f"cannot write {label}: it is a folder, not a file")
        nearest = os.path.dirname(target)
    while not os.path.lexists(nearest):
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        raise ValueError(f"cannot write {label}: {nearest} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=nearest, prefix='.write_check.', suffix='.tmp')
    except OSError as e:
        raise ValueError(f"cannot write {label}: cannot create files in folder {nearest} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)
