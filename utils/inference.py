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
so the result files are byte-identical. Three shortcuts keep the post-processing cheap and
change nothing: priors are computed once per input size; only the priors above the score
threshold are decoded, and their landmarks only if NMS keeps them (decoding is
elementwise, so each row gets exactly the value it would get from decoding all rows); and
NMS is the compiled utils/nms/cpu_nms.pyx, which returns py_cpu_nms's keep list without
comparing every pair.

Typical use:

    detector = load_detector('mobile0.25', 'weights/mobilenet0.25_Final.pth')
    dets = detector.detect(read_image('photo.jpg'))
"""
import logging
import os
from functools import lru_cache
from math import ceil

import cv2
import numpy as np
import torch

from data import cfg_for_network
from layers.functions.prior_box import cached_priors
from models.retinaface import RetinaFace
from utils.checkpoint import load_model
from utils.nms import fast_nms
from utils.onnx_export import INPUT_NAME, export_onnx_bytes, make_session

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
# Elements per torch.exp call when decoding (see _torch_exp).
EXP_CHUNK = 2048

_MEAN = np.asarray(BGR_MEAN, dtype=np.float32)
# Header bytes that read_image inspects without decoding.
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_COLOUR_TYPE_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # IHDR colour type -> channels
_JPEG_SOI, _JPEG_SOS, _JPEG_EOI = b'\xff\xd8', b'\xff\xda', b'\xff\xd9'


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

def resolve_device(device):
    """torch.device(device), checking that CUDA is there when asked for.

    Raises:
        ValueError: device is CUDA and torch sees no CUDA device.
    """
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


@lru_cache(maxsize=128)
def _grid_crop_index(steps, anchors, size, padded):
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
        Tensor[P] int64 (CPU).
    """
    parts, offset = [], 0
    for step, a in zip(steps, anchors):
        rows_p, cols_p = ceil(padded[0] / step), ceil(padded[1] / step)
        rows, cols = ceil(size[0] / step), ceil(size[1] / step)
        r = torch.arange(rows).view(rows, 1, 1)
        c = torch.arange(cols).view(1, cols, 1)
        k = torch.arange(a).view(1, 1, a)
        parts.append((offset + (r * cols_p + c) * a + k).reshape(-1))  # [rows, cols, a] -> [rows*cols*a]
        offset += rows_p * cols_p * a
    return torch.cat(parts)



# ---------------------------------------------------------------------------------------
# Decoding on the host
#
# numpy float32 mirrors of utils.box_utils.decode / decode_landm followed by the
# reference's `* scale / resize`: the same IEEE float32 operations in the same order, so
# the same bits (tested against the torch functions), without the per-call overhead of
# small torch ops. numpy and torch's exp may round differently, so exp is torch's.

def _torch_exp(x):
    """torch.exp of ndarray x (float32, contiguous), as an ndarray of x's shape.

    On the CPU torch runs exp on more than EXP_CHUNK elements in parallel threads; for a
    few thousand candidates starting the threads costs more than the work, and far more
    when other processes hold the cores. Chunks stay serial; exp is elementwise, so the
    chunking changes no value.
    """
    flat = torch.from_numpy(x.reshape(-1))
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), EXP_CHUNK):
        torch.exp(flat[start:start + EXP_CHUNK], out=out[start:start + EXP_CHUNK])
    return out.numpy().reshape(x.shape)


