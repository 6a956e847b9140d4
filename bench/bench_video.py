"""Benchmark detect.py --video: frames per second and the real-time factor, per backend and size.

    .venv/bin/python -m bench.bench_video                       # 640x360 and 1280x720, both backends
    .venv/bin/python -m bench.bench_video --frames 90 --rounds 5 --threads 2

The clips are made from a shared photo by bench/clips.py (a pan across street_crowd.jpg,
shrunk to each size, so both sizes show the same crowd) and written as H.264 .mp4 at --fps,
as a phone writes video: decoding them is part of the run, as with a real file. For each size and backend, in one process:
- video: detect.py's main() on the clip with an annotated .mp4 and JSON Lines, start-up
  excluded (the detector is built once beforehand and handed to main());
- no outputs: the same with --no-save_image and no --json (reading and detecting only);
- detect only: Detector.detect on the same frames, decoded beforehand, one after another.
Each is run --rounds times, alternating, and the fastest round of each is kept (other
processes on a shared machine only ever slow a round down). 'real time' is the video
run's frames per second over the clip's --fps: 1.0x keeps up with the clip as it plays.
"""
import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import detect
from bench.clips import ClipSpec, decode_frames, make_clip
from bench.common import default_weights, script_seconds
from utils.cli import set_threads, setup_logging

SIZES = ((640, 360), (1280, 720))
PHOTO = 'street_crowd'
# The pan of each size's clip (bench/clips.py): the photo shrunk to 1.125 frame widths.
CLIP = ClipSpec(photo=PHOTO, pan_overscan=1.125)


def get_args_parser():
    parser = argparse.ArgumentParser(description='Benchmark detect.py --video')
    parser.add_argument('-m', '--trained_model', default=None, type=str,
                        help='mobile0.25 weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA)')
    parser.add_argument('--frames', default=60, type=int, help='frames in each clip')
    parser.add_argument('--fps', default=30.0, type=float, help="the clips' frame rate (the real-time target)")
    parser.add_argument('--rounds', default=3, type=int, help='timed rounds of each measurement (fastest kept)')
    parser.add_argument('--threads', default=1, type=int,
                        help='CPU threads of the detector (default 1: steady on a machine shared with other '
                             'busy processes)')
    parser.add_argument('--backends', nargs='+', default=['torch', 'onnxruntime'], choices=['torch', 'onnxruntime'])
    parser.add_argument('--sizes', nargs='+', default=[f'{w}x{h}' for w, h in SIZES],
                        help='clip sizes, WxH')
    return parser


def detect_seconds(detector, frames):
    tic = time.perf_counter()
    for frame in frames:
        detector.detect(frame)
    return time.perf_counter() - tic


def main(args):
    setup_logging(logging.WARNING)
    set_threads(args.threads)
    weights = args.trained_model or default_weights()
    sizes = [tuple(int(v) for v in s.lower().split('x')) for s in args.sizes]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; mobile0.25, {args.threads} thread(s), "
          f"{args.frames}-frame H.264 clips of {PHOTO}.jpg at {args.fps:g} fps, fastest of {args.rounds} rounds, "
          f"start-up excluded")
    header = (f"{'size':<10} {'backend':<12} {'faces/frame':>11} {'video fps':>10} {'real time':>10} "
              f"{'no outputs fps':>15} {'detect-only fps':>16} {'video/detect':>13}")
    print(header)
    print('-' * len(header))
    with tempfile.TemporaryDirectory(prefix='bench_video_') as tmp:
        tmp = Path(tmp)
        for w, h in sizes:
            clip = make_clip(tmp, CLIP, size=(w, h), frames=args.frames, fps=args.fps).path
            frames = decode_frames(clip, args.frames)
            for backend in args.backends:
                run_args = detect.get_args_parser().parse_args([
                    '-m', weights, '--cpu', '--backend', backend, '--video', str(clip), '--threads', str(args.threads),
                    '--output', str(tmp / 'out'), '--json', str(tmp / 'out' / 'faces.jsonl')])
                bare = argparse.Namespace(**{**vars(run_args), 'save_image': False, 'json': None})
                detector = detect.detector_from_args(run_args)
                detector.detect(frames[0])  # the first pass of a size sets up its kernels
                videos, bares, detects = [], [], []
                for _ in range(args.rounds):
                    seconds, result = script_seconds(detect, run_args, detector)
                    videos.append(seconds)
                    bares.append(script_seconds(detect, bare, detector)[0])
                    detects.append(detect_seconds(detector, frames))
                assert result['frames'] == args.frames, result
                fps, detect_fps = args.frames / min(videos), args.frames / min(detects)
                print(f"{f'{w}x{h}':<10} {backend:<12} {result['faces'] / args.frames:>11.1f} {fps:>10.1f} "
                      f"{fps / args.fps:>9.2f}x {args.frames / min(bares):>15.1f} {detect_fps:>16.1f} "
                      f"{fps / detect_fps:>13.2f}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main(get_args_parser().parse_args()))
