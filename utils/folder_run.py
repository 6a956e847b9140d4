"""Folder runs: detect on a list of image files, keeping the network busy: read ahead, write behind.

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

detect_images is the loop the inference scripts share (detect.py, test_widerface.py,
test_fddb.py): read and preprocess ahead, detect, one image or a batch at a time, and report
the images that cannot be read, or do not fit in memory, and go on.
check_list_entries and lock_results_folder keep a run's outputs where the user pointed,
apart from each other, and away from other runs (utils.outputs keeps them off the inputs).
"""
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext
from types import TracebackType
from typing import Protocol, TypeVar

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from utils.atomic import FolderLock, lock_folder, remove_stale_temp_files
from utils.distributed import World, on_rank0
from utils.errors import InputError
from utils.image import read_image
from utils.input_files import note_listed_once, printable

logger = logging.getLogger(__name__)

# Images read ahead of the one in the network: enough to hide a slow read, few enough
# to keep memory small at the 1600-pixel test scale.
PREFETCH_DEPTH = 4
# Decoding threads: decoding is much cheaper than a forward pass, so two keep ahead.
PREFETCH_WORKERS = 2
# Results waiting for the writer before submit() waits for it.
MAX_PENDING_WRITES = 16

# What a load function raises for an input that cannot be used (read_image's errors, the
# decoder's failure included): reported per item. Anything else is a bug or an
# interruption, raised in the caller with its traceback.
INPUT_ERRORS = (InputError,)

# prefetch hands back the items it was given, with what load made of each.
_Item = TypeVar('_Item')
_Loaded = TypeVar('_Loaded')


class _Detector(Protocol):
    """What detect_images needs of a models.detector.Detector (which utils cannot import):
    its preprocess, its detect_preprocessed taking what preprocess returned, and its
    detect_batch, with Detector's signatures."""

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray | list, list, list | None]: ...

    def detect_preprocessed(self, batch: np.ndarray | list, sizes: list, resizes: list | None) -> list[np.ndarray]: ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]: ...


