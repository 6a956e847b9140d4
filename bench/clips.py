"""The test clips that benchmarks and tests make from the shared photos: one maker, one cache.

    clip = make_clip(cache_dir)                     # the 1080p clip of issue 26 (CLIP_1080P)
    for frame in iter_frames(clip.path): ...        # decoded as detect.py decodes them (OpenCV)
    faces = clip.to_frame(k, reference_boxes)       # where the reference image's faces are in frame k

A clip is a camera move over one photo. Every frame k is the photo scaled by (ax_k, ay_k) and
shifted by (ox_k, oy_k): a point (x, y) of the photo lies at (ax_k * x - ox_k, ay_k * y - oy_k)
in frame k, in continuous pixel coordinates (pixel (x, y) covers [x, x + 1) x [y, y + 1), as the
detector's boxes do). So where a face of the photo is in every frame is known, and a benchmark
can tell which faces each frame should show (bench/bench_hold.py). Moves:

- 'pan': the photo scaled once (so that the frame height fits and the scaled photo is
  pan_overscan times the frame width), and a window of the frame's size moved from its left
  edge to its right edge at constant speed, centred vertically, by whole pixels (the frames are
  exact crops of the scaled photo before encoding).
- 'zoom': a zoom into the photo's centre, from the whole photo (the frame filled) to a window
  ZOOM_FACTOR times smaller, at a constant rate (the scale grows by the same factor each frame).

Written as H.264 (yuv420p, a keyframe a second) with a stereo AAC sound track (a sine tone as
long as the video) in .mp4, through PyAV, because that is what a phone or camera writes and
what a user's file is: decoding H.264 costs what it costs on the user's files, where the MJPG
.avi that OpenCV writes decodes each frame on its own at a different cost, and OpenCV writes
neither H.264 (its FFmpeg has no H.264 encoder) nor sound. The encoder runs single-threaded
with fixed settings, so the same spec gives the same bytes on every machine with the same av.

A clip is written once into a cache folder the caller gives, under a name that holds every
setting and CLIP_VERSION (bumped whenever the maker's output changes), atomically: a file under
that name is always a whole clip of that spec, and is reused as it is.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from utils.atomic import TEMP_SUFFIX
from utils.datapaths import shared_path

# Bump when a clip made from the same spec would differ: older cached files are not reused.
CLIP_VERSION = 1
MOTIONS = ('pan', 'zoom')
DEFAULT_PAN_OVERSCAN = 1.25  # the scaled photo is this many frame widths wide: the pan's length
ZOOM_FACTOR = 1.5  # the zoom's last frame shows a window this many times smaller than the first's
# The encoding: H.264 as a phone writes it (4:2:0, a keyframe a second), at a constant quality
# (x264's crf) rather than a bit rate, so that a small clip of a detailed photo is as clean as a
# large one; at 1080p it comes near a phone's bit rate. One thread: the same bytes on any machine.
VIDEO_CODEC = 'libx264'
VIDEO_OPTIONS = {'crf': '14', 'preset': 'fast', 'threads': '1'}
PIXEL_FORMAT = 'yuv420p'
# The sound track: a quiet stereo sine tone, AAC as phones record it.
AUDIO_CODEC = 'aac'
AUDIO_RATE = 48000
AUDIO_LAYOUT = 'stereo'
AUDIO_BIT_RATE = 128_000
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.2
BOX_COLUMNS = 4  # x1 y1 x2 y2
# The frame rate as a fraction: 29.97 is 30000/1001, as cameras write it.
MAX_RATE_DENOMINATOR = 1001


@dataclass(frozen=True)
class ClipSpec:
    """What a clip shows and how it is written.

    Attributes:
        photo (str): a photo of the shared images folder, without '.jpg'.
        size (tuple[int, int]): (width, height) of the frames, both even (4:2:0 video).
        frames (int): the number of frames, >= 2.
        fps (float): the frame rate.
        motion (str): 'pan' or 'zoom' (see the module docstring).
        audio (bool): with the AAC sound track.
        pan_overscan (float): for 'pan', how many frame widths wide the scaled photo is (> 1).
    """
    photo: str = 'largest_selfie'
    size: tuple[int, int] = (1920, 1080)
    frames: int = 60
    fps: float = 30.0
    motion: str = 'pan'
    audio: bool = True
    pan_overscan: float = DEFAULT_PAN_OVERSCAN

    def file_name(self) -> str:
        w, h = self.size
        extra = f"_overscan{self.pan_overscan:g}" if self.motion == 'pan' else ''
        return (f"{self.photo}_{self.motion}{extra}_{w}x{h}_{self.frames}f_{self.fps:g}fps"
                f"{'_aac' if self.audio else ''}_v{CLIP_VERSION}.mp4")


# The 1080p clip of issue 26: 60 frames at 30 fps panning across an upscaled largest_selfie.jpg
# (scaled 1.5 times, so the pan covers 480 pixels, 8 a frame).
CLIP_1080P = ClipSpec()
# A slow zoom at 1080p into street_crowd.jpg (its faces grow 1.5 times over the clip).
ZOOM_1080P = ClipSpec(photo='street_crowd', motion='zoom')


@dataclass(frozen=True)
class Clip:
    """A clip on disk and where the photo is in each of its frames.

    Attributes:
        spec (ClipSpec), path (Path): the file.
        scales (ndarray[F] float64): a_k per frame: frame k = a_k * photo - offsets[k].
        offsets (ndarray[F, 2] float64): (ox_k, oy_k) per frame.
        photo_size (tuple[int, int]): (width, height) of the photo.
    """
    spec: ClipSpec
    path: Path
    scales: np.ndarray
    offsets: np.ndarray
    photo_size: tuple[int, int]

    def reference_image(self) -> np.ndarray:
        """The whole photo at the first frame's scale (ndarray[H', W', 3] uint8 BGR): for a
        pan, the image every frame is a crop of; for a zoom, the widest view, which holds
        every face the clip shows. Its detections are where the clip's faces are (to_frame
        maps them into each frame)."""
        return _scaled(_read_photo(self.spec.photo), self.scales[0])

    def to_frame(self, k: int, boxes: np.ndarray) -> np.ndarray:
        """Boxes of the reference image where they lie in frame k.

        Args:
            k (int): the frame index.
            boxes (ndarray[N, >= 4]): x1 y1 x2 y2 in the reference image's pixels (further
                columns ignored).
        Returns:
            ndarray[N, 4] float64: x1 y1 x2 y2 in frame k's pixels (not clipped).
        """
        b = np.asarray(boxes, dtype=np.float64)
        b = b.reshape(-1, b.shape[-1] if b.size else BOX_COLUMNS)[:, :BOX_COLUMNS]
        factor = self.scales[k] / self.scales[0]  # frame k's scale over the reference's
        return b * factor - np.tile(self.offsets[k], 2)

    def inside(self, k: int, boxes: np.ndarray) -> np.ndarray:
        """ndarray[N] bool: which reference boxes lie wholly inside frame k."""
        b = self.to_frame(k, boxes)
        w, h = self.spec.size
        return (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)


def _read_photo(name):
    path = shared_path('images', f'{name}.jpg')
    img = cv2.imread(str(path))
    if img is None:
        raise SystemExit(f"error: {path} not found (set RETINAFACE_DATA to the shared folder)")
    return img


def _check(spec):
    w, h = spec.size
    if spec.motion not in MOTIONS:
        raise ValueError(f"unknown motion {spec.motion!r}: expected one of {MOTIONS}")
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise ValueError(f"clip size must be even and positive (4:2:0 video), got {w}x{h}")
    if spec.frames < 2 or not spec.fps > 0:
        raise ValueError(f"a clip needs at least 2 frames and fps > 0, got {spec.frames} frames at {spec.fps}")
    if spec.motion == 'pan' and not spec.pan_overscan > 1:
        raise ValueError(f"pan_overscan must be > 1, got {spec.pan_overscan}")


def _scaled(photo, a):
    """photo scaled by a (cv2.resize by factor: continuous coordinates scale by exactly a),
    averaging areas when shrinking so that no detail aliases."""
    return cv2.resize(photo, None, fx=a, fy=a, interpolation=cv2.INTER_AREA if a < 1 else cv2.INTER_LINEAR)


def camera_path(spec: ClipSpec, photo_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(scales ndarray[F], offsets ndarray[F, 2]) float64: frame k = scales[k] * photo - offsets[k]."""
    _check(spec)
    w, h = spec.size
    pw, ph = photo_size
    k = np.arange(spec.frames, dtype=np.float64)
    last = spec.frames - 1
    if spec.motion == 'pan':
        a = max(spec.pan_overscan * w / pw, h / ph)
        sw, sh = round(pw * a), round(ph * a)  # the scaled photo's size (as cv2.resize rounds it)
        ox = np.round((sw - w) * k / last)  # whole pixels: the frames are exact crops
        return np.full(spec.frames, a), np.stack([ox, np.full_like(ox, (sh - h) // 2)], axis=1)
    first = max(w / pw, h / ph)  # the whole photo's width or height fills the frame
    a = first * ZOOM_FACTOR ** (k / last)  # [F]: the scale grows by one factor each frame
    # The photo's centre stays at the frame's centre.
    return a, np.stack([a * pw / 2 - w / 2, a * ph / 2 - h / 2], axis=1)


def render_frames(spec: ClipSpec) -> Iterator[np.ndarray]:
    """The clip's frames before encoding (ndarray[H, W, 3] uint8 BGR), in order."""
    photo = _read_photo(spec.photo)
    scales, offsets = camera_path(spec, (photo.shape[1], photo.shape[0]))
    w, h = spec.size
    if spec.motion == 'pan':
        scaled = _scaled(photo, scales[0])  # one scale for the whole pan
        for ox, oy in offsets.astype(np.int64):
            yield np.ascontiguousarray(scaled[oy:oy + h, ox:ox + w])
        return
    for a, (ox, oy) in zip(scales, offsets):
        src, s = (_scaled(photo, a), 1.0) if a < 1 else (photo, a)
        # In pixel indices (centres at integers) the map x_frame = s * x - ox of continuous
        # coordinates is x' = s * x + (s - 1) / 2 - ox.
        m = np.array([[s, 0, (s - 1) / 2 - ox], [0, s, (s - 1) / 2 - oy]], dtype=np.float64)
        yield cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def tone(seconds: float, rate: int = AUDIO_RATE, channels: int = 2) -> np.ndarray:
    """ndarray[channels, round(seconds * rate)] float32: the sine tone of TONE_HZ."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    wave = (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    return np.tile(wave, (channels, 1))


class AudioTrack:
    """An audio stream of an open PyAV output container, written from float samples.

    Made before anything is muxed into the container (a container's streams are fixed when it
    writes its header). write(samples) appends ndarray[C, N] float32 samples in [-1, 1],
    converted to the encoder's sample format; close() flushes the encoder. Used for the clips'
    sound and by the tests that need an audio track of some codec.
    """

    def __init__(self, container, codec: str = AUDIO_CODEC, rate: int = AUDIO_RATE, layout: str = AUDIO_LAYOUT,
                 bit_rate: int | None = AUDIO_BIT_RATE) -> None:
        import av

        self.container = container
        self.rate, self.layout = rate, layout
        self.stream = container.add_stream(codec, rate=rate, layout=layout)
        if bit_rate is not None and self.stream.codec_context.codec.lossy:
            self.stream.bit_rate = bit_rate
        fmt = self.stream.codec_context.codec.audio_formats[0].name
        self._resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        self._written = 0

    def _mux(self, frames):
        for frame in frames:
            self.container.mux(self.stream.encode(frame))

    def write(self, samples: np.ndarray) -> None:
        import av

        if samples.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32), format='fltp',
                                           layout=self.layout)
        frame.sample_rate = self.rate
        frame.time_base = Fraction(1, self.rate)
        frame.pts = self._written
        self._written += samples.shape[1]
        # The resampler also cuts the samples into frames of the encoder's frame size.
        self._mux(self._resampler.resample(frame))

    def close(self) -> None:
        self._mux(self._resampler.resample(None))
        self.container.mux(self.stream.encode(None))


def _encode(spec, path):
    import av

    with av.open(str(path), 'w', format='mp4') as out:
        video = out.add_stream(VIDEO_CODEC, rate=Fraction(spec.fps).limit_denominator(MAX_RATE_DENOMINATOR),
                               options=dict(VIDEO_OPTIONS, g=str(max(1, round(spec.fps)))))
        video.width, video.height = spec.size
        video.pix_fmt = PIXEL_FORMAT
        audio = AudioTrack(out) if spec.audio else None
        sound = tone(spec.frames / spec.fps) if spec.audio else None
        for i, frame in enumerate(render_frames(spec)):
            vf = av.VideoFrame.from_ndarray(frame, format='bgr24')
            vf.pts = i
            out.mux(video.encode(vf))
            if audio is not None:  # the sound of this frame's time, so that the streams interleave
                audio.write(sound[:, round(i * AUDIO_RATE / spec.fps):round((i + 1) * AUDIO_RATE / spec.fps)])
        out.mux(video.encode(None))
        if audio is not None:
            audio.close()


def make_clip(cache_dir: str | os.PathLike, spec: ClipSpec = CLIP_1080P, **changes) -> Clip:
    """The clip of spec (with changes applied, e.g. size=(320, 180)), written into cache_dir
    unless it is there already.

    Args:
        cache_dir (str | PathLike): the folder clips are kept in (created if missing).
        spec (ClipSpec): the clip; CLIP_1080P by default.
        **changes: fields of spec to change.
    Returns:
        Clip: its path and camera path.
    """
    spec = replace(spec, **changes)
    photo = _read_photo(spec.photo)
    photo_size = (photo.shape[1], photo.shape[0])
    scales, offsets = camera_path(spec, photo_size)  # checks spec
    cache_dir = Path(cache_dir)
    path = cache_dir / spec.file_name()
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Encoded in a folder of its own beside the target, then renamed: a killed run leaves
        # no partial clip under the final name (its folder ends with TEMP_SUFFIX).
        tmp_dir = tempfile.mkdtemp(dir=cache_dir, prefix=f'.{spec.file_name()}.', suffix=TEMP_SUFFIX)
        try:
            tmp = Path(tmp_dir) / spec.file_name()
            _encode(spec, tmp)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return Clip(spec, path, scales, offsets, photo_size)


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """The frames of a video file as OpenCV decodes them (what detect.py reads), in order."""
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def decode_frames(path: str | os.PathLike, expected: int | None = None) -> list[np.ndarray]:
    """All the frames of a video file, decoded by OpenCV; raises SystemExit if there are not
    expected of them."""
    frames = list(iter_frames(path))
    if expected is not None and len(frames) != expected:
        raise SystemExit(f"error: the clip {path} decodes to {len(frames)} frames, not {expected}")
    return frames

