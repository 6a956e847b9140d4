"""models/detector.py: the inference size as a setting (target_size / max_size) and its flags,
batches on the CPU, images that do not fit in memory, and load_detector on a busy machine."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import detect
import test_fddb as fddb_script
import test_widerface as wider_script
from data import cfg_mnet
from models.detector import Detector, detector_from_args, load_detector
from tests.conftest import ROOT, golden_image_path, need_shared
from utils.errors import InputError, InputTooLargeError
from utils.image import read_image

SMALL = 'val416_0_Parade_Parade_0_102'
SCRIPTS = [detect, wider_script, fddb_script]


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


@pytest.fixture(scope='module')
def detector(weights):
    return load_detector('mobile0.25', weights)


@pytest.fixture(scope='module')
def images():
    return {name: read_image(golden_image_path(name)) for name in ('test', 'kids_group', SMALL)}


# -- target_size and max_size ---------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, text', [
    ({}, 'original size'),
    ({'origin_size': False}, 'short side 1600, long side at most 2150'),
    ({'target_size': 1600, 'max_size': 2150}, 'short side 1600, long side at most 2150'),
    ({'max_size': 640}, 'long side 640'),
    ({'target_size': 480}, 'short side 480'),
    ({'origin_size': False, 'max_size': 640}, 'long side 640'),  # a size turns the original size off anyway
])
def test_the_results_folder_record_names_the_size(detector, kwargs, text):
    """Detector.settings() is what a results folder records: the reference's test scale keeps
    the text it always had, so that its folders resume, and every other size has its own."""
    assert Detector(detector.net, cfg_mnet, **kwargs).settings()['test_scale'] == text


def test_the_record_names_the_batch_size_only_where_it_changes_detections(detector, monkeypatch):
    det = Detector(detector.net, cfg_mnet)
    assert det.settings(8) == det.settings(1) == det.settings()  # the CPU: every batch is exactly detect()
    monkeypatch.setattr(det, 'device', type('Device', (), {'type': 'cuda'})())
    assert det.settings(8) == {**det.settings(1), 'batch_size': 8}


def test_the_network_sees_the_size_of_the_rule(detector, images):
    det = Detector(detector.net, cfg_mnet, max_size=320)
    _, sizes, resizes = det.preprocess([images['test']])  # 1024x624 -> 320x195
    assert sizes == [(195, 320)] and resizes == [320 / 1024]
    assert det.input_size(624, 1024) == (195, 320) and det.resize_factor(624, 1024) == 320 / 1024
    _, sizes, _ = Detector(detector.net, cfg_mnet, target_size=300, max_size=2000).preprocess([images['test']])
    assert sizes == [(300, 492)]  # 1024 * 300 / 624 = 492.3


def test_detections_at_a_smaller_size_are_in_the_photo_s_pixels(detector, images):
    """At max_size 640 the large faces of test.jpg are where the original size finds them."""
    full = detector.detect(images['test'])
    small = Detector(detector.net, cfg_mnet, max_size=640).detect(images['test'])
    big = full[(full[:, 4] >= 0.9) & (full[:, 2] - full[:, 0] >= 40)]
    assert len(big) >= 5
    for d in big:
        j = np.argmin(np.abs(small[:, :4] - d[:4]).max(axis=1))
        assert np.abs(small[j, :4] - d[:4]).max() <= 0.15 * (d[2] - d[0])
        assert np.abs(small[j, 5:] - d[5:]).max() <= 0.25 * (d[2] - d[0])  # landmarks: coarser at 640


def test_max_size_equal_to_the_long_side_is_the_original_size_to_the_bit(detector, images):
    np.testing.assert_array_equal(Detector(detector.net, cfg_mnet, max_size=416).detect(images[SMALL]),
                                  detector.detect(images[SMALL]))


@pytest.mark.parametrize('kwargs, message', [
    ({'origin_size': True, 'max_size': 640}, 'origin_size True cannot be combined with max_size 640'),
    ({'origin_size': True, 'target_size': 480, 'max_size': 640},
     'origin_size True cannot be combined with target_size 480 and max_size 640'),
    ({'pyramid': True, 'max_size': 640}, 'the pyramid chooses its own scales: it cannot run with max_size 640'),
    ({'pyramid': True, 'target_size': 640}, 'the pyramid chooses its own scales: it cannot run with target_size 640'),
    ({'max_size': 0}, 'max_size must be a positive whole number of pixels, got 0'),
    ({'target_size': 2.5}, 'target_size must be a positive whole number of pixels, got 2.5'),
    ({'max_size': '640'}, "max_size must be a positive whole number of pixels, got '640'"),
])
def test_refused_sizes_in_the_api(detector, kwargs, message):
    with pytest.raises(InputError, match=message):
        Detector(detector.net, cfg_mnet, **kwargs)


def test_tiles_at_a_size_resize_first(detector, images):
    """--tile with a size: the photo is resized by the rule, then tiled where it is still larger
    than a tile; one that fits in a tile gets exactly the untiled detections at that size."""
    untiled = Detector(detector.net, cfg_mnet, max_size=640).detect(images['test'])
    tiled = Detector(detector.net, cfg_mnet, max_size=640, tile=640).detect(images['test'])
    np.testing.assert_array_equal(tiled, untiled)


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda s: s.__name__)
@pytest.mark.parametrize('argv, message', [
    (['--origin_size', 'true', '--max_size', '640'], '--origin_size true cannot be combined with --max_size'),
    (['--max_size', '640', '--origin_size', 'True'], '--origin_size true cannot be combined with --max_size'),
    (['--target_size', '480', '--origin_size', 'yes'], '--origin_size true cannot be combined with --target_size'),
    (['--pyramid', '--target_size', '480'], '--pyramid cannot be combined with --target_size'),
    (['--max_size', '640', '--pyramid'], '--pyramid cannot be combined with --max_size'),
    (['--max_size', '0'], "argument --max_size: expected an integer > 0, got '0'"),
    (['--batch_size', '0'], "argument --batch_size: expected an integer in [1, 64], got '0'"),
])
def test_size_flags_usage_errors(script, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        script.get_args_parser().parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('argv, text', [
    (['--max_size', '640'], 'long side 640'),
    (['--origin_size', 'false', '--max_size', '640'], 'long side 640'),
    (['--target_size', '480', '--max_size', '640'], 'short side 480, long side at most 640'),
    (['--origin_size', 'false'], 'short side 1600, long side at most 2150'),
    ([], 'original size'),
])
def test_size_flags_reach_the_detector(weights, argv, text):
    args = wider_script.get_args_parser().parse_args(['-m', weights, '--network', 'mobile0.25', '--cpu', *argv])
    assert detector_from_args(args).settings()['test_scale'] == text


def test_tile_help_and_size_help_say_how_they_combine():
    text = detect.get_args_parser().format_help()
    assert 'only it decides' in ' '.join(text.split())
    assert 'With --tile the photo is resized first' in ' '.join(text.split())


# -- batches on the CPU ---------------------------------------------------------------------------

def test_a_cpu_batch_of_mixed_sizes_is_exactly_detect_on_each(detector, images):
    """The CPU runs a batch image by image, each at its own size (no padding): every batch
    gives the single-image detections, bit for bit."""
    names = ['test', 'kids_group', SMALL, 'test']
    batch, sizes, _ = detector.preprocess([images[n] for n in names])
    assert isinstance(batch, list) and [x.shape[2:] for x in batch] == sizes
    for name, dets in zip(names, detector.detect_batch([images[n] for n in names])):
        np.testing.assert_array_equal(dets, detector.detect(images[name]))


# -- an image that does not fit in memory ---------------------------------------------------------

def _fail_forward(monkeypatch, detector, error):
    def forward(batch):
        raise error
    monkeypatch.setattr(detector, 'forward', forward)


def test_an_allocation_failure_is_an_input_too_large_error(weights, images, monkeypatch):
    det = load_detector('mobile0.25', weights)
    _fail_forward(monkeypatch, det, RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 576000000 bytes. Error code 12 (Cannot allocate memory)"))
    with pytest.raises(InputTooLargeError) as e:
        det.detect(images[SMALL])
    assert isinstance(e.value, MemoryError) and isinstance(e.value, InputError)
    assert str(e.value) == (
        "out of memory: the 416x416 image at its original size (0.2 megapixels) does not fit (RuntimeError: can't "
        "allocate memory: you tried to allocate 576000000 bytes. Error code 12 (Cannot allocate memory)); "
        "max_size=2048 detects at a smaller size; tile=2048 detects in tiles in bounded memory")
    assert e.value.__cause__ is None and e.value.__context__ is None  # the failed frames are not kept


def test_the_message_names_the_resized_size_and_the_script_s_flags(weights, images, monkeypatch):
    args = detect.get_args_parser().parse_args(['-m', weights, '--cpu', '--target_size', '800'])
    det = detector_from_args(args)
    _fail_forward(monkeypatch, det, MemoryError())
    with pytest.raises(InputTooLargeError, match=r'an image resized to 800x800 \(0\.6 megapixels\) does not fit '
                                                 r'\(MemoryError\); --origin_size false detects at the test scale '
                                                 r'instead; --max_size 2048 detects at a smaller size; --tile 2048'):
        det.detect(images[SMALL])


def test_other_errors_are_not_taken_for_memory(detector, images, monkeypatch):
    det = Detector(detector.net, cfg_mnet)
    _fail_forward(monkeypatch, det, RuntimeError('Given groups=1, weight of size [8, 3, 3, 3]'))
    with pytest.raises(RuntimeError, match='Given groups') as e:
        det.detect(images[SMALL])
    assert not isinstance(e.value, InputError)


# -- load_detector on a busy machine ---------------------------------------------------------------

_API_CHILD = '''
import logging, os, sys
logging.basicConfig(level=logging.WARNING, format='%(message)s')
if sys.argv[2] == 'torch first':
    import torch
from models.detector import load_detector
for threads in sys.argv[3:]:
    load_detector('mobile0.25', sys.argv[1], threads=None if threads == '-' else int(threads))
import torch
print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads())
'''


@pytest.fixture
def busy_machine():
    """Another process keeping a core busy while the test runs."""
    loop = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    yield
    loop.kill()
    loop.wait()


def _api_child(weights, order, *threads):
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    env['OMP_NUM_THREADS'] = '2'  # the pool whose waiting threads spin
    out = subprocess.run([sys.executable, '-c', _API_CHILD, weights, order, *threads],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split(), [line for line in out.stderr.splitlines() if 'OMP_WAIT_POLICY' in line]


def test_load_detector_before_torch_chooses_the_passive_wait_policy(weights, busy_machine):
    """torch not imported yet: load_detector sets OMP_WAIT_POLICY=PASSIVE before importing it,
    as the scripts do, and there is nothing to warn about."""
    stdout, warnings = _api_child(weights, 'api first', '-')
    assert stdout == ['PASSIVE', '2'] and warnings == []


def test_load_detector_after_torch_warns_once_with_the_remedy(weights, busy_machine):
    """torch imported first: OpenMP has read its wait policy, so load_detector can only warn,
    once for the process, naming both remedies; the environment is left alone."""
    stdout, warnings = _api_child(weights, 'torch first', '-', '-')
    assert stdout == ['None', '2']
    assert len(warnings) == 1
    assert 'torch was imported before load_detector' in warnings[0]
    assert 'set OMP_WAIT_POLICY=PASSIVE in the environment before torch is imported, or pass threads=1' in warnings[0]


@pytest.fixture
def torch_threads():
    """torch's thread count, put back after the test (load_detector(threads=...) sets it process-wide)."""
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def _spin_warnings(caplog):
    return [r for r in caplog.records if r.name == 'models.detector' and 'OMP_WAIT_POLICY' in r.getMessage()]


