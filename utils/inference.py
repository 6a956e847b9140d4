"""The one RetinaFace detection pipeline, used by every script and benchmark.

    image (H x W x 3 uint8 BGR)
      -> preprocess: float32, optional test-scale resize, minus BGR_MEAN, HWC -> CHW
      -> forward (eager PyTorch or onnxruntime)
      -> priors of the (resized) input size, cached
      -> score threshold, sort, optional top_k, decode, NMS (+1 convention), optional keep_top_k
      -> detections ndarray[N, 15] float32 in original-image pixels:
         x1 y1 x2 y2 score, then the five landmarks (x, y): left eye, right eye, nose,
         left mouth corner, right mouth corner.

With the default 'torch' backend on CPU the numbers are bit-for-bit those of the
reference's test_widerface.py / test_fddb.py (same float32 operations in the same order),
so the result files are byte-identical. Four shortcuts keep the host-side stages cheap and
change nothing: priors are computed once per input size; only the priors above the score
threshold are decoded, and their landmarks only if NMS keeps them (decoding is
elementwise, so each row gets exactly the value it would get from decoding all rows); the
stages run as compiled kernels (utils/kernels/cpu_pipeline.pyx) doing the numpy stages'
float32 operations in one pass each; and NMS is the compiled utils/nms/cpu_nms.pyx, which
returns py_cpu_nms's keep list without comparing every pair.

Typical use:

    detector = load_detector('mobile0.25', 'weights/mobilenet0.25_Final.pth')
    dets = detector.detect(read_image('photo.jpg'))

The 'onnxruntime' backend with an exported file (onnx_model) never imports torch: its
pipeline runs on numpy, OpenCV, onnxruntime and the compiled kernels alone, with the
network, config and mean read from the file's metadata, so a deployment can leave torch
out. torch is imported where the 'torch' backend, a checkpoint or an export needs it.
"""
import logging
import os
from contextlib import nullcontext
from functools import lru_cache
from math import ceil

import cv2
import numpy as np

from data import NETWORKS, cfg_for_network
from layers.functions.prior_box import cached_priors, prior_boxes
from utils import kernels
from utils.nms import fast_nms
from utils.onnx_export import INPUT_NAME, export_onnx_bytes, make_session, onnx_network, pipeline_metadata

logger = logging.getLogger(__name__)

# The mean BGR pixel subtracted from every input, as in training.
BGR_MEAN = (104, 117, 123)
# The MXNet-style test scale of the reference: the short side becomes TARGET_SIZE unless
# the long side would then exceed MAX_SIZE, in which case the long side becomes MAX_SIZE.
TARGET_SIZE = 1600
MAX_SIZE = 2150
# Mixed-size batches are padded up to a multiple of the coarsest stride, so that every
# pyramid level of the padded input is exactly half the size of the previous one.
PAD_MULTIPLE = 32
# Columns of a detection row: box (4), score (1), five landmarks (10).
DET_COLUMNS = 15
BACKENDS = ('torch', 'onnxruntime')

# Header bytes that read_image inspects without decoding.
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_COLOUR_TYPE_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # IHDR colour type -> channels
_JPEG_SOI, _JPEG_SOS, _JPEG_EOI = b'\xff\xd8', b'\xff\xda', b'\xff\xd9'


def resolve_backend(backend, onnx_model):
    """The backend to run: an ONNX model file selects 'onnxruntime', otherwise 'torch' is the default.

    Raises:
        ValueError: backend is 'torch' and an ONNX model is given (eager PyTorch cannot run it).
    """
    if backend is None:
        return 'onnxruntime' if onnx_model is not None else 'torch'
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {list(BACKENDS)}")
    if backend == 'torch' and onnx_model is not None:
        raise ValueError(f"the ONNX model {os.fspath(onnx_model)} runs in onnxruntime, not in the torch backend: "
                         f"use --backend onnxruntime (or leave --backend out), or drop --onnx_model")
    return backend


def empty_detections():
    """ndarray[0, 15] float32: the result for an image without detections."""
    return np.zeros((0, DET_COLUMNS), dtype=np.float32)


