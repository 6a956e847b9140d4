"""Two checkouts of this project side by side: end-to-end detect() on the four shared photos.

    python -m bench.bench_checkouts /path/to/old-checkout .                 # torch, CPU
    python -m bench.bench_checkouts /path/to/old-checkout . --backend onnxruntime

For a change that must not change speed (a refactor): each checkout runs in its own Python
process, with its own code and built kernels, and the two take turns, photo by photo and
round by round (each first in every other round), so that the machine's load falls on
both alike. Prints each checkout's median milliseconds per photo and the ratio new / old.

Each checkout needs its kernels built (`python setup.py build_ext --inplace` there) and the
weights (default: this checkout's weights/mobilenet0.25_Final.pth, else the shared one).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from bench.common import IMAGES, default_weights
from utils.datapaths import shared_path

# The child: loads one checkout's detector and the photos, then answers "photo repeats"
# lines with the milliseconds of each detect() call, as JSON.
CHILD = r'''
import json, sys, time  # python -c: the checkout under test (the working directory) is on sys.path
backend, weights, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
torch.set_num_threads(threads)
try:
    from models.detector import load_detector
    from utils.image import read_image
except ImportError:  # a checkout from before the pipeline moved to models/
    from utils.inference import load_detector, read_image
from utils.memory import keep_freed_memory
keep_freed_memory()  # as the scripts do on the CPU
detector = load_detector('mobile0.25', weights, device='cpu', backend=backend, num_threads=threads)
images = {}
for line in sys.stdin:
    path, repeats = line.rsplit(' ', 1)
    if path not in images:
        images[path] = read_image(path)
        for _ in range(3):
            detector.detect(images[path])
    times = []
    for _ in range(int(repeats)):
        t = time.perf_counter()
        detector.detect(images[path])
        times.append(1000 * (time.perf_counter() - t))
    print(json.dumps(times), flush=True)
'''


def get_args_parser():
    parser = argparse.ArgumentParser(description='end-to-end detect() of two checkouts, side by side')
    parser.add_argument('old', help='the checkout to compare against (a folder)')
    parser.add_argument('new', help='the checkout under test (a folder)')
    parser.add_argument('--backend', default='torch', choices=['torch', 'onnxruntime'])
    parser.add_argument('--rounds', type=int, default=10, help='turns each checkout takes per photo')
    parser.add_argument('--repeats', type=int, default=5, help='detect() calls per turn')
    parser.add_argument('--threads', type=int, default=os.cpu_count(), help='CPU threads of each checkout')
    parser.add_argument('--weights', default=None, help='default: bench.common.default_weights()')
    return parser


def main(args):
    weights = os.path.abspath(args.weights or default_weights())
    children = {}
    for name in ('old', 'new'):
        children[name] = subprocess.Popen(
            [sys.executable, '-c', CHILD, args.backend, weights, str(args.threads)],
            cwd=getattr(args, name), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    times = {(name, photo): [] for name in children for photo in IMAGES}
    try:
        for r in range(args.rounds):
            for photo in IMAGES:
                path = str(shared_path('images', f'{photo}.jpg'))
                # Each checkout goes first in every other round, so that neither always
                # follows the other (whose idle threads may still be spinning).
                for name, child in sorted(children.items(), reverse=r % 2 == 1):
                    child.stdin.write(f"{path} {args.repeats}\n")
                    child.stdin.flush()
                    times[name, photo] += json.loads(child.stdout.readline())
    finally:
        for child in children.values():
            child.stdin.close()
            child.wait()
    print(f"{args.backend}, {args.threads} threads, {args.rounds} x {args.repeats} runs per photo and checkout")
    print(f"{'photo':16s} {'old ms':>8s} {'new ms':>8s} {'new / old':>10s}")
    for photo, old, new, ratio in medians(times):
        print(f"{photo:16s} {old:8.1f} {new:8.1f} {ratio:10.3f}")
    return 0


def medians(times):
    """[(photo, old median ms, new median ms, new / old)] in IMAGES order, from
    times {(checkout, photo): [ms, ...]}."""
    rows = []
    for photo in IMAGES:
        old, new = (statistics.median(times[name, photo]) for name in ('old', 'new'))
        rows.append((photo, old, new, new / old))
    return rows


if __name__ == '__main__':
    raise SystemExit(main(get_args_parser().parse_args()))
