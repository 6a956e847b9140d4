"""The reference's training augmentation: random square crop, photometric distortion,
pad to square, horizontal mirror, resize and mean subtraction, in that order.

Boxes are (x1, y1, x2, y2) and landmarks five (x, y) pairs, in pixels until the last
step, which makes them relative to the output image (0..1). Randomness comes from
Python's `random` module, as in the reference: seed it with random.seed (DataLoader
workers are seeded by PyTorch, see train.py).

Differences from the reference (see README.md, "Training"):
- an image without faces (an empty target) skips the crop search, which could never
  succeed, and comes out as a padded, distorted, mirrored, resized pure background sample
  (the reference asserts the target is non-empty);
- in the uncropped fallback (no crop kept a whole face) boxes and landmarks are clipped
  to the image, as the crop path clips them to the crop, so that all targets lie in [0, 1];
- boxes with no area (x2 <= x1 or y2 <= y1 in pixels, e.g. labels with w = 0 or h = 0)
  are dropped, both inside the crop search (a crop keeping only such faces is retried,
  like one keeping none) and in the uncropped fallback. The reference keeps them, and
  their log(0) box targets make the loss NaN.
"""
import random

import cv2
import numpy as np

from utils.box_utils import matrix_iof

__all__ = ['preproc']

# Side of the square crop as a fraction of the image's short side.
PRE_SCALES = [0.3, 0.45, 0.6, 0.8, 1.0]
# Random crops tried before giving up and using the whole image (padded to square).
CROP_TRIES = 250
# The interpolations _resize_subtract_mean picks from, uniformly.
INTERP_METHODS = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4]
# Hue in OpenCV's 8-bit HSV runs over 0..179.
HUE_RANGE = 180
HUE_SHIFT = 18
BRIGHTNESS_SHIFT = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)


