"""Sound kept: the audio streams of an input video copied into a video file written from its
frames (detect.py writes frames only, through OpenCV, which neither reads nor writes sound).

    audio_stream_count('clip.mp4')                   # before the work: 0 warns, a bad file is an InputError
    copy_audio('clip.mp4', 'out/clip.mp4')           # after the frames are written: out/clip.mp4 gets the sound

Through PyAV (the av package), whose wheel ships FFmpeg's libraries: no system ffmpeg is ever
assumed. Each audio stream is copied packet for packet when the written file's container takes
its codec (AAC, MP3, Opus and FLAC into .mp4, say), and re-encoded to AAC when it does not
(mu-law into .mp4, Opus into .avi), or when players would not play it there: FFmpeg stores PCM,
which cameras record into .mov, in .mp4 as ISO PCM, which browsers and most players cannot
play. The video is copied as it is. Nothing is decoded that is copied.

Timing: the written video's frame 0 is the input's first frame, so the sound is shifted by the
input video stream's start time and runs until the written video's end (its frames over its
frame rate): the input's whole duration after a complete run, and the frames done after a run cut
short by Ctrl-C, so that the sound never runs on over a frozen last picture. A copied stream ends
with the packet that holds that end (AAC: within 1024 samples, 21 ms at 48 kHz); a re-encoded one
is cut to the sample.

The result replaces the file atomically: it is written into a temporary folder beside it (ending
with utils.atomic.TEMP_SUFFIX, keeping the file's name, whose extension tells FFmpeg the
container), then renamed over it. Whatever fails or is interrupted leaves the file as it was.
Kept free of torch, as utils/video.py is.
"""
from __future__ import annotations

import heapq
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from utils.atomic import TEMP_SUFFIX
from utils.errors import InputError, InputNotFoundError

logger = logging.getLogger(__name__)

# What a stream the written container does not take is re-encoded to.
REENCODE_CODEC = 'aac'
REENCODE_BIT_RATE = 192_000  # per stream: transparent for stereo AAC
# The sample rates the AAC encoder takes; others are resampled to FALLBACK_RATE.
FALLBACK_RATE = 48000
# Codecs re-encoded into a container that FFmpeg would store them in, but players would not
# play them from: {muxer name: codec name prefixes}.
UNPLAYABLE = {'mp4': ('pcm_',)}
# Layouts kept as they are when re-encoding; any other is mixed down to stereo.
AAC_LAYOUTS = ('mono', 'stereo', '3.0', '4.0', '5.0', '5.1', '7.1')
FALLBACK_LAYOUT = 'stereo'


@dataclass
class AudioCopy:
    """What copy_audio did.

    Attributes:
        streams (list[str]): per audio stream of the input, e.g. 'aac copied' or
            'pcm_s16le re-encoded to aac'; empty when the input has no audio.
        seconds (float | None): where the sound was cut: the written video's duration.
    """
    streams: list[str] = field(default_factory=list)
    seconds: float | None = None


def _open(path, what):
    import av

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputNotFoundError(f"{what} not found: {path}")
    try:
        return av.open(path)
    except (av.FFmpegError, ValueError, OSError) as e:
        raise InputError(f"cannot read {what} {path}: {e}") from None


def audio_stream_count(source: str | os.PathLike) -> int:
    """The audio streams of the video file source, checked before any work: 0 logs a warning
    (the output will have no sound).

    Raises:
        InputNotFoundError: source does not exist.
        InputError: FFmpeg (PyAV) cannot read it.
    """
    with _open(source, 'video') as container:
        n = len(container.streams.audio)
    if n == 0:
        logger.warning("%s has no audio stream: the output video will have no sound", os.fspath(source))
    return n


def _seconds(value, time_base):
    return None if value is None or time_base is None else float(value * time_base)


def video_duration(container) -> float:
    """Seconds of a container's first video stream: its frame count over its frame rate,
    else its duration (as the file gives them). Raises InputError where it has neither."""
    stream = container.streams.video[0]
    if stream.frames and stream.average_rate:
        return float(stream.frames / stream.average_rate)
    seconds = _seconds(stream.duration, stream.time_base)
    if seconds is None and container.duration is not None:
        seconds = container.duration / 1e6  # AV_TIME_BASE
    if seconds is None:
        raise InputError(f"{container.name}: cannot tell how long its video is (no frame count or duration)")
    return seconds


