"""The host-side stages of detection: the network input from an image, and detections
from the network's outputs (ssd.pytorch's Detect layer, for RetinaFace).

    image (H x W x 3 uint8 BGR)
      -> test_scale resize, minus the mean, HWC -> CHW           (to_input)
      -> the network (models.detector runs it)
      -> score threshold, sort, optional top_k, decode, NMS (+1 convention), optional
         keep_top_k, landmarks of the kept boxes                  (Detect)
      -> detections ndarray[N, 15] float32 in original-image pixels:
         x1 y1 x2 y2 score, then the five landmarks (x, y): left eye, right eye, nose,
         left mouth corner, right mouth corner.

Every stage is written with numpy and OpenCV. Two run as compiled kernels when those are
built, because bench/bench_kernels.py shows they pay for themselves end to end: to_input
(utils/kernels/cpu_pipeline.pyx) and NMS (utils/nms/cpu_nms.pyx). Each does its Python
version's arithmetic in the same order, so it gives the same bits (tested), and an
unbuilt one says so once and the Python version runs. Only the candidates above the score
threshold are decoded, and their landmarks only if NMS keeps them: decoding is
elementwise, so each row gets exactly the value it would get from decoding every prior,
as the reference does.

The decoding functions mirror utils.box_utils.decode / decode_landm followed by the
reference's `* scale / resize`. numpy and torch's exp may round differently, so exp is
torch's (kernels.torch_exp_) for the torch backend, whose numbers are the reference's;
the onnxruntime backend, which must run without torch, uses kernels.float_exp_.
"""
from functools import lru_cache
from math import ceil

import cv2
import numpy as np

from data.config import BGR_MEAN, MAX_SIZE, TARGET_SIZE
from utils import kernels
from utils.nms import fast_nms

# Mixed-size batches are padded up to a multiple of the coarsest stride, so that every
# pyramid level of the padded input is exactly half the size of the previous one.
PAD_MULTIPLE = 32
# Columns of a detection row: box (4), score (1), five landmarks (10).
DET_COLUMNS = 15


def empty_detections():
    """ndarray[0, 15] float32: the result for an image without detections."""
    return np.zeros((0, DET_COLUMNS), dtype=np.float32)


def resize_factor(height, width, origin_size):
    """The resize factor the reference applies before detection.

    Args:
        height, width (int): the image size in pixels.
        origin_size (bool): True keeps the original size (the factor is 1).
    Returns:
        int | float: 1 when origin_size, else TARGET_SIZE / short side, or
        MAX_SIZE / long side when the long side would exceed MAX_SIZE.
    """
    if origin_size:
        return 1
    im_size_min = np.min([height, width])
    im_size_max = np.max([height, width])
    resize = float(TARGET_SIZE) / float(im_size_min)
    # prevent the bigger axis from being more than MAX_SIZE
    if np.round(resize * im_size_max) > MAX_SIZE:
        resize = float(MAX_SIZE) / float(im_size_max)
    return resize


@lru_cache(maxsize=128)
def grid_crop_rows(steps, anchors, size, padded):
    """Indices of an image's own priors among the priors of a bottom/right-padded input.

    Padding at the bottom and right keeps the feature-map cells of the image where they
    were (every stride-s map still starts at the image's top-left corner); the padded map
    just has extra rows and columns. Picking, level by level, the rows < ceil(h / s) and
    columns < ceil(w / s) gives the image's predictions in the order of PriorBox(cfg, size).

    Args:
        steps (tuple[int]): cfg['steps'].
        anchors (tuple[int]): anchors per cell at each level (len of cfg['min_sizes'][k]).
        size (tuple[int, int]): the image's (h, w); padded (tuple[int, int]): the input's.
    Returns:
        ndarray[P] int64, shared by the cache: treat it as read-only.
    """
    parts, offset = [], 0
    for step, a in zip(steps, anchors):
        rows_p, cols_p = ceil(padded[0] / step), ceil(padded[1] / step)
        rows, cols = ceil(size[0] / step), ceil(size[1] / step)
        r = np.arange(rows, dtype=np.int64).reshape(rows, 1, 1)
        c = np.arange(cols, dtype=np.int64).reshape(1, cols, 1)
        k = np.arange(a, dtype=np.int64).reshape(1, 1, a)
        parts.append((offset + (r * cols_p + c) * a + k).reshape(-1))  # [rows, cols, a] -> [rows*cols*a]
        offset += rows_p * cols_p * a
    return np.concatenate(parts)


