"""Box utilities: format conversion, IoU, prior matching and the RetinaFace box /
landmark encoding.

Formats used throughout:
- point form: (x1, y1, x2, y2), corners;
- center form: (cx, cy, w, h);
- priors (Tensor[P, 4]) are always in center form, relative to the image (0..1).

All torch functions are device-agnostic: outputs follow the inputs' device and dtype.
"""
import numpy as np
import torch
from torchvision.ops import box_convert, box_iou


def point_form(boxes):
    """Center form -> point form.

    Args:
        boxes (Tensor[N, 4]): (cx, cy, w, h).
    Returns:
        Tensor[N, 4]: (x1, y1, x2, y2), in the same units.
    """
    # torchvision's conversion computes c -/+ 0.5 * size, which is the reference's
    # c -/+ size / 2 to the bit (halving is exact in binary floating point).
    return box_convert(boxes, 'cxcywh', 'xyxy')


def center_size(boxes):
    """Point form -> center form (the inverse of point_form).

    The reference's version misplaces a parenthesis and fails; this one is correct.

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2).
    Returns:
        Tensor[N, 4]: (cx, cy, w, h), in the same units.
    """
    return torch.cat(((boxes[:, 2:] + boxes[:, :2]) / 2,
                      boxes[:, 2:] - boxes[:, :2]), 1)


def intersect(box_a, box_b):
    """Pairwise intersection areas.

    Args:
        box_a (Tensor[A, 4]), box_b (Tensor[B, 4]): (x1, y1, x2, y2), same units.
    Returns:
        Tensor[A, B]: area of the intersection of each pair (no +1 convention).
    """
    max_xy = torch.min(box_a[:, None, 2:], box_b[None, :, 2:])  # [A, B, 2]
    min_xy = torch.max(box_a[:, None, :2], box_b[None, :, :2])  # [A, B, 2]
    inter = torch.clamp(max_xy - min_xy, min=0)
    return inter[:, :, 0] * inter[:, :, 1]


def jaccard(box_a, box_b):
    """Pairwise intersection over union.

    Args:
        box_a (Tensor[A, 4]), box_b (Tensor[B, 4]): (x1, y1, x2, y2), same units.
    Returns:
        Tensor[A, B]: IoU of each pair.
    """
    # torchvision's box_iou performs the reference's operations in the reference's order
    # (intersect, the two areas, area_a + area_b - inter, then the division), so float32
    # and float64 results are the reference's to the bit; half-precision inputs are
    # computed in float32 there.
    return box_iou(box_a, box_b)


def matrix_iou(a, b):
    """Pairwise IoU in numpy.

    Args:
        a (ndarray[A, 4]), b (ndarray[B, 4]): (x1, y1, x2, y2), same units.
    Returns:
        ndarray[A, B].
    """
    lt = np.maximum(a[:, np.newaxis, :2], b[:, :2])
    rb = np.minimum(a[:, np.newaxis, 2:], b[:, 2:])
    area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return area_i / (area_a[:, np.newaxis] + area_b - area_i)


def matrix_iof(a, b):
    """Pairwise intersection over the area of the first box ("foreground"), in numpy.

    Used by the training crop to test whether a face lies inside a crop window.

    Args:
        a (ndarray[A, 4]), b (ndarray[B, 4]): (x1, y1, x2, y2), same units.
    Returns:
        ndarray[A, B]: intersection / area(a), with area(a) floored at 1.
    """
    lt = np.maximum(a[:, np.newaxis, :2], b[:, :2])
    rb = np.minimum(a[:, np.newaxis, 2:], b[:, 2:])
    area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    return area_i / np.maximum(area_a[:, np.newaxis], 1)


