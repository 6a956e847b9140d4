"""Prior (anchor) boxes of RetinaFace.

The priors are computed with numpy (prior_boxes), so that the torch-free deployment path
(onnxruntime with an exported model) has them without importing torch; PriorBox and
cached_priors hand out the same values as torch tensors (torch is imported only there).
"""
from functools import lru_cache
from math import ceil

import numpy as np


class PriorBox(object):
    """PriorBox(cfg, image_size=(h, w)).forward() -> priors (Tensor[P, 4], float32, CPU)
    as (cx, cy, w, h) relative to the image.

    For each pyramid level k (stride cfg['steps'][k]) the feature map has
    ceil(h / step) x ceil(w / step) cells; every cell gets one square anchor per size in
    cfg['min_sizes'][k], centred on the cell. The order is level, then row, then column,
    then anchor size, which is the order in which RetinaFace's heads emit predictions.
    """

    def __init__(self, cfg, image_size=None, phase='train'):
        super().__init__()
        self.min_sizes = cfg['min_sizes']
        self.steps = cfg['steps']
        self.clip = cfg['clip']
        if image_size is None or len(image_size) != 2 or min(image_size) <= 0:
            raise ValueError(f"image_size must be a positive (height, width), got {image_size!r}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.feature_maps = [[ceil(self.image_size[0] / step), ceil(self.image_size[1] / step)] for step in self.steps]
        self.name = "s"

    def forward(self):
        key = (tuple(tuple(s) for s in self.min_sizes), tuple(self.steps), bool(self.clip), self.image_size)
        import torch

        # Callers may modify the result (the reference clamps in place), so hand out a copy.
        return torch.from_numpy(_prior_boxes(*key).copy())


def prior_boxes(cfg, image_size):
    """The priors of PriorBox(cfg, image_size) as a read-only ndarray[P, 4] float32, cached.

    Same values, bit for bit, as PriorBox(cfg, image_size).forward(); no torch needed.
    """
    return _prior_boxes(tuple(tuple(s) for s in cfg['min_sizes']), tuple(cfg['steps']), bool(cfg['clip']),
                        (int(image_size[0]), int(image_size[1])))


@lru_cache(maxsize=64)
def _prior_boxes(min_sizes, steps, clip, image_size):
    h, w = image_size
    levels = []
    for k, step in enumerate(steps):
        rows, cols = ceil(h / step), ceil(w / step)
        # Computed in float64 and rounded once to float32, like the reference's Python floats.
        cy = (np.arange(rows, dtype=np.float64) + 0.5) * step / h  # [rows]
        cx = (np.arange(cols, dtype=np.float64) + 0.5) * step / w  # [cols]
        sizes = np.array(min_sizes[k], dtype=np.float64)  # [A]
        n_anchor = len(min_sizes[k])
        shape = (rows, cols, n_anchor)
        grid_cy = np.broadcast_to(cy.reshape(rows, 1, 1), shape)
        grid_cx = np.broadcast_to(cx.reshape(1, cols, 1), shape)
        s_kx = np.broadcast_to((sizes / w).reshape(1, 1, n_anchor), shape)
        s_ky = np.broadcast_to((sizes / h).reshape(1, 1, n_anchor), shape)
        # [rows, cols, A, 4] -> [rows*cols*A, 4] in (cx, cy, w, h)
        levels.append(np.stack([grid_cx, grid_cy, s_kx, s_ky], axis=-1).reshape(-1, 4))
    output = np.concatenate(levels, axis=0).astype(np.float32)
    if clip:
        np.clip(output, 0, 1, out=output)
    output.flags.writeable = False  # shared by every caller of the cache
    return output


_device_cache = {}


def cached_priors(cfg, image_size, device=None, dtype=None):
    """The priors of PriorBox(cfg, image_size) on device, computed once per (size, device).

    dtype defaults to torch.float32. The returned tensor is shared: treat it as read-only.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    key = (cfg['name'], tuple(tuple(s) for s in cfg['min_sizes']), tuple(cfg['steps']), bool(cfg['clip']),
           (int(image_size[0]), int(image_size[1])), str(device), dtype)
    priors = _device_cache.get(key)
    if priors is None:
        priors = PriorBox(cfg, image_size=image_size).forward().to(device=device, dtype=dtype)
        if len(_device_cache) > 256:
            _device_cache.clear()
        _device_cache[key] = priors
    return priors
