"""Greedy NMS for crowded images: exactly py_cpu_nms's keep list, in a fraction of the time.

utils.nms.py_cpu_nms.nms compares every kept box with every later box. On a crowd photo
(largest_selfie.jpg: 10,185 candidates above 0.02, 2,850 kept) that is ~15 million
comparisons and ~40 ms. Here the candidates, in py_cpu_nms's processing order, are taken
in blocks of BLOCK boxes:

1. every box of the block is compared with the boxes kept so far that lie near it (a
   uniform grid over the image indexes the kept boxes by the cells they cover; two boxes
   that overlap at all share a cell), and is dropped if one of them overlaps it by more
   than the threshold, with py_cpu_nms's own float arithmetic;
2. the block's remaining boxes go through nms() in their order, which decides the
   suppressions inside the block.

A box is kept by greedy NMS exactly when no earlier kept box overlaps it by more than the
threshold; step 1 checks the kept boxes of earlier blocks and step 2 those of its own
block, so the result is py_cpu_nms's, box for box and in the same order.
"""
import numpy as np

from utils.nms.py_cpu_nms import nms

# Boxes per block: larger blocks mean fewer steps but more work inside nms().
BLOCK = 1024
# Below this many candidates nms() alone is as fast (test.jpg: 1,773 candidates, ~0.7 ms).
MIN_BOXES = 3000
# Grids that would need more cells than this many per box (huge or degenerate boxes) are
# not worth building: nms() handles those inputs directly.
MAX_CELLS_PER_BOX = 64
# Coordinates beyond this (or not finite) do not fit a grid either; nms() takes them.
MAX_COORDINATE = 1e7


def blocked_nms(dets, thresh, block=BLOCK, min_boxes=MIN_BOXES):
    """Greedy NMS with the +1 pixel convention, returning exactly py_cpu_nms(dets, thresh).

    Args:
        dets (ndarray[N, 5]): (x1, y1, x2, y2, score) in pixels.
        thresh (float): a box is suppressed when its IoU with a kept box is > thresh.
        block (int): boxes per block (see the module docstring).
        min_boxes (int): below this N, nms() runs directly.
    Returns:
        ndarray[K] int64: indices into dets of the kept boxes, highest score first.
    """
    n = dets.shape[0]
    if n < max(min_boxes, 1):
        return nms(dets, thresh)
    order = dets[:, 4].argsort()[::-1]  # py_cpu_nms's processing order (ties included)
    d = dets[order]
    if not (np.abs(d[:, :4]) < MAX_COORDINATE).all():  # also catches NaN and inf
        return nms(dets, thresh)
    x1, y1 = np.ascontiguousarray(d[:, 0]), np.ascontiguousarray(d[:, 1])
    x2, y2 = np.ascontiguousarray(d[:, 2]), np.ascontiguousarray(d[:, 3])
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    thr = np.asarray(thresh, dtype=dets.dtype)  # py_cpu_nms compares in the dets' precision

    # The grid: cells about the size of a typical box. A box covers the pixels x1..x2+1
    # (the +1 convention), so it is registered in every cell that range touches.
    # Computed in float64, where x2 + 1 is exact, so that two boxes whose pixel ranges
    # overlap always share a cell.
    cell = max(1.0, float(np.median(np.maximum(x2 - x1, y2 - y1) + 1)))
    c64 = d[:, :4].astype(np.float64)
    gx0, gy0 = np.floor(c64[:, 0] / cell).astype(np.int64), np.floor(c64[:, 1] / cell).astype(np.int64)
    gx1 = np.floor((c64[:, 2] + 1) / cell).astype(np.int64)
    gy1 = np.floor((c64[:, 3] + 1) / cell).astype(np.int64)
    ox, oy = gx0.min(), gy0.min()
    gx0 -= ox
    gx1 -= ox
    gy0 -= oy
    gy1 -= oy
    width = int(gx1.max()) + 1
    n_cells = width * (int(gy1.max()) + 1)
    nx = gx1 - gx0 + 1
    cells_per_box = nx * (gy1 - gy0 + 1)
    if cells_per_box.sum() > MAX_CELLS_PER_BOX * n or n_cells > MAX_CELLS_PER_BOX * n:
        return nms(dets, thresh)

    def cells_of(boxes):
        """(box, cell) pairs: every box of boxes (positions in d) with each cell it covers."""
        count = cells_per_box[boxes]
        box = np.repeat(boxes, count)
        k = np.arange(box.size) - np.repeat(np.cumsum(count) - count, count)  # k-th cell of its box
        row_len = nx[box]
        return box, (gy0[box] + k // row_len) * width + gx0[box] + k % row_len

    kept_cells = np.zeros(0, dtype=np.int64)  # sorted cell ids of the kept boxes' cells
    kept_boxes = np.zeros(0, dtype=np.int64)  # the kept box registered in each of those cells
    kept = []
    ranks = np.arange(block, 0, -1).astype(dets.dtype)  # distinct decreasing "scores": keep d's order in nms()
    suppressed = np.zeros(n, dtype=bool)
    for start in range(0, n, block):
        idx = np.arange(start, min(start + block, n))
        if kept_cells.size:
            # 1. Compare the block with the kept boxes sharing a cell with it.
            box, cell_id = cells_of(idx)
            per_cell = np.bincount(kept_cells, minlength=n_cells)
            first = np.cumsum(per_cell) - per_cell  # where each cell's kept boxes start in kept_cells
            m = per_cell[cell_id]
            box, cell_id, m = box[m > 0], cell_id[m > 0], m[m > 0]
            total = int(m.sum())
            if total:
                q = np.repeat(box, m)
                k = kept_boxes[np.repeat(first[cell_id] - (np.cumsum(m) - m), m) + np.arange(total)]
                # py_cpu_nms's IoU, operation for operation (a pair sharing several cells
                # is just compared more than once).
                xx1 = np.maximum(x1[k], x1[q])
                yy1 = np.maximum(y1[k], y1[q])
                xx2 = np.minimum(x2[k], x2[q])
                yy2 = np.minimum(y2[k], y2[q])
                w = np.maximum(0.0, xx2 - xx1 + 1)
                h = np.maximum(0.0, yy2 - yy1 + 1)
                inter = w * h
                ovr = inter / (areas[k] + areas[q] - inter)
                suppressed[q[~(ovr <= thr)]] = True  # py_cpu_nms keeps only ovr <= thresh (NaN drops)
                idx = idx[~suppressed[idx]]
        if idx.size:
            # 2. Greedy NMS inside the block, in order.
            sub = np.empty((idx.size, 5), dtype=dets.dtype)
            sub[:, :4] = d[idx, :4]
            sub[:, 4] = ranks[:idx.size]
            new = idx[nms(sub, thresh)]
            kept.append(new)
            box, cell_id = cells_of(new)
            o = np.argsort(cell_id, kind='stable')
            at = np.searchsorted(kept_cells, cell_id[o], side='right')
            kept_cells = np.insert(kept_cells, at, cell_id[o])
            kept_boxes = np.insert(kept_boxes, at, box[o])
    return order[np.concatenate(kept)] if kept else np.zeros((0,), dtype=np.int64)
