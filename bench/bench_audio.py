"""What keeping the sound costs: utils.audio.copy_audio on the 1080p clip of issue 26.

    .venv/bin/python -m bench.bench_audio
    .venv/bin/python -m bench.bench_audio --repeats 9

The clip (bench/clips.py CLIP_1080P: 60 frames of H.264 at 30 fps, a stereo AAC track at 48 kHz)
is decoded and its frames written as detect.py writes them (OpenCV, 'mp4v' in .mp4); then
copy_audio puts its sound into that file, as detect.py --keep_audio will after the video is
written. Timed, median of --repeats runs, each on a fresh copy of the written file:
- the AAC track, stream copied (what a phone's video gets);
- the same sound as 16-bit PCM in a .mov (as some cameras record), re-encoded to AAC (.mp4 players
  do not play PCM);
beside the time OpenCV took to write the frames, for scale.
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from bench.clips import CLIP_1080P, AudioTrack, decode_frames, make_clip, tone
from utils.audio import copy_audio


def get_args_parser():
    parser = argparse.ArgumentParser(description='the cost of copy_audio on the 1080p clip')
    parser.add_argument('--repeats', default=5, type=int)
    parser.add_argument('--cache_dir', default=os.path.join(tempfile.gettempdir(), 'retinaface_bench_clips'),
                        help='where the clip is kept between runs')
    return parser


def pcm_copy(clip_path, path, seconds):
    """The clip's video with its sound as 16-bit PCM, in a .mov."""
    import av

    with av.open(str(clip_path)) as src, av.open(str(path), 'w') as out:
        video = out.add_stream_from_template(src.streams.video[0])
        track = AudioTrack(out, codec='pcm_s16le')
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                out.mux(packet)
        track.write(tone(seconds))
        track.close()


def main(args):
    clip = make_clip(args.cache_dir, CLIP_1080P)
    spec = clip.spec
    seconds = spec.frames / spec.fps
    with tempfile.TemporaryDirectory(prefix='bench_audio_') as tmp:
        tmp = Path(tmp)
        frames = decode_frames(clip.path, spec.frames)
        written = tmp / 'written.mp4'
        tic = time.perf_counter()
        writer = cv2.VideoWriter(str(written), cv2.VideoWriter_fourcc(*'mp4v'), spec.fps, spec.size)
        for frame in frames:
            writer.write(frame)
        writer.release()
        write_ms = 1000 * (time.perf_counter() - tic)
        mov = tmp / 'pcm.mov'
        pcm_copy(clip.path, mov, seconds)
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {clip.path.name}: {spec.frames} frames "
              f"{spec.size[0]}x{spec.size[1]}, {seconds:g} s; the written video {written.stat().st_size / 1e6:.1f} MB; "
              f"median of {args.repeats}")
        for label, source in (('AAC, stream copied', clip.path), ('16-bit PCM (.mov), re-encoded to AAC', mov)):
            times, result = [], None
            for i in range(args.repeats):
                target = tmp / 'out' / f'{i}.mp4'
                target.parent.mkdir(exist_ok=True)
                shutil.copy(written, target)
                tic = time.perf_counter()
                result = copy_audio(source, target)
                times.append(1000 * (time.perf_counter() - tic))
            ms = statistics.median(times)
            print(f"  copy_audio, {label:<38} {ms:8.1f} ms  ({100 * ms / write_ms:.0f}% of writing the frames; "
                  f"{result.streams[0]})")
        print(f"  for scale: OpenCV writing the {spec.frames} frames (mp4v)     {write_ms:8.1f} ms")
    return 0


if __name__ == '__main__':
    raise SystemExit(main(get_args_parser().parse_args()))
