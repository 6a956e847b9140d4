"""The WIDER FACE training set in the RetinaFace label.txt format.

label.txt lists images and their faces::

    # 0--Parade/0_Parade_marchingband_1_849.jpg
    449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 485.357 425.893 0.0 538.357 431.491 0.0 0.82
    ...

A `# path` line starts an image (the path is relative to the `images/` folder beside
label.txt). Each following line is one face, in pixels, either

- 20 values (training labels): x y w h, five landmark triples `lx ly flag`, then a score;
  a face without landmarks has -1 in all the landmark fields;
- 4 values (the boxes-only val labels): x y w h.

An image may have no face lines at all; it is then a background-only sample (which the
reference's loss ignores: see layers.modules.MultiBoxLoss).
"""
import logging
import os
from collections import namedtuple

import cv2
import numpy as np
import torch
import torch.utils.data as data

from .label_file import LANDMARK_INDICES, TRAIN_LINE_VALUES, read_label_file

from utils.errors import InputError, InputNotFoundError

logger = logging.getLogger(__name__)

# Above this fraction of unusable boxes (no area, or outside the image) check_labels warns.
DROPPED_BOXES_WARNING = 0.1

# A target row: x1 y1 x2 y2, ten landmark coordinates, label.
TARGET_COLUMNS = 15
# Target labels: a face with landmarks, and a face without (it still trains the box and
# the class, but not the landmark regression).
LABEL_WITH_LANDMARKS = 1
LABEL_NO_LANDMARKS = -1
# EXIF orientations that turn the image by 90 degrees (cv2.imread applies them).
_EXIF_ORIENTATION_TAG = 0x0112
_EXIF_TRANSPOSED = (5, 6, 7, 8)

# What label_summary counts: images, images with at least one usable face, boxes, and the
# boxes training drops: degenerate ones (no width or no height) and those wholly outside
# the image.
LabelSummary = namedtuple('LabelSummary', 'images images_with_faces boxes usable degenerate outside')


def labels_to_target(labels):
    """Convert an image's face lines to the training target, as the reference does.

    Args:
        labels (ndarray[N, 20] or ndarray[N, 4]): face lines in pixels.
    Returns:
        ndarray[N, 15] float64: x1 y1 x2 y2 (x2 = x + w, y2 = y + h), five landmark
        (x, y) pairs, and the label: 1, or -1 where the face has no landmarks (first
        landmark x < 0, or a boxes-only line, whose landmarks are set to -1).
    """
    labels = np.asarray(labels, dtype=np.float64)
    n = labels.shape[0]
    target = np.zeros((n, TARGET_COLUMNS), dtype=np.float64)
    if n == 0:
        return target
    target[:, 0] = labels[:, 0]  # x1
    target[:, 1] = labels[:, 1]  # y1
    target[:, 2] = labels[:, 0] + labels[:, 2]  # x2
    target[:, 3] = labels[:, 1] + labels[:, 3]  # y2
    if labels.shape[1] >= TRAIN_LINE_VALUES:
        target[:, 4:14] = labels[:, LANDMARK_INDICES]
        target[:, 14] = np.where(target[:, 4] < 0, LABEL_NO_LANDMARKS, LABEL_WITH_LANDMARKS)
    else:
        target[:, 4:14] = -1
        target[:, 14] = LABEL_NO_LANDMARKS
    return target


