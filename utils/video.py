"""Video files and cameras: frames read ahead in a thread, and an annotated copy written.

    video = open_video('clip.mp4')             # or '0', the first camera
    with closing(read_frames(video, every=3, prepare=detector_preprocess)) as frames:
        for index, status, frame, prepared in frames:
            ...                                # status 'ok', 'skipped' (by every) or 'bad'
    video.close()

A camera and a file go through the same code: only what cv2.VideoCapture opens differs,
and a camera has no frame count (so no end but --max_frames, Ctrl-C or its stream ending).
Kept free of torch, as utils/image.py is.
"""
import argparse
import logging
import math
import os
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

import cv2
import numpy as np

from utils.atomic import TempFolder, free_space, move_into_place, remove_stale_temp_folders, write_target
from utils.errors import InputError, InputNotFoundError
from utils.signals import deferred_interrupts

logger = logging.getLogger(__name__)

# Frames decoded ahead of the one in the network: enough to hide a slow decode, few enough
# that 1080p frames do not fill memory.
READ_AHEAD = 4
# Failed reads in a row after which a stream is taken to have ended: a damaged frame or
# two in the middle of a file are skipped, a file cut short or an unplugged camera end.
MAX_FAILED_READS = 25
# The frame rate assumed when the source does not give one (some cameras and streams).
FALLBACK_FPS = 25.0
# The codec of the annotated copy: MPEG-4 Part 2, which every OpenCV build with FFmpeg
# writes into .mp4 and common players read.
DEFAULT_CODEC = 'mp4v'
# The largest camera index cv2.VideoCapture takes: it is a C int, and a larger number is
# a cv2.error from its argument parsing.
MAX_CAMERA_INDEX = 2 ** 31 - 1
# A camera index: ASCII decimal digits only. str.isdigit() also takes '²' or '٣', which
# int() refuses or OpenCV has no camera for: such a name is a file name.
_CAMERA_INDEX = re.compile(r'[0-9]+')
# Whatever read_frames' prepare returns for a frame.
_Prepared = TypeVar('_Prepared')


def parse_source(source: str | int | os.PathLike) -> str | int:
    """A camera index (int) for a plain decimal number of ASCII digits (surrounding spaces
    allowed), else the file path as given ('²', './0' and '0.mp4' are file names).

    Raises:
        InputError: the number is beyond MAX_CAMERA_INDEX.
    """
    if isinstance(source, int):
        index, text = source, str(source)
    else:
        text = os.fspath(source)
        if not _CAMERA_INDEX.fullmatch(text.strip(' ')):
            return text
        index = int(text)
    if not 0 <= index <= MAX_CAMERA_INDEX:
        raise InputError(f"camera index {text.strip()} is out of range: OpenCV takes 0 to {MAX_CAMERA_INDEX} "
                         f"(a video file of that name is read as ./{text})")
    return index


def fourcc(value: str) -> str:
    """An argparse type for a four-character video codec code (e.g. mp4v, MJPG)."""
    if len(value) != 4 or not value.isascii() or not value.isprintable():
        raise argparse.ArgumentTypeError(f"expected a four-character codec code such as mp4v or MJPG, got {value!r}")
    return value


