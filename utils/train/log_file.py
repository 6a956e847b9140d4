"""train.py's log file, <name>_train.log in --save_folder: a copy of every log record, the
ones logged while the inputs were checked (before the folder may be written to) first."""
import logging
import logging.handlers

LOG_FORMAT = '%(asctime)s %(message)s'
# The file's timestamps carry the date; stdout's (utils.cli.run_cli's) the time only.
FILE_DATE_FORMAT = '%Y-%m-%d %H:%M:%S'


class RunLogFile:
    """buffer() keeps the root logger's records from then on; open(path) writes them to path
    and every later one too (appended: a resumed run continues the same file); close()
    removes both handlers, dropping what no file took."""

    def __init__(self):
        self._buffer = None  # a MemoryHandler, from buffer() until open()
        self._handler = None  # the FileHandler, from open() until close()

    def buffer(self) -> None:
        """Keep the log records from now until open(), which copies them to the file."""
        self.close()
        # Without a target a MemoryHandler keeps every record, whatever its capacity, until one is set.
        self._buffer = logging.handlers.MemoryHandler(capacity=1, flushLevel=logging.CRITICAL + 1, target=None)
        self._buffer.setLevel(logging.INFO)
        logging.getLogger().addHandler(self._buffer)

    def open(self, path: str) -> None:
        """Copy every log record to path, the ones buffer() kept first."""
        handler = logging.FileHandler(path, mode='a', encoding='utf-8')
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=FILE_DATE_FORMAT))
        handler.setLevel(logging.INFO)
        if self._buffer is not None:
            logging.getLogger().removeHandler(self._buffer)
            self._buffer.setTarget(handler)
            self._buffer.close()  # flushes the kept records to the file
            self._buffer = None
        logging.getLogger().addHandler(handler)
        self._handler = handler

    def close(self) -> None:
        if self._buffer is not None:
            logging.getLogger().removeHandler(self._buffer)
            self._buffer.close()  # no target: the records are dropped
            self._buffer = None
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None
