"""Prior (anchor) boxes of RetinaFace."""
from functools import lru_cache
from math import ceil

import torch


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
        # Callers may modify the result (the reference clamps in place), so hand out a copy.
        return _prior_boxes(*key).clone()


@lru_cache(maxsize=64)
def _prior_boxes(min_sizes, steps, clip, image_size):
    h, w = image_size
    levels = []
    for k, step in enumerate(steps):
        rows, cols = ceil(h / step), ceil(w / step)
        # Computed in float64 and rounded once to float32, like the reference's Python floats.
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * step / h  # [rows]
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * step / w  # [cols]
        sizes = torch.tensor(min_sizes[k], dtype=torch.float64)  # [A]
        n_anchor = len(min_sizes[k])
        grid_cy = cy.view(rows, 1, 1).expand(rows, cols, n_anchor)
        grid_cx = cx.view(1, cols, 1).expand(rows, cols, n_anchor)
        s_kx = (sizes / w).view(1, 1, n_anchor).expand(rows, cols, n_anchor)
        s_ky = (sizes / h).view(1, 1, n_anchor).expand(rows, cols, n_anchor)
        # [rows, cols, A, 4] -> [rows*cols*A, 4] in (cx, cy, w, h)
        levels.append(torch.stack([grid_cx, grid_cy, s_kx, s_ky], dim=-1).reshape(-1, 4))
    output = torch.cat(levels, dim=0).to(torch.float32)
    if clip:
        output.clamp_(max=1, min=0)
    return output


_device_cache = {}


def cached_priors(cfg, image_size, device=None, dtype=torch.float32):
    """The priors of PriorBox(cfg, image_size) on device, computed once per (size, device).

    The returned tensor is shared: treat it as read-only.
    """
    key = (cfg['name'], tuple(tuple(s) for s in cfg['min_sizes']), tuple(cfg['steps']), bool(cfg['clip']),
           (int(image_size[0]), int(image_size[1])), str(device), dtype)
    priors = _device_cache.get(key)
    if priors is None:
        priors = PriorBox(cfg, image_size=image_size).forward().to(device=device, dtype=dtype)
        if len(_device_cache) > 256:
            _device_cache.clear()
        _device_cache[key] = priors
    return priors
