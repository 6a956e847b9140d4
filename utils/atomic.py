"""Atomic file writes: a temporary file beside the target, flushed, then renamed over it.

A crash or Ctrl-C in the middle leaves the previous file (or none), never half a file.
The file gets the permissions a plain open(path, 'w') would give it, not mkstemp's 0600.

Writes go through, not around: a path that is a symbolic link gets its final target
replaced (the temporary file is made beside the target, so the link stays a link and
the target gets the new bytes), and a stream (`-`, /dev/stdout, /dev/stderr, or a
character device or FIFO given by name, such as /dev/null) is written in place, never
replaced by a regular file. Which outputs may be streams is utils.outputs' to decide.

Results folders are also locked for the length of a run (lock_folder), so that two runs
never write into one folder at once, and the temporary files a killed run left behind
are removed when the next run takes the lock (remove_stale_temp_files). A temporary folder
(TempFolder, for a writer that names its own file) is locked by the process using it, so that
the next run removes a killed run's folders (remove_stale_temp_folders) and never a live one.
LineFile writes a growing text file a whole line at a time.
"""
import errno
import fcntl
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from typing import IO

from utils.errors import InputError


# Every temporary file this project makes ends with this suffix (after a random part), so
# that a later run can tell its own leftovers from the user's files and remove only those.
TEMP_SUFFIX = '.retinaface.tmp'
# The lock file a run holds in its results folder (hidden; left in place, since removing
# it would let a third run lock a new file while the second still holds the old one).
LOCK_NAME = '.retinaface.lock'


# The names of the process's own standard streams: written to sys.stdout / sys.stderr in
# place. Opening /dev/stdout afresh would truncate a file stdout is redirected to, and a
# rename over it (as root) would replace the device link with a regular file.
STDOUT = '-'
_STANDARD_STREAMS = {STDOUT: 'stdout', '/dev/stdout': 'stdout', '/dev/fd/1': 'stdout', '/proc/self/fd/1': 'stdout',
                     '/dev/stderr': 'stderr', '/dev/fd/2': 'stderr', '/proc/self/fd/2': 'stderr'}


def stream_kind(path: str | os.PathLike) -> str | None:
    """What kind of stream path names, if any: 'stdout' or 'stderr' (`-`, /dev/stdout,
    /dev/stderr), 'a character device' or 'a FIFO' (an existing one, links followed, such
    as /dev/null or a named pipe); None for anything else (a file, existing or not, a folder)."""
    path = os.fspath(path)
    standard = _STANDARD_STREAMS.get(path if path == STDOUT else os.path.normpath(path))
    if standard is not None:
        return standard
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISCHR(mode):
        return 'a character device'
    if stat.S_ISFIFO(mode):
        return 'a FIFO'
    return None


def write_target(path: str | os.PathLike) -> str:
    """The file a write to path must replace: path itself (absolute), or, when path is a
    symbolic link (or a chain of them, or a link to a file not made yet), its final target.
    A rename over the link itself would replace the link and leave its target stale."""
    path = os.fspath(path)
    return os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)


def _write_in_place(path, kind, write, binary):
    """write(f) on the stream path names (see stream_kind), in place; nothing is renamed.
    A standard stream is sys.stdout / sys.stderr as they are (not reopened, not closed)."""
    if kind in ('stdout', 'stderr'):
        stream = sys.stdout if kind == 'stdout' else sys.stderr
        stream.flush()
        if binary:
            write(stream.buffer)
            stream.buffer.flush()
        else:
            write(stream)
            stream.flush()
        return  # a reader of stdout that has gone (BrokenPipeError) is utils.cli.run_cli's to report
    try:
        with open(path, 'wb' if binary else 'w', **({} if binary else {'newline': ''})) as f:
            write(f)
    except OSError as e:
        raise _write_error(path, e) from e


class _StandardStream:
    """sys.stdout or sys.stderr (as it is when written to) for a writer that closes its file:
    closing it only flushes."""

    def __init__(self, kind):
        self.kind = kind

    @property
    def _stream(self):
        return sys.stdout if self.kind == 'stdout' else sys.stderr

    def write(self, text):
        return self._stream.write(text)

    def flush(self):
        self._stream.flush()

    def close(self):
        self._stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def current_umask() -> int:
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