def to_input(img, dst, mean=BGR_MEAN):
    """Write img minus mean into dst as CHW float32 (the reference's
    `np.float32(img) - (104, 117, 123)`, then HWC -> CHW).

    Args:
        img (ndarray[H, W, 3] uint8 | float32): a BGR image (float32 once resized).
        dst (ndarray[3, >=H, >=W] float32): one image of the network input; dst[:, :H, :W] is written.
        mean (tuple): the BGR pixel to subtract (an ONNX file may name another).
    """
    # Looked up at each call, so that a benchmark can switch the kernel off.
    kernel = getattr(kernels.compiled, 'to_input', None)
    if kernel is not None:
        return kernel(np.ascontiguousarray(img), dst, mean)
    if kernels.compiled is None:
        kernels.warn_not_built()
    h, w = img.shape[:2]
    # One plane at a time, subtracted straight into place in float32 arithmetic.
    for c, plane in enumerate(cv2.split(img)):
        cv2.subtract(plane, float(mean[c]), dst=dst[c, :h, :w], dtype=cv2.CV_32F)


def decode_boxes(loc, priors, variance, size, resize, exp_=kernels.torch_exp_):
    """Boxes in original-image pixels, exactly `decode(loc, priors, variance) * scale / resize`.

    Args:
        loc (ndarray[K, 4] float32): predicted (dcx, dcy, dw, dh) of K candidates.
        priors (ndarray[K, 4] float32): their priors, (cx, cy, w, h) relative to the input.
        variance (list[float]): cfg['variance'].
        size (tuple[int, int]): (h, w) of the network input; resize (float): its scale factor.
        exp_ (callable): exp in place on a C-contiguous float32 array (kernels.torch_exp_
            or kernels.float_exp_).
    Returns:
        ndarray[K, 4] float32: x1 y1 x2 y2.
    """
    h, w = size
    centre, prior_wh = priors[:, :2], priors[:, 2:]
    # decode's operations in decode's operand order (which also fixes NaN payloads).
    xy = centre + loc[:, :2] * variance[0] * prior_wh
    wh = prior_wh * exp_(loc[:, 2:] * variance[1])  # the product is a new C-contiguous array
    top_left = xy - wh / 2
    boxes = np.concatenate((top_left, wh + top_left), axis=1)  # decode's `boxes[:, 2:] += boxes[:, :2]`
    return boxes * np.array([w, h, w, h], dtype=np.float32) / resize


def decode_landmarks(landms, priors, variance, size, resize):
    """Landmarks in original-image pixels, exactly `decode_landm(landms, priors, variance) * scale1 / resize`.

    Args:
        landms (ndarray[K, 10] float32): predicted offsets (dx, dy) x 5 of K candidates.
        priors, variance, size, resize: as for decode_boxes.
    Returns:
        ndarray[K, 10] float32: five (x, y) pairs.
    """
    h, w = size
    # [K, 5, 2]: the five points of each candidate, each offset from its prior's centre.
    points = priors[:, np.newaxis, :2] + landms.reshape(-1, 5, 2) * variance[0] * priors[:, np.newaxis, 2:]
    return (points * np.array([w, h], dtype=np.float32) / resize).reshape(-1, 10)


def select_scores(conf, threshold):
    """The candidates with face score > threshold, in index order (the reference's
    `np.where(scores > threshold)[0]`).

    Args:
        conf (ndarray[P, 2] float32): (background, face) probabilities of every prior.
        threshold (float): the confidence threshold.
    Returns:
        (inds ndarray[K] int64, scores ndarray[K] float32).
    """
    scores = conf[:, 1]
    inds = np.flatnonzero(scores > threshold)
    return inds, scores[inds]


def decode_dets(loc, priors, inds, scores, order, variance, size, resize, exp_=kernels.torch_exp_):
    """The candidates in score order as NMS input: decode_boxes of loc[rows], priors[rows]
    for rows = inds[order], and their scores.

    Args:
        loc (ndarray[P, 4] float32), priors (ndarray[P, 4] float32): as for decode_boxes,
            for every prior;
        inds (ndarray[K] int64), scores (ndarray[K] float32): the candidates and their
            scores (select_scores);
        order (ndarray[K'] int64): positions in inds, in output order (K' <= K);
        variance, size, resize, exp_: as for decode_boxes.
    Returns:
        ndarray[K', 5] float32: x1 y1 x2 y2 score.
    """
    rows = inds[order]
    boxes = decode_boxes(loc[rows], priors[rows], variance, size, resize, exp_)
    return np.hstack((boxes, scores[order, np.newaxis])).astype(np.float32, copy=False)