def test_scale(height, width, origin_size):
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


test_scale.__test__ = False  # a library function, not a pytest test, whatever imports it


# ---------------------------------------------------------------------------------------
# Reading images

def _jpeg_components(data):
    """The number of colour components in a JPEG's frame header, or None if not found."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: FF Cn len(2) P(1) Y(2) X(2) Nf(1)
            return data[i + 9] if i + 9 < n else None
        if marker == 0xDA:  # scan data before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], 'big')
    return None


def _source_channels(data, buf):
    """How many channels the encoded image holds (1 grey, 2 grey+alpha, 3 colour, 4 colour+alpha).

    PNG and JPEG headers are read directly (no decoding); other formats are decoded once
    with cv2.IMREAD_UNCHANGED. Returns None when it cannot tell.
    """
    if data.startswith(_PNG_SIGNATURE) and len(data) > 25:
        return _PNG_COLOUR_TYPE_CHANNELS.get(data[25])
    if data.startswith(_JPEG_SOI):
        return _jpeg_components(data)
    raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if raw is None:
        return None
    return 1 if raw.ndim == 2 else raw.shape[2]


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
        FileNotFoundError: path does not exist.
        ValueError: path is a directory, empty, truncated (JPEG without its end marker),
            or not an image OpenCV can decode. The message names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not an image file")
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e
    if not data:
        raise ValueError(f"{path} is an empty file, not an image")
    # A JPEG cut short still decodes (the missing part grey) with only a libjpeg warning on
    # stderr; entropy-coded data can never contain FF D9, so a complete file has its
    # end-of-image marker after the last start-of-scan marker.
    if data.startswith(_JPEG_SOI) and data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
        raise ValueError(f"{path} is a truncated or corrupt JPEG (no end-of-image marker after the image data)")
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ValueError(f"{path} is not a readable image (unknown format, or corrupt)")
    channels = _source_channels(data, buf)
    if channels == 1:
        logger.warning("%s is a grayscale image: converted to 3-channel BGR (grey in every channel)", path)
    elif channels == 2:
        logger.warning("%s is a grayscale image with alpha: alpha dropped, grey converted to 3-channel BGR", path)
    elif channels == 4:
        logger.warning("%s has an alpha channel (4 channels): alpha dropped, colour channels kept as BGR", path)
    return img


# ---------------------------------------------------------------------------------------
# Devices and the detector

class HostDevice(str):
    """The device of an onnxruntime Detector, without torch: the string ('cpu', 'cuda',
    'cuda:1') with torch.device's .type and .index, so that code written for a
    torch.device (device.type, torch.device(device)) works with it."""

    @property
    def type(self):
        return self.partition(':')[0]

    @property
    def index(self):  # shadows str.index, as torch.device's attribute does not exist on str
        index = self.partition(':')[2]
        return int(index) if index else None


def resolve_device(device, backend='torch'):
    """torch.device(device), checking that CUDA is there when asked for; for the
    'onnxruntime' backend a HostDevice (onnxruntime checks for CUDA when it loads the model).

    Raises:
        ValueError: device is CUDA and torch sees no CUDA device, or device is not a device.
    """
    if backend == 'onnxruntime':
        device_type, _, index = str(device).partition(':')
        if device_type not in ('cpu', 'cuda') or not (index == '' or index.isdigit()):
            raise ValueError(f"unknown device {str(device)!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        return HostDevice(str(device))
    import torch

    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available (use the CPU)")
    return device


def _check_image(img, index=None):
    where = '' if index is None else f" (image {index} of the batch)"
    if not isinstance(img, np.ndarray):
        raise ValueError(f"expected an image as ndarray[H, W, 3] uint8 BGR{where}, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) < 1:
        raise ValueError(f"expected an image as ndarray[H, W, 3] uint8 BGR{where}, got shape {img.shape} "
                         f"dtype {img.dtype} (use read_image, which converts grayscale and 4-channel images)")


def _grid_crop_index(steps, anchors, size, padded):
    """_grid_crop_rows as a Tensor[P] int64 (CPU)."""
    import torch

    return torch.from_numpy(_grid_crop_rows(steps, anchors, size, padded))


@lru_cache(maxsize=128)
def _grid_crop_rows(steps, anchors, size, padded):
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



# ---------------------------------------------------------------------------------------
# Host-side stages
#
# Each stage below is written with numpy (the specification, and the fallback) and runs
# as the compiled kernel of utils/kernels/cpu_pipeline.pyx when that is built: the same
# IEEE float32 operations in the same order, so the same bits (tested), in one pass
# instead of a dozen numpy calls and temporaries.
#
# The decoding functions mirror utils.box_utils.decode / decode_landm followed by the
# reference's `* scale / resize`. numpy and torch's exp may round differently, so exp is
# torch's (kernels.torch_exp_) for the torch backend, whose numbers are the reference's;
# the onnxruntime backend, which must run without torch, uses kernels.float_exp_.

def _f32(x):
    """x as a C-contiguous float32 ndarray, the layout the compiled kernels take (no copy if it is one)."""
    return np.ascontiguousarray(x, dtype=np.float32)


def _i64(x):
    """x as a C-contiguous int64 ndarray (no copy if it is one)."""
    return np.ascontiguousarray(x, dtype=np.int64)


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


def to_input(img, dst, mean=BGR_MEAN):
    """Write img minus mean (BGR_MEAN unless the model file says otherwise) into dst as CHW float32 (the reference's
    `np.float32(img) - (104, 117, 123)`, then HWC -> CHW).

    Args:
        img (ndarray[H, W, 3] uint8 | float32): a BGR image (float32 once resized).
        dst (ndarray[3, >=H, >=W] float32): one image of the network input; dst[:, :H, :W] is written.
    """
    kernel = getattr(kernels.compiled, 'to_input', None)
    if kernel is not None:
        return kernel(np.ascontiguousarray(img), dst, mean)
    if kernels.compiled is None:
        kernels.warn_not_built()
    h, w = img.shape[:2]
    # One plane at a time, subtracted straight into place in float32 arithmetic.
    for c, plane in enumerate(cv2.split(img)):
        cv2.subtract(plane, float(mean[c]), dst=dst[c, :h, :w], dtype=cv2.CV_32F)


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
    kernel = getattr(kernels.compiled, 'decode_dets', None)
    if kernel is not None:
        return kernel(_f32(loc), _f32(priors), _i64(inds), _f32(scores), _i64(order), variance, size, resize, exp_)
    if kernels.compiled is None:
        kernels.warn_not_built()
    rows = inds[order]
    boxes = decode_boxes(loc[rows], priors[rows], variance, size, resize, exp_)
    return np.hstack((boxes, scores[order, np.newaxis])).astype(np.float32, copy=False)


def assemble(dets, keep, landms, priors, inds, order, variance, size, resize):
    """The detections dets[keep] with their landmarks decoded (decode_landmarks of
    landms[rows], priors[rows] for rows = inds[order[keep]]).

    Decoding is elementwise, so decoding only the kept candidates' landmarks gives the
    values of decoding every candidate and selecting afterwards.

    Args:
        dets (ndarray[K', 5] float32): from decode_dets; keep (ndarray[N] int64): rows of dets;
        landms (ndarray[P, 10] float32), priors (ndarray[P, 4] float32), inds (ndarray[K]
            int64), order (ndarray[K'] int64), variance, size, resize: as for decode_dets.
    Returns:
        ndarray[N, 15] float32: x1 y1 x2 y2 score, then five landmark (x, y) pairs.
    """
    kernel = getattr(kernels.compiled, 'assemble', None)
    if kernel is not None:
        return kernel(_f32(dets), _i64(keep), _f32(landms), _f32(priors), _i64(inds), _i64(order), variance, size,
                      resize)
    if kernels.compiled is None:
        kernels.warn_not_built()
    kept = inds[order[keep]]
    points = decode_landmarks(landms[kept], priors[kept], variance, size, resize)
    return np.concatenate((dets[keep], points), axis=1)


class Detector:
    """RetinaFace face detection on BGR images, one or a batch at a time.

    Args:
        net (RetinaFace | None): the model in phase 'test' with its weights loaded; it
            is moved to device and put in eval mode. May be None for the 'onnxruntime'
            backend when onnx_model is given.
        cfg (dict): the network's config (cfg_mnet or cfg_re50). An ONNX file that carries
            the config in its metadata (convert_to_onnx.py) runs with the file's values.
        device (str | torch.device): where the network runs ('cpu', 'cuda', 'cuda:1').
        confidence_threshold (float): keep priors whose face score is > this.
        nms_threshold (float): IoU above which NMS suppresses a box.
        top_k (int | None): keep at most this many candidates before NMS (None or <= 0: all).
        keep_top_k (int | None): keep at most this many detections after NMS (None or <= 0: all).
        origin_size (bool): detect at the original size (True) or at the reference's
            test scale (short side TARGET_SIZE, long side at most MAX_SIZE).
        backend (str): 'torch' (eager PyTorch: the reference's exact numbers) or
            'onnxruntime' (the same network exported to ONNX: faster on CPU, numbers
            equal to ~1e-5). None: 'onnxruntime' when onnx_model is given, else 'torch'.
        onnx_model (str | PathLike | onnxruntime.InferenceSession | None): for 'onnxruntime',
            an exported model file (convert_to_onnx.py) or a session of one; None exports
            net in memory. With a file, torch is never imported.
        num_threads (int | None): onnxruntime intra-op threads (None:
            utils.onnx_export.default_num_threads()).
        allow_spinning (bool): whether onnxruntime's idle threads busy-wait (see
            utils.onnx_export.make_session).

    Attributes:
        network (str | None): the --network name of cfg ('mobile0.25', 'resnet50'), or the
            one the ONNX file names.
        device (torch.device | HostDevice): where the network runs.
        mean (tuple): the BGR pixel subtracted from the input.
    """

    def __init__(self, net, cfg, device='cpu', confidence_threshold=0.02, nms_threshold=0.4, top_k=None,
                 keep_top_k=None, origin_size=True, backend=None, onnx_model=None, num_threads=None,
                 allow_spinning=True):
        backend = resolve_backend(backend, onnx_model)
        if not 0 <= nms_threshold <= 1:
            raise ValueError(f"nms_threshold must be in [0, 1], got {nms_threshold}")
        if not 0 <= confidence_threshold <= 1:  # nan fails too
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        self.cfg = cfg
        self.network = next((name for name, c in NETWORKS.items() if c == cfg), None)
        self.mean = BGR_MEAN
        self.device = resolve_device(device, backend)
        self.confidence_threshold = float(confidence_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = top_k if top_k and top_k > 0 else None
        self.keep_top_k = keep_top_k if keep_top_k and keep_top_k > 0 else None
        self.origin_size = bool(origin_size)
        self.backend = backend
        self.net = None
        self.session = None
        if net is not None:
            self.net = net.to(str(self.device)).eval()
        if backend == 'torch':
            if net is None:
                raise ValueError("the torch backend needs a network (net is None)")
        else:
            if onnx_model is None:
                if net is None:
                    raise ValueError("the onnxruntime backend needs a network to export or an onnx_model file")
                import torch

                with torch.inference_mode(False):
                    onnx_model = export_onnx_bytes(self.net, cfg=cfg)
                logger.info("exported the network to ONNX in memory for onnxruntime")
            if hasattr(onnx_model, 'get_modelmeta'):  # already a session (load_detector makes one)
                self.session = onnx_model
            else:
                self.session = make_session(onnx_model, num_threads=num_threads, device=self.device,
                                            allow_spinning=allow_spinning)
            name = 'the exported model' if isinstance(onnx_model, (bytes, bytearray)) else str(onnx_model)
            network, file_cfg, mean = pipeline_metadata(self.session, name)
            if file_cfg is not None:
                # The file's values run it, whatever cfg says: they are what it was made with.
                self.cfg = cfg = {**cfg, **file_cfg}
            if network is not None:
                self.network = network
            if mean is not None:
                self.mean = mean
        self._anchors = tuple(len(s) for s in cfg['min_sizes'])
        # exp of the box sizes: torch's for the torch backend (the reference's numbers),
        # a torch-free one for onnxruntime (see utils.kernels.float_exp_).
        self._exp = kernels.torch_exp_ if backend == 'torch' else kernels.float_exp_

    # -- stages, public so that benchmarks can time them one by one ----------------------

    def preprocess(self, images):
        """Stack images into one network input.

        Each image is converted to float32, resized by test_scale (cv2.INTER_LINEAR),
        made BGR minus BGR_MEAN and laid out as CHW, in the reference's order of operations.
        Images of one size are stacked as they are; mixed sizes are padded at the bottom
        and right with zeros (the mean colour) to a common size rounded up to PAD_MULTIPLE.

        Args:
            images (list[ndarray[H, W, 3] uint8]): BGR images.
        Returns:
            (batch ndarray[B, 3, H', W'] float32 on the host,
             sizes list[(h, w)] of each image after resizing,
             resizes list[float] of the resize factors).
        """
        if not images:
            raise ValueError("no images to detect on (empty list)")
        sources, sizes, resizes = [], [], []
        for i, img in enumerate(images):
            _check_image(img, i if len(images) > 1 else None)
            resize = test_scale(img.shape[0], img.shape[1], self.origin_size)
            if resize != 1:
                # The reference resizes the float32 image before subtracting the mean.
                img = cv2.resize(np.float32(img), None, None, fx=resize, fy=resize, interpolation=cv2.INTER_LINEAR)
            sources.append(img)
            sizes.append(img.shape[:2])
            resizes.append(resize)
        if len(set(sizes)) == 1:
            height, width = sizes[0]
            batch = np.empty((len(images), 3, height, width), dtype=np.float32)
        else:
            height = -(-max(h for h, _ in sizes) // PAD_MULTIPLE) * PAD_MULTIPLE
            width = -(-max(w for _, w in sizes) // PAD_MULTIPLE) * PAD_MULTIPLE
            batch = np.zeros((len(images), 3, height, width), dtype=np.float32)
        for i, src in enumerate(sources):
            to_input(src, batch[i], self.mean)
        return batch, sizes, resizes

    def forward(self, batch):
        """Run the network on a preprocessed batch.

        Args:
            batch (ndarray[B, 3, H, W] float32): from preprocess.
        Returns:
            (loc [B, P, 4], conf [B, P, 2], landms [B, P, 10]): Tensors on self.device for
            'torch', float32 ndarrays for 'onnxruntime'.
        """
        # On the CPU both backends run an NCHW batch slower per image than single images
        # (eager PyTorch's oneDNN picks other kernels: test.jpg took 75 against 25 ms per
        # image in a batch of 8, and those kernels round differently; onnxruntime took
        # 13.3 against 11.0 ms). Image by image is faster and gives exactly the
        # single-image numbers.
        one_by_one = batch.shape[0] > 1 and self.device.type == 'cpu'
        if self.session is not None:
            slices = [batch[i:i + 1] for i in range(batch.shape[0])] if one_by_one else [batch]
            runs = [self.session.run(None, {INPUT_NAME: x}) for x in slices]
            # numpy joins the images: a torch.cat would wake torch's threads, which then
            # spin on the cores the next forward pass needs (see utils.kernels.EXP_CHUNK).
            return tuple(np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*runs))
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)  # [B, 3, H, W]
            if not one_by_one:
                return self.net(x)
            outputs = [self.net(x[i:i + 1]) for i in range(x.shape[0])]
            return tuple(torch.cat(parts) for parts in zip(*outputs))

    def priors(self, size, device=None):
        """The priors (Tensor[P, 4], (cx, cy, w, h) relative to the image) of an input of size (h, w), cached."""
        import torch

        # Made outside inference mode: the cache is shared with training code, which cannot
        # use inference tensors in autograd.
        with torch.inference_mode(False):
            return cached_priors(self.cfg, size, device=device or self.device)

    def postprocess(self, loc, conf, landms, size, resize):
        """Turn one image's network outputs into detections.

        Args:
            loc [P, 4], conf [P, 2], landms [P, 10] (Tensors or float32 ndarrays): the
                outputs for the priors of an input of size (h, w).
            size (tuple[int, int]): (h, w) of the network input (the resized image).
            resize (float): the resize factor from the original image to size.
        Returns:
            ndarray[N, 15] float32: x1 y1 x2 y2 score and five landmark (x, y) pairs in
            original-image pixels, highest score first.
        """
        with self._inference_mode():
            return self._postprocess(loc, conf, landms, size, resize)

    def _inference_mode(self):
        """torch.inference_mode() for the torch backend; nothing for onnxruntime (no torch)."""
        if self.session is not None:
            return nullcontext()
        import torch

        return torch.inference_mode()

    def _postprocess(self, loc, conf, landms, size, resize, on_device=None):
        """postprocess(); on_device (default: the outputs are not on the CPU) filters the
        candidates where the outputs are, as for a GPU (the tests use it on the CPU)."""
        priors = prior_boxes(self.cfg, size)  # [P, 4], the values of self.priors(size)
        if isinstance(loc, np.ndarray):  # onnxruntime's outputs, on the host
            on_device = False
        elif on_device is None:
            on_device = loc.device.type != 'cpu'
        if not on_device:
            # Every prior stays where it is; rows below index loc, landms and priors alike.
            if not isinstance(loc, np.ndarray):
                loc, landms, conf = loc.numpy(), landms.numpy(), conf.numpy()
            inds, scores = select_scores(conf, self.confidence_threshold)
        else:
            import torch

            # Filter on the device and copy only the candidates (and their priors) to the
            # host; rows below then index those copies.
            scores_t = conf[:, 1]  # [P]
            inds_t = torch.nonzero(scores_t > self.confidence_threshold).squeeze(1)
            scores = scores_t[inds_t].cpu().numpy()
            loc, landms = loc[inds_t].cpu().numpy(), landms[inds_t].cpu().numpy()
            priors = priors[inds_t.cpu().numpy()]
            inds = np.arange(len(scores))
        if inds.size == 0:
            return empty_detections()
        # The reference's order: numpy's argsort of the kept scores, reversed (numpy breaks
        # ties its own way, so the sort must be numpy's on the same array).
        order = scores.argsort()[::-1]
        if self.top_k:
            order = order[:self.top_k]
        variance = self.cfg['variance']
        dets = decode_dets(loc, priors, inds, scores, order, variance, size, resize, self._exp)  # [K, 5]
        # Exactly py_cpu_nms's keep list (see utils/nms/cpu_nms.pyx), fast on crowds.
        keep = fast_nms(dets, self.nms_threshold)
        if self.keep_top_k:
            keep = keep[:self.keep_top_k]
        return assemble(dets, keep, landms, priors, inds, order, variance, size, resize)

    # -- the whole pipeline ----------------------------------------------------------------

    def detect(self, img):
        """Detect faces in one image.

        Args:
            img (ndarray[H, W, 3] uint8): a BGR image (see read_image).
        Returns:
            ndarray[N, 15] float32: x1 y1 x2 y2 score, then five landmark (x, y) pairs,
            in pixels of img, highest score first.
        """
        return self.detect_batch([img])[0]

    def detect_batch(self, images):
        """Detect faces in several images with one forward pass.

        Images of one size give exactly the detections of detect() on each. Images of
        different sizes are padded (see preprocess); each image's detections then come
        from its own part of the padded feature maps, and differ slightly from detect()'s
        because the network sees the padding near the bottom and right edges.

        Args:
            images (list[ndarray[H, W, 3] uint8]): BGR images.
        Returns:
            list[ndarray[N_i, 15] float32]: per image, as detect() returns.
        """
        return self.detect_preprocessed(*self.preprocess(images))

    def detect_preprocessed(self, batch, sizes, resizes):
        """detect_batch(images) given preprocess(images): the forward pass and what follows.

        Folder runs preprocess the next images in reading threads while the network runs.
        """
        loc, conf, landms = self.forward(batch)
        padded = tuple(batch.shape[2:])
        results = []
        with self._inference_mode():
            for i, (size, resize) in enumerate(zip(sizes, resizes)):
                loc_i, conf_i, landms_i = loc[i], conf[i], landms[i]
                if tuple(size) != padded:
                    rows = _grid_crop_rows(tuple(self.cfg['steps']), self._anchors, tuple(size), padded)
                    if isinstance(loc_i, np.ndarray):
                        loc_i, conf_i, landms_i = loc_i[rows], conf_i[rows], landms_i[rows]
                    else:
                        import torch

                        rows = torch.from_numpy(rows).to(loc_i.device)
                        loc_i, conf_i = loc_i.index_select(0, rows), conf_i.index_select(0, rows)
                        landms_i = landms_i.index_select(0, rows)
                results.append(self._postprocess(loc_i, conf_i, landms_i, size, resize))
        return results


def load_detector(network, trained_model, device='cpu', backend=None, onnx_model=None, **detector_kwargs):
    """Build RetinaFace for network, load trained_model into it and wrap it in a Detector.

    Args:
        network (str): 'mobile0.25' or 'resnet50'. An ONNX model file that holds the other
            network runs as that network (with a warning): the file, not the flag, says
            what runs, and detector.network names it.
        trained_model (str | PathLike): the weights (.pth), loaded with utils.checkpoint.load_model.
            Not read when onnx_model is given.
        device, backend, onnx_model, **detector_kwargs: as for Detector (an onnx_model
            selects the 'onnxruntime' backend). With an onnx_model torch is not imported:
            the network, config and mean come from the file's metadata (older files
            without it: the network from the graph, read with the onnx package, and the
            config of that network).
    Raises:
        FileNotFoundError: the weights file is missing; the message says where to put it.
        ValueError: the file is not a checkpoint for this network.
    """
    backend = resolve_backend(backend, onnx_model)
    cfg_for_network(network)  # an unknown name is an error even when the file names another
    if onnx_model is not None:
        # The session is made here (once) to read the file's metadata; the Detector runs it.
        session = make_session(onnx_model, num_threads=detector_kwargs.get('num_threads'),
                               device=resolve_device(device, backend))
        found = pipeline_metadata(session, os.fspath(onnx_model))[0]
        if found is None:  # an older export: the network from its graph
            found = onnx_network(onnx_model)
        if found is not None and found != network:
            logger.warning("%s holds a %s network: running it as %s, not as --network %s",
                           os.fspath(onnx_model), found, found, network)
            network = found
        onnx_model = session
    cfg = cfg_for_network(network)
    net = None
    if onnx_model is None:
        from models.retinaface import RetinaFace
        from utils.checkpoint import load_model

        path = os.fspath(trained_model)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"weights not found: {path}. Download the published {os.path.basename(path)} (see README) "
                f"and put it in ./weights/, or pass its path with --trained_model")
        net = RetinaFace(cfg, phase='test')
        load_model(net, path)
        net.eval()
    return Detector(net, cfg, device=device, backend=backend, onnx_model=onnx_model, **detector_kwargs)


# ---------------------------------------------------------------------------------------
# Drawing

BOX_COLOUR = (0, 0, 255)  # red, BGR
TEXT_COLOUR = (255, 255, 255)
# left eye, right eye, nose, left mouth corner, right mouth corner
LANDMARK_COLOURS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))


def draw_detections(img, dets, vis_thres):
    """Draw detections on img in place, exactly as the reference's scripts do.

    Each detection with score >= vis_thres gets a red box (thickness 2), its score as
    "{:.4f}" in white at (x1, y1 + 12) and its five landmarks as filled dots.

    Args:
        img (ndarray[H, W, 3] uint8): the BGR image to draw on.
        dets (ndarray[N, 15]): detections in img's pixels.
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
