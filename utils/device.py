"""The one place that turns a device setting into the device a network runs on.

Every script and the detection pipeline go through resolve_device: 'auto' picks CUDA
when there is one (and says so when there is not), and an explicit CUDA device on a
machine without CUDA is an error before any work starts. The 'onnxruntime' backend
resolves without importing torch, so that the torch-free deployment path stays free of it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from utils.errors import InputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BACKENDS = ('torch', 'onnxruntime')


class HostDevice(str):
    """The device of an onnxruntime Detector, without torch: the string ('cpu', 'cuda',
    'cuda:1') with torch.device's .type and .index, so that code written for a
    torch.device (device.type, torch.device(device)) works with it."""

    @property
    def type(self) -> str:
        return self.partition(':')[0]

    @property
    def index(self) -> int | None:  # shadows str.index, as torch.device's attribute does not exist on str
        index = self.partition(':')[2]
        return int(index) if index else None


def _onnxruntime_has_cuda():
    import onnxruntime

    return 'CUDAExecutionProvider' in onnxruntime.get_available_providers()


def resolve_device(device: str | torch.device = 'auto', backend: str = 'torch') -> torch.device | HostDevice:
    """The device to run on.

    Args:
        device (str | torch.device): 'auto' (CUDA when available, else the CPU), 'cpu',
            'cuda' or 'cuda:N'.
        backend (str): 'torch' gives a torch.device; 'onnxruntime' gives a HostDevice and
            never imports torch ('auto' then asks onnxruntime for its CUDA provider, and
            onnxruntime checks an explicit CUDA device when it loads the model).
    Raises:
        InputError: device is not a device, or is CUDA while torch sees no CUDA device.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}: expected one of {list(BACKENDS)}")
    if backend == 'onnxruntime':
        if str(device) == 'auto':
            if _onnxruntime_has_cuda():
                return HostDevice('cuda')
            logger.info("onnxruntime has no CUDA provider: running on the CPU")
            return HostDevice('cpu')
        device_type, _, index = str(device).partition(':')
        if device_type not in ('cpu', 'cuda') or not (index == '' or index.isdigit()):
            raise InputError(f"unknown device {str(device)!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        return HostDevice(str(device))
    import torch

    if str(device) == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        logger.info("no CUDA device found: running on the CPU")
        return torch.device('cpu')
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise InputError(f"unknown device {str(device)!r}: {e}") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise InputError(f"device {device} requested but CUDA is not available (use the CPU)")
    return device