def assemble(dets, keep, landms, priors, inds, order, variance, size, resize):
    """The detections dets[keep] with their landmarks decoded (decode_landmarks of
    landms[rows], priors[rows] for rows = inds[order[keep]]).

    Args:
        dets (ndarray[K', 5] float32): from decode_dets; keep (ndarray[N] int64): rows of dets;
        landms (ndarray[P, 10] float32), priors (ndarray[P, 4] float32), inds (ndarray[K]
            int64), order (ndarray[K'] int64), variance, size, resize: as for decode_dets.
    Returns:
        ndarray[N, 15] float32: x1 y1 x2 y2 score, then five landmark (x, y) pairs.
    """
    kept = inds[order[keep]]
    points = decode_landmarks(landms[kept], priors[kept], variance, size, resize)
    return np.concatenate((dets[keep], points), axis=1)


def candidates_on_device(loc, conf, landms, priors, threshold):
    """The candidates with face score > threshold, picked where the outputs are (a GPU)
    and copied to the host with their priors, so that only they cross the bus.

    Args:
        loc [P, 4], conf [P, 2], landms [P, 10] (Tensors on any device): one image's outputs.
        priors (ndarray[P, 4] float32): their priors.
        threshold (float): the confidence threshold.
    Returns:
        (loc [K, 4], landms [K, 10], priors [K, 4], inds [K] = 0..K-1, scores [K]): host
        ndarrays, to pass to Detect.from_candidates; the same values as selecting on the host.
    """
    import torch

    scores = conf[:, 1]  # [P]
    inds = torch.nonzero(scores > threshold).squeeze(1)  # [K]
    host_inds = inds.cpu().numpy()
    return (loc[inds].cpu().numpy(), landms[inds].cpu().numpy(), priors[host_inds],
            np.arange(len(host_inds)), scores[inds].cpu().numpy())


class Detect:
    """Detections from one image's network outputs, on the host (ssd.pytorch's Detect).

    Args:
        variance (list[float]): cfg['variance'].
        confidence_threshold (float): keep priors whose face score is > this.
        nms_threshold (float): IoU above which NMS suppresses a box.
        top_k (int | None): keep at most this many candidates before NMS (None: all).
        keep_top_k (int | None): keep at most this many detections after NMS (None: all).
        exp_ (callable): kernels.torch_exp_ (the reference's numbers) or kernels.float_exp_
            (without torch).
    """

    def __init__(self, variance, confidence_threshold=0.02, nms_threshold=0.4, top_k=None, keep_top_k=None,
                 exp_=kernels.torch_exp_):
        self.variance = variance
        self.confidence_threshold = confidence_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.keep_top_k = keep_top_k
        self.exp_ = exp_

    def __call__(self, loc, conf, landms, priors, size, resize):
        """Detections from every prior's outputs.

        Args:
            loc [P, 4], conf [P, 2], landms [P, 10] (float32 ndarrays): the outputs for the
                priors (ndarray[P, 4]) of an input of size (h, w).
            size (tuple[int, int]): (h, w) of the network input (the resized image).
            resize (float): the resize factor from the original image to size.
        Returns:
            ndarray[N, 15] float32: x1 y1 x2 y2 score and five landmark (x, y) pairs in
            original-image pixels, highest score first.
        """
        inds, scores = select_scores(conf, self.confidence_threshold)
        return self.from_candidates(loc, landms, priors, inds, scores, size, resize)

    def from_candidates(self, loc, landms, priors, inds, scores, size, resize):
        """Detections from the candidates above the threshold: rows inds of loc, landms and
        priors, with their scores (select_scores, or candidates_on_device)."""
        if inds.size == 0:
            return empty_detections()
        # The reference's order: numpy's argsort of the kept scores, reversed (numpy breaks
        # ties its own way, so the sort must be numpy's on the same array).
        order = scores.argsort()[::-1]
        if self.top_k:
            order = order[:self.top_k]
        dets = decode_dets(loc, priors, inds, scores, order, self.variance, size, resize, self.exp_)  # [K, 5]
        # Exactly py_cpu_nms's keep list (see utils/nms/cpu_nms.pyx), fast on crowds.
        keep = fast_nms(dets, self.nms_threshold)
        if self.keep_top_k:
            keep = keep[:self.keep_top_k]
        return assemble(dets, keep, landms, priors, inds, order, self.variance, size, resize)
