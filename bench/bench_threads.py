"""Benchmark CPU thread settings on an idle and on an oversubscribed machine.

    .venv/bin/python -m bench.bench_threads                  # test.jpg, both backends, < 1 min
    .venv/bin/python -m bench.bench_threads --busy 1 2 --repeats 9
    .venv/bin/python -m bench.bench_threads --when_read    # when libgomp reads OMP_WAIT_POLICY

Each setting runs in its own child process (thread counts and OpenMP's wait policy are
fixed when the libraries start): it loads the detector as the scripts do, warms up, and
times end-to-end detection of one photo. Every setting runs once on the machine as it is
('as is': idle only if nothing else runs), then next to each --busy count of competing
processes that each keep one core busy (a Python busy loop), so the table shows what a
shared machine costs each setting, and how far each is from the best one at that load.

Settings:
  torch  auto        the scripts' default: torch's default thread count (one per core), with
                     OMP_WAIT_POLICY=PASSIVE when other processes are busy at the start
                     (utils.cli.choose_openmp_wait_policy), else OpenMP's default
  torch  spin        torch's default thread count, OpenMP's default wait policy (waiting
                     threads spin first): the scripts' default before 'auto'
  torch  passive     the same with OMP_WAIT_POLICY=PASSIVE (waiting threads sleep at once)
  torch  spin 10k    GOMP_SPINCOUNT=10000: a short spin, then sleep
  torch  1           one thread (--threads 1)
  ort    spin        onnxruntime at the same thread count with its default spinning threads
  ort    no-spin     the same with session.intra_op.allow_spinning = 0 (the scripts' default)
  ort    1           one thread

--when_read answers when OMP_WAIT_POLICY must be set: a child sets OMP_WAIT_POLICY=ACTIVE
(waiting threads spin without end) before `import torch`, or after it but before torch's first
parallel operation, or not at all; runs a few parallel operations on 2 threads; then sleeps
half a second and prints the CPU time its idle threads used meanwhile. Spinning threads use
about a core's worth; sleeping ones none.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench.common import ROOT, busy_processes

# name -> (backend, --threads value or None for the default, environment, onnxruntime spinning)
# An environment value of None removes the variable.
SETTINGS = {
    'torch auto': ('torch', None, {'OMP_WAIT_POLICY': None, 'GOMP_SPINCOUNT': None}, True),
    'torch spin': ('torch', None, {'OMP_WAIT_POLICY': None, 'GOMP_SPINCOUNT': None}, True),
    'torch passive': ('torch', None, {'OMP_WAIT_POLICY': 'PASSIVE', 'GOMP_SPINCOUNT': None}, True),
    'torch spin 10k': ('torch', None, {'OMP_WAIT_POLICY': None, 'GOMP_SPINCOUNT': '10000'}, True),
    'torch 1': ('torch', 1, {'OMP_WAIT_POLICY': None, 'GOMP_SPINCOUNT': None}, True),
    'ort spin': ('onnxruntime', None, {}, True),
    'ort no-spin': ('onnxruntime', None, {}, False),
    'ort 1': ('onnxruntime', 1, {}, False),
}
# --when_read: where the child sets OMP_WAIT_POLICY=ACTIVE, and how long it then sleeps.
WHEN_READ_CASES = ('not set', 'before import torch', 'after import torch')
IDLE_SECONDS = 0.5


def get_args_parser():
    parser = argparse.ArgumentParser(description='CPU thread settings, idle and next to busy processes')
    parser.add_argument('-m', '--trained_model', default=None, type=str,
                        help='weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA/weights/)')
    parser.add_argument('--image', default=None, help='the photo (default: $RETINAFACE_DATA/images/test.jpg)')
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS), metavar='SETTING',
                        help=f'which settings to run (default: all of {", ".join(SETTINGS)})')
    parser.add_argument('--repeats', default=5, type=int, help='timed runs per setting and load')
    parser.add_argument('--max_seconds', default=3.0, type=float,
                        help='stop timing a setting after this long (at least one run is always timed)')
    parser.add_argument('--busy', default=[1], type=int, nargs='+',
                        help='competing busy processes in the loaded runs, one run per count (e.g. 1 2)')
    parser.add_argument('--when_read', action='store_true',
                        help='only measure whether OMP_WAIT_POLICY set after `import torch` still counts')
    parser.add_argument('--child', default=None, choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument('--when_read_child', default=None, choices=WHEN_READ_CASES, help=argparse.SUPPRESS)
    return parser


def when_read_child(case):
    """Print the CPU seconds this process's idle threads use in IDLE_SECONDS after parallel work."""
    import resource

    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    if case == 'before import torch':
        os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'
    import torch

    if case == 'after import torch':
        os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'  # OpenMP's threads have not started yet
    torch.set_num_threads(2)
    x = torch.randn(256, 256, 64)
    for _ in range(3):
        (x * 2).sum()
    before = cpu_seconds()
    time.sleep(IDLE_SECONDS)
    print(json.dumps({'idle_cpu_seconds': cpu_seconds() - before}))
    return 0


