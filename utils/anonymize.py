"""Hiding faces in an image: each detection's box, scaled about its centre, is blurred,
pixelated or filled (anonymize), and the masks' boxes (scale_boxes) that the hidden-faces
rule (widerface_evaluate/hidden_faces.py) measures.

Kept free of torch, like utils/image.py, so that the torch-free paths can use it.

Coordinates are continuous pixels: pixel (x, y) covers [x, x + 1) x [y, y + 1), its centre
at (x + 0.5, y + 0.5), as the detector's boxes are. A mask covers every pixel its scaled
box touches (box shape) or whose centre lies inside the ellipse inscribed in that box
(ellipse shape); a face's edge is never left showing by rounding.

The strength follows the face, so a large face is as unrecognisable as a small one:
blur uses a box filter whose kernel is a fixed fraction of the mask's size, pixelate a
fixed number of blocks across the face's box. Both are taken from the mask before it is
clipped at the image borders, so a face half outside the image is hidden as strongly as
one inside. Only each mask's bounding rectangle is read and written, never the whole
image, so a frame with many faces costs what its faces cost.
"""
import cv2
import numpy as np
from numpy.typing import ArrayLike

from utils.errors import InputError

METHODS = ('blur', 'pixelate', 'solid')
MASK_SHAPES = ('ellipse', 'box')
DEFAULT_MASK_SCALE = 1.3
DEFAULT_MASK_SHAPE = 'ellipse'
# The scripts' lowest score masked (detect.py --anonymize_thres), its own threshold, lower
# than the one that draws faces: hiding a face wrongly costs less than missing one. For now
# deface's default threshold, the peer users compare with (bench/README.md, Anonymising).
DEFAULT_ANONYMIZE_THRES = 0.2
# Blur: the box filter's kernel, as a fraction of the (unclipped) mask's width and height.
# The box filter costs the same per pixel whatever its kernel, so the strength is free.
BLUR_KERNEL_FRACTION = 0.5
# Blur: box filters applied one after another (two make a tent, smoother than one box,
# so that no block edge outlines the features underneath).
BLUR_PASSES = 2
# Pixelate: blocks across the face's box (its width; as many rows as make square blocks),
# and the smallest block in pixels (so that a face a few pixels wide still changes).
PIXELATE_BLOCKS = 5
MIN_PIXELATE_BLOCK = 2
SOLID_COLOUR = 0  # black, in every channel
BOX_COLUMNS = 4  # x1 y1 x2 y2
_TINY = 1e-9  # the smallest ellipse semi-axis (a box of zero width masks no pixel centre)
SCORE_COLUMN = 4


def _as_dets(dets: ArrayLike) -> np.ndarray:
    """dets as float64 [N, K]: K == 4 (boxes only) or K >= 5 (x1 y1 x2 y2 score ...)."""
    try:
        d = np.asarray(dets, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"detections must be an array of numbers [N, 4] or [N, >= 5], got {type(dets).__name__}: "
                         f"{e}") from None
    if d.ndim == 1 and d.size == 0:
        d = d.reshape(0, BOX_COLUMNS)
    if d.ndim != 2 or d.shape[1] < BOX_COLUMNS:
        raise InputError(f"detections must have shape [N, 4] (boxes) or [N, >= 5] (x1 y1 x2 y2 score ...), "
                         f"got {list(d.shape)}")
    bad = ~np.isfinite(d[:, :min(d.shape[1], SCORE_COLUMN + 1)]).all(axis=1)
    bad |= (d[:, 2] < d[:, 0]) | (d[:, 3] < d[:, 1])
    if bad.any():
        k = int(np.argmax(bad))
        raise InputError(f"detection {k} is not a box x1 <= x2, y1 <= y2 of finite numbers: "
                         f"{d[k, :min(d.shape[1], SCORE_COLUMN + 1)].tolist()}")
    return d


def _check_mask_scale(mask_scale):
    if not (isinstance(mask_scale, (int, float, np.number)) and np.isfinite(mask_scale) and mask_scale > 0):
        raise InputError(f"mask_scale must be a finite number > 0, got {mask_scale!r}")


