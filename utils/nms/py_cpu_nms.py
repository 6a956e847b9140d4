"""Non-maximum suppression with the reference's +1 pixel convention.

A box (x1, y1, x2, y2) covers the pixels x1..x2 inclusive, so its width is
x2 - x1 + 1, computed in that order: (x2 + 1) - x1 rounds differently for some float32
coordinates, so the compiled kernel (cpu_nms.pyx) does the same operations in the same
order to return the same keep list.
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

