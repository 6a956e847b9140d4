"""Image files: what counts as one, reading one as the reference does, and drawing detections.

Kept free of torch and of the rest of the project, so that the torch-free paths
(widerface_evaluate/evaluation.py, ONNX inference) can import it.
"""
import io
import logging
import os

import cv2
import numpy as np

from utils.errors import InputError
from utils.input_files import open_input_file

logger = logging.getLogger(__name__)

# Extensions a folder or glob of images is filtered by, and that a WIDER image name
# loses to become its prediction file's name (case-insensitive).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')

# JPEG markers: start of image, start of scan, end of image.
_JPEG_SOI, _JPEG_SOS, _JPEG_EOI = b'\xff\xd8', b'\xff\xda', b'\xff\xd9'
# Pillow's image modes that are not plain colour, and what read_image says about them.
_GREY_MODES = ('1', 'L', 'I', 'F', 'I;16', 'I;16B', 'I;16L', 'I;16N')
_GREY_ALPHA_MODES = ('LA', 'La', 'PA')
_ALPHA_MODES = ('RGBA', 'RGBa')

BOX_COLOUR = (0, 0, 255)  # red, BGR
TEXT_COLOUR = (255, 255, 255)
# left eye, right eye, nose, left mouth corner, right mouth corner
LANDMARK_COLOURS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))


def _source_mode(data):
    """Pillow's mode of the encoded image ('L', 'RGB', 'RGBA', ...), read from its header
    without decoding; None when Pillow does not know the format."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.mode
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def read_image(path):
    """Read an image file as the reference does (cv2.imread(path, cv2.IMREAD_COLOR)).

    Grayscale images are converted to 3-channel BGR (the grey value in all three
    channels) and images with an alpha channel lose it (not blended with any background);
    both are logged as warnings, since the detector was trained on colour photos.
    16-bit images are reduced to 8 bits and JPEG EXIF orientation is applied, both
    exactly as cv2.IMREAD_COLOR does, so results match the reference's.

    Args:
        path (str | PathLike): the image file.
    Returns:
        ndarray[H, W, 3] uint8: the image in BGR order.
    Raises:
        InputNotFoundError: path does not exist.
        InputError: path is not a regular file (a folder, a FIFO, a device), empty,
            truncated (JPEG without its end marker), or not an image OpenCV can decode. The message names the file.
    """
    path = os.fspath(path)
    # Only a regular file is opened: /dev/zero would be read until memory runs out, and a
    # FIFO would block the run until some writer opened it.
    with open_input_file(path, expected='an image file', missing='image') as f:
        try:
            data = f.read()
        except OSError as e:
            raise InputError(f"cannot read image file {path}: {e.strerror or e}") from e
    if not data:
        raise InputError(f"{path} is an empty file, not an image")
    # A JPEG cut short still decodes (the missing part grey) with only a libjpeg warning on
    # stderr; entropy-coded data can never contain FF D9, so a complete file has its
    # end-of-image marker after the last start-of-scan marker.
    if data.startswith(_JPEG_SOI) and data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
        raise InputError(f"{path} is a truncated or corrupt JPEG (no end-of-image marker after the image data)")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise InputError(f"{path} is not a readable image (unknown format, or corrupt)")
    mode = _source_mode(data)
    if mode in _GREY_MODES:
        logger.warning("%s is a grayscale image: converted to 3-channel BGR (grey in every channel)", path)
    elif mode in _GREY_ALPHA_MODES:
        logger.warning("%s is a grayscale image with alpha: alpha dropped, grey converted to 3-channel BGR", path)
    elif mode in _ALPHA_MODES:
        logger.warning("%s has an alpha channel (4 channels): alpha dropped, colour channels kept as BGR", path)
    return img


def draw_detections(img, dets, vis_thres):
    """Draw detections on img in place, exactly as the reference's scripts do.

    Each detection with score >= vis_thres gets a red box (thickness 2), its score as
    "{:.4f}" in white at (x1, y1 + 12) and its five landmarks as filled dots.

    Args:
        img (ndarray[H, W, 3] uint8): the BGR image to draw on.
        dets (ndarray[N, 15]): detections in img's pixels: x1 y1 x2 y2 score, then five
            landmark (x, y) pairs.
        vis_thres (float): the lowest score drawn.
    Returns:
        img.
    """
    for b in dets:
        if b[4] < vis_thres:
            continue
        text = "{:.4f}".format(b[4])
        b = list(map(int, b))
        cv2.rectangle(img, (b[0], b[1]), (b[2], b[3]), BOX_COLOUR, 2)
        cv2.putText(img, text, (b[0], b[1] + 12), cv2.FONT_HERSHEY_DUPLEX, 0.5, TEXT_COLOUR)
        for k, colour in enumerate(LANDMARK_COLOURS):
            cv2.circle(img, (b[5 + 2 * k], b[6 + 2 * k]), 1, colour, 4)
    return img