def test_the_late_warning_only_where_threads_would_spin(weights, monkeypatch, caplog, torch_threads):
    """In this process torch is loaded: the late path. Quiet on an idle machine, with the user's
    own policy, or with one thread; then one warning, and never a second."""
    import models.detector

    monkeypatch.setattr(models.detector, '_warned_threads_spin', False)
    monkeypatch.delenv('OMP_WAIT_POLICY', raising=False)
    torch_threads.set_num_threads(2)
    with caplog.at_level(logging.WARNING, logger='models.detector'):
        monkeypatch.setattr(models.detector, 'other_busy_processes', lambda: 0.0)
        load_detector('mobile0.25', weights)
        monkeypatch.setattr(models.detector, 'other_busy_processes', lambda: 3.0)
        monkeypatch.setenv('OMP_WAIT_POLICY', 'ACTIVE')
        load_detector('mobile0.25', weights)
        monkeypatch.delenv('OMP_WAIT_POLICY')
        load_detector('mobile0.25', weights, threads=1)
        assert torch_threads.get_num_threads() == 1 and not _spin_warnings(caplog)
        torch_threads.set_num_threads(2)
        load_detector('mobile0.25', weights)
        load_detector('mobile0.25', weights)
    assert len(_spin_warnings(caplog)) == 1
