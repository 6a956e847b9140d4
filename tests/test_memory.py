"""utils.memory.keep_freed_memory: malloc settings for fast eager CPU inference."""
import sys
from types import SimpleNamespace

import pytest

import utils.memory as memory
from tests.conftest import golden_image_path, need_shared


@pytest.fixture
def fresh(monkeypatch):
    """keep_freed_memory as if not yet called in this process."""
    monkeypatch.setattr(memory, '_applied', None)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='mallopt settings exist on Linux/glibc only')
def test_applied_on_linux_once(fresh, monkeypatch):
    assert memory.keep_freed_memory() is True
    # Once applied, later calls do not touch malloc again.
    monkeypatch.setattr(memory.ctypes, 'CDLL', lambda *a: pytest.fail('mallopt called twice'))
    assert memory.keep_freed_memory() is True


def test_does_nothing_off_linux(fresh, monkeypatch):
    monkeypatch.setattr(memory.sys, 'platform', 'darwin')
    assert memory.keep_freed_memory() is False


def test_without_mallopt_it_reports_false(fresh, monkeypatch):
    monkeypatch.setattr(memory.sys, 'platform', 'linux')
    monkeypatch.setattr(memory.ctypes, 'CDLL', lambda *a: SimpleNamespace())  # a libc without mallopt
    assert memory.keep_freed_memory() is False


def test_a_rejected_setting_reports_false(fresh, monkeypatch):
    calls = []

    class Libc:
        def __init__(self, *a):
            self.mallopt = self

        def __call__(self, param, value):
            calls.append((param, value))
            return 0  # glibc rejects the value

    monkeypatch.setattr(memory.sys, 'platform', 'linux')
    monkeypatch.setattr(memory.ctypes, 'CDLL', Libc)
    assert memory.keep_freed_memory() is False
    assert calls == [(memory._M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD)]


@pytest.mark.parametrize('device, expected', [('cpu', 1), ('cuda', 0)])
def test_detect_keeps_freed_memory_when_the_network_runs_on_the_cpu(monkeypatch, device, expected):
    """The scripts own their process, so they make the setting (a library never does);
    on a GPU it would only hold host memory without speeding anything up."""
    import torch

    import detect
    from models.detector import detector_from_args

    def built_on(args, **overrides):
        detector = detector_from_args(args, **overrides)
        detector.device = torch.device(device)  # what the script sees; the network stays on the CPU
        return detector

    calls = []
    monkeypatch.setattr(detect, 'keep_freed_memory', lambda: calls.append(1))
    monkeypatch.setattr(detect, 'detector_from_args', built_on)
    weights = need_shared('weights', 'mobilenet0.25_Final.pth')
    args = detect.get_args_parser().parse_args(['-m', str(weights), '--cpu', '--no-save_image',
                                                '--image', str(golden_image_path('val416_0_Parade_Parade_0_102'))])
    assert len(detect.main(args)['results']) == 1
    assert len(calls) == expected