def decode_boxes(loc, priors, variance, size, resize):
    """Boxes in original-image pixels, exactly `decode(loc, priors, variance) * scale / resize`.

    Args:
        loc (ndarray[K, 4] float32): predicted (dcx, dcy, dw, dh) of K candidates.
        priors (ndarray[K, 4] float32): their priors, (cx, cy, w, h) relative to the input.
        variance (list[float]): cfg['variance'].
        size (tuple[int, int]): (h, w) of the network input; resize (float): its scale factor.
    Returns:
        ndarray[K, 4] float32: x1 y1 x2 y2.
    """
    h, w = size
    if np.result_type(loc, priors, resize, *variance) != np.float32:  # not the float32 arrays the pipeline passes
        centre, prior_wh = priors[:, :2], priors[:, 2:]
        xy = centre + loc[:, :2] * variance[0] * prior_wh
        wh = prior_wh * _torch_exp(loc[:, 2:] * variance[1])
        top_left = xy - wh / 2
        boxes = np.concatenate((top_left, wh + top_left), axis=1)  # decode's `boxes[:, 2:] += boxes[:, :2]`
        return boxes * np.array([w, h, w, h], dtype=np.float32) / resize
    # The same float32 operations, in place on the rows of one [4, K] array (each row a
    # contiguous coordinate: x, y, w, h, then x1 y1 x2 y2), each with decode's operand
    # order (which also fixes NaN payloads); transposed into [K, 4] at the end.
    pt = np.ascontiguousarray(priors.T)
    centre, prior_wh = pt[:2], pt[2:]
    rows = np.empty((4, loc.shape[0]), dtype=np.float32)
    np.multiply(loc.T, np.array([[variance[0]], [variance[0]], [variance[1]], [variance[1]]], dtype=np.float32),
                out=rows)
    xy, wh = rows[:2], rows[2:]
    xy *= prior_wh
    np.add(centre, xy, out=xy)  # centre + loc * variance[0] * prior_wh
    wh[...] = _torch_exp(wh)
    np.multiply(prior_wh, wh, out=wh)  # prior_wh * exp(loc * variance[1])
    xy -= wh / 2  # top_left
    wh += xy  # decode's `boxes[:, 2:] += boxes[:, :2]`
    rows *= np.array([[w], [h], [w], [h]], dtype=np.float32)
    rows /= resize
    return np.ascontiguousarray(rows.T)


def decode_landmarks(landms, priors, variance, size, resize):
    """Landmarks in original-image pixels, exactly `decode_landm(landms, priors, variance) * scale1 / resize`.

    Args:
        landms (ndarray[K, 10] float32): predicted offsets (dx, dy) x 5 of K candidates.
        priors, variance, size, resize: as for decode_boxes.
    Returns:
        ndarray[K, 10] float32: five (x, y) pairs.
    """
    h, w = size
    if np.result_type(landms, priors, resize, *variance) != np.float32:
        points = priors[:, np.newaxis, :2] + landms.reshape(-1, 5, 2) * variance[0] * priors[:, np.newaxis, 2:]
        return (points * np.array([w, h], dtype=np.float32) / resize).reshape(-1, 10)
    # The same float32 operations, in decode_landm's operand order, in place on the rows
    # of one [10, K] array (x, y five times; each row contiguous), transposed at the end.
    pt = np.ascontiguousarray(priors.T)  # [4, K]: cx, cy, w, h
    rows = np.empty((10, landms.shape[0]), dtype=np.float32)
    np.multiply(landms.T, np.float32(variance[0]), out=rows)
    points = rows.reshape(5, 2, landms.shape[0])
    points *= pt[2:]
    np.add(pt[:2], points, out=points)  # priors' centre + landms * variance[0] * priors' size
    points *= np.array([[w], [h]], dtype=np.float32)
    points /= resize
    return np.ascontiguousarray(rows.T)