def atomic_write(path: str | os.PathLike, write: Callable[[IO], object], binary: bool = True) -> None:
    """Call write(f) on a temporary file beside path (beside a link's target), then rename it
    over path (over the link's target). A stream (stream_kind) is written in place instead."""
    path = os.fspath(path)
    kind = stream_kind(path)
    if kind is not None:
        _write_in_place(path, kind, write, binary)
        return
    target = write_target(path)
    directory = os.path.dirname(target)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(target) + '.', suffix=TEMP_SUFFIX)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        # mkstemp makes the file private (0600); results and checkpoints are meant to be
        # read by colleagues and evaluation jobs like any other file the user writes.
        os.fchmod(fd, _final_mode(target))
        with os.fdopen(fd, 'wb' if binary else 'w', **({} if binary else {'newline': ''})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            # A full disk or a folder made read-only mid-run: the user's to fix, and the
            # previous file (if any) is still there.
            raise _write_error(path, e) from e
        raise


def free_space(directory: str | os.PathLike) -> str:
    """Bytes free for this user on directory's file system, as a short text ('1.2 GB'), or
    'unknown' where the system does not say."""
    while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)  # the folder would have been created
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return 'unknown'
    free = st.f_bavail * st.f_frsize
    for unit in ('bytes', 'kB', 'MB', 'GB'):
        if free < 1000 or unit == 'GB':
            return f"{free:.0f} {unit}" if unit == 'bytes' else f"{free:.1f} {unit}"
        free /= 1000
    return 'unknown'  # not reached


def _write_error(path, e):
    """An InputError naming the file that could not be written, why, and the free space."""
    directory = os.path.dirname(os.path.abspath(path))
    return InputError(f"cannot write {path}: {e.strerror or e} ({free_space(directory)} free in {directory})")


class _WriteErrorRecorder:
    """A file object passing writes on to f, that remembers the OSError a write raised.

    torch.save's C++ writer swallows the Python error of a failed write (a full disk) and
    raises its own RuntimeError about a file position instead; this keeps the real cause."""

    def __init__(self, f):
        self.f = f
        self.error = None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        try:
            return self.f.flush()
        except OSError as e:
            self.error = e
            raise


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save obj to path atomically. A write the file system refuses (a full disk, a
    read-only folder) raises InputError naming the file and the free space, as atomic_write
    does; any other failure of torch.save (an object it cannot save) keeps its traceback."""
    import torch  # only checkpoints need it; the inference scripts write text

    def save(f):
        recorder = _WriteErrorRecorder(f)
        try:
            torch.save(obj, recorder)
        except RuntimeError as e:
            if recorder.error is None:
                raise
            raise recorder.error from e  # an OSError: atomic_write names the file and free space

    atomic_write(path, save)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to path atomically."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def check_writable(path: str | os.PathLike, what: str | None = None, folder: bool = False) -> None:
    """Check, before any work, that a file (folder=True: a folder and files in it) can be
    created at path; raise InputError with one clear line if not.

    Walks up from path to the nearest folder that exists (the missing ones would be
    created) and creates and removes a temporary file there, as atomic_write will: a
    permission check alone would not see read-only file systems, or pass as root where
    writing still fails.

    Args:
        path (str | PathLike): the file (or folder) the work will write.
        what (str | None): how to name it in the message, e.g. '--json'.
        folder (bool): path is a folder to write files into, not a file.
    Raises:
        InputError: path (or a folder on the way) is a file where a folder is needed, a
            folder where a file is needed, or its nearest existing folder is not writable.
    """
    path = os.fspath(path)
    label = f"{what} {path}" if what else path
    target = write_target(path)  # a link's target is what gets written
    if folder:
        if os.path.exists(target) and not os.path.isdir(target):
            raise InputError(f"cannot write {label}: it is a file, not a folder")
        nearest = target
    else:
        if os.path.isdir(target):
            raise InputError(f"cannot write {label}: it is a folder, not a file")
        nearest = os.path.dirname(target)
    while not os.path.lexists(nearest):
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        raise InputError(f"cannot write {label}: {nearest} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=nearest, prefix='.write_check.', suffix=TEMP_SUFFIX)
    except OSError as e:
        raise InputError(f"cannot write {label}: cannot create files in folder {nearest} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def temp_path(path: str | os.PathLike) -> str:
    """A new, unique temporary file name beside path (beside its target, when path is a
    symbolic link), ending with TEMP_SUFFIX (the file is created empty, so no other writer
    can take the name); for writers that need a path rather than a file object (e.g. an
    ONNX exporter). Move it to path with move_into_place when done: it has the permissions
    open(path, 'w') would give, not mkstemp's private 0600."""
    target = write_target(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix='.' + os.path.basename(target) + '.',
                                   suffix=TEMP_SUFFIX)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        os.fchmod(fd, _final_mode(target))
    finally:
        os.close(fd)
    return tmp


