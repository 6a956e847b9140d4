"""Benchmark the detection pipeline, stage by stage, for each backend, side by side.

    .venv/bin/python -m bench.bench_inference                 # the four ../shared/images photos
    .venv/bin/python -m bench.bench_inference --repeats 30 --backends torch onnxruntime

For every image and backend it prints the median milliseconds of each stage
(preprocess, forward, priors, decode+NMS), of the whole pipeline from a decoded BGR image
to detections (end-to-end), and of the forward pass alone, all measured in one
interleaved loop so that load on the machine affects them alike. 'e2e/fwd' is the ratio
of the medians, 'paired' the median of the ratios of end-to-end and forward-only runs
measured back to back, and '(min)' the ratio of the fastest end-to-end run to the fastest
forward pass, which other processes disturb least. Then it compares the
backends' detections, the throughput of batches of 8 against single images, and the
detections of a padded mixed-size batch against one-by-one detection.

Image decoding (cv2.imread) is not part of end-to-end: it is the same for every backend
and the reference timings in ../shared/README.md leave it out too.
"""
import argparse
import os
import statistics

import torch

from bench.common import IMAGES, _timed, compare_detections, default_weights, speed_ratio
from models.detector import load_detector
from utils.datapaths import shared_path
from utils.device import BACKENDS
from utils.image import read_image
from utils.memory import keep_freed_memory

# The reference pipeline on the same 2-core machine (../shared/README.md), ms:
# preprocess, forward, PriorBox, decode+NMS.
REFERENCE_MS = {'test': (5, 70, 31, 6), 'kids_group': (6, 68, 35, 3), 'largest_selfie': (13, 137, 67, 109)}
BATCH = 8


