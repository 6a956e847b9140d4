"""Keep the network busy during a folder run: read ahead, write behind.

A folder run reads an image, detects, writes the result, and again. Reading (file I/O and
JPEG decoding) and writing (formatting, an fsync'ed atomic write, JPEG encoding of an
annotated copy) would otherwise sit between two forward passes. Here they run in threads,
next to the network: OpenCV's decoding and encoding and the file system calls release the
GIL, so they overlap with the forward pass (which releases it too).

    with BackgroundWriter() as writer:
        for item, img, error in prefetch(items, load):
            if error is not None:
                ...                      # report the unreadable image, as before
                continue
            dets = detector.detect(img)
            writer.submit(write_result, item, dets)
    # here every result is on disk, or the first failed write has been raised

Both keep the order of the items: prefetch yields them in the order given, and the
writer runs its jobs one at a time in the order submitted. Both are bounded, so memory
does not grow with the folder. Neither imports torch.
"""
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

# Images read ahead of the one in the network: enough to hide a slow read, few enough
# to keep memory small at the 1600-pixel test scale.
PREFETCH_DEPTH = 4
# Decoding threads: decoding is much cheaper than a forward pass, so two keep ahead.
PREFETCH_WORKERS = 2
# Results waiting for the writer before submit() waits for it.
MAX_PENDING_WRITES = 16

# What a load function raises for an input that cannot be used (read_image's errors):
# reported per item. Anything else is a bug or an interruption, raised in the caller.
INPUT_ERRORS = (FileNotFoundError, ValueError)


def prefetch(items, load, depth=PREFETCH_DEPTH, workers=PREFETCH_WORKERS):
    """Yield (item, load(item), None) for each item, in order, loading up to depth items
    ahead in worker threads; an item whose load raised one of INPUT_ERRORS gives
    (item, None, error). Other exceptions are raised here, at their item.

    Closing the generator early (break, an exception in the caller, Ctrl-C) cancels the
    loads not started and waits for the ones running.
    """
    if depth < 1 or workers < 1:
        raise ValueError(f"prefetch depth and workers must be positive, got {depth} and {workers}")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix='prefetch')
    pending = deque()
    it = iter(items)

    def fill():
        while len(pending) < depth:
            try:
                item = next(it)
            except StopIteration:
                return
            pending.append((item, pool.submit(load, item)))

    try:
        fill()
        while pending:
            item, future = pending.popleft()
            fill()
            try:
                value = future.result()
            except INPUT_ERRORS as e:
                yield item, None, e
            else:
                yield item, value, None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class BackgroundWriter:
    """Runs write jobs in one thread, in the order submitted, off the critical path.

    A failed job's exception is raised by the next submit() or by close(), so a run never
    reports success with a result missing. Used as a context manager, leaving the block
    waits for every job submitted; when the block is left by an exception (Ctrl-C
    included), the jobs already submitted still finish (each writes a whole file: the
    results computed so far are kept, and a resumed run skips them) and the block's
    exception is the one raised.
    """

    def __init__(self, max_pending=MAX_PENDING_WRITES):
        if max_pending < 1:
            raise ValueError(f"max_pending must be positive, got {max_pending}")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='writer')
        self._pending = deque()
        self._max_pending = max_pending

    def _collect_done(self):
        """Raise the exception of the oldest finished job that failed; forget finished ones."""
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def submit(self, fn, *args, **kwargs):
        """Queue fn(*args, **kwargs); waits while max_pending jobs are queued.

        Raises:
            the exception of an earlier job that failed.
        """
        self._collect_done()
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def close(self):
        """Wait for every job; raise the first failure."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return False
        # Finish what was submitted, but let the block's own exception be the one raised.
        for future in self._pending:
            try:
                future.result()
            except Exception as e:  # noqa: BLE001 - reported, the block's exception wins
                logger.warning("a result could not be written: %s", e)
        self._pending.clear()
        self._pool.shutdown(wait=True)
        return False
