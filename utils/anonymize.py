"""Hiding faces in an image: each detection's box, scaled about its centre, is blurred,
pixelated or filled (anonymize), and the masks' boxes (scale_boxes) that the hidden-faces
rule (widerface_evaluate/hidden_faces.py) measures. In video, MaskHold keeps a face masked
through the frames where the detector misses it.

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
# MaskHold: a box of a frame continues a face when it overlaps the face's predicted box with at
# least this IoU, the best overlaps paired first, one to one. Low, so that a small face whose
# motion is not known yet (a 10-pixel face panning 8 pixels a frame overlaps its last box by
# 0.11) is followed from its second frame on; a neighbour's box in a crowd pairs with its own
# face first, and one that overlaps less leaves the face held (a mask that lingers costs a
# blurred patch; releasing a face early would show it).
SAME_FACE_IOU = 0.1
# MaskHold: a face continued by a box that overlaps its predicted box less than this is held too
# (the box may show only part of it: a detector's box on half a face, in a frame where it misses
# the face proper).
HOLD_RELEASE_IOU = 0.5
# MaskHold: a face's motion is this share of its latest change per frame plus the rest of its
# motion before: one detection's jitter moves it half as far.
MOTION_SMOOTHING = 0.5


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


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each of boxes a (ndarray[A, 4]) with each of b (ndarray[B, 4]), x1 y1 x2 y2 in
    continuous pixels (areas w * h, no +1): ndarray[A, B] float64, 0 for boxes of no area."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [A, B, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [A, B, 2]
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)  # [A, B]
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)  # [A]
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)  # [B]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(union > 0, inter / union, 0.0)


class MaskHold:
    """Keeps each face masked for `hold` processed frames after the last box that shows it, so
    that a frame where the detector misses a face still hides it (a single frame is enough to
    recognise someone).

    Feed it, frame after frame in order, the boxes masked in each processed frame (the
    detections anonymize masks there); it returns the boxes to mask in that frame: the frame's
    own, then one box for each face seen in one of the last `hold` processed frames that no box
    of this frame continues, or that only a box overlapping it by less than HOLD_RELEASE_IOU
    continues (a box on half a face). A hold of 0 returns the frame's own boxes: no hold.

    Faces are followed from frame to frame: a box continues a face when it overlaps the face's
    predicted box (its last box moved on by its motion) with IoU >= same_face_iou, each box
    continuing at most one face, the best overlaps first. A face's motion is its box's change per
    frame between its last two boxes, averaged with its motion before (MOTION_SMOOTHING), so one
    box's jitter does not throw it. A held face's box spans its last box and its predicted one:
    it hides the face whether it moved on or stopped. (On the 1080p pan, its last box alone hides
    a fraction of the faces the detector missed: bench/bench_hold.py measures both.) The cost is
    a mask that lingers up to `hold` frames where a face has gone.

    Frames written without detection (detect.py --every N) get between(): each face's box of the
    last processed frame stretched to where its motion takes it by the next one, so that the
    frames between two detections hide a moving face. The hold counts processed frames, so
    --hold 1 covers one missed detection whatever --every is.

    Args:
        hold (int): >= 0, the processed frames a face stays masked after its last box.
        same_face_iou (float): in (0, 1], the IoU at which a box continues a face.
    Attributes:
        masks (ndarray[M, 4] float64): the boxes the last update returned (none before the first).
    Raises:
        InputError: hold is not a whole number >= 0, or same_face_iou not in (0, 1].
    """

    # Whether faces' boxes follow their motion; off, a held box is the face's last box as it was
    # (bench/bench_hold.py measures both).
    follow_motion = True

    def __init__(self, hold: int, same_face_iou: float = SAME_FACE_IOU) -> None:
        if isinstance(hold, bool) or not isinstance(hold, (int, np.integer)) or hold < 0:
            raise InputError(f"hold must be a whole number of frames >= 0, got {hold!r}")
        if not (isinstance(same_face_iou, (int, float, np.number)) and 0 < same_face_iou <= 1):
            raise InputError(f"same_face_iou must be a number in (0, 1], got {same_face_iou!r}")
        self.hold = int(hold)
        self.same_face_iou = float(same_face_iou)
        # The faces followed: last box, motion per processed frame, frames since last seen.
        self._box = np.zeros((0, BOX_COLUMNS))  # [T, 4]
        self._motion = np.zeros((0, BOX_COLUMNS))  # [T, 4]
        self._moving = np.zeros(0, dtype=bool)  # [T]: the motion has been measured (seen twice)
        self._age = np.zeros(0, dtype=np.int64)  # [T]
        self.masks = np.zeros((0, BOX_COLUMNS))
        self._mask_motion = np.zeros((0, BOX_COLUMNS))  # [M, 4]: each mask's face's motion

    def _continued(self, predicted, own):
        """(face index, box index, IoU) triples: each box continues the face whose predicted box
        it overlaps most (IoU >= same_face_iou), greedily by IoU, one to one."""
        if not len(predicted) or not len(own):
            return []
        iou = _pairwise_iou(predicted, own)  # [T, N]
        face_used, box_used = np.zeros(iou.shape[0], dtype=bool), np.zeros(iou.shape[1], dtype=bool)
        pairs = []
        for flat in np.argsort(-iou, axis=None, kind='stable'):
            t, n = divmod(int(flat), iou.shape[1])
            if iou[t, n] < self.same_face_iou:
                break
            if not (face_used[t] or box_used[n]):  # each face and each box in one pair at most
                pairs.append((t, n, float(iou[t, n])))
                face_used[t] = box_used[n] = True
        return pairs

    def update(self, boxes: ArrayLike) -> np.ndarray:
        """The boxes to mask in the next processed frame.

        Args:
            boxes (array[N, 4] or [N, >= 5]): the boxes masked in this frame (x1 y1 x2 y2 in the
                first four columns; further columns ignored).
        Returns:
            ndarray[N + H, 4] float64: boxes' x1 y1 x2 y2 in their order, then one box for each
            of the H faces held, the most recently seen first. Pass it to anonymize (no score
            column: all masked).
        Raises:
            InputError: boxes is not an array of boxes (as anonymize's dets).
        """
        own = _as_dets(boxes)[:, :BOX_COLUMNS]
        last, last_motion, age = self._box, self._motion, self._age + 1  # [T, 4], [T, 4], [T]
        predicted = last + last_motion * age[:, None]  # [T, 4]
        seen = np.zeros(len(age), dtype=bool)
        weak = np.zeros(len(age), dtype=bool)  # continued by a box that may not show all of it
        motion, moving = np.zeros_like(own), np.zeros(len(own), dtype=bool)
        for t, n, iou in self._continued(predicted, own):
            seen[t] = True
            weak[t] = iou < HOLD_RELEASE_IOU
            if self.follow_motion:
                step = (own[n] - last[t]) / age[t]  # the change per frame since last seen
                motion[n] = (MOTION_SMOOTHING * step + (1 - MOTION_SMOOTHING) * last_motion[t]
                             if self._moving[t] else step)
                moving[n] = True
        held = ~seen & (age <= self.hold)
        order = np.flatnonzero(held)[np.argsort(age[held], kind='stable')]  # the most recently seen first
        # Masked besides the frame's own boxes: the held faces, and the faces continued by a box
        # that overlaps where they should be too little to be sure it shows all of them (a box on
        # half a face), for as long as a held face would be.
        extra = np.flatnonzero(held | (weak & (age <= self.hold)))
        extra = extra[np.argsort(age[extra], kind='stable')]
        self.masks = np.vstack([own, _span(last[extra], predicted[extra])])
        self._mask_motion = np.vstack([motion, last_motion[extra]])
        self._box = np.vstack([own, last[order]])
        self._motion = np.vstack([motion, last_motion[order]])
        self._moving = np.concatenate([moving, self._moving[order]])
        self._age = np.concatenate([np.zeros(len(own), dtype=np.int64), age[order]])
        return self.masks.copy()

    def between(self) -> np.ndarray:
        """ndarray[M, 4] float64: the boxes to mask in the frames written without detection
        after the last update, until the next one: each of masks stretched to where its face's
        motion takes it by the next processed frame (masks themselves for faces at rest)."""
        return _span(self.masks, self.masks + self._mask_motion)


def _span(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest boxes holding box a and box b, row by row (ndarray[N, 4] x1 y1 x2 y2 each)."""
    return np.hstack([np.minimum(a[:, :2], b[:, :2]), np.maximum(a[:, 2:], b[:, 2:])])
