"""utils.memory.keep_freed_memory: malloc settings for fast eager CPU inference."""
import sys
from types import SimpleNamespace

import pytest

import utils.cli as cli
import utils.memory as memory


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


@pytest.mark.parametrize('cpu, expected', [(True, 1), (False, 0)])
def test_scripts_keep_freed_memory_on_the_cpu(monkeypatch, cpu, expected):
    calls = []
    monkeypatch.setattr(cli, 'keep_freed_memory', lambda: calls.append(1))
    monkeypatch.setattr(cli, 'select_device', lambda _: 'cpu' if cpu else 'cuda')
    monkeypatch.setattr(cli, 'load_detector', lambda *a, **k: SimpleNamespace(device=k['device'], backend='torch'))
    args = SimpleNamespace(network='mobile0.25', trained_model='w.pth', confidence_threshold=0.02, nms_threshold=0.4,
                           cpu=cpu, onnx_model=None)
    cli.detector_from_args(args)
    assert len(calls) == expected
