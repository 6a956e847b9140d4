"""Benchmark a folder run against the forward pass alone, and 1 against 2 processes.

    .venv/bin/python -m bench.bench_folder                    # 40 minitrain photos, both backends and scales
    .venv/bin/python -m bench.bench_folder --images 160 --rounds 5 --threads 2

1. Folder run vs forward pass. For each backend (torch, onnxruntime) and test scale
   (original size; --origin_size False: short side 1600), in one process:
   - folder: test_widerface.py's main() over the photos (reading, detection, writing the
     prediction files), start-up excluded: the detector is built once beforehand and handed
     to main(), so what is timed is the run itself;
   - forward: Detector.forward on the same photos, decoded and preprocessed beforehand.
   Each is run --rounds times, alternating, and the fastest round of each is compared
   (other processes on a shared machine only ever slow a round down); 'ratio' is folder
   images/s over forward images/s, the goal being at least 0.85, 'median ratio' the same
   for the median rounds. 'serial' is the loop the scripts ran before (read, detect, write
   in turn, one thread), for comparison.
2. Start-up, each part once: importing test_widerface.py (torch, OpenCV and the project) in
   a fresh interpreter, and building the detector: loading the weights (torch), plus
   exporting the network to ONNX and making the session (onnxruntime without --onnx_model).
3. 1 vs 2 processes: the wall time of test_widerface.py over --procs_images photos as a
   plain run (1 thread; with --two_threads also 2) and under torchrun --nproc_per_node=2
   (1 thread each), start-up included, each in a fresh output folder.
"""
import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import test_widerface
from bench.common import ROOT, default_weights, script_seconds
from utils.atomic import atomic_write_text
from utils.cli import set_threads, setup_logging
from utils.datapaths import shared_path
from utils.image import read_image

GOAL = 0.85
SCALES = {'origin': 'True', '1600': 'False'}


def get_args_parser():
    parser = argparse.ArgumentParser(description='Benchmark folder runs against the forward pass')
    parser.add_argument('-m', '--trained_model', default=None, type=str,
                        help='mobile0.25 weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA)')
    parser.add_argument('--images', default=40, type=int, help='minitrain photos for the folder-vs-forward part')
    parser.add_argument('--images_1600', default=10, type=int,
                        help='photos for the 1600 test scale (each is a 1600x1600 forward pass)')
    parser.add_argument('--procs_images', default=160, type=int, help='photos for the 1 vs 2 processes part')
    parser.add_argument('--rounds', default=5, type=int, help='timed rounds of each measurement (fastest kept)')
    parser.add_argument('--threads', default=1, type=int,
                        help='CPU threads of the detector in parts 1 and 2 (default 1: torchrun\'s per-process '
                             'default, and steady on a machine shared with other busy processes)')
    parser.add_argument('--backends', nargs='+', default=['torch', 'onnxruntime'], choices=['torch', 'onnxruntime'])
    parser.add_argument('--skip_processes', action='store_true', help='leave out part 3')
    parser.add_argument('--two_threads', action='store_true',
                        help='part 3 also times 1 process with 2 threads (eager PyTorch\'s 2 threads can take '
                             'minutes on a busy machine: see bench_threads.py)')
    return parser


def photo_names(n):
    """The first n minitrain photos (event/name.jpg, sorted) and their folder."""
    folder = shared_path('minitrain', 'train', 'images')
    names = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*.jpg'))
    if not names:
        raise SystemExit(f"error: no photos in {folder} (set RETINAFACE_DATA to the shared folder)")
    return folder, names[:n]


def script_args(weights, folder, image_list, save_folder, backend, origin, threads):
    return test_widerface.get_args_parser().parse_args([
        '-m', weights, '--network', 'mobile0.25', '--cpu', '--dataset_folder', str(folder),
        '--image_list', str(image_list), '--save_folder', str(save_folder), '--backend', backend,
        '--origin_size', origin, '--threads', str(threads)])


def folder_seconds(args, detector):
    """Seconds of test_widerface.main(args) with detector already built (start-up excluded)."""
    seconds, result = script_seconds(test_widerface, args, detector)
    assert result['written'] == len(test_widerface.read_image_list(args.image_list)), result
    return seconds


def serial_seconds(folder, names, save_folder, detector):
    """Seconds of the loop the scripts ran before the reading and writing threads: read,
    detect and write each image in turn."""
    tic = time.perf_counter()
    for name in names:
        dets = detector.detect(read_image(os.path.join(folder, name)))
        stem = os.path.splitext(name)[0]
        atomic_write_text(os.path.join(save_folder, stem + '.txt'), test_widerface.wider_text(os.path.basename(stem), dets))
    return time.perf_counter() - tic


def forward_seconds(detector, batches):
    """Seconds of Detector.forward over the preprocessed batches."""
    tic = time.perf_counter()
    for batch in batches:
        detector.forward(batch)
    return time.perf_counter() - tic