def container_takes(format_name: str, stream) -> bool:
    """Whether a container of format_name (an FFmpeg muxer: 'mp4', 'mov', 'avi', ...) stores the
    PyAV audio stream as it is, in a form players play (UNPLAYABLE): a header of that format
    with the stream is written in memory. (A muxer that refuses a stream only in its trailer is
    caught when the file is written: copy_audio then re-encodes.)"""
    import av

    if stream.codec_context.name.startswith(UNPLAYABLE.get(format_name, ())):
        return False
    try:
        with av.open(io.BytesIO(), 'w', format=format_name) as probe:
            probe.add_stream_from_template(stream)
            probe.start_encoding()
    except (av.FFmpegError, ValueError):
        return False
    return True


class _CopiedStream:
    """An input audio stream copied packet for packet into out_stream."""

    def __init__(self, out_stream, offset, end):
        self.out = out_stream
        self.offset, self.end = offset, end

    def packets(self, packet):
        """The output packets for one input packet (none past the end)."""
        if packet.dts is None:  # the demuxer's flush packet: nothing to copy
            return []
        tb = packet.time_base
        start = _seconds(packet.pts if packet.pts is not None else packet.dts, tb) - self.offset
        if start >= self.end:
            return []
        shift = round(self.offset / tb)  # in the packet's time base
        if packet.pts is not None:
            packet.pts -= shift
        packet.dts -= shift
        packet.stream = self.out
        return [packet]

    def flush(self):
        return []


class _ReencodedStream:
    """An input audio stream decoded, cut to [0, end) of the written video, and encoded to AAC."""

    def __init__(self, container, in_stream, offset, end):
        import av

        ctx = in_stream.codec_context
        layout = ctx.layout.name if ctx.layout.name in AAC_LAYOUTS else FALLBACK_LAYOUT
        codec = av.codec.Codec(REENCODE_CODEC, 'w')
        rate = ctx.sample_rate if ctx.sample_rate in codec.audio_rates else FALLBACK_RATE
        self.out = container.add_stream(REENCODE_CODEC, rate=rate, layout=layout)
        self.out.bit_rate = REENCODE_BIT_RATE
        self.rate = rate
        self._resampler = av.AudioResampler(format=codec.audio_formats[0].name, layout=layout, rate=rate)
        self.offset, self.end = offset, end
        self._next = 0  # the next output sample (1/rate_in units), so that cut frames join up

    def _cut(self, frame):
        """frame's samples inside [0, end) of the output, as a frame with pts in 1/rate_in, or None."""
        import av

        rate = frame.sample_rate
        start = round((_seconds(frame.pts, frame.time_base) - self.offset) * rate) if frame.pts is not None \
            else self._next
        lo = max(0, -start)
        hi = min(frame.samples, round(self.end * rate) - start)
        if hi <= lo:
            return None
        if (lo, hi) != (0, frame.samples):
            planes = frame.to_ndarray()  # [C, N] planar or [1, N * C] packed
            step = 1 if frame.format.is_planar else len(frame.layout.channels)
            cut = np.ascontiguousarray(planes[:, lo * step:hi * step])
            new = av.AudioFrame.from_ndarray(cut, format=frame.format.name, layout=frame.layout.name)
            new.sample_rate = rate
            frame = new
        frame.pts = start + lo
        frame.time_base = Fraction(1, rate)
        self._next = start + hi
        return frame

    def _encode(self, frame):
        packets = []
        for converted in self._resampler.resample(frame):
            packets += self.out.encode(converted)
        return packets

    def packets(self, packet):
        out = []
        for frame in packet.decode():  # the flush packet (dts None) gives the decoder's last frames
            cut = self._cut(frame)
            if cut is not None:
                out += self._encode(cut)
        return out

    def flush(self):
        return self._encode(None) + self.out.encode(None)


