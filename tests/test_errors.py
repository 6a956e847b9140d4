"""Errors that are what they say: only utils.errors.InputError (bad input, named in one line)
becomes an `error:` line or a skipped image; any other exception is a bug and keeps its
traceback."""
import argparse
import shutil
import subprocess
import sys

import pytest

import detect
from layers.functions import detection
from tests.conftest import ROOT, golden_image_path, need_shared
from utils.cli import run_cli
from utils.errors import InputError, InputNotFoundError

PHOTO = 'val416_0_Parade_Parade_0_102'


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


def _parser():
    return argparse.ArgumentParser()


def test_run_cli_turns_an_input_error_into_one_line_and_status_1(capsys):
    def main(args):
        raise InputError('labels.txt:3: expected 4 numbers')

    assert run_cli(main, _parser(), []) == 1
    assert capsys.readouterr().err.strip() == 'error: labels.txt:3: expected 4 numbers'


def test_input_not_found_is_an_input_error_and_a_file_not_found_error():
    e = InputNotFoundError('image not found: a.jpg')
    assert isinstance(e, InputError) and isinstance(e, FileNotFoundError) and isinstance(e, ValueError)


@pytest.mark.parametrize('bug', [ValueError('operands could not be broadcast'), OSError('a bug'),
                                 FileNotFoundError('a file the code itself made'),
                                 BrokenPipeError(32, 'a pipe of its own, with stdout still read')])
def test_run_cli_lets_any_other_error_keep_its_traceback(bug, capsys):
    def main(args):
        raise bug

    with pytest.raises(type(bug)):
        run_cli(main, _parser(), [])
    assert 'error:' not in capsys.readouterr().err


_PRINTER = """
import argparse, sys
from utils.cli import run_cli

def main(args):
    for i in range(1000000):
        print(f"line {i}", flush=True)

sys.exit(run_cli(main, argparse.ArgumentParser(), []))
"""


def test_a_reader_of_stdout_that_goes_away_stops_the_run_quietly():
    """`detect.py ... | head -1`: no BrokenPipeError traceback, the status of a tool stopped by SIGPIPE."""
    proc = subprocess.Popen([sys.executable, '-c', _PRINTER], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert (first, proc.wait(timeout=120), err) == (b'line 0\n', 141, b'')


def test_a_bug_while_preprocessing_is_raised_not_reported_as_an_unreadable_image(weights, tmp_path, monkeypatch,
                                                                                 capsys):
    """A ValueError injected inside numpy during preprocessing once gave "none of the 1
    images could be read"; it must propagate with its traceback."""
    def broken(*args, **kwargs):
        raise ValueError('injected bug inside numpy')

    monkeypatch.setattr(detection.np, 'ascontiguousarray', broken)
    monkeypatch.setattr(detection, 'to_input_kernel', broken)
    with pytest.raises(ValueError, match='injected bug inside numpy'):
        run_cli(detect.main, detect.get_args_parser(),
                ['-m', weights, '--image', str(golden_image_path(PHOTO)), '--output', str(tmp_path / 'out')])
    assert 'could not be read' not in capsys.readouterr().err


def test_an_unreadable_image_is_still_skipped_with_its_reason(weights, tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    shutil.copyfile(golden_image_path(PHOTO), folder / 'good.jpg')
    (folder / 'bad.jpg').write_bytes(b'not a jpeg at all')
    status = run_cli(detect.main, detect.get_args_parser(),
                     ['-m', weights, '--image', str(folder), '--output', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert status == 0
    assert f"skipping {folder / 'bad.jpg'}: {folder / 'bad.jpg'} is not a readable image" in err
    assert (tmp_path / 'out' / 'good.jpg').is_file()


@pytest.mark.parametrize('rank, printed', [('0', True), ('1', False)])
def test_under_torchrun_only_rank_0_reports_an_input_error(rank, printed, monkeypatch, capsys):
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', rank)

    def main(args):
        raise InputError('label.txt not found')

    assert run_cli(main, _parser(), []) == 1
    assert capsys.readouterr().err == ('error: label.txt not found\n' if printed else '')
