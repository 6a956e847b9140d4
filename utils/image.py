"""Image files: what counts as one, reading one as the reference does, and drawing detections.

Kept free of torch and of the rest of the project, so that the torch-free paths
(widerface_evaluate/evaluation.py, ONNX inference) can import it.
"""
import io
import logging
import os

import cv2
import numpy as np
from numpy.typing import ArrayLike

from utils.atomic import atomic_write
from utils.errors import InputError, InputTooLargeError
from utils.input_files import open_input_file, printable
from utils.memory import is_out_of_memory, out_of_memory_reason

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


def read_image(path: str | os.PathLike) -> np.ndarray:
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
        InputTooLargeError: the decoded image does not fit in memory.
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
    failure = None
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        if not is_out_of_memory(e):
            raise
        failure = out_of_memory_reason(e)
    if failure is not None:  # raised outside the handler, so that the failed decoder's memory is freed
        raise InputTooLargeError(f"out of memory decoding {path} (a {len(data) / 1e6:.1f} MB file): {failure}")
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


def draw_detections(img: np.ndarray, dets: np.ndarray, vis_thres: float) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------
# Aligned face crops for recognition models

# Where ArcFace-style recognition models expect the five landmarks (left eye, right eye,
# nose, left mouth corner, right mouth corner) in a 112x112 crop (insightface's template).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
ARCFACE_SIZE = 112
# The largest crop size --crop_size takes. The crops are inputs for face recognition (and
# face restoration) models, which take 112 to 512 pixels; a larger crop only upsamples the
# face, and each crop is held in memory and encoded whole (at 60000 pixels, 10.8 GB each).
MAX_CROP_SIZE = 1024
# Landmarks whose spread across their best line is below this fraction of their spread
# along it lie on a line: no face looks like that, and the rotation it would give is noise.
COLLINEAR_TOLERANCE = 1e-3


def landmark_template(size: int = ARCFACE_SIZE) -> np.ndarray:
    """The ArcFace landmark template for a size x size crop (the 112 one scaled by size / 112)."""
    if int(size) != size or size < 1:
        raise ValueError(f"the crop size must be a positive integer, got {size!r}")
    return ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)


def degenerate_reason(points: np.ndarray) -> str | None:
    """Why points (ndarray[K, 2]) cannot define a similarity transform, or None if they can:
    not finite, all equal, or on one line."""
    points = np.asarray(points, dtype=np.float64)
    if not np.isfinite(points).all():
        return "not finite"
    spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if spread[0] <= np.finfo(np.float64).eps * max(1.0, np.abs(points).max()) * len(points):
        return "all equal"
    if spread[-1] <= COLLINEAR_TOLERANCE * spread[0]:
        return "collinear"
    return None


def similarity_transform(src: ArrayLike, dst: ArrayLike) -> np.ndarray:
    """The similarity transform (rotation, uniform scale, translation; no reflection) that
    maps src onto dst with the least squared error, by Umeyama's method (PAMI 1991).

    Args:
        src, dst (array[K, 2]): corresponding points, K >= 2; src must not be degenerate
            (see degenerate_reason).
    Returns:
        ndarray[2, 3] float64: M with dst ~ M @ [x, y, 1], as cv2.warpAffine takes it.
    Raises:
        ValueError: the shapes differ, or src is degenerate.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"expected two arrays of the same shape [K >= 2, 2], got {src.shape} and {dst.shape}")
    reason = degenerate_reason(src)
    if reason is not None:
        raise ValueError(f"no similarity transform from points that are {reason}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    # A reflection would fit a mirrored face better, but a crop must never be mirrored:
    # flip the weakest axis instead (Umeyama's S matrix).
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s @ d) / src_c.var(axis=0).sum()
    m = np.empty((2, 3))
    m[:, :2] = scale * rotation
    m[:, 2] = dst_mean - scale * rotation @ src_mean
    return m


def align_faces(img: np.ndarray, dets: np.ndarray, size: int = ARCFACE_SIZE,
                name: str | None = None) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Crop each detection's face, aligned for a recognition model: the similarity transform
    from its five landmarks to the ArcFace template (landmark_template(size)), applied by
    cv2.warpAffine (bilinear, black outside the image).

    Args:
        img (ndarray[H, W, 3] uint8): the image the detections are in.
        dets (ndarray[N, 15]): detections (x1 y1 x2 y2 score, five landmark (x, y) pairs).
        size (int): the crops' width and height.
        name (str | None): how to name the image in warnings.
    Returns:
        (crops, matrices): two lists of N entries, ndarray[size, size, 3] uint8 and
        ndarray[2, 3] float64 (image pixels -> crop pixels); None for a face whose landmarks
        are degenerate (all equal, collinear, not finite), which is skipped with a warning.
    """
    template = landmark_template(size)
    crops, matrices = [], []
    for k, det in enumerate(np.asarray(dets)):
        landmarks = np.asarray(det[5:15], dtype=np.float64).reshape(5, 2)
        reason = degenerate_reason(landmarks)
        if reason is not None:
            logger.warning("%sface %d: no aligned crop, its landmarks are %s",
                           f"{name}: " if name else '', k, reason)
            crops.append(None)
            matrices.append(None)
            continue
        m = similarity_transform(landmarks, template)
        crops.append(cv2.warpAffine(img, m, (int(size), int(size)), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0))
        matrices.append(m)
    return crops, matrices


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Encode img by path's extension and write it atomically (utils.atomic.atomic_write).

    Raises:
        InputError: the extension is not an image format OpenCV writes, or the file cannot be written.
    """
    path = os.fspath(path)
    try:
        ok, data = cv2.imencode(os.path.splitext(path)[1] or '.', img)
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"cannot write {printable(path)}: OpenCV cannot encode images as "
                         f"{os.path.splitext(path)[1]!r}")
    atomic_write(path, lambda f: f.write(data.tobytes()))