class Video:
    """A video file or camera opened with cv2.VideoCapture, its first frame already decoded.

    Attributes:
        source (str | int): the file path, or the camera index.
        name (str): how messages name it ('clip.mp4', 'camera 0').
        stem (str): the file name without extension ('camera0' for a camera), for output names.
        is_camera (bool).
        fps (float): the frame rate (FALLBACK_FPS when the source gives none).
        frame_count (int | None): the frames the file's header announces (None for a camera,
            or when unknown); the stream may hold fewer.
        width, height (int): the first frame's size.
    Raises (on opening):
        InputNotFoundError: the file does not exist.
        InputError: it is a folder, OpenCV cannot open it, or its first frame cannot be decoded.
    """

    def __init__(self, source: str | int | os.PathLike) -> None:
        self.source = parse_source(source)
        self.is_camera = isinstance(self.source, int)
        if self.is_camera:
            self.name, self.stem = f"camera {self.source}", f"camera{self.source}"
        else:
            self.name = self.source
            self.stem = os.path.splitext(os.path.basename(self.source))[0]
            if not os.path.exists(self.source):
                raise InputNotFoundError(f"video not found: {self.source}")
            if os.path.isdir(self.source):
                raise InputError(f"{self.source} is a directory, not a video file")
        self._cap = cv2.VideoCapture(self.source)
        try:
            if not self._cap.isOpened():
                why = 'no such camera, or it is busy' if self.is_camera else 'unknown format, or corrupt'
                raise InputError(f"cannot open {self.name}: OpenCV cannot read it as a video ({why})")
            ok, first = self._cap.read()
            if not ok or first is None or first.size == 0:
                raise InputError(f"{self.name} has no frame OpenCV can decode (empty, or corrupt)")
        except BaseException:
            self._cap.release()
            raise
        self._first = first
        self.height, self.width = first.shape[:2]
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        if not math.isfinite(fps) or fps <= 0:
            logger.warning("%s does not give its frame rate: taking it as %g fps", self.name, FALLBACK_FPS)
            fps = FALLBACK_FPS
        self.fps = float(fps)
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if not self.is_camera and math.isfinite(count) and count > 0 else None
        self._used = False

    def frames(self, decode: Callable[[int], bool] | None = None,
               max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray | None, str]]:
        """Yield (index, frame, status) for each frame in order, index counting from 0.

        status is 'ok' (frame: ndarray[H, W, 3] uint8 BGR), 'skipped' (decode(index) was
        false: the frame was read past without being converted, frame None) or 'bad' (it
        could not be decoded, frame None; logged once as a warning with its index). It can
        be iterated once.

        Args:
            decode (callable(int) -> bool | None): whether a frame's pixels are needed (None: all).
            max_frames (int | None): stop after this many frames.
        """
        if self._used:
            raise RuntimeError(f"the frames of {self.name} were already read")
        self._used = True
        first, self._first = self._first, None
        if max_frames is not None and max_frames < 1:
            return
        want = decode is None or decode(0)
        yield 0, (first if want else None), ('ok' if want else 'skipped')
        index, failed = 1, []
        while max_frames is None or index < max_frames:
            want = decode is None or decode(index)
            ok = self._cap.grab()
            frame = None
            if ok and want:
                ok, frame = self._cap.retrieve()
                ok = ok and frame is not None and frame.size > 0
            if not ok:
                # Only a frame followed by a good one is a damaged frame; failures up to the
                # end are the end of the stream.
                failed.append(index)
                index += 1
                if len(failed) >= MAX_FAILED_READS or (self.frame_count is not None and index >= self.frame_count):
                    break
                continue
            for bad in failed:
                logger.warning("%s: frame %d could not be decoded: skipped", self.name, bad)
                yield bad, None, 'bad'
            failed = []
            yield index, frame, ('ok' if want else 'skipped')
            index += 1
        if failed and self.frame_count is not None and failed[0] < self.frame_count:
            logger.warning("%s: the stream ended at frame %d, though its header announces %d frames",
                           self.name, failed[0], self.frame_count)

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> 'Video':
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False


def open_video(source: str | int | os.PathLike) -> Video:
    """Video(source): a file path, or a camera index (an int, or a string of digits)."""
    return Video(source)


class _Failed:
    """The reading thread's exception, on its way to the caller."""

    def __init__(self, error):
        self.error = error