def import_seconds():
    """(import test_widerface, then import torch) in a fresh interpreter, seconds: the project
    loads torch only for the paths that need it."""
    code = ("import time; t = time.perf_counter(); import test_widerface; a = time.perf_counter(); "
            "import torch; print(a - t, time.perf_counter() - a)")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    first, second = out.stdout.split()[-2:]
    return float(first), float(second)


def part_folder_vs_forward(opts, weights, tmp):
    print(f"1. folder run vs forward pass: {opts.threads} thread(s), fastest of {opts.rounds} rounds, "
          f"start-up excluded")
    header = (f"{'backend':<12} {'scale':<7} {'images':>6} {'serial img/s':>13} {'folder img/s':>13} "
              f"{'forward img/s':>14} {'ratio':>6} {'median ratio':>13}")
    print(header)
    print('-' * len(header))
    startup = {}
    for backend in opts.backends:
        for scale, origin in SCALES.items():
            folder, names = photo_names(opts.images if origin == 'True' else opts.images_1600)
            image_list = tmp / f'list_{len(names)}.txt'
            image_list.write_text("\n".join(names) + "\n")
            args = script_args(weights, folder, image_list, tmp / 'unused', backend, origin, opts.threads)
            tic = time.perf_counter()
            detector = test_widerface.detector_from_args(args)
            startup.setdefault(backend, time.perf_counter() - tic)
            batches = [detector.preprocess([read_image(os.path.join(folder, n))])[0] for n in names]
            detector.forward(batches[0])  # the first pass of a size sets up its kernels
            folders, forwards, serials = [], [], []
            for r in range(opts.rounds):
                args.save_folder = str(tmp / f'{backend}_{scale}_{r}')
                folders.append(folder_seconds(args, detector))
                forwards.append(forward_seconds(detector, batches))
                serials.append(serial_seconds(folder, names, tmp / f'serial_{backend}_{scale}_{r}', detector))
            n = len(names)
            ratio = min(forwards) / min(folders)
            median_ratio = statistics.median(forwards) / statistics.median(folders)
            print(f"{backend:<12} {scale:<7} {n:>6} {n / min(serials):>13.1f} {n / min(folders):>13.1f} "
                  f"{n / min(forwards):>14.1f} "
                  f"{ratio:>6.2f} {median_ratio:>13.2f}" + ('' if ratio >= GOAL else f"  (< {GOAL})"))
    return startup


def part_startup(startup):
    print("\n2. start-up (once each)")
    project, torch_import = import_seconds()
    print(f"fresh interpreter: import test_widerface (OpenCV, project) {project:.2f} s, then import torch "
          f"{torch_import:.2f} s")
    if 'torch' in startup:
        print(f"torch detector (in this process: torch's import if not yet loaded, the weights): "
              f"{startup['torch']:.2f} s")
    if 'onnxruntime' in startup:
        print(f"onnxruntime detector: load the weights, export to ONNX in memory, make the session: "
              f"{startup['onnxruntime']:.2f} s")


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def part_processes(opts, weights, tmp):
    folder, names = photo_names(opts.procs_images)
    image_list = tmp / 'procs_list.txt'
    image_list.write_text("\n".join(names) + "\n")
    print(f"\n3. 1 vs 2 processes: test_widerface.py (torch) over {len(names)} photos, wall time with start-up, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    script = [os.path.join(ROOT, 'test_widerface.py'), '-m', weights, '--network', 'mobile0.25', '--cpu',
              '--dataset_folder', str(folder), '--image_list', str(image_list)]
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1']
    runs = [('1 process, 1 thread', [sys.executable], '1'),
            ('torchrun 2 processes x 1 thread', torchrun + [f'--master_port={_free_port()}'], '1')]
    if opts.two_threads:
        runs.append(('1 process, 2 threads', [sys.executable], '2'))
    times = {}
    for k, (label, launcher, threads) in enumerate(runs):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        cmd = launcher + script + ['--save_folder', str(tmp / f'procs_{k}')]
        tic = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{label} failed (status {proc.returncode}):\n{proc.stderr[-3000:]}")
        times[label] = time.perf_counter() - tic
        print(f"{label:<32} {times[label]:6.2f} s  {len(names) / times[label]:6.1f} img/s")
    two = times['torchrun 2 processes x 1 thread']
    print(f"speed-up of 2 processes over 1 process with 1 thread: {times['1 process, 1 thread'] / two:.2f}x"
          + (f", over 1 process with 2 threads: {times['1 process, 2 threads'] / two:.2f}x" if opts.two_threads else ''))


def main(opts):
    setup_logging(logging.WARNING)
    set_threads(opts.threads)
    weights = opts.trained_model or default_weights()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; mobile0.25, minitrain photos (416x416)")
    with tempfile.TemporaryDirectory(prefix='bench_folder_') as tmp:
        tmp = Path(tmp)
        startup = part_folder_vs_forward(opts, weights, tmp)
        part_startup(startup)
        if not opts.skip_processes:
            part_processes(opts, weights, tmp)


if __name__ == '__main__':
    main(get_args_parser().parse_args())