class Detector:
    """RetinaFace face detection on BGR images, one or a batch at a time.

    Args:
        net (RetinaFace | None): the model in phase 'test' with its weights loaded; it
            is moved to device and put in eval mode. May be None for the 'onnxruntime'
            backend when onnx_model is given.
        cfg (dict): the network's config (cfg_mnet or cfg_re50).
        device (str | torch.device): where the network runs ('cpu', 'cuda', 'cuda:1').
        confidence_threshold (float): keep priors whose face score is > this.
        nms_threshold (float): IoU above which NMS suppresses a box.
        top_k (int | None): keep at most this many candidates before NMS (None or <= 0: all).
        keep_top_k (int | None): keep at most this many detections after NMS (None or <= 0: all).
        origin_size (bool): detect at the original size (True) or at the reference's
            test scale (short side TARGET_SIZE, long side at most MAX_SIZE).
        backend (str): 'torch' (eager PyTorch: the reference's exact numbers) or
            'onnxruntime' (the same network exported to ONNX: faster on CPU, numbers
            equal to ~1e-5).
        onnx_model (str | PathLike | None): for 'onnxruntime', an exported model file
            (convert_to_onnx.py); None exports net in memory.
        num_threads (int | None): onnxruntime intra-op threads (None: torch.get_num_threads()).
    """

    def __init__(self, net, cfg, device='cpu', confidence_threshold=0.02, nms_threshold=0.4, top_k=None,
                 keep_top_k=None, origin_size=True, backend='torch', onnx_model=None, num_threads=None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: expected one of {list(BACKENDS)}")
        if not 0 <= nms_threshold <= 1:
            raise ValueError(f"nms_threshold must be in [0, 1], got {nms_threshold}")
        self.cfg = cfg
        self.device = resolve_device(device)
        self.confidence_threshold = float(confidence_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = top_k if top_k and top_k > 0 else None
        self.keep_top_k = keep_top_k if keep_top_k and keep_top_k > 0 else None
        self.origin_size = bool(origin_size)
        self.backend = backend
        self.net = None
        self.session = None
        if net is not None:
            self.net = net.to(self.device).eval()
        if backend == 'torch':
            if net is None:
                raise ValueError("the torch backend needs a network (net is None)")
        else:
            if onnx_model is None:
                if net is None:
                    raise ValueError("the onnxruntime backend needs a network to export or an onnx_model file")
                with torch.inference_mode(False):
                    onnx_model = export_onnx_bytes(self.net)
                logger.info("exported the network to ONNX in memory for onnxruntime")
            self.session = make_session(onnx_model, num_threads=num_threads, device=self.device)
        self._anchors = tuple(len(s) for s in cfg['min_sizes'])

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
        for i, (src, (h, w)) in enumerate(zip(sources, sizes)):
            # HWC -> CHW one plane at a time: each plane is subtracted straight into place
            # (float32 arithmetic, as the reference's `img -= (104, 117, 123)`).
            for c, plane in enumerate(cv2.split(src)):
                cv2.subtract(plane, float(_MEAN[c]), dst=batch[i, c, :h, :w], dtype=cv2.CV_32F)
        return batch, sizes, resizes

    def forward(self, batch):
        """Run the network on a preprocessed batch.

        Args:
            batch (ndarray[B, 3, H, W] float32): from preprocess.
        Returns:
            (loc Tensor[B, P, 4], conf Tensor[B, P, 2], landms Tensor[B, P, 10]) on
            self.device for 'torch', on the CPU for 'onnxruntime'.
        """
        if self.session is not None:
            outputs = self.session.run(None, {INPUT_NAME: batch})
            return tuple(torch.from_numpy(o) for o in outputs)
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)  # [B, 3, H, W]
            if x.shape[0] == 1 or self.device.type != 'cpu':
                return self.net(x)
            # On the CPU, eager PyTorch runs one NCHW batch slower per image than single
            # images (oneDNN picks other kernels: test.jpg took 75 against 25 ms per image
            # in a batch of 8), and those kernels round differently. Image by image is
            # faster and gives exactly the single-image numbers.
            outputs = [self.net(x[i:i + 1]) for i in range(x.shape[0])]
            return tuple(torch.cat(parts) for parts in zip(*outputs))

    def priors(self, size, device=None):
        """The priors (Tensor[P, 4], (cx, cy, w, h) relative to the image) of an input of size (h, w), cached."""
        # Made outside inference mode: the cache is shared with training code, which cannot
        # use inference tensors in autograd.
        with torch.inference_mode(False):
            return cached_priors(self.cfg, size, device=device or self.device)

    def postprocess(self, loc, conf, landms, size, resize):
        """Turn one image's network outputs into detections.

        Args:
            loc (Tensor[P, 4]), conf (Tensor[P, 2]), landms (Tensor[P, 10]): the outputs
                for the priors of an input of size (h, w).
            size (tuple[int, int]): (h, w) of the network input (the resized image).
            resize (float): the resize factor from the original image to size.
        Returns:
            ndarray[N, 15] float32: x1 y1 x2 y2 score and five landmark (x, y) pairs in
            original-image pixels, highest score first.
        """
        with torch.inference_mode():
            return self._postprocess(loc, conf, landms, size, resize)

    def _postprocess(self, loc, conf, landms, size, resize):
        scores_t = conf[:, 1]  # [P]
        if loc.device.type == 'cpu':
            scores_all = scores_t.numpy()
            inds = np.flatnonzero(scores_all > self.confidence_threshold)  # the reference's np.where(...)[0]
            scores = scores_all[inds]
            # Gathered in index order: sequential reads, much cheaper than gathering in
            # score order right after the forward pass has flushed the caches.
            loc_c = loc.numpy()[inds]  # [K, 4]
            # Landmarks are gathered later, only for the kept boxes (landms_c[kept] below).
            landms_c, landms_inds = landms.numpy(), inds
        else:
            # Filter on the device and copy only the candidates to the host.
            inds_t = torch.nonzero(scores_t > self.confidence_threshold).squeeze(1)
            scores = scores_t[inds_t].cpu().numpy()
            inds = inds_t.cpu().numpy()
            loc_c, landms_c = loc[inds_t].cpu().numpy(), landms[inds_t].cpu().numpy()
            landms_inds = None
        if inds.size == 0:
            return empty_detections()
        # The reference's order: numpy's argsort of the kept scores, reversed (numpy breaks
        # ties its own way, so the sort must be numpy's on the same array).
        order = scores.argsort()[::-1]
        if self.top_k:
            order = order[:self.top_k]
        priors_c = self.priors(size, 'cpu').numpy()[inds]  # [K, 4]
        variance = self.cfg['variance']

        boxes = decode_boxes(loc_c[order], priors_c[order], variance, size, resize)
        dets = np.hstack((boxes, scores[order, np.newaxis])).astype(np.float32, copy=False)
        # Exactly py_cpu_nms's keep list (see utils/nms/cpu_nms.pyx), fast on crowds.
        keep = fast_nms(dets, self.nms_threshold)
        if self.keep_top_k:
            keep = keep[:self.keep_top_k]
        dets = dets[keep]
        # Landmarks only for the kept boxes: decoding is elementwise, so the values are
        # those of decoding every candidate and selecting afterwards.
        kept = order[keep]
        landms_kept = landms_c[kept] if landms_inds is None else landms_c[landms_inds[kept]]
        landms = decode_landmarks(landms_kept, priors_c[kept], variance, size, resize)
        return np.concatenate((dets, landms), axis=1)

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
        batch, sizes, resizes = self.preprocess(images)
        loc, conf, landms = self.forward(batch)
        padded = tuple(batch.shape[2:])
        results = []
        with torch.inference_mode():
            for i, (size, resize) in enumerate(zip(sizes, resizes)):
                loc_i, conf_i, landms_i = loc[i], conf[i], landms[i]
                if tuple(size) != padded:
                    rows = _grid_crop_index(tuple(self.cfg['steps']), self._anchors, tuple(size), padded)
                    rows = rows.to(loc_i.device)
                    loc_i, conf_i = loc_i.index_select(0, rows), conf_i.index_select(0, rows)
                    landms_i = landms_i.index_select(0, rows)
                results.append(self._postprocess(loc_i, conf_i, landms_i, size, resize))
        return results


def load_detector(network, trained_model, device='cpu', backend='torch', onnx_model=None, **detector_kwargs):
    """Build RetinaFace for network, load trained_model into it and wrap it in a Detector.

    Args:
        network (str): 'mobile0.25' or 'resnet50'.
        trained_model (str | PathLike): the weights (.pth), loaded with utils.checkpoint.load_model.
            Not read when backend is 'onnxruntime' and onnx_model is given.
        device, backend, onnx_model, **detector_kwargs: as for Detector.
    Raises:
        FileNotFoundError: the weights file is missing; the message says where to put it.
        ValueError: the file is not a checkpoint for this network.
    """
    cfg = cfg_for_network(network)
    net = None
    if not (backend == 'onnxruntime' and onnx_model is not None):
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
