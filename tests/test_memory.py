"""utils.memory: keep_freed_memory (malloc settings for fast eager CPU inference) and
is_out_of_memory (an allocation failure told from other errors)."""
import sys
from types import SimpleNamespace

import numpy as np
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


# -- telling an allocation failure from other errors ----------------------------------------------

def _cv2_error(code):
    import cv2

    try:  # a real cv2.error, with OpenCV's own code
        cv2.resize(np.zeros((1, 5000, 3), np.float32), None, None, fx=0.064, fy=0.064)
    except cv2.error as e:
        assert e.code == -215  # the assertion that the size is not empty
        error = e
    error.code = code
    return error


def _numpy_error():
    try:  # 1 PiB: more than any x86-64 process can map, whatever the overcommit setting
        np.empty(2 ** 50, np.uint8)
    except MemoryError as e:
        return e
    pytest.fail('a 1 PiB array was allocated')


def _torch_error(message):
    import torch

    return torch.OutOfMemoryError(message)


def _onnxruntime_fail(message):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    return Fail(message)


@pytest.mark.parametrize('make, expected', [
    (lambda: MemoryError(), True),
    (_numpy_error, True),
    (lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                          "you tried to allocate 576000000 bytes. Error code 12 (Cannot allocate memory)"), True),
    (lambda: _torch_error('CUDA out of memory. Tried to allocate 2.00 GiB'), True),
    (lambda: _onnxruntime_fail('[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv '
                               'node. Status Message: bfc_arena.cc:360 Failed to allocate memory for requested '
                               'buffer of size 576000000'), True),
    (lambda: _onnxruntime_fail('[ONNXRuntimeError] : 1 : FAIL : Got invalid dimensions for input'), False),
    (lambda: _cv2_error(-4), True),
    (lambda: _cv2_error(-215), False),
    (lambda: RuntimeError('Given groups=1, weight of size [8, 3, 3, 3]'), False),
    (lambda: ValueError('out of memory'), False),  # not a runtime error of a library: a bug's message
])
def test_is_out_of_memory(make, expected):
    assert memory.is_out_of_memory(make()) is expected


def test_out_of_memory_reason_keeps_what_failed():
    error = _onnxruntime_fail('[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. '
                              "Name:'/body/stage1' Status Message: /onnxruntime_src/onnxruntime/core/framework/"
                              'bfc_arena.cc:360 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool) Failed '
                              'to allocate memory for requested buffer of size 576000000\n')
    assert memory.out_of_memory_reason(error) == 'Fail: Failed to allocate memory for requested buffer of size 576000000'
    assert memory.out_of_memory_reason(MemoryError()) == 'MemoryError'
    assert len(memory.out_of_memory_reason(RuntimeError('x' * 1000))) < 200
