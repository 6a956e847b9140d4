"""utils.cli.run_cli and utils.signals: SIGTERM (what `timeout`, `docker stop` and systemd
send) is handled as Ctrl-C is, by the same code paths, and exits with 143; a few lines can
hold a signal back until they are done. (The scripts' own Ctrl-C / SIGTERM runs, in real
processes: tests/test_script_safety.py for a folder run, tests/test_video.py for a video.)"""
import argparse
import os
import signal
import time

import pytest

from utils.cli import run_cli
from utils.signals import EXIT_TERMINATED, Terminated, deferred_interrupts, terminate_as_interrupt


def _wait_for_signal(seconds=10.0):
    """Sleep in short steps (a signal handler runs between them) until one raises."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    raise AssertionError("no signal arrived")


def test_sigterm_runs_the_ctrl_c_path_and_exits_143(capsys):
    kept = []

    def main(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_signal()
        except KeyboardInterrupt as e:  # what a script's Ctrl-C path catches
            kept.append(type(e))
            raise

    def unhandled(signum, frame):  # what the test gets instead of dying if run_cli does not handle it
        raise AssertionError("run_cli left SIGTERM to the previous handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert run_cli(main, argparse.ArgumentParser(), []) == EXIT_TERMINATED == 143
        assert signal.getsignal(signal.SIGTERM) == unhandled  # the handler is put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert kept == [Terminated]
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"


def test_ctrl_c_still_exits_130(capsys):
    def main(args):
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_signal()

    assert run_cli(main, argparse.ArgumentParser(), []) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_an_ignored_sigterm_stays_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with terminate_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # nothing is raised
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize('signum, raised', [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_deferred_interrupts_raise_when_the_block_is_done(signum, raised):
    steps = []
    with terminate_as_interrupt(), pytest.raises(raised):
        with deferred_interrupts():
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # the handler has run by now, and held the signal back
            steps.append('finished')
        steps.append('after the block')
    assert steps == ['finished']


def test_deferred_interrupts_let_the_blocks_own_error_through():
    with terminate_as_interrupt(), pytest.raises(OSError, match='disk full'):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            raise OSError('disk full')
