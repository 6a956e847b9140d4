"""Stress the end of torchrun runs: how many of --runs short runs exit cleanly.

    .venv/bin/python -m bench.bench_torchrun_shutdown                       # test_widerface.py, 20 runs
    .venv/bin/python -m bench.bench_torchrun_shutdown --scripts test_widerface.py detect.py --load 1

Each run is `torchrun --nproc_per_node=2` (1 thread per process, gloo) of a script over
--images minitrain photos into a fresh folder, start to finish, so most of its time is
start-up and the end of the run: the part that once aborted one run in a few, after the
results were written, with "terminate called without an active exception" (SIGABRT, a
gloo thread freeing the last collective's tensors while the interpreter was shutting
down), so that torchrun reported a failed run. A run counts as clean when torchrun exits
with status 0 and nothing in its output says a rank aborted.

--load starts that many busy-looping processes beside the runs for the length of the
benchmark (bounded: they are stopped at the end, or by --max_seconds): a slower, shared
machine is where the race showed up.

The exit status is 1 when any run was not clean, so that the benchmark also serves as a
stress check.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_folder import _free_port, photo_names
from bench.common import ROOT, default_weights

ABORT_SIGNS = ('terminate called', 'SIGABRT', 'exitcode  : -6')


def get_args_parser():
    parser = argparse.ArgumentParser(description='Count clean exits of short torchrun runs')
    parser.add_argument('-m', '--trained_model', default=None, type=str,
                        help='mobile0.25 weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA)')
    parser.add_argument('--scripts', nargs='+', default=['test_widerface.py'],
                        choices=['test_widerface.py', 'detect.py', 'test_fddb.py'])
    parser.add_argument('--runs', default=20, type=int, help='torchrun runs of each script')
    parser.add_argument('--images', default=2, type=int, help='minitrain photos per run (one per rank with 2)')
    parser.add_argument('--load', default=0, type=int, help='busy-looping processes to run beside the runs')
    parser.add_argument('--max_seconds', default=3600, type=int,
                        help='stop the busy loops after this long even if the benchmark has not ended')
    parser.add_argument('--timeout', default=300, type=int, help='seconds before a run counts as hung')
    return parser


def script_args(script, weights, folder, names, out):
    """The flags of one run of script over the photos names (below folder), writing below out."""
    common = ['-m', weights, '--network', 'mobile0.25', '--cpu']
    if script == 'test_widerface.py':
        (out / 'list.txt').write_text("\n".join(names) + "\n")
        return common + ['--dataset_folder', str(folder), '--image_list', str(out / 'list.txt'),
                         '--save_folder', str(out / 'results')]
    if script == 'test_fddb.py':
        (out / 'list.txt').write_text("\n".join(n[:-len('.jpg')] for n in names) + "\n")
        return common + ['--images_folder', str(folder), '--image_list', str(out / 'list.txt'),
                         '--save_folder', str(out / 'results')]
    # detect.py reads a folder: one with links to the photos.
    images = out / 'images'
    images.mkdir()
    for name in names:
        os.symlink(folder / name, images / name.replace('/', '_'))
    return common + ['--image', str(images), '--output', str(out / 'annotated'), '--json', str(out / 'faces.json')]


def one_run(script, args, timeout):
    """(outcome, seconds, output): outcome is 'clean', 'abort', 'failed' or 'hung'."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', os.path.join(ROOT, script)] + args
    env = dict(os.environ, OMP_NUM_THREADS='1')
    tic = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return 'hung', time.perf_counter() - tic, str(e.stderr or '')
    seconds = time.perf_counter() - tic
    output = proc.stdout + proc.stderr
    if any(sign in output for sign in ABORT_SIGNS):
        return 'abort', seconds, output
    return ('clean' if proc.returncode == 0 else 'failed'), seconds, output


def start_load(n, max_seconds):
    """n busy-looping processes that stop by themselves after max_seconds."""
    loop = f"import time\nend = time.monotonic() + {max_seconds}\nwhile time.monotonic() < end: pass\n"
    return [subprocess.Popen([sys.executable, '-c', loop]) for _ in range(n)]


def main(opts):
    weights = opts.trained_model or default_weights()
    folder, names = photo_names(opts.images)
    folder = Path(folder)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; torchrun 2 processes x 1 thread, "
          f"{len(names)} photos a run, {opts.runs} runs a script, {opts.load} busy loops beside")
    load = start_load(opts.load, opts.max_seconds)
    unclean = 0
    try:
        with tempfile.TemporaryDirectory(prefix='bench_torchrun_shutdown_') as tmp:
            for script in opts.scripts:
                counts = {'clean': 0, 'abort': 0, 'failed': 0, 'hung': 0}
                seconds, first_bad = [], None
                for k in range(opts.runs):
                    out = Path(tmp) / f'{Path(script).stem}_{k}'
                    out.mkdir()
                    outcome, took, output = one_run(script, script_args(script, weights, folder, names, out),
                                                    opts.timeout)
                    counts[outcome] += 1
                    seconds.append(took)
                    if outcome != 'clean' and first_bad is None:
                        first_bad = (k + 1, outcome, output)
                unclean += opts.runs - counts['clean']
                print(f"{script:<18} {counts['clean']} clean of {opts.runs} (aborted {counts['abort']}, "
                      f"other failures {counts['failed']}, hung {counts['hung']}), "
                      f"median {statistics.median(seconds):.1f} s a run")
                if first_bad is not None:
                    k, outcome, output = first_bad
                    print(f"  first one not clean: run {k} ({outcome}), its output ends:\n{output[-1500:]}")
    finally:
        for p in load:
            p.kill()
            p.wait()
    return 1 if unclean else 0


if __name__ == '__main__':
    raise SystemExit(main(get_args_parser().parse_args()))
