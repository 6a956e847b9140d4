"""Benchmark --batch_size N = 1, 4 and 8 in folder runs, side by side in one run, on the CPU.

    .venv/bin/python -m bench.bench_batch                     # both backends, 1 thread, 3 rounds
    .venv/bin/python -m bench.bench_batch --threads 2 --rounds 5 --backends onnxruntime

1. Folder runs: test_widerface.py's main() (reading, detection, writing the prediction files;
   start-up excluded: the detector is built once and handed to main) at each batch size, the
   batch sizes alternating within each round, on two photo sets:
   - 'same size': the first --images minitrain photos (all 416x416);
   - 'mixed sizes': the four shared photos (1024x624, 1024x768, 1280x719, 1600x898), each
     --copies times under other names, in an order that mixes the sizes in every batch.
   img/s of the fastest round, its ratio to N = 1, the ratio of the median rounds, and whether
   every prediction file is the same bytes as N = 1's.
2. A batch of the four shared photos through detect_batch: on the CPU each image runs at its own
   size (this pipeline), against padding them to one size as a GPU batch is (pad_mixed_sizes):
   ms per image, and how far the padded detections are from detect()'s.
"""
import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import test_widerface
from bench.common import IMAGES, compare_detections, default_weights, script_seconds, speed_ratio
from bench.bench_folder import photo_names
from utils.cli import set_threads, setup_logging
from utils.datapaths import shared_path
from utils.image import read_image

BATCH_SIZES = (1, 4, 8)


def get_args_parser():
    parser = argparse.ArgumentParser(description='Benchmark --batch_size in folder runs on the CPU')
    parser.add_argument('-m', '--trained_model', default=None, type=str,
                        help='mobile0.25 weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA)')
    parser.add_argument('--images', default=48, type=int, help='minitrain photos of the same-size set')
    parser.add_argument('--copies', default=6, type=int, help='copies of each shared photo in the mixed-size set')
    parser.add_argument('--rounds', default=3, type=int, help='rounds (each runs every batch size once)')
    parser.add_argument('--threads', default=1, type=int, help='CPU threads of the detector (default 1)')
    parser.add_argument('--backends', nargs='+', default=['torch', 'onnxruntime'], choices=['torch', 'onnxruntime'])
    return parser


def mixed_set(tmp, copies):
    """A dataset folder of the four shared photos, copies times each (symlinks), sizes interleaved."""
    folder = tmp / 'mixed'
    names = []
    for k in range(copies):
        for name in IMAGES:
            rel = f'photos/{name}_{k}.jpg'
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(shared_path('images', f'{name}.jpg'), folder / rel)
            names.append(rel)
    return folder, names


def run_args(weights, folder, image_list, save_folder, backend, threads, batch_size):
    return test_widerface.get_args_parser().parse_args([
        '-m', weights, '--network', 'mobile0.25', '--cpu', '--dataset_folder', str(folder),
        '--image_list', str(image_list), '--save_folder', str(save_folder), '--backend', backend,
        '--threads', str(threads), '--batch_size', str(batch_size)])


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob('*.txt')}


def part_folders(opts, weights, tmp):
    print(f"1. folder runs (test_widerface.py main, start-up excluded), {opts.threads} thread(s), "
          f"fastest of {opts.rounds} rounds")
    header = (f"{'backend':<12} {'photos':<12} {'images':>6} {'N':>3} {'img/s':>7} {'vs N=1':>7} {'median vs N=1':>14} "
              f"{'files = N=1':>12}")
    print(header)
    print('-' * len(header))
    sets = [('same size',) + photo_names(opts.images), ('mixed sizes',) + mixed_set(tmp, opts.copies)]
    for backend in opts.backends:
        detector = None
        for label, folder, names in sets:
            image_list = tmp / f'{label.replace(" ", "_")}.txt'
            image_list.write_text("\n".join(names) + "\n")
            times = {n: [] for n in BATCH_SIZES}
            outputs = {}
            for r in range(opts.rounds):
                for n in BATCH_SIZES:
                    out = tmp / f'{backend}_{label.replace(" ", "_")}_{n}_{r}'
                    args = run_args(weights, folder, image_list, out, backend, opts.threads, n)
                    if detector is None:
                        detector = test_widerface.detector_from_args(args)
                    seconds, result = script_seconds(test_widerface, args, detector)
                    assert result['written'] == len(names), result
                    times[n].append(seconds)
                    outputs.setdefault(n, files_of(out))
            for n in BATCH_SIZES:
                best, median = min(times[n]), statistics.median(times[n])
                same = outputs[n] == outputs[1]
                print(f"{backend:<12} {label:<12} {len(names):>6} {n:>3} {len(names) / best:>7.1f} "
                      f"{min(times[1]) / best:>6.2f}x {statistics.median(times[1]) / median:>13.2f}x "
                      f"{'yes' if same else 'NO':>12}")


def part_padding(opts, weights):
    from models.detector import load_detector

    images = {name: read_image(shared_path('images', f'{name}.jpg')) for name in IMAGES}
    batch = [images[n] for n in IMAGES]
    print(f"\n2. detect_batch of the four shared photos on the CPU, each at its own size vs padded to one size "
          f"(as on a GPU), median of {3 * opts.rounds} runs")
    for backend in opts.backends:
        det = load_detector('mobile0.25', weights, backend=backend)
        single = [det.detect(img) for img in batch]
        timings = {'own size': [], 'padded': []}
        found = {}
        for _ in range(3 * opts.rounds):
            for mode in timings:
                det.pad_mixed_sizes = mode == 'padded'
                tic = time.perf_counter()
                found[mode] = det.detect_batch(batch)
                timings[mode].append(1000 * (time.perf_counter() - tic) / len(batch))
        own, padded = statistics.median(timings['own size']), statistics.median(timings['padded'])
        print(f"{backend:<12} own size {own:6.1f} ms/image, padded {padded:6.1f} ms/image: own size "
              f"{speed_ratio(own, padded, 'padded')}")
        exact = all((a == b).all() and a.shape == b.shape for a, b in zip(found['own size'], single))
        print(f"{'':<12} own size: every detection equal to detect()'s bit for bit: {'yes' if exact else 'NO'}")
        for name, ref, other in zip(IMAGES, single, found['padded']):
            c = compare_detections(ref, other, min_score=0.5)
            print(f"{'':<12} padded {name:<15} detections {c['n_ref']} vs {c['n_other']}, faces >= 0.5: "
                  f"{c['strong']}, unmatched {c['unmatched']}, max |box| {c['max_box']:.3f} px, "
                  f"|landmark| {c['max_landmark']:.3f} px, |score| {c['max_score']:.2e}")


def main(opts):
    setup_logging(logging.WARNING)
    set_threads(opts.threads)
    weights = opts.trained_model or default_weights()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; mobile0.25, batch sizes "
          f"{', '.join(map(str, BATCH_SIZES))}")
    with tempfile.TemporaryDirectory(prefix='bench_batch_') as tmp:
        part_folders(opts, weights, Path(tmp))
    part_padding(opts, weights)


if __name__ == '__main__':
    main(get_args_parser().parse_args())
