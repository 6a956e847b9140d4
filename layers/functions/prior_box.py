"""Prior (anchor) boxes of RetinaFace.

One home for the computation: prior_boxes, in numpy and cached, which the detection
pipeline uses, so that the torch-free deployment path (onnxruntime with an exported
model) has the priors without importing torch. PriorBox, the reference's class, hands
out the same values as a torch tensor for training and for the reference's own code.
"""
from functools import lru_cache
from math import ceil

import numpy as np


def prior_boxes(cfg: dict, image_size: tuple[int, int]) -> np.ndarray:
    """The priors of an input of image_size (h, w), computed once per size and network.

    For each pyramid level k (stride cfg['steps'][k]) the feature map has
    ceil(h / step) x ceil(w / step) cells; every cell gets one square anchor per size in
    cfg['min_sizes'][k], centred on the cell. The order is level, then row, then column,
    then anchor size, which is the order in which RetinaFace's heads emit predictions.

    Args:
        cfg (dict): the network's config (min_sizes, steps, clip).
        image_size (tuple[int, int]): (h, w) of the network input, both positive.
    Returns:
        ndarray[P, 4] float32 in (cx, cy, w, h) relative to the input. Shared by every
        caller of the cache, so it is read-only: PriorBox hands out a writable copy.
    """
    if image_size is None or len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be a positive (height, width), got {image_size!r}")
    return _prior_boxes(tuple(tuple(s) for s in cfg['min_sizes']), tuple(cfg['steps']), bool(cfg['clip']),
                        (int(image_size[0]), int(image_size[1])))


@lru_cache(maxsize=64)
def _prior_boxes(min_sizes, steps, clip, image_size):
    """prior_boxes on hashable arguments, so that lru_cache can key on them."""
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


class PriorBox(object):
    """PriorBox(cfg, image_size=(h, w)).forward() -> priors (Tensor[P, 4], float32, CPU)
    in (cx, cy, w, h) relative to the image: prior_boxes(cfg, image_size) as a tensor.

    The reference's class, with its signature, for training and for code written against
    the reference (which moves the result to its device itself).
    """

    def __init__(self, cfg: dict, image_size: tuple[int, int] | None = None, phase: str = 'train') -> None:
        super().__init__()
        self.min_sizes = cfg['min_sizes']
        self.steps = cfg['steps']
        self.clip = cfg['clip']
        self.cfg = cfg
        self.image_size = image_size
        prior_boxes(cfg, image_size)  # checks image_size now, as the reference's constructor fails early
        self.feature_maps = [[ceil(image_size[0] / step), ceil(image_size[1] / step)] for step in self.steps]
        self.name = "s"

    def forward(self) -> 'torch.Tensor':
        import torch  # here only, so that importing this module does not load torch

        # Callers may modify the result (the reference clamps in place), so hand out a copy.
        return torch.from_numpy(prior_boxes(self.cfg, self.image_size).copy())
