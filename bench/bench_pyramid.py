"""Time per image of the detection modes on the same photos: original size, the test scale,
the pyramid merged by voting and by NMS.

    .venv/bin/python -m bench.bench_pyramid                      # 10 minitrain photos, 1 thread
    .venv/bin/python -m bench.bench_pyramid --images 20 --rounds 3

The modes alternate photo by photo, so that load on the machine affects them alike; each
photo's time is the fastest of --rounds (Detector.detect: preprocessing, forward passes,
merge). The accuracy of the modes is not measured here: bench/README.md ("Accurate mode")
gives the commands that score them on the val416 ground truth.
"""
import argparse
import os
import statistics
import time

from bench.common import default_weights
from utils.datapaths import shared_path

MODES = {
    'origin size': {},
    'test scale (1600)': {'origin_size': False},
    'pyramid, vote': {'pyramid': True},
    'pyramid, nms': {'pyramid': True, 'pyramid_merge': 'nms'},
}


def get_args_parser():
    parser = argparse.ArgumentParser(description='time per image of the detection modes')
    parser.add_argument('-m', '--trained_model', default=None, type=str,
                        help='weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA/weights/)')
    parser.add_argument('--images', default=10, type=int, help='the first N minitrain photos, in sorted order')
    parser.add_argument('--rounds', default=2, type=int, help='timed runs per photo and mode (the fastest counts)')
    parser.add_argument('--threads', default=1, type=int)
    return parser


def photos(n):
    folder = shared_path('minitrain', 'train', 'images')
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files if f.endswith('.jpg'))
    return paths[:n]


def main(args):
    import torch

    from models.detector import load_detector
    from utils.image import read_image

    torch.set_num_threads(args.threads)
    weights = args.trained_model or default_weights()
    detectors = {name: load_detector('mobile0.25', weights, **kw) for name, kw in MODES.items()}
    images = [read_image(p) for p in photos(args.images)]
    seconds = {name: [] for name in MODES}
    counts = {name: 0 for name in MODES}
    for img in images:
        for name, det in detectors.items():
            best = float('inf')
            for _ in range(args.rounds):
                tic = time.perf_counter()
                dets = det.detect(img)
                best = min(best, time.perf_counter() - tic)
            seconds[name].append(best)
            counts[name] += len(dets)
    print(f"{len(images)} minitrain photos (416x416), {args.threads} thread(s), fastest of {args.rounds}, "
          f"load average {os.getloadavg()[0]:.2f}")
    base = statistics.mean(seconds['origin size'])
    print(f"{'mode':20s}  {'s/image':>8s}  {'x origin':>8s}  {'detections/image':>16s}")
    for name in MODES:
        mean = statistics.mean(seconds[name])
        print(f"{name:20s}  {mean:8.3f}  {mean / base:8.1f}  {counts[name] / len(images):16.1f}")


if __name__ == '__main__':
    main(get_args_parser().parse_args())