def when_read(args):
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; OMP_WAIT_POLICY=ACTIVE set ..., then "
          f"CPU seconds used by torch's idle threads (2) in a {IDLE_SECONDS} s sleep after parallel work")
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'OMP_NUM_THREADS')}
    for case in WHEN_READ_CASES:
        proc = subprocess.run([sys.executable, '-m', 'bench.bench_threads', '--when_read_child', case], env=env,
                              cwd=ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"child {case!r} failed:\n{proc.stderr[-2000:]}")
        seconds = json.loads(proc.stdout.strip().splitlines()[-1])['idle_cpu_seconds']
        print(f"  {case:<22} {seconds:6.3f} s")
    return 0


def child(args):
    """Time one setting; print {'threads': n, 'ms': [...]} as JSON."""
    from utils.cli import choose_openmp_wait_policy

    if args.child == 'torch auto':
        choose_openmp_wait_policy()  # as detector_from_args does, before torch starts OpenMP
    import torch

    from bench.common import default_weights
    from utils.cli import set_threads
    from models.detector import load_detector
    from utils.image import read_image
    from utils.memory import keep_freed_memory

    backend, threads, _, spinning = SETTINGS[args.child]
    keep_freed_memory()  # as the scripts do on the CPU
    n = set_threads(threads)
    torch.set_grad_enabled(False)
    det = load_detector('mobile0.25', args.trained_model or default_weights(), backend=backend,
                        allow_spinning=spinning)
    img = read_image(args.image)
    det.detect(img)  # warm-up
    ms, start = [], time.perf_counter()
    while len(ms) < args.repeats and (not ms or time.perf_counter() - start < args.max_seconds):
        t = time.perf_counter()
        det.detect(img)
        ms.append(1000 * (time.perf_counter() - t))
    print(json.dumps({'threads': n, 'ms': ms}))
    return 0


def run_child(args, name):
    env = dict(os.environ)
    for key, value in SETTINGS[name][2].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    cmd = [sys.executable, '-m', 'bench.bench_threads', '--child', name, '--image', args.image,
           '--repeats', str(args.repeats), '--max_seconds', str(args.max_seconds)]
    if args.trained_model:
        cmd += ['-m', args.trained_model]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {name!r} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(args):
    from utils.datapaths import shared_path

    if args.when_read:
        return when_read(args)

    args.image = args.image or str(shared_path('images', 'test.jpg'))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"{os.path.basename(args.image)}, end-to-end ms (median of up to {args.repeats} runs)")
    loads = [0] + [n for n in args.busy if n > 0]
    results = {}
    for n in loads:
        with busy_processes(n):
            for name in args.settings:
                results[name, n] = run_child(args, name)

    median = {k: statistics.median(v['ms']) for k, v in results.items()}
    label = {n: 'as is' if n == 0 else f'+{n} busy' for n in loads}
    print(f"\n{'setting':<16}{'threads':>8}" + ''.join(f"{label[n]:>10}" for n in loads))
    print('-' * (24 + 10 * len(loads)))
    for name in args.settings:
        print(f"{name:<16}{results[name, 0]['threads']:>8}" + ''.join(f"{median[name, n]:>10.1f}" for n in loads))
    print()
    # Each setting against the fastest one at the same load: what choosing it costs there.
    for name in args.settings:
        ratios = []
        for n in loads:
            best = min(args.settings, key=lambda other: median[other, n])
            ratios.append(f"{label[n]} {median[name, n] / median[best, n]:.2f}x ({best})")
        print(f"{name} / fastest: " + ', '.join(ratios))
    return 0


if __name__ == '__main__':
    cli_args = get_args_parser().parse_args()
    if cli_args.when_read_child:
        raise SystemExit(when_read_child(cli_args.when_read_child))
    raise SystemExit(child(cli_args) if cli_args.child else main(cli_args))
