"""The project's error type for bad input: a file, line, flag or value the user gave.

Only these errors become one `error: ...` line in the scripts (utils.cli.run_cli) or a
skipped image in a folder run (utils.folder_run). Everything else is a bug, and keeps its
traceback: a ValueError raised deep inside numpy must never read as "the image could not
be read".

Raise them where the input is checked, with a message that names the file, line or value:

    raise InputError(f"{path}:{lineno}: expected 4 numbers, got {line!r}")

InputError is a ValueError, and InputNotFoundError a FileNotFoundError too, so callers
that caught those built-in types still catch them.
"""


class InputError(ValueError):
    """A user's input (a file, its contents, a flag, an output location) cannot be used;
    the message says which and why."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class InputTooLargeError(InputError, MemoryError):
    """An input that does not fit in memory at the size it is processed at (a huge photo at
    its original size): the message names the size and the way out. A MemoryError too, so
    that callers that caught the allocation failure still catch it."""
