"""The inference scripts under misuse: out-of-range flags, outputs over inputs, unwritable
outputs found only after the work, Ctrl-C, folders of sub-folders, and --threads."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import convert_to_onnx
import detect
import test_fddb as fddb_script
import test_widerface as wider_script
from tests.conftest import golden_image_path, need_shared
from utils.atomic import check_writable
from models.detector import detector_from_args
from utils.cli import number_in, probability, run_cli

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ['val416_0_Parade_Parade_0_102', 'val416_0_Parade_Parade_0_125', 'val416_0_Parade_Parade_0_137']


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


def _run_detect(weights, *argv):
    return run_cli(detect.main, detect.get_args_parser(), ['-m', weights, *map(str, argv)])


def _not_a_folder(tmp_path):
    """A path whose parent is a regular file: unwritable even for root."""
    (tmp_path / 'file.txt').write_text('a file, not a folder')
    return tmp_path / 'file.txt' / 'sub'


# -- item 4: numeric flags --------------------------------------------------------------------------

PARSERS = {'detect.py': detect.get_args_parser, 'test_widerface.py': wider_script.get_args_parser,
           'test_fddb.py': fddb_script.get_args_parser, 'convert_to_onnx.py': convert_to_onnx.get_args_parser}
BAD_VALUES = [(script, flag, value)
              for script in ('detect.py', 'test_widerface.py', 'test_fddb.py')
              for flag, values in (('--confidence_threshold', ('-0.5', '1.5', 'nan')),
                                   ('--nms_threshold', ('-0.1', 'inf')),
                                   ('--vis_thres', ('1.5', 'nan')),
                                   ('--threads', ('0', '-2', '1.5')))
              for value in values] + [
    ('convert_to_onnx.py', '--long_side', '0'), ('convert_to_onnx.py', '--long_side', '-640'),
    ('convert_to_onnx.py', '--opset', '0'), ('convert_to_onnx.py', '--tolerance', '-1e-4'),
    ('convert_to_onnx.py', '--tolerance', 'nan'), ('convert_to_onnx.py', '--threads', '0')]


@pytest.mark.parametrize('script,flag,value', BAD_VALUES)
def test_out_of_range_flag_is_a_usage_error_naming_flag_and_value(script, flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        PARSERS[script]().parse_args([f"{flag}={value}"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {flag}:" in last and repr(value) in last


def test_range_limits_themselves_are_accepted():
    args = detect.get_args_parser().parse_args(['--confidence_threshold', '0', '--nms_threshold', '1',
                                                '--vis_thres', '1', '--threads', '1'])
    assert (args.confidence_threshold, args.nms_threshold, args.vis_thres, args.threads) == (0.0, 1.0, 1.0, 1)
    args = convert_to_onnx.get_args_parser().parse_args(['--tolerance', '0', '--long_side', '1'])
    assert (args.tolerance, args.long_side) == (0.0, 1)


def test_number_in_bounds():
    import argparse
    assert probability('0.25') == 0.25
    size = number_in(int, 0, exclusive_minimum=True)
    assert size('3') == 3
    for bad in ('0', '2.5', 'x'):
        with pytest.raises(argparse.ArgumentTypeError):
            size(bad)
    upto = number_in(float, maximum=2)
    assert upto('-1e9') == -1e9
    with pytest.raises(argparse.ArgumentTypeError, match=r"<= 2, got '2\.5'"):
        upto('2.5')


def test_detector_rejects_a_confidence_threshold_outside_0_1():
    from data import cfg_mnet
    from models.retinaface import RetinaFace
    from models.detector import Detector
    net = RetinaFace(cfg_mnet, phase='test')
    for bad in (-0.5, 1.5, float('nan')):
        with pytest.raises(ValueError, match='confidence_threshold must be in'):
            Detector(net, cfg_mnet, confidence_threshold=bad)


# -- item 6: outputs never over inputs, unique output names ---------------------------------------

def test_detect_output_into_the_input_folder_is_refused_and_the_photo_kept(weights, tmp_path, capsys):
    photo = tmp_path / 'in' / 'photo.jpg'
    photo.parent.mkdir()
    shutil.copyfile(golden_image_path(PHOTOS[0]), photo)  # a copy: a link would be written through
    before = photo.read_bytes()
    assert _run_detect(weights, '--image', photo.parent, '--output', photo.parent) == 1
    err = capsys.readouterr().err
    assert f"would overwrite the input image {photo}" in err and 'choose another --output' in err
    assert photo.read_bytes() == before


def test_detect_same_name_in_two_folders_gives_two_outputs(weights, tmp_path):
    for event, name in (('a', PHOTOS[0]), ('b', PHOTOS[1])):
        (tmp_path / 'in' / event).mkdir(parents=True)
        os.symlink(golden_image_path(name), tmp_path / 'in' / event / 'x.jpg')
    out = tmp_path / 'out'
    assert _run_detect(weights, '--image', tmp_path / 'in' / '*' / 'x.jpg', '--output', out) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*.jpg')) == ['a/x.jpg', 'b/x.jpg']
    assert (out / 'a' / 'x.jpg').read_bytes() != (out / 'b' / 'x.jpg').read_bytes()


# -- item 7: unwritable outputs found before the first image -----------------------------------------

@pytest.mark.parametrize('where', ['under_a_file', 'proc'])
def test_detect_unwritable_json_fails_before_the_first_image(weights, tmp_path, capsys, where):
    target = _not_a_folder(tmp_path) / 'dets.json' if where == 'under_a_file' else Path('/proc/dets.json')
    status = _run_detect(weights, '--image', golden_image_path(PHOTOS[0]), '--no-save_image', '--json', target)
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ''  # no image was processed
    assert err.strip().splitlines()[-1].startswith(f"error: cannot write --json {target}")


def test_detect_unwritable_output_folder_fails_before_the_first_image(weights, tmp_path, capsys):
    target = _not_a_folder(tmp_path)
    assert _run_detect(weights, '--image', golden_image_path(PHOTOS[0]), '--output', target) == 1
    out, err = capsys.readouterr()
    assert out == '' and f"error: cannot write --output {target}: {tmp_path / 'file.txt'} is a file" in err


def test_fddb_unwritable_save_folder_fails_before_the_first_image(weights, tmp_path, capsys, monkeypatch):
    (tmp_path / 'list.txt').write_text('test\n')
    target = _not_a_folder(tmp_path)
    monkeypatch.setattr(fddb_script, 'detector_from_args',
                        lambda args: pytest.fail('the detector was built before the output was checked'))
    argv = ['-m', weights, '--network', 'mobile0.25', '--image_list', str(tmp_path / 'list.txt'),
            '--images_folder', str(need_shared('images')), '--save_folder', str(target)]
    assert run_cli(fddb_script.main, fddb_script.get_args_parser(), argv) == 1
    assert f"error: cannot write --save_folder {target / 'FDDB_dets.txt'}" in capsys.readouterr().err


def test_widerface_unwritable_save_folder_fails_before_the_first_image(weights, tmp_path, capsys, monkeypatch):
    images = tmp_path / 'val' / 'images'
    images.mkdir(parents=True)
    (tmp_path / 'val' / 'wider_val.txt').write_text('ev/a.jpg\n')
    target = _not_a_folder(tmp_path)
    monkeypatch.setattr(wider_script, 'detector_from_args',
                        lambda args: pytest.fail('the detector was built before the output was checked'))
    argv = ['-m', weights, '--network', 'mobile0.25', '--dataset_folder', str(images), '--save_folder', str(target)]
    assert run_cli(wider_script.main, wider_script.get_args_parser(), argv) == 1
    assert f"error: cannot write --save_folder {target}" in capsys.readouterr().err


def test_check_writable_creates_nothing_and_refuses_a_folder_for_a_file(tmp_path):
    check_writable(tmp_path / 'new' / 'deeper' / 'out.json', '--json')
    check_writable(tmp_path / 'new_folder', '--output', folder=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match='is a folder, not a file'):
        check_writable(tmp_path, '--json')
    (tmp_path / 'f').write_text('')
    with pytest.raises(ValueError, match='is a file, not a folder'):
        check_writable(tmp_path / 'f', '--output', folder=True)


# -- item 8: Ctrl-C (and SIGTERM, K7) writes the detections done so far ------------------------------

@pytest.mark.parametrize('signum, status, message', [(signal.SIGINT, 130, 'interrupted'),
                                                     (signal.SIGTERM, 143, 'terminated (SIGTERM)')])
def test_detect_ctrl_c_or_sigterm_writes_partial_json(weights, tmp_path, signum, status, message):
    photo = golden_image_path(PHOTOS[0])
    images = tmp_path / 'in'
    images.mkdir()
    for k in range(60):
        os.symlink(photo, images / f'{k:02d}.jpg')
    cmd = [sys.executable, str(ROOT / 'detect.py'), '-m', weights, '--image', str(images),
           '--output', str(tmp_path / 'out'), '--json', str(tmp_path / 'dets.json')]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    # A shell ignores SIGINT in the commands it starts in the background (`pytest ... &`), and
    # children inherit that: give detect.py the default disposition, as a terminal would.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        done = 0
        for line in proc.stdout:
            done += ' faces >= ' in line
            if done >= 2 or time.time() > deadline:
                break
        proc.send_signal(signum)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err[-3000:]
    assert err.rstrip().endswith(message) and 'Traceback' not in err
    payload = json.loads((tmp_path / 'dets.json').read_text())
    assert payload['partial'] is True and payload['images_total'] == 60
    assert 2 <= len(payload['images']) == payload['images_done'] < 60
    assert all(len(entry['detections']) > 0 for entry in payload['images'])
    assert 'partial' in err


def test_detect_complete_json_is_marked_not_partial(weights, tmp_path):
    assert _run_detect(weights, '--image', golden_image_path(PHOTOS[0]), '--no-save_image',
                       '--json', tmp_path / 'dets.json') == 0
    payload = json.loads((tmp_path / 'dets.json').read_text())
    assert (payload['partial'], payload['images_total'], payload['images_done']) == (False, 1, 1)


# -- friendlier edges: folders of sub-folders, --threads ---------------------------------------------

def test_detect_folder_of_sub_folders_recurses_and_keeps_sub_paths(weights, tmp_path):
    for event, name in (('a', PHOTOS[0]), ('b/c', PHOTOS[1])):
        (tmp_path / 'in' / event).mkdir(parents=True)
        os.symlink(golden_image_path(name), tmp_path / 'in' / event / 'x.jpg')
    out = tmp_path / 'in' / 'results'  # inside the input folder: not taken for inputs on a rerun
    for _ in range(2):
        result = detect.main(detect.get_args_parser().parse_args(
            ['-m', weights, '--image', str(tmp_path / 'in'), '--output', str(out)]))
        assert [os.path.relpath(r['image'], tmp_path / 'in') for r in result['results']] == ['a/x.jpg', 'b/c/x.jpg']
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*.jpg')) == ['a/x.jpg', 'b/c/x.jpg']


@pytest.fixture
def restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_flag_reaches_torch_and_onnxruntime(weights, restore_torch_threads):
    pytest.importorskip('onnxruntime')
    args = detect.get_args_parser().parse_args(['-m', weights, '--threads', '1', '--backend', 'onnxruntime',
                                                '--cpu'])
    detector = detector_from_args(args)
    assert torch.get_num_threads() == 1
    options = detector.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry('session.intra_op.allow_spinning') == '0'


def test_thread_benchmark_child_times_a_setting(weights, restore_torch_threads, capsys):
    from bench import bench_threads
    args = bench_threads.get_args_parser().parse_args(
        ['-m', weights, '--image', str(golden_image_path(PHOTOS[0])), '--child', 'torch 1', '--repeats', '2'])
    assert bench_threads.child(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['threads'] == 1 and torch.get_num_threads() == 1 and 1 <= len(result['ms']) <= 2


def test_thread_benchmark_prints_each_load_and_the_cost_against_the_fastest(monkeypatch, capsys):
    from bench import bench_threads
    # Children in the order main runs them: every setting as is, then next to 1, then 2 busy processes.
    replies = iter([{'threads': 2, 'ms': [40.0]}, {'threads': 1, 'ms': [50.0]},
                    {'threads': 2, 'ms': [400.0]}, {'threads': 1, 'ms': [90.0, 100.0, 110.0]},
                    {'threads': 2, 'ms': [300.0]}, {'threads': 1, 'ms': [150.0]}])
    calls = []
    monkeypatch.setattr(bench_threads, 'run_child', lambda args, name: calls.append(name) or next(replies))
    args = bench_threads.get_args_parser().parse_args(['--image', 'x.jpg', '--settings', 'torch spin', 'torch 1',
                                                       '--busy', '1', '2'])
    assert bench_threads.main(args) == 0
    out = capsys.readouterr().out
    assert calls == ['torch spin', 'torch 1'] * 3
    rows = [line.split() for line in out.splitlines() if line.startswith('torch ') and ' / ' not in line]
    assert rows == [['torch', 'spin', '2', '40.0', '400.0', '300.0'], ['torch', '1', '1', '50.0', '100.0', '150.0']]
    assert ('torch spin / fastest: as is 1.00x (torch spin), +1 busy 4.00x (torch 1), +2 busy 2.00x (torch 1)'
            in out)
    assert 'torch 1 / fastest: as is 1.25x (torch spin), +1 busy 1.00x (torch 1), +2 busy 1.00x (torch 1)' in out
