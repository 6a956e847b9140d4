"""Helpers that more than one benchmark uses: the default weights, the four shared photos,
device synchronisation for timing, the comparison of two detection arrays, and busy
processes that load the machine.

The scripts under bench/ run as `python -m bench.<name>` from the repository root and are
imported as `bench.<name>` by the tests. This module loads no torch at import: some
benchmarks time start-up, and a CPU-only `_sync` needs none.
"""
import contextlib
import io
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from unittest import mock

import numpy as np

from utils.datapaths import shared_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The four photos of ../shared/images, in the order the benchmarks print them.
IMAGES = ('test', 'kids_group', 'street_crowd', 'largest_selfie')
# A competing process that keeps one core busy (a Python busy loop): what other users' work
# does to a shared machine.
BUSY_LOOP = 'while True: pass'


def default_weights():
    local = os.path.join(ROOT, 'weights', 'mobilenet0.25_Final.pth')
    return local if os.path.isfile(local) else str(shared_path('weights', 'mobilenet0.25_Final.pth'))


def val416_photos(gt):
    """{image key: path} of a ground truth's photos (val416's: widerface_evaluate's
    GroundTruth), in minitrain's images folder, in the ground truth's order."""
    folder = shared_path('minitrain', 'train', 'images')
    return {name: folder / f"{name}.jpg" for name in gt.names}


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list]:
    """n processes that each keep one core busy for the length of the block, then are killed."""
    busy = [subprocess.Popen([sys.executable, '-c', BUSY_LOOP]) for _ in range(n)]
    try:
        yield busy
    finally:
        for p in busy:
            p.kill()
            p.wait()


def script_seconds(script, args, detector):
    """(seconds, result) of script.main(args), a script module that builds its detector with
    detector_from_args, run with detector already built: start-up is not timed. The progress
    bar is drawn as for a user, into a buffer instead of the terminal."""
    with mock.patch.object(script, 'detector_from_args', lambda *_, **__: detector), \
            contextlib.redirect_stderr(io.StringIO()):
        tic = time.perf_counter()
        result = script.main(args)
        seconds = time.perf_counter() - tic
    return seconds, result


def _sync(device):
    """Wait for the device's queued work, so that a timer around it measures the work."""
    import torch
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn, device):
    """fn()'s result and its wall-clock milliseconds, the device synchronised around it."""
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, 1000 * (time.perf_counter() - t)


def _median_ms(fn, device, repeats=20, warmup=3):
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn, device)[1] for _ in range(repeats))


def _iou(a, b):
    """IoU of box a (4,) against boxes b (N, 4), +1 pixel convention as NMS."""
    xx1 = np.maximum(a[0], b[:, 0])
    yy1 = np.maximum(a[1], b[:, 1])
    xx2 = np.minimum(a[2], b[:, 2])
    yy2 = np.minimum(a[3], b[:, 3])
    inter = np.maximum(0, xx2 - xx1 + 1) * np.maximum(0, yy2 - yy1 + 1)
    area = lambda d: (d[..., 2] - d[..., 0] + 1) * (d[..., 3] - d[..., 1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def compare_detections(ref, other, min_score=0.5):
    """How other's detections differ from ref's.

    Returns a dict: counts of each, and for ref's detections with score >= min_score,
    how many have no match in other (IoU < 0.5), and over the matched ones the largest
    box-coordinate, landmark and score differences.
    """
    strong = ref[ref[:, 4] >= min_score]
    box, lmk, score, unmatched = 0.0, 0.0, 0.0, 0
    for d in strong:
        if len(other) == 0:
            unmatched += 1
            continue
        ious = _iou(d, other)
        j = int(np.argmax(ious))
        if ious[j] < 0.5:
            unmatched += 1
            continue
        box = max(box, float(np.abs(d[:4] - other[j, :4]).max()))
        lmk = max(lmk, float(np.abs(d[5:] - other[j, 5:]).max()))
        score = max(score, float(abs(d[4] - other[j, 4])))
    return {'n_ref': len(ref), 'n_other': len(other), 'strong': len(strong), 'unmatched': unmatched,
            'max_box': box, 'max_landmark': lmk, 'max_score': score}


def speed_ratio(ms, other_ms, other):
    """'2.31x faster than <other>' or '1.04x slower than <other>': ms against other_ms, the
    word chosen by which is smaller, so that a ratio below 1 never reads as 'faster'."""
    if ms <= other_ms:
        return f"{other_ms / ms:.2f}x faster than {other}"
    return f"{ms / other_ms:.2f}x slower than {other}"