def move_into_place(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temporary file (temp_path(path)) to path: renamed over path, or over
    the target of the link path is; copied into a stream (stream_kind) in place, then removed."""
    kind = stream_kind(path)
    if kind is None:
        os.replace(tmp, write_target(path))
        return
    try:
        with open(tmp, 'rb') as f:
            _write_in_place(os.fspath(path), kind, lambda out: shutil.copyfileobj(f, out), binary=True)
    finally:
        os.unlink(tmp)


def remove_stale_temp_files(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Remove the temporary files (.*TEMP_SUFFIX) that a killed run of this project left in
    folder; other files are never touched. Call it only while holding the folder's lock, so
    that no running writer's file is taken. Returns the paths removed."""
    removed = []
    for root, dirs, files in os.walk(folder):
        for f in files:
            if f.startswith('.') and f.endswith(TEMP_SUFFIX):
                path = os.path.join(root, f)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                removed.append(path)
        if not recursive:
            break
    return removed


# The lock file inside a TempFolder, held by the process writing there.
TEMP_FOLDER_LOCK = 'lock'
# What flock raises on a file system without locks (some network and FUSE file systems).
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)
# Tries at making a TempFolder when another run's remove_stale_temp_folders takes each new
# one before it is locked (it can only happen between the two calls; twice is already rare).
TEMP_FOLDER_ATTEMPTS = 5


class TempFolder:
    """A hidden temporary folder beside path, `.<name>.XXXXXXXX` + TEMP_SUFFIX, for writers
    that name their file themselves (OpenCV picks a video's container from its extension):
    write into it, rename the result over path, then close() removes the folder.

    The folder holds a lock file that this process keeps an flock on until close(), so that
    another run's remove_stale_temp_folders never takes a folder in use. The kernel drops
    the lock however the process ends: the folder of a killed run is stale at once.

    Raises (on making it):
        InputError: the folder cannot be made there (named, with the free space).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        target = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(target))
        try:
            os.makedirs(directory, exist_ok=True)
            for _ in range(TEMP_FOLDER_ATTEMPTS):
                folder = tempfile.mkdtemp(dir=directory, prefix='.' + os.path.basename(target) + '.',
                                          suffix=TEMP_SUFFIX)
                fd = _lock_in(folder, block=True)
                if fd is not None:
                    break
            else:
                raise OSError(errno.EAGAIN, f"another run kept removing new temporary folders in {directory}")
        except OSError as e:
            raise _write_error(target, e) from e
        self.path = folder
        self._fd = fd

    def close(self) -> None:
        """Remove the folder and what is left in it (still holding the lock), then release the lock."""
        if self._fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> 'TempFolder':
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False


def _lock_in(folder, block):
    """An flock'ed descriptor of folder's TEMP_FOLDER_LOCK (made if missing), or None when
    the folder has gone (another run removed it) or, with block false, another process
    holds the lock. Raises OSError when the folder cannot be written."""
    lock = os.path.join(folder, TEMP_FOLDER_LOCK)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        # Whoever removed the folder held this lock while doing it: a lock file that is no
        # longer at its path means the folder is gone.
        if os.stat(lock).st_ino == os.fstat(fd).st_ino:
            return fd
    except FileNotFoundError:
        pass
    except OSError as e:
        if block and e.errno in _NO_FLOCK:
            return fd  # writing still works there; the stale-folder sweep cannot lock it either, so keeps it
        if block or e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, *_NO_FLOCK):
            os.close(fd)
            raise
    os.close(fd)
    return None


def remove_stale_temp_folders(folder: str | os.PathLike) -> list[str]:
    """Remove the TempFolders (.*TEMP_SUFFIX folders) in folder that no running process
    holds: those a killed run left. A folder in use by another run (its lock held) is kept,
    and so is one this user cannot write. Files and other folders are never touched.
    Returns the folders removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith('.') and entry.name.endswith(TEMP_SUFFIX)
                and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            fd = _lock_in(entry.path, block=False)
        except OSError:
            continue  # not ours to remove
        if fd is None:
            continue  # in use, or already gone
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(entry.path)
    return removed