def get_args_parser():
    parser = argparse.ArgumentParser(description='Benchmark the RetinaFace detection pipeline')
    parser.add_argument('-m', '--trained_model', default=None, type=str,
                        help='weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA/weights/)')
    parser.add_argument('--network', default='mobile0.25', choices=['mobile0.25', 'resnet50'])
    parser.add_argument('--images', nargs='+', default=None,
                        help='image files (default: the four photos in $RETINAFACE_DATA/images)')
    parser.add_argument('--backends', nargs='+', default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--repeats', default=15, type=int, help='timed runs per measurement (median reported)')
    parser.add_argument('--warmup', default=3, type=int, help='untimed runs first')
    parser.add_argument('--batch', default=BATCH, type=int, help='batch size of the throughput test')
    parser.add_argument('--default-malloc', action='store_true',
                        help="leave glibc's malloc as it is (the scripts make it keep freed memory; "
                             "bench/bench_malloc.py compares the two)")
    return parser


def stage_times(det, img, repeats, warmup):
    """Median ms of each stage, end-to-end and forward-only, measured interleaved."""
    dev = det.device
    times = {k: [] for k in ('preprocess', 'forward', 'priors', 'decode+NMS', 'end-to-end', 'forward-only')}
    ratios = []
    for i in range(warmup + repeats):
        (batch, sizes, resizes), t_pre = _timed(lambda: det.preprocess([img]), dev)
        (loc, conf, landms), t_fwd = _timed(lambda: det.forward(batch), dev)
        _, t_pri = _timed(lambda: det.priors(sizes[0]), dev)
        _, t_post = _timed(lambda: det.postprocess(loc[0], conf[0], landms[0], sizes[0], resizes[0]), dev)
        # End-to-end and forward-only back to back, in alternating order, so that each
        # pair sees the same state of the machine and neither always goes first.
        if i % 2:
            _, t_e2e = _timed(lambda: det.detect(img), dev)
            _, t_fo = _timed(lambda: det.forward(batch), dev)
        else:
            _, t_fo = _timed(lambda: det.forward(batch), dev)
            _, t_e2e = _timed(lambda: det.detect(img), dev)
        if i >= warmup:
            for k, v in zip(times, (t_pre, t_fwd, t_pri, t_post, t_e2e, t_fo)):
                times[k].append(v)
            ratios.append(t_e2e / t_fo)
    result = {k: statistics.median(v) for k, v in times.items()}
    # Other processes slow some runs down a lot (eager PyTorch's forward pass varies by
    # 2x here). The median of the pairs' ratios cancels the slow changes of load, and the
    # fastest runs' ratio shows the pipeline's own overhead, both less noisy than the
    # ratio of the medians.
    result['paired ratio'] = statistics.median(ratios)
    result['min ratio'] = min(times['end-to-end']) / min(times['forward-only'])
    return result


def main(args):
    weights = args.trained_model or default_weights()
    paths = args.images or [str(shared_path('images', f'{n}.jpg')) for n in IMAGES]
    images = {os.path.splitext(os.path.basename(p))[0]: read_image(p) for p in paths}
    torch.set_grad_enabled(False)
    # As the scripts do (detect.py, test_widerface.py, test_fddb.py).
    kept = not args.default_malloc and keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.network} ({weights}), malloc keeps freed memory: {'yes' if kept else 'no'}, "
          f"median of {args.repeats} runs, ms")

    detectors = {}
    for b in args.backends:
        try:
            detectors[b] = load_detector(args.network, weights, device=args.device, backend=b)
        except ValueError as e:  # e.g. onnxruntime without its CUDA provider on a GPU
            print(f"skipping the {b} backend: {e}")
    if not detectors:
        raise SystemExit("no backend can run here")

    # -- stages -----------------------------------------------------------------------------
    header = (f"{'image':<16}{'backend':<13}{'preproc':>8}{'forward':>9}{'priors':>8}{'dec+NMS':>9}"
              f"{'end2end':>9}{'fwd-only':>9}{'e2e/fwd':>9}{'paired':>8}{'(min)':>7}")
    print("\n" + header + "\n" + "-" * len(header))
    e2e = {}
    for name, img in images.items():
        for b, det in detectors.items():
            t = stage_times(det, img, args.repeats, args.warmup)
            e2e[name, b] = t['end-to-end']
            print(f"{name:<16}{b:<13}{t['preprocess']:8.2f}{t['forward']:9.2f}{t['priors']:8.3f}"
                  f"{t['decode+NMS']:9.2f}{t['end-to-end']:9.2f}{t['forward-only']:9.2f}"
                  f"{t['end-to-end'] / t['forward-only']:8.2f}x{t['paired ratio']:7.2f}x{t['min ratio']:6.2f}x")
        if name in REFERENCE_MS:
            r = REFERENCE_MS[name]
            print(f"{name:<16}{'reference':<13}{r[0]:8.0f}{r[1]:9.0f}{r[2]:8.0f}{r[3]:9.0f}{sum(r):9.0f}"
                  f"{r[1]:9.0f}{sum(r) / r[1]:8.2f}x")
    if 'torch' in detectors and len(detectors) > 1:
        print()
        for name in images:
            for b in detectors:
                if b != 'torch':
                    ref = (f", {speed_ratio(e2e[name, b], sum(REFERENCE_MS[name]), 'the reference')}"
                           f" ({sum(REFERENCE_MS[name])} ms)" if name in REFERENCE_MS else '')
                    print(f"{name}: {b} end-to-end {e2e[name, b]:.1f} ms, "
                          f"{speed_ratio(e2e[name, b], e2e[name, 'torch'], 'torch')} ({e2e[name, 'torch']:.1f} ms){ref}")

    # -- detections of the fast backends against eager PyTorch ---------------------------------------
    if 'torch' in detectors and len(detectors) > 1:
        print("\nDetections against eager torch (all detections, matched by IoU):")
        for name, img in images.items():
            ref = detectors['torch'].detect(img)
            for b, det in detectors.items():
                if b == 'torch':
                    continue
                c = compare_detections(ref, det.detect(img), min_score=0.0)
                print(f"  {name:<16}{b:<13} count {c['n_ref']} vs {c['n_other']}, unmatched {c['unmatched']}, "
                      f"max |box| {c['max_box']:.2e} px, |landmark| {c['max_landmark']:.2e} px, "
                      f"|score| {c['max_score']:.2e}")

    # -- batches --------------------------------------------------------------------------------
    print(f"\nThroughput, batch of {args.batch} copies of one image vs one image at a time (images/s):")
    largest = max(images, key=lambda n: images[n].shape[0] * images[n].shape[1])
    for name in dict.fromkeys([next(iter(images)), largest]):  # the first and the largest image
        img = images[name]
        for b, det in detectors.items():
            single = stage_median(lambda: det.detect(img), det.device, args)
            batched = stage_median(lambda: det.detect_batch([img] * args.batch), det.device, args)
            print(f"  {name:<16}{b:<13} batch-1 {1000 / single:6.1f}   batch-{args.batch} "
                  f"{1000 * args.batch / batched:6.1f}   ({single:.1f} vs {batched / args.batch:.1f} ms/image)")

    if len(images) > 1:
        print(f"\nPadded mixed-size batch ({', '.join(images)}) vs one image at a time (eager torch if "
              f"present), faces with score >= 0.5:")
        det = detectors.get('torch') or next(iter(detectors.values()))
        names = list(images)
        padding, det.pad_mixed_sizes = det.pad_mixed_sizes, True  # as on a GPU: the CPU runs them unpadded
        batched = det.detect_batch([images[n] for n in names])
        det.pad_mixed_sizes = padding
        for n, other in zip(names, batched):
            c = compare_detections(det.detect(images[n]), other, min_score=0.5)
            print(f"  {n:<16} detections {c['n_ref']} vs {c['n_other']} (all scores); faces >= 0.5: "
                  f"{c['strong']}, unmatched {c['unmatched']}, max |box| {c['max_box']:.3f} px, "
                  f"|landmark| {c['max_landmark']:.3f} px, |score| {c['max_score']:.2e}")
    return 0


def stage_median(fn, device, args):
    for _ in range(max(1, args.warmup // 2)):
        fn()
    return statistics.median(_timed(fn, device)[1] for _ in range(max(3, args.repeats // 3)))


if __name__ == '__main__':
    raise SystemExit(main(get_args_parser().parse_args()))