def prefetch(items: Iterable[_Item], load: Callable[[_Item], _Loaded], depth: int = PREFETCH_DEPTH,
             workers: int = PREFETCH_WORKERS
             ) -> Generator[tuple[_Item, _Loaded | None, InputError | None], None, None]:
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
                out = [(item, future.result(), None)]
            except INPUT_ERRORS as e:
                out = [(item, None, e)]
            del future
            # Popped as it is yielded, so that the caller alone holds what was loaded: a large
            # image is freed as soon as the caller is done with it.
            yield out.pop()
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

    def __init__(self, max_pending: int = MAX_PENDING_WRITES) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be positive, got {max_pending}")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='writer')
        self._pending = deque()
        self._max_pending = max_pending

    def _collect_done(self):
        """Raise the exception of the oldest finished job that failed; forget finished ones."""
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def submit(self, fn: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Queue fn(*args, **kwargs); waits while max_pending jobs are queued.

        Raises:
            the exception of an earlier job that failed.
        """
        self._collect_done()
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for every job; raise the first failure."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> 'BackgroundWriter':
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
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


def detect_images(detector: _Detector, jobs: list[tuple], skipped: list[tuple[int, tuple[str, str]]],
                  progress: bool = False, batch_size: int = 1
                  ) -> Generator[tuple[tuple, np.ndarray, np.ndarray, float], None, None]:
    """Detect faces in each job's image, reading and preprocessing the next images in
    threads while the network runs.

    Args:
        detector: a models.detector.Detector (anything with preprocess, detect_preprocessed
            and detect_batch).
        jobs (list[tuple]): (index, image path, anything else the caller needs), in order.
        skipped (list): an unreadable image, or one that does not fit in memory (the
            detector's InputTooLargeError, an InputError), is logged ("skipping <path>:
            <reason>") and appended here as (index, (path, reason)), in job order; the run goes on.
        progress (bool): show a tqdm bar (log messages then go around it).
        batch_size (int): images per detect_batch: the readable images of each run of
            batch_size jobs go through the network together. A batch that fails with an
            InputError (an image that does not fit in memory) is retried image by image, so
            that only the image at fault is skipped.
    Yields:
        (job, img ndarray[H, W, 3] uint8, dets ndarray[N, 15] float32, ms float): each
        image detected in, in job order; ms is its detection time, preprocessing included
        (a batch's time shared equally by its images).
    Use it in a `with closing(...)` block, so that an interrupted loop stops the readers.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    def load(chunk):
        # Each image is read on its own, so that one unreadable image skips only itself.
        # Errors are kept as their messages: an exception's traceback would hold its arrays.
        entries = []
        for job in chunk:
            try:
                entries.append([job, read_image(job[1]), None])
            except INPUT_ERRORS as e:
                entries.append([job, None, str(e)])
        readable = [entry for entry in entries if entry[2] is None]
        tic = time.perf_counter()
        prepared = None
        if readable:
            try:
                prepared = detector.preprocess([entry[1] for entry in readable])
            except INPUT_ERRORS as e:
                if len(readable) == 1:
                    readable[0][2] = str(e)
                # else: prepared stays None, and the images go through the network one by one
        return entries, prepared, time.perf_counter() - tic

    chunks = [jobs[i:i + batch_size] for i in range(0, len(jobs), batch_size)]
    # Read ahead by images, not by batches, so that memory does not grow with the batch size.
    depth = max(1, -(-PREFETCH_DEPTH // batch_size))
    done, start = 0, time.perf_counter()
    bar = tqdm(total=len(jobs), desc='im_detect', unit='img', dynamic_ncols=True, disable=not (progress and jobs))
    with (logging_redirect_tqdm() if progress else nullcontext()), \
            closing(prefetch(chunks, load, depth=depth)) as loaded, bar:
        for _, value, _ in loaded:  # load reports each image's error in its entry
            entries, seconds = value[0], value[2]
            prepared = [value[1]]  # handed over: _detect_chunk frees it before any retry
            del value
            results = _detect_chunk(detector, entries, prepared, seconds)
            for (job, img, error), (dets, ms) in zip(entries, results):
                bar.update()
                if error is None and isinstance(dets, str):
                    error = dets
                if error is not None:
                    logger.warning("skipping %s: %s", printable(job[1]), printable(error))
                    skipped.append((job[0], (job[1], error)))
                    continue
                done += 1
                bar.set_postfix(ms_per_img=f"{1000 * (time.perf_counter() - start) / done:.0f}", refresh=False)
                yield job, img, dets, ms


def _detect_chunk(detector, entries, handed_over, preprocess_seconds):
    """[(dets, ms)] per entry of a loaded chunk: dets an ndarray[N, 15], or the reason (str)
    the image was not detected in; (None, 0.0) for an entry that was not readable.
    handed_over: [what preprocess returned for the readable images, or None], emptied here."""
    prepared = handed_over.pop()
    readable = [i for i, entry in enumerate(entries) if entry[2] is None]
    results = [(None, 0.0)] * len(entries)
    if not readable:
        return results
    if prepared is not None:
        tic = time.perf_counter()
        try:
            found = detector.detect_preprocessed(*prepared)
        except INPUT_ERRORS as e:
            if len(readable) == 1:
                return [(str(e), 0.0) if i == readable[0] else r for i, r in enumerate(results)]
            found = None  # retried image by image below, so that only the image at fault is skipped
        if found is not None:
            ms = 1000 * (time.perf_counter() - tic + preprocess_seconds) / len(readable)
            for i, dets in zip(readable, found):
                results[i] = (dets, ms)
            return results
    prepared = None  # the failed batch's input, freed before its images are tried one by one
    for i in readable:
        tic = time.perf_counter()
        try:
            results[i] = (detector.detect_batch([entries[i][1]])[0], 1000 * (time.perf_counter() - tic))
        except INPUT_ERRORS as e:
            results[i] = (str(e), 0.0)
    return results


def check_list_entries(list_path: str, entries: list[tuple[int, str, str]],
                       output_of: Callable[[str], str] | None = None) -> list[str]:
    """Check the entries of an image list before any work; return them normalised.

    Each entry is a path relative to the images folder, and names the outputs of its image
    below the output folder. An entry that is absolute or climbs out of its folder ('..')
    would read and write elsewhere (an entry '../../victim/a.jpg' would replace the user's
    victim/a.txt); a duplicate would be detected twice and counted twice; two entries with
    one output (ev/a.jpg and ev/a.png both give ev/a.txt) would leave only the second's.

    Args:
        list_path (str): the list file, for the messages.
        entries (list[tuple[int, str, str]]): (line number, entry as written, entry as the
            script reads it, e.g. without its leading '/').
        output_of (callable | None): normalised entry -> its output path relative to the
            output folder; None when the outputs are named by the entry itself.
    Returns:
        list[str]: the entries, normalised (os.path.normpath), in list order.
    Raises:
        InputError: naming the list file, the line (both lines for a clash) and the entry.
    """
    normalised, first_line, first_output = [], {}, {}
    for lineno, shown, entry in entries:
        where = f"{list_path}:{lineno}"
        norm = os.path.normpath(entry)
        if os.path.isabs(norm) or norm == os.curdir or norm == os.pardir or norm.startswith(os.pardir + os.sep):
            kind = 'an absolute path' if os.path.isabs(norm) else 'outside the images folder'
            raise InputError(f"{where}: entry {shown!r} is {kind}: its results would be read and written "
                             f"outside the folders given; entries are paths below the images folder")
        note_listed_once(first_line, norm, where, shown)
        if output_of is not None:
            out = output_of(norm)
            if out in first_output:
                other_where, other = first_output[out]
                raise InputError(f"{other_where} and {where}: entries {other!r} and {shown!r} would both write "
                                 f"{out} (only the second would survive); rename one of the images")
            first_output[out] = (where, shown)
        normalised.append(norm)
    return normalised


def lock_results_folder(folder: str | os.PathLike, what: str, world: World) -> FolderLock | None:
    """Lock a results folder for the length of a run and remove the temporary files a killed
    run left there; returns the utils.atomic.FolderLock to release at the end (None on ranks
    other than 0: under torchrun rank 0 holds it for every rank, and a folder in use stops
    every rank, with only rank 0 printing why).

    Raises:
        InputError: another run holds the folder (the message names its PID).
    """
    def take():
        lock = lock_folder(folder, what).acquire()
        try:
            removed = remove_stale_temp_files(folder)
        except BaseException:
            lock.release()
            raise
        if removed:
            logger.info("removed %d temporary files left in %s by an interrupted run", len(removed), folder)
        return lock
    return on_rank0(take, world)