class LineFile:
    """A text file written one whole line at a time (JSON Lines), readable while it grows:
    a reader, or the file left by a killed run, never sees half a line.

    Each line goes to the file system in one unbuffered write; a write it refuses (a full
    disk, a size limit) truncates the file back to the end of the last whole line and raises
    InputError naming the file and the free space.

    `-`, /dev/stdout and /dev/stderr (stream_kind) are sys.stdout / sys.stderr as they are
    when written to, flushed after every line and never closed; a link is written through,
    a device or FIFO in place.

    Raises (on opening):
        InputError: the file cannot be created.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        kind = stream_kind(self.path)
        self._stream = _StandardStream(kind) if kind in ('stdout', 'stderr') else None
        try:
            self._f = None if self._stream is not None else open(self.path, 'wb', buffering=0)
        except OSError as e:
            raise _write_error(self.path, e) from e
        self._end = 0  # the end of the last whole line
        self.lines = 0

    def write_line(self, text: str) -> None:
        """Append text and a newline (text must not hold a newline itself)."""
        if '\n' in text or '\r' in text:
            raise ValueError("a line must not hold a line break")
        if self._stream is not None:
            try:
                self._stream.write(text + '\n')
                self._stream.flush()
            except OSError as e:
                raise InputError(f"cannot write {self.path}: {e.strerror or e}") from e
            self.lines += 1
            return
        line = (text + '\n').encode('utf-8')
        data = memoryview(line)
        try:
            while data:
                data = data[self._f.write(data):]  # a short write at a size limit, then the error
        except BaseException as e:
            try:
                os.ftruncate(self._f.fileno(), self._end)  # shrinking needs no space
                self._f.seek(self._end)
            except OSError:
                pass  # a FIFO or a device (written in place): there is nothing to cut back
            if isinstance(e, OSError):
                raise InputError(f"{_write_error(self.path, e)}; it holds the {self.lines} whole lines written "
                                 f"before") from e
            raise
        self._end += len(line)  # counted, not tell(): a FIFO or a device has no position
        self.lines += 1

    def close(self) -> None:
        (self._stream or self._f).close()

    def __enter__(self) -> 'LineFile':
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False


class FolderLock:
    """An exclusive lock on a results folder for the length of a run (fcntl.flock on
    folder/LOCK_NAME, holding the owner's PID). The kernel releases it when the process
    ends, however it ends, so a killed run never leaves the folder locked.

        with lock_folder(args.save_folder, '--save_folder'):
            ...  # the only run writing there

    Raises:
        InputError: another process holds the lock; the message names its PID.
    """

    def __init__(self, folder: str | os.PathLike, what: str | None = None) -> None:
        self.folder = os.fspath(folder)
        self.what = what
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd = None

    def acquire(self) -> 'FolderLock':
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        except OSError as e:
            raise _write_error(self.path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.pread(fd, 64, 0).decode('ascii', 'replace').strip() or 'unknown'
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                label = f"{self.what} {self.folder}" if self.what else self.folder
                raise InputError(f"{label} is in use by another run (PID {owner}); wait for it to finish, "
                                 f"or choose another folder") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> 'FolderLock':
        return self.acquire()

    def __exit__(self, *exc: object) -> bool:
        self.release()
        return False


def lock_folder(folder: str | os.PathLike, what: str | None = None) -> FolderLock:
    """FolderLock(folder, what), for a `with` block."""
    return FolderLock(folder, what)
