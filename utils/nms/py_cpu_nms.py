"""Non-maximum suppression with the reference's +1 pixel convention.

A box (x1, y1, x2, y2) covers the pixels x1..x2 inclusive, so its width is
x2 - x1 + 1. Both functions below use that convention and the same processing order,
so they return the same keep list.
"""
import numpy as np


def py_cpu_nms(dets, thresh):
    """Pure-numpy greedy NMS (the reference implementation, kept as the specification).

    Args:
        dets (ndarray[N, 5]): (x1, y1, x2, y2, score) in pixels.
        thresh (float): a box is suppressed when its IoU with a kept box is > thresh.
    Returns:
        list[int]: indices into dets of the kept boxes, highest score first.
    """
    x1 = dets[:, 0]
    y1 = dets[:, 1]
    x2 = dets[:, 2]
    y2 = dets[:, 3]
    scores = dets[:, 4]

    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]

    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])

        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)

        inds = np.where(ovr <= thresh)[0]
        order = order[inds + 1]

    return keep


def nms(dets, thresh):
    """Fast NMS returning exactly py_cpu_nms(dets, thresh).

    Runs torchvision's compiled NMS. Two details keep the result identical:
    - the +1 convention is emulated by widening each box by one pixel on the right and
      bottom, which gives the same widths, heights and intersections;
    - the processing order is numpy's argsort, as in py_cpu_nms (it breaks score ties
      differently from torch's sort), passed to torchvision as strictly decreasing
      ranks instead of the scores.
    The threshold is rounded to the dets' dtype first, because py_cpu_nms compares in
    that precision.

    Args:
        dets (ndarray[N, 5]): (x1, y1, x2, y2, score) in pixels.
        thresh (float): IoU above which a box is suppressed.
    Returns:
        ndarray[K] of int64: indices into dets of the kept boxes, highest score first.
    """
    # Imported here: the reference's py_cpu_nms (and the compiled NMS that is normally used
    # instead of this one) must not need torch, for the torch-free deployment path.
    import torch
    import torchvision

    n = dets.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    order = np.ascontiguousarray(dets[:, 4].argsort()[::-1])
    boxes = torch.from_numpy(np.ascontiguousarray(dets[order, :4]))
    boxes[:, 2:] += 1
    ranks = torch.arange(n, 0, -1, dtype=boxes.dtype)
    thresh = float(np.asarray(thresh, dtype=dets.dtype))
    keep = torchvision.ops.nms(boxes, ranks, thresh).numpy()
    return order[keep]
