"""Opening the files a user gives as input: only regular files, and text read one way.

Two mistakes a plain open() turns into a hang or a crash:
- a device or a FIFO given where a file belongs: /dev/zero is read until memory runs out,
  and a FIFO blocks the open until a writer appears (Ctrl-C does not always stop it);
- a text input (an image list, a label file, a prediction file) that is not UTF-8 text, or
  that an editor saved with a byte-order mark: the first raises UnicodeDecodeError deep in
  the parser, the second glues '\\ufeff' to the first name.

open_input_file refuses anything but a regular file before opening it, and open_text reads
every text input the same way: UTF-8 with an optional BOM, any other byte sequence (and a
NUL byte, which no text input holds) a one-line InputError naming the file and line.
"""
import codecs
import hashlib
import io
import os
import re
import stat

from utils.errors import InputError, InputNotFoundError

# What os.stat's file types are called in the messages.
_FILE_TYPES = ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'),
               (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'))
# Bytes decoded at a time: a binary file is refused at its first bad byte, not after reading it all.
_CHUNK = 1 << 20


def file_type(mode: int) -> str:
    """What kind of file an st_mode is, in words ('a FIFO', 'a folder', ...)."""
    return next((name for test, name in _FILE_TYPES if test(mode)), 'not a regular file')


def check_regular_file(path: str | os.PathLike, what: str | None = None, expected: str = 'a file',
                       missing: str | None = None) -> os.stat_result:
    """Raise InputError unless path is an existing regular file (links followed); nothing is opened.

    Args:
        path (str | PathLike): the file.
        what (str | None): how to name it, e.g. 'image list' (None: the path alone).
        expected (str): what it should have been, for the message ('an image file').
        missing (str | None): what a missing file is called ('image': "image not found: ...");
            None: what, or 'file'.
    Raises:
        InputNotFoundError: path does not exist.
        InputError: path is a folder, a FIFO, a device or a socket, or cannot be looked at.
    Returns:
        os.stat_result of path.
    """
    path = os.fspath(path)
    label = f"{what} {path}" if what else path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputNotFoundError(f"{missing or what or 'file'} not found: {path}") from None
    except OSError as e:
        raise InputError(f"cannot read {label}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{label} is {file_type(st.st_mode)}, not {expected}")
    return st


def open_input_file(path: str | os.PathLike, what: str | None = None, expected: str = 'a file',
                    missing: str | None = None) -> io.BufferedReader:
    """Open a regular file for reading in binary mode (a file object); anything else is an
    InputError (see check_regular_file), and so is a file that cannot be opened."""
    path = os.fspath(path)
    check_regular_file(path, what, expected, missing)
    label = f"{what} {path}" if what else path
    try:
        # O_NONBLOCK: should path have become a FIFO since the check, the open returns at
        # once instead of waiting for a writer; on a regular file it changes nothing.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise InputError(f"cannot read {label}: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(f"{label} is {file_type(st.st_mode)}, not {expected}")
    return os.fdopen(fd, 'rb')


def read_text(path: str | os.PathLike, what: str | None = None) -> str:
    """The text of a UTF-8 text input, a leading BOM removed, newlines as open() reads them.

    Raises:
        InputNotFoundError: path does not exist.
        InputError: path is not a readable regular file, or not UTF-8 text (an invalid byte
            sequence or a NUL byte); the message names the file and line.
    """
    path = os.fspath(path)
    label = f"{what} {path}" if what else path
    decoder = codecs.getincrementaldecoder('utf-8-sig')()
    parts, lines_before = [], 0
    with open_input_file(path, what, expected='a text file') as f:
        while True:
            try:
                chunk = f.read(_CHUNK)
            except OSError as e:
                raise InputError(f"cannot read {label}: {e.strerror or e}") from None
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                line = lines_before + e.object[:e.start].count(b'\n') + 1
                raise InputError(f"{label}:{line}: not a UTF-8 text file (byte 0x{e.object[e.start]:02x}; "
                                 f"a binary file, or text in another encoding?)") from None
            nul = text.find('\x00')
            if nul >= 0:
                line = lines_before + text.count('\n', 0, nul) + 1
                raise InputError(f"{label}:{line}: not a UTF-8 text file (a NUL byte; a binary file?)")
            parts.append(text)
            lines_before += text.count('\n')
            if not chunk:
                break
    # The universal newlines of open(path) in text mode: \r\n and \r read as \n.
    return ''.join(parts).replace('\r\n', '\n').replace('\r', '\n')


def open_text(path: str | os.PathLike, what: str | None = None) -> io.StringIO:
    """read_text(path, what) as a file object to iterate or read, as open(path) gives."""
    return io.StringIO(read_text(path, what))


def valid_unicode(text: str) -> str:
    """text with the undecodable bytes of a file name (os.fsdecode's surrogate escapes) shown
    as \\xNN: valid Unicode, safe to put in UTF-8 JSON (which escapes control characters
    itself). Valid names are unchanged."""
    try:
        raw = text.encode('utf-8', 'surrogateescape')
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return text.encode('utf-8', 'backslashreplace').decode('utf-8')
    return raw.decode('utf-8', 'backslashreplace')


# Control characters (C0, DEL, C1): a file name may hold any of them, and printed as they
# are, a newline splits a one-line-per-image summary and an escape sequence drives the terminal.
_CONTROL = re.compile('[\x00-\x1f\x7f-\x9f]')
# The short escapes JSON uses; the other control characters become \\u00XX, as in JSON.
_SHORT_ESCAPES = {'\b': '\\b', '\t': '\\t', '\n': '\\n', '\f': '\\f', '\r': '\\r'}


def printable(text: str) -> str:
    """text as a name is shown on a line of output or of the log: the undecodable bytes of a
    file name as \\xNN (valid_unicode), and control characters escaped as JSON escapes them
    (a newline as \\n, others as \\u00XX), so that one name stays on one line. Names
    without either are unchanged."""
    text = valid_unicode(text)
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: _SHORT_ESCAPES.get(m.group(), f"\\u{ord(m.group()):04x}"), text)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits: what identifies weights and ONNX
    files in the logs (utils.checkpoint) and in a results folder's record (utils.run_manifest)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def note_listed_once(first_listed: dict[str, str], entry: str, where: str, shown: str | None = None,
                     remedy: str = 'remove one of the lines') -> str:
    """Note that a list file (an image list, a label.txt) names entry, a path below its
    folder, at where ('list.txt:3'); return the entry normalised (os.path.normpath, so that
    'a//b.jpg' and './a/b.jpg' are 'a/b.jpg').

    An image listed twice would be used twice (detected and counted twice, trained twice an
    epoch), which is never what the list's author meant.

    Args:
        first_listed (dict): normalised entry -> where it was first listed; updated.
        entry (str): the entry as the script reads it.
        where (str): the file and line, for the message.
        shown (str | None): the entry as written, for the message (default: entry).
        remedy (str): what the message tells the user to do.
    Raises:
        InputError: entry was listed before; the message names both lines.
    """
    norm = os.path.normpath(entry)
    if norm in first_listed:
        raise InputError(f"{first_listed[norm]} and {where}: duplicate entry {shown or entry!r} (each image is "
                         f"listed once; {remedy})")
    first_listed[norm] = where
    return norm