def image_size(path):
    """(width, height) of an image as cv2.imread(path, IMREAD_COLOR) would return it, from
    its header where Pillow can read one (EXIF rotations included), else by decoding it."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(_EXIF_ORIENTATION_TAG, 1) in _EXIF_TRANSPOSED:
                width, height = height, width
            return width, height
    except Exception:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"cannot decode image {path}: not a readable image file") from None
        return img.shape[1], img.shape[0]


def label_summary(dataset):
    """Count the faces a WiderFaceDetection can train on (see LabelSummary).

    The augmentation clips every box to the image and drops those left without area, so a
    box is usable when it keeps a positive width and height inside the image. Reads the
    header of every image that has face lines.
    """
    boxes = usable = degenerate = outside = with_faces = 0
    for path, words in zip(dataset.imgs_path, dataset.words):
        if len(words) == 0:
            continue
        target = labels_to_target(words)
        positive = (target[:, 2] > target[:, 0]) & (target[:, 3] > target[:, 1])
        width, height = image_size(path)
        x1, x2 = np.clip(target[:, 0], 0, width), np.clip(target[:, 2], 0, width)
        y1, y2 = np.clip(target[:, 1], 0, height), np.clip(target[:, 3], 0, height)
        inside = positive & (x2 > x1) & (y2 > y1)
        boxes += len(target)
        degenerate += int((~positive).sum())
        outside += int((positive & ~inside).sum())
        usable += int(inside.sum())
        with_faces += bool(inside.any())
    return LabelSummary(len(dataset.imgs_path), with_faces, boxes, usable, degenerate, outside)


def check_labels(dataset, label_path, faceless_negatives=0, log=logger):
    """Stop (ValueError naming label_path) if the labels hold no face training can use; warn
    when many boxes are dropped, and say what faceless images contribute (they add nothing
    to the loss unless faceless_negatives > 0), on log (train.py passes its own logger).
    Returns the LabelSummary."""
    summary = label_summary(dataset)
    dropped = summary.degenerate + summary.outside
    if summary.boxes == 0:
        raise InputError(f"{label_path}: none of its {summary.images} images has a face line; "
                         f"training needs faces (without any the loss is 0 and nothing is learnt)")
    if summary.usable == 0:
        raise InputError(f"{label_path}: none of its {summary.boxes} boxes is usable "
                         f"({summary.degenerate} degenerate (no width or height), {summary.outside} outside the "
                         f"image); training needs faces (without any the loss is 0 and nothing is learnt)")
    if dropped > DROPPED_BOXES_WARNING * summary.boxes:
        log.warning("%s: dropped %d of %d boxes (%d degenerate, %d outside the image)", label_path,
                       dropped, summary.boxes, summary.degenerate, summary.outside)
    elif dropped:
        log.info("dropped %d of %d boxes (%d degenerate, %d outside the image)", dropped, summary.boxes,
                    summary.degenerate, summary.outside)
    faceless = summary.images - summary.images_with_faces
    if faceless and faceless_negatives == 0:
        log.info("%d of %d images have no usable face: as in the reference they add nothing to the loss "
                    "(--faceless_negatives N mines N background priors in each)", faceless, summary.images)
    return summary


class WiderFaceDetection(data.Dataset):
    """WiderFaceDetection(txt_path, preproc=None): the images and face targets of label.txt.

    Images are read from the `images/` folder beside label.txt. All image files are
    checked at construction (a missing one is a FileNotFoundError naming its path), and
    again when loaded (a file deleted since, or one OpenCV cannot decode, is an error
    naming it).

    dataset[i] returns (image, target):
    - with preproc: image is the preprocessed ndarray [3, img_dim, img_dim] float32 (BGR
      minus the mean) as a Tensor, and target the ndarray [N, 15] float32 with boxes and
      landmarks relative to the image (0..1) and the label in the last column;
    - without: image is the decoded Tensor [H, W, 3] uint8 (BGR), and target the ndarray
      [N, 15] float64 in pixels.
    An image without faces gives a [0, 15] target (the reference crashes on it).
    """

    def __init__(self, txt_path, preproc=None):
        self.txt_path = os.fspath(txt_path)
        self.preproc = preproc
        self.image_root = os.path.join(os.path.dirname(os.path.abspath(self.txt_path)), 'images')
        self.imgs_path = []
        self.words = []  # the raw face lines per image, as the reference calls them
        for rel, faces in read_label_file(self.txt_path):
            self.imgs_path.append(os.path.join(self.image_root, rel))
            self.words.append(faces)
        missing = [p for p in self.imgs_path if not os.path.isfile(p)]
        if missing:
            raise InputNotFoundError(
                f"{len(missing)} of the {len(self.imgs_path)} images listed in {self.txt_path} are missing, "
                f"e.g. {missing[0]} (images are read from the 'images' folder beside label.txt)")
        n_faces = sum(len(w) for w in self.words)
        n_empty = sum(len(w) == 0 for w in self.words)
        logger.info("%s: %d images, %d faces, %d images without faces", self.txt_path, len(self.imgs_path),
                    n_faces, n_empty)

    def __len__(self):
        return len(self.imgs_path)

    def load_image(self, index):
        """The image as an ndarray [H, W, 3] uint8 in BGR order."""
        path = self.imgs_path[index]
        if not os.path.isfile(path):
            raise InputNotFoundError(f"image not found: {path} (listed in {self.txt_path})")
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"cannot decode image {path} (listed in {self.txt_path}): not a readable image file")
        return img

    def __getitem__(self, index):
        img = self.load_image(index)
        target = labels_to_target(self.words[index])
        if self.preproc is not None:
            img, target = self.preproc(img, target)
        return torch.from_numpy(img), target


def detection_collate(batch):
    """Collate (image, target) samples whose targets have different numbers of faces.

    Args:
        batch: list of (Tensor image, ndarray[N_i, 15] target).
    Returns:
        (Tensor[B, C, H, W], list of B Tensor[N_i, 15] float32): the images stacked, and
        the targets as float tensors (empty [0, 15] for images without faces).
    """
    targets = []
    imgs = []
    for sample in batch:
        for tup in sample:
            if torch.is_tensor(tup):
                imgs.append(tup)
            elif isinstance(tup, np.ndarray):
                targets.append(torch.from_numpy(tup).float())
    return torch.stack(imgs, 0), targets
