"""Peak memory and time of one large photo, untiled and with --tile.

    .venv/bin/python -m bench.bench_tiles                          # 8000x6000, --tile 2048, both networks
    .venv/bin/python -m bench.bench_tiles --networks mobile0.25 --cap_gib 8

The photo is largest_selfie.jpg (1600x898, hundreds of faces) repeated into a grid and cut
to --size. Each (network, mode) runs in its own child process under an address-space cap
(RLIMIT_AS, as `ulimit -v`), so that an untiled pass too large for the machine fails in
the child rather than pushing the machine into swap; it then reports "did not fit". The
peak is the child's maximum resident set (its own ru_maxrss: the interpreter,
torch and the weights included), the time one Detector.detect call
(preprocessing, forward passes, merge), after the detector is built. mobile0.25 runs
the published weights; resnet50 runs randomly initialised weights (the published ones are
not in ../shared), with --resnet_threshold so that its random scores do not flood NMS:
memory and time are those of the network, whatever its weights.
"""
import argparse
import json
import os
import resource
import subprocess
import sys

from bench.common import ROOT

GIB = 1 << 30


def get_args_parser():
    parser = argparse.ArgumentParser(description='peak memory and time of a large photo, untiled and tiled')
    parser.add_argument('-m', '--trained_model', default=None, type=str,
                        help='mobile0.25 weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA)')
    parser.add_argument('--networks', nargs='+', default=['mobile0.25', 'resnet50'], choices=['mobile0.25', 'resnet50'])
    parser.add_argument('--size', nargs=2, type=int, default=[8000, 6000], metavar=('W', 'H'))
    parser.add_argument('--tile', default=2048, type=int)
    parser.add_argument('--threads', default=1, type=int, help='CPU threads of each child')
    parser.add_argument('--cap_gib', default=12.0, type=float, help='address-space cap of each child, GiB')
    parser.add_argument('--resnet_threshold', default=0.99, type=float,
                        help='confidence threshold for the random-weight resnet50')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    return parser


def make_photo(width, height):
    """largest_selfie.jpg repeated into a width x height grid (real faces everywhere)."""
    import numpy as np

    from utils.datapaths import shared_path
    from utils.image import read_image

    base = read_image(shared_path('images', 'largest_selfie.jpg'))
    reps = (-(-height // base.shape[0]), -(-width // base.shape[1]), 1)
    return np.ascontiguousarray(np.tile(base, reps)[:height, :width])


def child(args):
    """Build the detector, detect once, print {'seconds', 'detections'} as JSON."""
    import time

    import torch

    from bench.common import default_weights
    from data.config import cfg_re50
    from models.detector import Detector, load_detector

    torch.set_num_threads(args.threads)
    network, mode = args.child.split(':')
    tile = None if mode == 'untiled' else args.tile
    if network == 'mobile0.25':
        det = load_detector('mobile0.25', args.trained_model or default_weights(), tile=tile)
    else:
        from models.retinaface import RetinaFace

        torch.manual_seed(0)
        det = Detector(RetinaFace(cfg_re50, phase='test'), cfg_re50, tile=tile,
                       confidence_threshold=args.resnet_threshold)
    img = make_photo(*args.size)
    tic = time.perf_counter()
    dets = det.detect(img)
    seconds = time.perf_counter() - tic
    print(json.dumps({'seconds': seconds, 'detections': int(len(dets)), 'faces': int((dets[:, 4] >= 0.5).sum()),
                      'peak_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)}))


def run_child(args, network, mode):
    cap = int(args.cap_gib * GIB)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [sys.executable, '-m', 'bench.bench_tiles', '--child', f'{network}:{mode}', '--size', *map(str, args.size),
           '--tile', str(args.tile), '--threads', str(args.threads), '--resnet_threshold', str(args.resnet_threshold)]
    if args.trained_model:
        cmd += ['--trained_model', args.trained_model]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=limit)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ['?'])[-1]
        return {'fits': False, 'error': last[:120]}
    return {'fits': True, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(args):
    if args.child:
        return child(args)
    w, h = args.size
    print(f"{w}x{h} photo (largest_selfie.jpg repeated), {args.threads} thread(s), cap {args.cap_gib:g} GiB "
          f"per child, load average {os.getloadavg()[0]:.2f}")
    print(f"{'network':11s}  {'mode':10s}  {'peak RSS GiB':>12s}  {'seconds':>8s}  {'detections':>10s}  "
          f"{'score>=0.5':>10s}")
    for network in args.networks:
        for mode in ('tiled', 'untiled'):
            r = run_child(args, network, mode)
            label = f"tile {args.tile}" if mode == 'tiled' else 'untiled'
            if r['fits']:
                print(f"{network:11s}  {label:10s}  {r['peak_gib']:12.2f}  {r['seconds']:8.1f}  {r['detections']:10d}  "
                      f"{r['faces']:10d}", flush=True)
            else:
                print(f"{network:11s}  {label:10s}  did not fit in {args.cap_gib:g} GiB ({r['error']})", flush=True)


if __name__ == '__main__':
    main(get_args_parser().parse_args())