def _timed(packets, order) -> Iterator[tuple[float, int, object]]:
    """(seconds, order, packet) for interleaving: by decoding time, stream order breaking ties."""
    for packet in packets:
        t = packet.dts if packet.dts is not None else packet.pts
        yield (float(t * packet.time_base) if t is not None else float('inf')), order, packet


def copy_audio(source: str | os.PathLike, video: str | os.PathLike, duration: float | None = None) -> AudioCopy:
    """Put the audio streams of the video file source into the video file video, which holds
    the frames written from it, replacing video atomically (see the module docstring).

    Args:
        source (str | PathLike): the input video, as read (its audio streams are used).
        video (str | PathLike): the written video (its video streams are kept as they are).
        duration (float | None): where to cut the sound, in seconds of video; None: the
            written video's duration (video_duration).
    Returns:
        AudioCopy: per stream, copied or re-encoded; nothing when source has no audio, which
        logs a warning and leaves video as it is.
    Raises:
        InputNotFoundError, InputError: a file is missing or FFmpeg cannot read it, or the
            written container takes neither an audio stream's codec nor AAC (video is kept).
    """
    import av

    source, video = os.fspath(source), os.fspath(video)
    folder = os.path.dirname(os.path.abspath(video))
    src = _open(source, 'video')  # opened once: FFmpeg decodes a little of it to learn its streams
    try:
        if not src.streams.audio:
            logger.warning("%s has no audio stream: %s is written without sound", source, video)
            return AudioCopy()
        first = src.streams.video[0] if src.streams.video else None
        offset = (_seconds(first.start_time, first.time_base) or 0.0) if first is not None else 0.0
        tmp_dir = tempfile.mkdtemp(dir=folder, prefix='.' + os.path.basename(video) + '.', suffix=TEMP_SUFFIX)
        tmp = os.path.join(tmp_dir, os.path.basename(video))
        try:
            try:
                report, end = _write(src, video, tmp, duration, offset, reencode_all=False)
            except (av.FFmpegError, ValueError) as e:
                if isinstance(e, InputError):  # a file that cannot be read: not the muxer's refusal
                    raise
                # A muxer that refused a copied stream only once packets or the trailer came:
                # again from the start, every stream re-encoded.
                src.close()
                src = _open(source, 'video')
                report, end = _write(src, video, tmp, duration, offset, reencode_all=True)
            with open(tmp, 'rb') as f:
                os.fsync(f.fileno())
            os.replace(tmp, video)
        except av.FFmpegError as e:
            raise InputError(f"cannot write the sound of {source} into {video}: {e}") from None
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    finally:
        src.close()
    return AudioCopy(report, end)


def _write(src, video, tmp, duration, offset, reencode_all):
    """Write tmp: video's video streams and src's audio streams (copied where the container
    takes them, unless reencode_all). Returns (report, end seconds)."""
    import av

    with _open(video, 'written video') as vin:
        end = video_duration(vin) if duration is None else float(duration)
        with av.open(tmp, 'w') as out:
            fmt = out.format.name
            video_out = {s.index: out.add_stream_from_template(s) for s in vin.streams.video}
            handlers, report = {}, []
            for s in src.streams.audio:
                name = s.codec_context.name
                if not reencode_all and container_takes(fmt, s):
                    handlers[s.index] = _CopiedStream(out.add_stream_from_template(s), offset, end)
                    report.append(f"{name} copied")
                else:
                    handlers[s.index] = _ReencodedStream(out, s, offset, end)
                    report.append(f"{name} re-encoded to {REENCODE_CODEC}")

            def video_packets():
                for packet in vin.demux(*vin.streams.video):
                    if packet.dts is not None:
                        packet.stream = video_out[packet.stream.index]
                        yield packet

            def audio_packets():
                for packet in src.demux(*src.streams.audio):
                    yield from handlers[packet.stream.index].packets(packet)
                for handler in handlers.values():
                    yield from handler.flush()

            # Interleaved by time as they are written, so the muxer buffers a few packets, not a
            # whole stream.
            merged = heapq.merge(_timed(video_packets(), 0), _timed(audio_packets(), 1), key=lambda item: item[:2])
            for _, _, packet in merged:
                out.mux(packet)
    return report, end
