"""Test helper that tests/test_torchrun_inference.py runs under torchrun: one of the
inference scripts (its get_args_parser() and main(), through utils.cli.run_cli as the
script runs them), watching the moment the process group is destroyed. It writes
REPORT_DIR/rank<RANK>.json:

    destroyed: how many times torch.distributed.destroy_process_group was called
    python_threads: the Python threads alive when it was called, other than the main
        thread, as [name, daemon]
    native_before, native_after: the names of the process's native threads
        (/proc/self/task/*/comm: gloo's are gloo_tcp_loop and pt_gloo_runloop) just
        before and just after the call
    status: the exit status run_cli gave, or that of a SystemExit

    python -m torch.distributed.run --nproc_per_node=2 tests/torchrun_shutdown_probe.py REPORT_DIR SCRIPT [flags]
"""
import importlib
import json
import os
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def native_thread_names():
    """The name of each thread of this process (Linux: /proc/self/task/<tid>/comm), sorted."""
    names = []
    for tid in os.listdir('/proc/self/task'):
        try:
            names.append(Path('/proc/self/task', tid, 'comm').read_text().strip())
        except OSError:  # the thread ended while we looked
            continue
    return sorted(names)


def main(report_dir, script, argv):
    import torch.distributed as dist

    from utils.cli import run_cli

    report = {'destroyed': 0, 'python_threads': None, 'native_before': None, 'native_after': None, 'status': None}
    destroy_process_group = dist.destroy_process_group

    def watched_destroy(*args, **kwargs):
        report['destroyed'] += 1
        report['python_threads'] = [[t.name, t.daemon] for t in threading.enumerate()
                                    if t is not threading.main_thread()]
        report['native_before'] = native_thread_names()
        destroy_process_group(*args, **kwargs)
        report['native_after'] = native_thread_names()

    dist.destroy_process_group = watched_destroy
    module = importlib.import_module(Path(script).stem)
    try:
        report['status'] = run_cli(module.main, module.get_args_parser(), argv)
    except SystemExit as e:
        report['status'] = e.code
        raise
    finally:
        os.makedirs(report_dir, exist_ok=True)
        with open(os.path.join(report_dir, f"rank{os.environ.get('RANK', '0')}.json"), 'w') as f:
            json.dump(report, f)
    return report['status']


if __name__ == '__main__':
    sys.path.insert(0, str(ROOT))  # the scripts and their packages, as when a script runs
    raise SystemExit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