def match(threshold, truths, priors, variances, labels, landms, loc_t, conf_t, landm_t, idx):
    """Match the ground-truth faces of one image to the priors and write the encoded
    regression targets and labels into loc_t[idx], conf_t[idx] and landm_t[idx].

    Each prior takes the face it overlaps most; each face also claims the prior that
    overlaps it most (so every matchable face has at least one positive prior); priors
    whose best overlap is below threshold become background (label 0). Faces whose best
    prior overlap is under 0.2 are too small or odd to match and are ignored.

    Args:
        threshold (float): IoU under which a prior is background (0.35 in RetinaFace).
        truths (Tensor[N, 4]): faces as (x1, y1, x2, y2) relative to the image.
        priors (Tensor[P, 4]): (cx, cy, w, h) relative to the image.
        variances (list[float]): the two encoding variances, [0.1, 0.2].
        labels (Tensor[N]): 1 for a face with landmarks, -1 for a face without.
        landms (Tensor[N, 10]): five (x, y) landmarks relative to the image.
        loc_t (Tensor[B, P, 4]), conf_t (Tensor[B, P]), landm_t (Tensor[B, P, 10]): outputs.
        idx (int): the image's index in the batch.
    """
    if truths.shape[0] == 0:
        # An image without faces: every prior is background (MultiBoxLoss mines negatives
        # from it only with faceless_negatives).
        loc_t[idx] = 0
        conf_t[idx] = 0
        landm_t[idx] = 0
        return
    overlaps = jaccard(truths, point_form(priors))  # [N, P]
    # The best prior for each face.
    best_prior_overlap, best_prior_idx = overlaps.max(1, keepdim=True)  # [N, 1]

    # Ignore faces that no prior overlaps enough.
    valid_gt_idx = best_prior_overlap[:, 0] >= 0.2
    best_prior_idx_filter = best_prior_idx[valid_gt_idx, :]
    if best_prior_idx_filter.shape[0] <= 0:
        loc_t[idx] = 0
        conf_t[idx] = 0
        landm_t[idx] = 0
        return

    # The best face for each prior.
    best_truth_overlap, best_truth_idx = overlaps.max(0)  # [P]
    best_prior_idx = best_prior_idx.squeeze(1)  # [N]
    best_prior_idx_filter = best_prior_idx_filter.squeeze(1)
    # Make sure each valid face keeps its best prior, whatever the threshold.
    best_truth_overlap.index_fill_(0, best_prior_idx_filter, 2)
    # ... and that this prior predicts that face. When two faces share a best prior the
    # later face wins, as in the reference's Python loop (amax of the face index).
    face_index = torch.arange(best_prior_idx.size(0), device=best_truth_idx.device, dtype=best_truth_idx.dtype)
    best_truth_idx.scatter_reduce_(0, best_prior_idx, face_index, reduce='amax', include_self=False)

    matches = truths[best_truth_idx]  # [P, 4]
    conf = labels[best_truth_idx]  # [P]
    conf[best_truth_overlap < threshold] = 0  # background
    loc = encode(matches, priors, variances)

    matches_landm = landms[best_truth_idx]  # [P, 10]
    landm = encode_landm(matches_landm, priors, variances)
    loc_t[idx] = loc
    conf_t[idx] = conf
    landm_t[idx] = landm


def encode(matched, priors, variances):
    """Encode boxes as offsets from their priors (the regression targets).

    Args:
        matched (Tensor[P, 4]): boxes as (x1, y1, x2, y2) relative to the image.
        priors (Tensor[P, 4]): (cx, cy, w, h) relative to the image.
        variances (list[float]): [center variance, size variance].
    Returns:
        Tensor[P, 4]: (dcx, dcy, dw, dh) targets.
    """
    g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    g_cxcy /= (variances[0] * priors[:, 2:])
    g_wh = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    g_wh = torch.log(g_wh) / variances[1]
    return torch.cat([g_cxcy, g_wh], 1)


def encode_landm(matched, priors, variances):
    """Encode five landmarks as offsets from their priors' centres.

    Args:
        matched (Tensor[P, 10]): (x, y) x 5 relative to the image.
        priors (Tensor[P, 4]): (cx, cy, w, h) relative to the image.
        variances (list[float]): [center variance, size variance].
    Returns:
        Tensor[P, 10]: offsets, (dx, dy) x 5.
    """
    matched = torch.reshape(matched, (matched.size(0), 5, 2))  # [P, 10] -> [P, 5, 2]
    g_cxcy = matched - priors[:, None, :2]
    g_cxcy /= (variances[0] * priors[:, None, 2:])
    return g_cxcy.reshape(g_cxcy.size(0), -1)  # [P, 5, 2] -> [P, 10]


def decode(loc, priors, variances):
    """Decode box regressions back to boxes (the inverse of encode).

    Args:
        loc (Tensor[P, 4]): predicted (dcx, dcy, dw, dh).
        priors (Tensor[P, 4]): (cx, cy, w, h) relative to the image.
        variances (list[float]): [center variance, size variance].
    Returns:
        Tensor[P, 4]: boxes as (x1, y1, x2, y2) relative to the image.
    """
    boxes = torch.cat((
        priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
        priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def decode_landm(pre, priors, variances):
    """Decode landmark regressions (the inverse of encode_landm).

    Args:
        pre (Tensor[P, 10]): predicted offsets, (dx, dy) x 5.
        priors (Tensor[P, 4]): (cx, cy, w, h) relative to the image.
        variances (list[float]): [center variance, size variance].
    Returns:
        Tensor[P, 10]: five (x, y) landmarks relative to the image.
    """
    landms = torch.cat((priors[:, :2] + pre[:, :2] * variances[0] * priors[:, 2:],
                        priors[:, :2] + pre[:, 2:4] * variances[0] * priors[:, 2:],
                        priors[:, :2] + pre[:, 4:6] * variances[0] * priors[:, 2:],
                        priors[:, :2] + pre[:, 6:8] * variances[0] * priors[:, 2:],
                        priors[:, :2] + pre[:, 8:10] * variances[0] * priors[:, 2:],
                        ), dim=1)
    return landms


def log_sum_exp(x):
    """log(sum(exp(x), dim=1)) computed stably, used for the unaveraged confidence loss
    across all examples in a batch.

    Args:
        x (Tensor[N, C]): class logits.
    Returns:
        Tensor[N, 1].
    """
    x_max = x.detach().max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1, keepdim=True)) + x_max