def scale_boxes(boxes: ArrayLike, mask_scale: float) -> np.ndarray:
    """Boxes scaled by mask_scale about their centres.

    Args:
        boxes (array[N, >= 4]): x1 y1 x2 y2 in the first four columns (further columns ignored).
        mask_scale (float): > 0; 1 is the box itself, 1.3 a box 30% wider and taller.
    Returns:
        ndarray[N, 4] float64: x1 y1 x2 y2 of the scaled boxes (not clipped).
    """
    _check_mask_scale(mask_scale)
    b = _as_dets(boxes)[:, :BOX_COLUMNS]
    centre = (b[:, :2] + b[:, 2:]) / 2
    half = (b[:, 2:] - b[:, :2]) * (mask_scale / 2)
    return np.hstack([centre - half, centre + half])


def mask_rectangles(masks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The pixel rectangles that masks (ndarray[N, 4] x1 y1 x2 y2, continuous) touch, clipped
    to an image of shape (H, W, ...): ndarray[N, 4] int64 x0 y0 x1 y1, x1 and y1 exclusive;
    empty (x0 >= x1 or y0 >= y1) for a mask wholly outside the image."""
    h, w = shape[:2]
    lo = np.floor(masks[:, :2])
    hi = np.ceil(masks[:, 2:])
    lo = np.clip(lo, 0, [w, h])
    hi = np.clip(hi, 0, [w, h])
    return np.hstack([lo, hi]).astype(np.int64)


def masked_detections(dets: ArrayLike, shape: tuple[int, ...], mask_scale: float = DEFAULT_MASK_SCALE,
                      thres: float = 0.0) -> np.ndarray:
    """ndarray[N] bool: which of dets anonymize(img, dets, ..., mask_scale, thres=thres) masks
    in an image of shape (H, W, ...), without touching any pixel: for a JSON record written
    before the image is (score >= thres, or no score column; the mask not wholly outside).

    Raises:
        InputError: as anonymize, for dets, mask_scale or thres.
    """
    d = _as_dets(dets)
    return _chosen(d, thres) & _nonempty(mask_rectangles(scale_boxes(d, mask_scale), shape))


def _chosen(d, thres):
    if not (isinstance(thres, (int, float, np.number)) and np.isfinite(thres)):
        raise InputError(f"thres must be a finite number, got {thres!r}")
    return d[:, SCORE_COLUMN] >= thres if d.shape[1] > SCORE_COLUMN else np.ones(len(d), dtype=bool)


def _nonempty(rects):
    return (rects[:, 0] < rects[:, 2]) & (rects[:, 1] < rects[:, 3])


def _ellipse_inside(mask, x0, y0, x1, y1):
    """[y1 - y0, x1 - x0] bool: the pixels of rectangle (x0, y0)-(x1, y1) whose centres lie
    inside the ellipse inscribed in mask (x1 y1 x2 y2, continuous)."""
    mx1, my1, mx2, my2 = mask.tolist()
    cx, cy = (mx1 + mx2) / 2, (my1 + my2) / 2
    ax, ay = max((mx2 - mx1) / 2, _TINY), max((my2 - my1) / 2, _TINY)
    xs = (np.arange(x0, x1) + (0.5 - cx)) / ax  # [W_r]
    ys = (np.arange(y0, y1) + (0.5 - cy)) / ay  # [H_r]
    return np.add.outer(ys * ys, xs * xs) <= 1  # [H_r, W_r]


def _blurred(roi, mask):
    """roi blurred by BLUR_PASSES box filters with a kernel BLUR_KERNEL_FRACTION of mask's size."""
    kw = max(1, int(round(BLUR_KERNEL_FRACTION * (mask[2] - mask[0]))))
    kh = max(1, int(round(BLUR_KERNEL_FRACTION * (mask[3] - mask[1]))))
    out = roi
    for _ in range(BLUR_PASSES):
        # Reflected at the rectangle's edges: only pixels under the mask's rectangle are read.
        out = cv2.blur(out, (kw, kh), borderType=cv2.BORDER_REFLECT)
    return out


def _pixelated(roi, box):
    """roi in blocks of about the face box's width / PIXELATE_BLOCKS (at least
    MIN_PIXELATE_BLOCK pixels), each the mean of its pixels (cv2's area resampling down,
    nearest-neighbour back up)."""
    block = max(float(MIN_PIXELATE_BLOCK), (box[2] - box[0]) / PIXELATE_BLOCKS)
    h, w = roi.shape[:2]
    small = cv2.resize(roi, (max(1, round(w / block)), max(1, round(h / block))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def anonymize(img: np.ndarray, dets: ArrayLike, method: str = 'blur', mask_scale: float = DEFAULT_MASK_SCALE,
              mask_shape: str = DEFAULT_MASK_SHAPE, thres: float = 0.0) -> np.ndarray:
    """Hide the faces of dets in img, in place: each detection's box, scaled by mask_scale about
    its centre and clipped at the image borders, is blurred, pixelated or filled.

    In place, as draw_detections draws: a script anonymises a frame it owns (as detect.py's
    writer thread draws on its frame once the crops are cut from it), and a 1080p frame is
    not copied per frame. Pass img.copy() to keep the original.

    Masks are applied in the order of dets; where two overlap, the later one works on the
    earlier one's result, so no pixel of either face comes back.

    Args:
        img (ndarray[H, W] or [H, W, C]): the image (BGR uint8 from read_image), written in place.
        dets (array[N, 4] or [N, >= 5]): x1 y1 x2 y2 (score, landmarks ...) in img's pixels.
            With a score column, only the detections with score >= thres are masked; boxes
            without scores are all masked.
        method (str): 'blur' (box filters with a kernel proportional to the mask), 'pixelate'
            (PIXELATE_BLOCKS blocks across the face's box) or 'solid' (black).
        mask_scale (float): > 0: the mask's size relative to the box, about its centre.
        mask_shape (str): 'ellipse' (inscribed in the scaled box) or 'box'.
        thres (float): the lowest score masked (a finite number).
    Returns:
        ndarray[N] bool: which detections were masked (score >= thres, and the mask not
        wholly outside the image), for the JSON outputs to mark; masked_detections gives
        the same without masking.
    Raises:
        InputError (a ValueError): an unknown method or shape, mask_scale <= 0, dets not of
            shape [N, 4] or [N, >= 5] or holding a box that is not one, thres not a finite
            number, img not a writable image array.
    """
    if method not in METHODS:
        raise InputError(f"unknown anonymize method {method!r}: expected one of {', '.join(METHODS)}")
    if mask_shape not in MASK_SHAPES:
        raise InputError(f"unknown mask shape {mask_shape!r}: expected one of {', '.join(MASK_SHAPES)}")
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.size == 0:
        raise InputError(f"img must be an image array [H, W] or [H, W, C], got "
                         f"{list(img.shape) if isinstance(img, np.ndarray) else type(img).__name__}")
    if not img.flags.writeable:
        raise InputError("img is read-only: anonymize writes in place (pass a writable copy)")
    d = _as_dets(dets)
    masks = scale_boxes(d, mask_scale)  # [N, 4]
    rects = mask_rectangles(masks, img.shape)  # [N, 4]
    masked = _chosen(d, thres) & _nonempty(rects)  # as masked_detections
    for k in np.flatnonzero(masked):
        x0, y0, x1, y1 = rects[k]
        roi = img[y0:y1, x0:x1]  # a view: written in place
        if method == 'blur':
            new = _blurred(roi, masks[k])
        elif method == 'pixelate':
            new = _pixelated(roi, d[k, :BOX_COLUMNS])
        else:
            new = np.full_like(roi, SOLID_COLOUR)
        if mask_shape == 'box':
            roi[...] = new
        else:
            inside = _ellipse_inside(masks[k], x0, y0, x1, y1)  # [H_r, W_r]
            # cv2.copyTo writes into the view itself, with less overhead per call than np.copyto
            # (which counts on a frame of hundreds of small faces).
            out = cv2.copyTo(new, inside.view(np.uint8), roi)
            if out is not roi:
                roi[...] = out
    return masked
