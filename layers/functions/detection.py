"""The host-side stages of detection: the network input from an image, and detections
from the network's outputs (ssd.pytorch's Detect layer, for RetinaFace).

    image (H x W x 3 uint8 BGR)
      -> resize (resize_factor: the reference's rule, its target_size and max_size
         settings; resize_image), minus the mean, HWC -> CHW     (to_input)
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
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from math import ceil
from typing import TYPE_CHECKING

import cv2
import numpy as np

from data.config import BGR_MEAN, MAX_SIZE, TARGET_SIZE
from utils import kernels
from utils.errors import InputError
from utils.nms import fast_nms

if TYPE_CHECKING:  # the torch-free path imports this module
    import torch

# Mixed-size batches are padded up to a multiple of the coarsest stride, so that every
# pyramid level of the padded input is exactly half the size of the previous one.
PAD_MULTIPLE = 32
# Columns of a detection row: box (4), score (1), five landmarks (10).
DET_COLUMNS = 15
# Detect.select's result: the candidates' loc [K, 4], landms [K, 10], priors [K, 4] and
# scores [K], float32 ndarrays.
Candidates = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def empty_detections() -> np.ndarray:
    """ndarray[0, 15] float32: the result for an image without detections."""
    return np.zeros((0, DET_COLUMNS), dtype=np.float32)


def resize_factor(height: int, width: int, origin_size: bool, target_size: int | None = TARGET_SIZE,
                  max_size: int | None = MAX_SIZE) -> float:
    """The resize factor applied before detection: the reference's rule, with its two sizes as settings.

    resize = target_size / short side; if round(resize * long side) > max_size, then
    resize = max_size / long side. Without a target_size only max_size decides: the long
    side becomes max_size, up or down, whatever the short side. Without a max_size the short
    side becomes target_size, whatever the long side.

    Args:
        height, width (int): the image size in pixels.
        origin_size (bool): True keeps the original size (the factor is 1; the sizes are not read).
        target_size (int | None): the short side's size (the reference's test scale: TARGET_SIZE).
        max_size (int | None): the most the long side may round to (the reference's: MAX_SIZE).
    Returns:
        int | float: 1 when origin_size, else the factor (see resized_size for the size it gives).
    """
    if origin_size:
        return 1
    if target_size is None and max_size is None:
        raise ValueError("resize_factor needs a target_size or a max_size when origin_size is False")
    im_size_min = np.min([height, width])
    im_size_max = np.max([height, width])
    if target_size is None:
        return float(max_size) / float(im_size_max)
    resize = float(target_size) / float(im_size_min)
    # prevent the bigger axis from being more than max_size
    if max_size is not None and np.round(resize * im_size_max) > max_size:
        resize = float(max_size) / float(im_size_max)
    return resize


def resized_size(height: int, width: int, resize: float) -> tuple[int, int]:
    """(h, w) of an image of height x width resized by resize as resize_image does it
    (OpenCV rounds each side's scaled size to the nearest integer, halves to even)."""
    if resize == 1:
        return int(height), int(width)
    return round(height * resize), round(width * resize)


def resize_image(img: np.ndarray, resize: float) -> np.ndarray:
    """img resized by resize as the reference does it before detection: converted to float32,
    then cv2.resize with fx = fy = resize and INTER_LINEAR; img itself when resize is 1.

    Args:
        img (ndarray[H, W, 3] uint8): a BGR image.
        resize (float): the factor (resize_factor).
    Returns:
        ndarray[H', W', 3] float32 (uint8: img itself when resize is 1), H', W' = resized_size.
    Raises:
        InputError: a side would be resized to less than one pixel (a very thin image at a
            small size), which OpenCV cannot make.
    """
    if resize == 1:
        return img
    h, w = resized_size(img.shape[0], img.shape[1], resize)
    if h < 1 or w < 1:
        raise InputError(f"a {img.shape[1]}x{img.shape[0]} image resized by {resize:.6g} would be {w}x{h} pixels: "
                         f"too thin to detect in at this size (a larger size, or the original size, keeps it)")
    return cv2.resize(np.float32(img), None, None, fx=resize, fy=resize, interpolation=cv2.INTER_LINEAR)


@lru_cache(maxsize=128)
def grid_crop_rows(steps: tuple[int, ...], anchors: tuple[int, ...], size: tuple[int, int],
                   padded: tuple[int, int]) -> np.ndarray:
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


# The compiled to_input (utils/kernels/cpu_pipeline.pyx) when it is built, else None: the
# same bits as the numpy code in to_input, faster (bench/bench_kernels.py). Chosen once, at
# import; a test or benchmark that wants the numpy code sets this to None.
to_input_kernel = getattr(kernels.compiled, 'to_input', None)


def to_input(img: np.ndarray, dst: np.ndarray, mean: tuple = BGR_MEAN) -> None:
    """Write img minus mean into dst as CHW float32 (the reference's
    `np.float32(img) - (104, 117, 123)`, then HWC -> CHW).

    Args:
        img (ndarray[H, W, 3] uint8 | float32): a BGR image (float32 once resized).
        dst (ndarray[3, >=H, >=W] float32): one image of the network input; dst[:, :H, :W] is written.
        mean (tuple): the BGR pixel to subtract (an ONNX file may name another).
    """
    if to_input_kernel is not None:
        to_input_kernel(np.ascontiguousarray(img), dst, mean)
        return
    kernels.warn_not_built()
    h, w = img.shape[:2]
    # One plane at a time, subtracted straight into place in float32 arithmetic.
    for c, plane in enumerate(cv2.split(img)):
        cv2.subtract(plane, float(mean[c]), dst=dst[c, :h, :w], dtype=cv2.CV_32F)


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variance: list[float], size: tuple[int, int], resize: float,
                 exp_: Callable[[np.ndarray], np.ndarray] = kernels.torch_exp_) -> np.ndarray:
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


def decode_landmarks(landms: np.ndarray, priors: np.ndarray, variance: list[float], size: tuple[int, int],
                     resize: float) -> np.ndarray:
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


class Detect:
    """Detections from one image's network outputs, on the host (ssd.pytorch's Detect).

    The one owner of the post-processing settings: a Detector reads them here.

    Args:
        variance (list[float]): cfg['variance'].
        confidence_threshold (float): keep priors whose face score is > this.
        nms_threshold (float): IoU above which NMS suppresses a box.
        top_k (int | None): keep at most this many candidates before NMS (None: all).
        keep_top_k (int | None): keep at most this many detections after NMS (None: all).
        exp_ (callable): kernels.torch_exp_ (the reference's numbers) or kernels.float_exp_
            (without torch).
    """

    def __init__(self, variance: list[float], confidence_threshold: float = 0.02, nms_threshold: float = 0.4,
                 top_k: int | None = None, keep_top_k: int | None = None,
                 exp_: Callable[[np.ndarray], np.ndarray] = kernels.torch_exp_) -> None:
        self.variance = variance
        self.confidence_threshold = confidence_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.keep_top_k = keep_top_k
        self.exp_ = exp_

    def __call__(self, loc: np.ndarray | torch.Tensor, conf: np.ndarray | torch.Tensor,
                 landms: np.ndarray | torch.Tensor, priors: np.ndarray,
                 size: tuple[int, int], resize: float) -> np.ndarray:
        """Detections from every prior's outputs.

        Args:
            loc [P, 4], conf [P, 2], landms [P, 10] (float32 ndarrays, or Tensors on any
                device): one image's outputs for the priors (ndarray[P, 4]) of an input of
                size (h, w).
            size (tuple[int, int]): (h, w) of the network input (the resized image).
            resize (float): the resize factor from the original image to size.
        Returns:
            ndarray[N, 15] float32: x1 y1 x2 y2 score and five landmark (x, y) pairs in
            original-image pixels, highest score first.
        """
        loc, landms, priors, scores = self.select(loc, conf, landms, priors)  # [K, ...] each
        if len(scores) == 0:
            return empty_detections()
        # The reference's order: numpy's argsort of the kept scores, reversed (numpy breaks
        # ties its own way, so the sort must be numpy's on the same array).
        order = scores.argsort()[::-1]  # [K']
        if self.top_k:
            order = order[:self.top_k]
        boxes = decode_boxes(loc[order], priors[order], self.variance, size, resize, self.exp_)  # [K', 4]
        dets = np.hstack((boxes, scores[order, np.newaxis])).astype(np.float32, copy=False)  # [K', 5]
        # Exactly py_cpu_nms's keep list (see utils/nms/cpu_nms.pyx), fast on crowds.
        keep = fast_nms(dets, self.nms_threshold)  # [N], rows of dets
        if self.keep_top_k:
            keep = keep[:self.keep_top_k]
        # Landmarks only for the kept boxes: decoding is elementwise, so each gets exactly the
        # value it would get from decoding every prior, as the reference does.
        kept = order[keep]
        points = decode_landmarks(landms[kept], priors[kept], self.variance, size, resize)  # [N, 10]
        return np.concatenate((dets[keep], points), axis=1)

    def candidates(self, loc: np.ndarray | torch.Tensor, conf: np.ndarray | torch.Tensor,
                   landms: np.ndarray | torch.Tensor, priors: np.ndarray,
                   size: tuple[int, int], resize: float) -> np.ndarray:
        """Every candidate above the threshold, decoded, without sorting or NMS: what a
        pyramid pass or a tile hands to the merge over all passes (layers/functions/pyramid.py).

        Args:
            as for __call__.
        Returns:
            ndarray[K, 15] float32: x1 y1 x2 y2 score and five landmark (x, y) pairs in
            original-image pixels, in prior order.
        """
        loc, landms, priors, scores = self.select(loc, conf, landms, priors)  # [K, ...] each
        out = np.empty((len(scores), DET_COLUMNS), dtype=np.float32)
        out[:, :4] = decode_boxes(loc, priors, self.variance, size, resize, self.exp_)
        out[:, 4] = scores
        out[:, 5:] = decode_landmarks(landms, priors, self.variance, size, resize)
        return out

    def select(self, loc: np.ndarray | torch.Tensor, conf: np.ndarray | torch.Tensor,
               landms: np.ndarray | torch.Tensor, priors: np.ndarray) -> Candidates:
        """The candidates: the priors whose face score is > confidence_threshold, in prior
        order, as host ndarrays.

        Args:
            loc [P, 4], conf [P, 2], landms [P, 10]: float32 ndarrays, or Tensors on any device.
            priors (ndarray[P, 4] float32).
        Returns:
            (loc [K, 4], landms [K, 10], priors [K, 4], scores [K]) float32 ndarrays.
        """
        if not isinstance(loc, np.ndarray):
            if loc.device.type != 'cpu':
                return self.select_on_device(loc, conf, landms, priors)
            loc, conf, landms = loc.numpy(), conf.numpy(), landms.numpy()  # the same memory
        scores = conf[:, 1]  # [P]
        # The reference's np.where(scores > threshold): numpy compares the float32 scores
        # with the threshold in float32.
        inds = np.flatnonzero(scores > self.confidence_threshold)  # [K]
        return loc[inds], landms[inds], priors[inds], scores[inds]

    def select_on_device(self, loc: torch.Tensor, conf: torch.Tensor, landms: torch.Tensor,
                         priors: np.ndarray) -> Candidates:
        """select for Tensors on a GPU: filtered where they are, so that only the candidates
        cross the bus. The same values as select on the host (torch also compares the
        float32 scores with the threshold in float32); it runs on CPU tensors too."""
        scores = conf[:, 1]  # [P]
        inds = (scores > self.confidence_threshold).nonzero().squeeze(1)  # [K], on the device
        return (loc[inds].cpu().numpy(), landms[inds].cpu().numpy(), priors[inds.cpu().numpy()],
                scores[inds].cpu().numpy())
