"""Benchmark utils.memory.keep_freed_memory: glibc's default malloc against kept memory.

    .venv/bin/python -m bench.bench_malloc                # the four ../shared/images photos
    .venv/bin/python -m bench.bench_malloc --rounds 4 --repeats 9

The malloc setting is per process and cannot be undone, so each measurement runs in a
child process: the two settings alternate, round after round, so that load on the
machine affects both alike. Each child loads the detector once per backend and times
forward passes (on one preprocessed input) and end-to-end detection, interleaved; the
table shows the medians over all rounds, and the detections of the two settings are
compared (they must be identical: allocation changes no arithmetic).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench.common import IMAGES, ROOT

POLICIES = ('default', 'keep')


def get_args_parser():
    parser = argparse.ArgumentParser(description="glibc malloc's default against keep_freed_memory()")
    parser.add_argument('-m', '--trained_model', default=None, type=str,
                        help='weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA/weights/)')
    parser.add_argument('--images', nargs='+', default=None,
                        help='image files (default: the four photos in $RETINAFACE_DATA/images)')
    parser.add_argument('--backends', nargs='+', default=['torch', 'onnxruntime'], choices=['torch', 'onnxruntime'])
    parser.add_argument('--rounds', default=3, type=int, help='child processes per setting')
    parser.add_argument('--repeats', default=7, type=int, help='timed runs per image in each child')
    parser.add_argument('--child', default=None, choices=POLICIES, help=argparse.SUPPRESS)
    return parser


def child(args):
    """Time the detectors under one malloc setting; print the samples as JSON."""
    import numpy as np
    import torch

    from bench.common import default_weights
    from models.detector import load_detector
    from utils.image import read_image
    from utils.memory import keep_freed_memory

    applied = keep_freed_memory() if args.child == 'keep' else False
    torch.set_grad_enabled(False)
    out = {'applied': applied, 'samples': {}, 'dets': {}}
    for backend in args.backends:
        det = load_detector('mobile0.25', args.trained_model or default_weights(), backend=backend)
        for path in args.images:
            name = os.path.splitext(os.path.basename(path))[0]
            img = read_image(path)
            batch, _, _ = det.preprocess([img])
            det.detect(img)  # warm-up
            fwd, e2e = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                det.forward(batch)
                fwd.append(1000 * (time.perf_counter() - t))
                t = time.perf_counter()
                dets = det.detect(img)
                e2e.append(1000 * (time.perf_counter() - t))
            out['samples'][f'{name}/{backend}'] = {'forward': fwd, 'end-to-end': e2e}
            out['dets'][f'{name}/{backend}'] = np.asarray(dets).tobytes().hex()
    print(json.dumps(out))
    return 0


def main(args):
    from utils.datapaths import shared_path

    images = args.images or [str(shared_path('images', f'{n}.jpg')) for n in IMAGES]
    samples = {p: {} for p in POLICIES}
    dets = {}
    print(f"{args.rounds} rounds x {len(POLICIES)} child processes, {args.repeats} timed runs each, ms")
    for r in range(args.rounds):
        for policy in POLICIES:
            cmd = [sys.executable, '-m', 'bench.bench_malloc', '--child', policy, '--repeats', str(args.repeats),
                   '--backends', *args.backends, '--images', *images]
            if args.trained_model:
                cmd += ['--trained_model', args.trained_model]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
            if policy == 'keep' and not res['applied']:
                raise SystemExit("keep_freed_memory() has no effect here (not Linux/glibc): nothing to compare")
            for key, s in res['samples'].items():
                for stage, v in s.items():
                    samples[policy].setdefault(key, {}).setdefault(stage, []).extend(v)
            for key, d in res['dets'].items():
                dets.setdefault(key, set()).add(d)

    width = max(16, 2 + max(len(key.split('/')[0]) for key in samples['default']))
    header = (f"{'image':<{width}}{'backend':<13}{'fwd default':>12}{'fwd kept':>10}{'speed-up':>9}"
              f"{'e2e default':>12}{'e2e kept':>10}{'speed-up':>9}  detections")
    print("\n" + header + "\n" + "-" * len(header))
    for key in samples['default']:
        name, backend = key.split('/')
        d = {p: {st: statistics.median(v) for st, v in samples[p][key].items()} for p in POLICIES}
        same = 'identical' if len(dets[key]) == 1 else 'DIFFERENT'
        print(f"{name:<{width}}{backend:<13}{d['default']['forward']:12.2f}{d['keep']['forward']:10.2f}"
              f"{d['default']['forward'] / d['keep']['forward']:8.2f}x"
              f"{d['default']['end-to-end']:12.2f}{d['keep']['end-to-end']:10.2f}"
              f"{d['default']['end-to-end'] / d['keep']['end-to-end']:8.2f}x  {same}")
    return 0


if __name__ == '__main__':
    args = get_args_parser().parse_args()
    raise SystemExit(child(args) if args.child else main(args))
