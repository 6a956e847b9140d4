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
import shutil
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

import cv2
import numpy as np

from utils.atomic import TEMP_SUFFIX, move_into_place, write_target
from utils.errors import InputError, InputNotFoundError

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
# Whatever read_frames' prepare returns for a frame.
_Prepared = TypeVar('_Prepared')


def parse_source(source: str | int | os.PathLike) -> str | int:
    """A camera index (int) for a string of digits, else the file path as given."""
    if isinstance(source, int):
        return source
    text = os.fspath(source)
    return int(text) if text.strip().isdigit() else text


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
    container from the file name's extension.)

    Raises (on opening):
        InputError: the codec cannot be written (the message names it), or the folder is not writable.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], codec: str = DEFAULT_CODEC) -> None:
        self.path = os.fspath(path)
        self.size = tuple(int(v) for v in size)
        self.frames = 0
        folder = os.path.dirname(write_target(self.path))  # beside a link's target: the rename goes there
        try:
            os.makedirs(folder, exist_ok=True)
            self._folder = tempfile.mkdtemp(dir=folder, prefix='.' + os.path.basename(self.path) + '.',
                                            suffix=TEMP_SUFFIX)
        except OSError as e:
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from e
        self._tmp = os.path.join(self._folder, os.path.basename(self.path))
        self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*codec), float(fps), self.size)
        if not self._writer.isOpened():
            self._remove()
            raise InputError(f"cannot write {self.path}: OpenCV cannot encode {codec!r} video into a "
                             f"{os.path.splitext(self.path)[1] or 'file without extension'} file here "
                             f"(--video_codec {DEFAULT_CODEC} writes .mp4 with any OpenCV built with FFmpeg)")

    def write(self, frame: np.ndarray) -> None:
        """Append a BGR frame of the video's size (OpenCV would drop any other size silently)."""
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise InputError(f"frame {self.frames} is {frame.shape[1]}x{frame.shape[0]}, the video's first "
                             f"frame {self.size[0]}x{self.size[1]}: a video's frames must keep one size")
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it to path."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        try:
            with open(self._tmp, 'rb') as f:
                os.fsync(f.fileno())
            move_into_place(self._tmp, self.path)  # over a link's target, never over the link
        finally:
            self._remove()

    def discard(self) -> None:
        """Drop the file (nothing was written worth keeping)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._remove()

    def _remove(self):
        shutil.rmtree(self._folder, ignore_errors=True)