def read_frames(video: Video, every: int = 1, max_frames: int | None = None, keep_skipped: bool = True,
                prepare: Callable[[np.ndarray], _Prepared] | None = None, depth: int = READ_AHEAD
                ) -> Generator[tuple[int, str, np.ndarray | None, _Prepared | None], None, None]:
    """Yield (index, status, frame, prepared) for the frames of video, decoding (and
    preparing) up to depth frames ahead in a thread while the caller works on the current one.

    Every every-th frame (0, every, 2 * every, ...) is processed: status 'ok', and prepared
    is prepare(frame) (None without prepare), computed in the reading thread. Other frames
    have status 'skipped', prepared None, and frame None unless keep_skipped (the caller
    writes them out). A frame that could not be decoded has status 'bad' and frame and
    prepared None (Video.frames logs it).

    Use it in a `with closing(...)` block: closing it (an early break, an exception, Ctrl-C)
    stops the reading thread after the frame it is decoding.
    """
    if every < 1 or depth < 1:
        raise ValueError(f"every and depth must be positive, got {every} and {depth}")
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            def wanted(i):
                return keep_skipped or i % every == 0

            for index, frame, status in video.frames(decode=wanted, max_frames=max_frames):
                prepared = None
                if status == 'ok' and index % every != 0:
                    status = 'skipped'
                elif status == 'ok' and prepare is not None:
                    prepared = prepare(frame)
                if not put((index, status, frame, prepared)):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller, at its frame
            put(_Failed(e))

    thread = threading.Thread(target=work, name='video-reader', daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get(timeout=0.05)  # unblock a put() waiting for room
            except queue.Empty:
                pass
        thread.join()


class VideoWriter:
    """An annotated copy of a video: written into a temporary folder beside path, then moved
    to path by close(), so that path never holds half a file (an MP4 cut short has no index
    and does not play) and a previous file there stays until the new one is whole.

    Opening it is the check that OpenCV can encode codec into path's container; make it
    before any work. (The temporary file sits in a folder because OpenCV picks the
    container from the file name's extension.) It also removes the temporary folders that
    killed runs left beside path, never one that a running writer holds (utils.atomic.TempFolder).

    OpenCV's FFmpeg writer keeps even sizes only: it drops the last column of an odd width
    and the last row of an odd height (whatever the codec). An odd-sized video is therefore
    written one black column and/or row larger, at the right and bottom, with a warning: every
    input pixel is kept, at the same coordinates, so the detections' pixels hold for the copy.

    Attributes:
        size (tuple[int, int]): the frames' (width, height), as given.
        encoded_size (tuple[int, int]): the copy's (width, height): size rounded up to even.
        frames (int): the frames written.
    Raises (on opening):
        InputError: the codec cannot be written (the message names it), or the folder is not writable.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], codec: str = DEFAULT_CODEC) -> None:
        self.path = os.fspath(path)
        self.size = tuple(int(v) for v in size)
        self.encoded_size = tuple(v + v % 2 for v in self.size)
        self.frames = 0
        folder = os.path.dirname(write_target(self.path))  # beside a link's target: the rename goes there
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from e
        for stale in remove_stale_temp_folders(folder):
            logger.info("removed %s, left by a run that was killed", stale)
        self._folder = TempFolder(write_target(self.path))
        self._tmp = os.path.join(self._folder.path, os.path.basename(self.path))
        self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*codec), float(fps), self.encoded_size)
        if not self._writer.isOpened():
            self._folder.close()
            raise InputError(f"cannot write {self.path}: OpenCV cannot encode {codec!r} video into a "
                             f"{os.path.splitext(self.path)[1] or 'file without extension'} file here "
                             f"(--video_codec {DEFAULT_CODEC} writes .mp4 with any OpenCV built with FFmpeg)")
        if self.encoded_size != self.size:
            added = [what for what, odd in (('a black column at the right', self.size[0] % 2),
                                            ('a black row at the bottom', self.size[1] % 2)) if odd]
            logger.warning("the video is %dx%d and OpenCV writes even sizes only: %s is %dx%d, every frame with "
                           "%s (the detections' pixel coordinates hold for both)",
                           *self.size, self.path, *self.encoded_size, ' and '.join(added))

    def write(self, frame: np.ndarray) -> None:
        """Append a BGR frame of the video's size (OpenCV would drop any other size silently)."""
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise InputError(f"frame {self.frames} is {frame.shape[1]}x{frame.shape[0]}, the video's first "
                             f"frame {self.size[0]}x{self.size[1]}: a video's frames must keep one size")
        if self.encoded_size != self.size:
            frame = cv2.copyMakeBorder(frame, 0, self.encoded_size[1] - self.size[1], 0,
                                       self.encoded_size[0] - self.size[0], cv2.BORDER_CONSTANT, value=0)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        """Finish the file, check it and move it to path. A Ctrl-C or SIGTERM meanwhile is
        raised once the file is in place (or the temporary one removed).

        Raises:
            InputError: the file does not hold the frames written (the encoder's writes
                failed: a full disk); path keeps what it held before.
        """
        if self._writer is None:
            return
        with deferred_interrupts():
            try:
                self._writer.release()
                self._writer = None
                self._check_written()
                with open(self._tmp, 'rb') as f:
                    os.fsync(f.fileno())
                move_into_place(self._tmp, self.path)  # over a link's target, never over the link
            except OSError as e:
                raise InputError(f"cannot write {self.path}: {e.strerror or e} ({self._free()}){self._kept()}") from e
            finally:
                self._folder.close()

    def _check_written(self):
        """Raise InputError unless the finished temporary file opens and holds every frame:
        OpenCV only logs a warning for a frame the encoder failed to write, and a file whose
        end could not be written (no MP4 index) does not open at all."""
        cap = cv2.VideoCapture(self._tmp)
        try:
            opened = cap.isOpened()
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if opened else 0
            size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) if opened else None
        finally:
            cap.release()
        if not opened:
            what = "the file it made does not open"
        elif count != self.frames:
            what = f"the file it made holds {max(count, 0)} of the {self.frames} frames"
        elif size != self.encoded_size:
            what = f"the file it made is {size[0]}x{size[1]}, not {self.encoded_size[0]}x{self.encoded_size[1]}"
        else:
            return
        raise InputError(f"cannot write {self.path}: the video encoder's writes failed, {what} "
                         f"(is the disk full? {self._free()}){self._kept()}")

    def _free(self):
        folder = os.path.dirname(os.path.abspath(self.path))
        return f"{free_space(folder)} free in {folder}"

    def _kept(self):
        return f"; the earlier {self.path} is kept" if os.path.isfile(self.path) else ''

    def discard(self) -> None:
        """Drop the file (nothing was written worth keeping)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._folder.close()