def _positive_area(boxes):
    """Mask of the boxes (ndarray[N, 4], x1 y1 x2 y2) with x2 > x1 and y2 > y1."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _crop(image, boxes, labels, landm, img_dim):
    """Random square crop that keeps at least one face whole.

    Args:
        image (ndarray[H, W, 3] uint8), boxes (ndarray[N, 4]) in pixels, labels (ndarray[N]),
        landm (ndarray[N, 10]) in pixels, img_dim (int): the training input size.
    Returns:
        (image, boxes, labels, landm, pad_image_flag). On success the crop, the faces
        whose centre lies strictly inside it (boxes clipped to it, landmarks clipped to
        [0, crop size]), all in crop coordinates, and pad_image_flag False. After
        CROP_TRIES failures (or with no faces) the inputs unchanged and pad_image_flag True.
    """
    height, width, _ = image.shape
    pad_image_flag = True
    if boxes.shape[0] == 0:
        # No face can ever be inside a crop: skip the search (the reference asserts instead).
        return image, boxes, labels, landm, pad_image_flag

    for _ in range(CROP_TRIES):
        scale = random.choice(PRE_SCALES)
        short_side = min(width, height)
        w = int(scale * short_side)
        h = w

        if width == w:
            l = 0
        else:
            l = random.randrange(width - w)
        if height == h:
            t = 0
        else:
            t = random.randrange(height - h)
        roi = np.array((l, t, l + w, t + h))

        # At least one face must lie entirely inside the crop.
        value = matrix_iof(boxes, roi[np.newaxis])
        flag = (value >= 1)
        if not flag.any():
            continue

        # Keep every face whose centre is inside (some may be cut by the crop's edge).
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        mask_a = np.logical_and(roi[:2] < centers, centers < roi[2:]).all(axis=1)
        boxes_t = boxes[mask_a].copy()
        labels_t = labels[mask_a].copy()
        landms_t = landm[mask_a].copy()
        landms_t = landms_t.reshape([-1, 5, 2])  # [N, 10] -> [N, 5, 2]

        if boxes_t.shape[0] == 0:
            continue

        image_t = image[roi[1]:roi[3], roi[0]:roi[2]]

        boxes_t[:, :2] = np.maximum(boxes_t[:, :2], roi[:2])
        boxes_t[:, :2] -= roi[:2]
        boxes_t[:, 2:] = np.minimum(boxes_t[:, 2:], roi[2:])
        boxes_t[:, 2:] -= roi[:2]

        # Landmarks: into crop coordinates, clipped to the crop.
        landms_t[:, :, :2] = landms_t[:, :, :2] - roi[:2]
        landms_t[:, :, :2] = np.maximum(landms_t[:, :, :2], np.array([0, 0]))
        landms_t[:, :, :2] = np.minimum(landms_t[:, :, :2], roi[2:] - roi[:2])
        landms_t = landms_t.reshape([-1, 10])  # [N, 5, 2] -> [N, 10]

        # The reference's size test at training scale (with its +1, it only rejects
        # inverted boxes), plus: no zero-area boxes (their log(0) targets give NaN).
        b_w_t = (boxes_t[:, 2] - boxes_t[:, 0] + 1) / w * img_dim
        b_h_t = (boxes_t[:, 3] - boxes_t[:, 1] + 1) / h * img_dim
        mask_b = (np.minimum(b_w_t, b_h_t) > 0.0) & _positive_area(boxes_t)
        boxes_t = boxes_t[mask_b]
        labels_t = labels_t[mask_b]
        landms_t = landms_t[mask_b]

        if boxes_t.shape[0] == 0:
            continue

        pad_image_flag = False

        return image_t, boxes_t, labels_t, landms_t, pad_image_flag
    return image, boxes, labels, landm, pad_image_flag


def _convert(image, alpha=1, beta=0):
    """image * alpha + beta, in place, saturating to 0..255 (the assignment truncates to uint8)."""
    tmp = image.astype(float) * alpha + beta
    tmp[tmp < 0] = 0
    tmp[tmp > 255] = 255
    image[:] = tmp


def _distort_saturation_and_hue(image):
    """The HSV part of _distort: saturation, then hue, each with probability 1/2.

    Takes and returns a BGR ndarray[H, W, 3] uint8 (a new one: the HSV round trip copies).
    """
    image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)

    # saturation distortion
    if random.randrange(2):
        _convert(image[:, :, 1], alpha=random.uniform(*SATURATION_RANGE))

    # hue distortion
    if random.randrange(2):
        tmp = image[:, :, 0].astype(int) + random.randint(-HUE_SHIFT, HUE_SHIFT)
        tmp %= HUE_RANGE
        image[:, :, 0] = tmp

    return cv2.cvtColor(image, cv2.COLOR_HSV2BGR)


def _distort(image):
    """Random brightness, contrast, saturation and hue changes, as the reference.

    Two orders, picked by a coin: contrast before or after the HSV changes. Each change
    is applied with probability 1/2, drawing from `random` in the reference's order.
    Returns a new ndarray[H, W, 3] uint8 (BGR).
    """
    image = image.copy()
    contrast_first = random.randrange(2)

    # brightness distortion
    if random.randrange(2):
        _convert(image, beta=random.uniform(-BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT))

    # contrast distortion, before the HSV changes ...
    if contrast_first and random.randrange(2):
        _convert(image, alpha=random.uniform(*CONTRAST_RANGE))

    image = _distort_saturation_and_hue(image)

    # ... or after them
    if not contrast_first and random.randrange(2):
        _convert(image, alpha=random.uniform(*CONTRAST_RANGE))

    return image


def _mirror(image, boxes, landms):
    """Horizontal flip with probability 1/2.

    x becomes width - x for boxes (x1' = width - x2, x2' = width - x1) and landmarks, and
    the left/right landmarks swap (eyes 0 <-> 1, mouth corners 3 <-> 4) so that point 0
    stays the left eye as seen in the image.
    Returns (image, boxes ndarray[N, 4], landms ndarray[N, 10]).
    """
    _, width, _ = image.shape
    if random.randrange(2):
        image = image[:, ::-1]
        boxes = boxes.copy()
        boxes[:, 0::2] = width - boxes[:, 2::-2]

        # landm
        landms = landms.copy()
        landms = landms.reshape([-1, 5, 2])  # [N, 10] -> [N, 5, 2]
        landms[:, :, 0] = width - landms[:, :, 0]
        tmp = landms[:, 1, :].copy()
        landms[:, 1, :] = landms[:, 0, :]
        landms[:, 0, :] = tmp
        tmp1 = landms[:, 4, :].copy()
        landms[:, 4, :] = landms[:, 3, :]
        landms[:, 3, :] = tmp1
        landms = landms.reshape([-1, 10])  # [N, 5, 2] -> [N, 10]

    return image, boxes, landms


def _pad_to_square(image, rgb_mean, pad_image_flag):
    """Pad to a long_side x long_side square filled with rgb_mean, image at the top left
    (so box coordinates are unchanged). A no-op unless pad_image_flag."""
    if not pad_image_flag:
        return image
    height, width, _ = image.shape
    long_side = max(width, height)
    image_t = np.empty((long_side, long_side, 3), dtype=image.dtype)
    image_t[:, :] = rgb_mean
    image_t[0:0 + height, 0:0 + width] = image
    return image_t


def _resize_subtract_mean(image, insize, rgb_mean):
    """Resize to insize x insize with a random interpolation, subtract the mean.

    Returns ndarray[3, insize, insize] float32 (BGR minus rgb_mean).
    """
    interp_method = INTERP_METHODS[random.randrange(5)]
    image = cv2.resize(image, (insize, insize), interpolation=interp_method)
    image = image.astype(np.float32)
    image -= rgb_mean
    return image.transpose(2, 0, 1)  # [H, W, C] -> [C, H, W]


class preproc(object):
    """preproc(img_dim, rgb_means)(image, targets) -> (image, targets): training augmentation.

    Args:
        img_dim (int): output side (cfg['image_size']).
        rgb_means (tuple): per-channel mean in the image's BGR order, (104, 117, 123).
    Call args:
        image (ndarray[H, W, 3] uint8): BGR.
        targets (ndarray[N, 15]): x1 y1 x2 y2, ten landmark coordinates, label; pixels.
            N may be 0.
    Returns:
        image (ndarray[3, img_dim, img_dim] float32), targets (ndarray[M, 15] float32)
        with boxes and landmarks relative to the output image. Boxes lie in [0, 1] and
        have positive area; M <= N (faces outside the crop or without area are dropped).
    """

    def __init__(self, img_dim, rgb_means):
        self.img_dim = img_dim
        self.rgb_means = rgb_means

    def __call__(self, image, targets):
        targets = np.asarray(targets, dtype=np.float64).reshape(-1, 15)
        boxes = targets[:, :4].copy()
        labels = targets[:, -1].copy()
        landm = targets[:, 4:-1].copy()

        image_t, boxes_t, labels_t, landm_t, pad_image_flag = _crop(image, boxes, labels, landm, self.img_dim)
        if pad_image_flag:
            # Uncropped fallback: clip boxes and landmarks to the image, as the crop path
            # clips them to the crop, and drop the boxes with no area left.
            height, width, _ = image_t.shape
            boxes_t = boxes_t.copy()
            boxes_t[:, 0::2] = np.clip(boxes_t[:, 0::2], 0, width)
            boxes_t[:, 1::2] = np.clip(boxes_t[:, 1::2], 0, height)
            landm_t = landm_t.copy()
            landm_t[:, 0::2] = np.clip(landm_t[:, 0::2], 0, width)
            landm_t[:, 1::2] = np.clip(landm_t[:, 1::2], 0, height)
            keep = _positive_area(boxes_t)
            boxes_t, labels_t, landm_t = boxes_t[keep], labels_t[keep], landm_t[keep]
        image_t = _distort(image_t)
        image_t = _pad_to_square(image_t, self.rgb_means, pad_image_flag)
        image_t, boxes_t, landm_t = _mirror(image_t, boxes_t, landm_t)
        height, width, _ = image_t.shape
        image_t = _resize_subtract_mean(image_t, self.img_dim, self.rgb_means)
        boxes_t[:, 0::2] /= width
        boxes_t[:, 1::2] /= height

        landm_t[:, 0::2] /= width
        landm_t[:, 1::2] /= height

        labels_t = np.expand_dims(labels_t, 1)  # [M] -> [M, 1]
        targets_t = np.hstack((boxes_t, landm_t, labels_t)).astype(np.float32)  # [M, 15]

        return image_t, targets_t
