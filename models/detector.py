"""The one RetinaFace detection pipeline, used by every script, benchmark and validation.

    detector = load_detector('mobile0.25', 'weights/mobilenet0.25_Final.pth')
    dets = detector.detect(read_image('photo.jpg'))   # utils.image.read_image

A Detector preprocesses images (layers.functions.detection.to_input), runs the network
with one of two backends, and turns its outputs into detections (Detect): ndarray[N, 15]
float32, x1 y1 x2 y2 score and five landmark (x, y) pairs in original-image pixels.

- 'torch' runs the RetinaFace module in eager PyTorch. On the CPU its numbers are bit for
  bit those of the reference's test_widerface.py / test_fddb.py (the same float32
  operations in the same order), so the result files are byte-identical.
- 'onnxruntime' runs an exported file (convert_to_onnx.py), or the network exported in
  memory. With a file, torch is never imported: the network, config and mean come from
  the file's metadata, so a deployment can leave torch out.

This module also holds the flags the inference scripts share (add_detector_arguments)
and the Detector they build from them (detector_from_args).
"""
from __future__ import annotations

import argparse
import logging
import numbers
import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import numpy as np

from data.config import BGR_MEAN, MAX_SIZE, NETWORKS, TARGET_SIZE, cfg_for_network
from layers.functions.detection import (PAD_MULTIPLE, Detect, grid_crop_rows, resize_factor, resize_image,
                                        resized_size, to_input)
from layers.functions.prior_box import prior_boxes
from layers.functions.pyramid import (PYRAMID_KEEP_TOP_K, PYRAMID_MERGES, PYRAMID_SIZES, box_vote, in_core,
                                      mirror_candidates, nms_merge, pyramid_scales, tile_cores, tile_grid,
                                      tile_overlap)
from models.onnx_export import INPUT_NAME, export_onnx_bytes, make_session, onnx_network, pipeline_metadata
from utils import kernels
from utils.cli import (add_threads_argument, choose_openmp_wait_policy, number_in, openmp_runtime_loaded,
                       optional_top_k, other_busy_processes, positive_int, probability, set_threads, str2bool,
                       warn_if_cpus_busy)
from utils.device import BACKENDS, resolve_device
from utils.errors import InputError, InputNotFoundError, InputTooLargeError
from utils.memory import is_out_of_memory, out_of_memory_reason

if TYPE_CHECKING:  # neither is imported on the torch-free path
    import onnxruntime
    import torch

    from models.retinaface import RetinaFace

logger = logging.getLogger(__name__)

# An image with more pixels than this fed to the network at its original size gets a hint
# (once per Detector): time and memory grow with the pixel count, and a phone photo of
# 8000x6000 takes tens of seconds and gigabytes on a CPU, at a scale the detector was not
# trained for. The reference's test scale feeds at most 1600x2150 (3.4 megapixels).
LARGE_IMAGE_PIXELS = 16_000_000
# What the message on an image that does not fit in memory suggests to a Python caller (the
# scripts name their flags instead, through large_image_hints).
API_MEMORY_HINTS = ('max_size=2048 detects at a smaller size', 'tile=2048 detects in tiles in bounded memory')

# Tiles batched into one forward pass on a GPU: few enough that a batch of large tiles fits
# next to the network's activations. The CPU runs a batch image by image anyway, so there
# one tile at a time saves holding the batch's inputs.
TILE_BATCH = 4
CPU_TILE_BATCH = 1


def smallest_tile(cfg: dict) -> int:
    """The smallest --tile for a network: two cells of its coarsest feature map."""
    return 2 * max(cfg['steps'])


def resolve_backend(backend: str | None, onnx_model: object) -> str:
    """The backend to run: an ONNX model file selects 'onnxruntime', otherwise 'torch' is the default.

    Raises:
        ValueError: backend is not one of BACKENDS.
        InputError: backend is 'torch' and an ONNX model is given (eager PyTorch cannot run it).
    """
    if backend is None:
        return 'onnxruntime' if onnx_model is not None else 'torch'
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {list(BACKENDS)}")
    if backend == 'torch' and onnx_model is not None:
        raise InputError(f"the ONNX model {os.fspath(onnx_model)} runs in onnxruntime, not in the torch backend: "
                         f"use --backend onnxruntime (or leave --backend out), or drop --onnx_model")
    return backend


def _check_image(img: np.ndarray, index: int | None = None) -> None:
    where = '' if index is None else f" (image {index} of the batch)"
    if not isinstance(img, np.ndarray):
        raise ValueError(f"expected an image as ndarray[H, W, 3] uint8 BGR{where}, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape[:2]) < 1:
        raise ValueError(f"expected an image as ndarray[H, W, 3] uint8 BGR{where}, got shape {img.shape} "
                         f"dtype {img.dtype} (use read_image, which converts grayscale and 4-channel images)")


# ---------------------------------------------------------------------------------------
# One runner per backend: how to run the network, and where its outputs are.

class TorchRunner:
    """Eager PyTorch: the RetinaFace module on a torch.device."""

    exp_ = staticmethod(kernels.torch_exp_)  # torch's exp: the reference's numbers

    def __init__(self, net: RetinaFace, device: torch.device) -> None:
        self.net = net
        self.device = device

    def context(self) -> AbstractContextManager:
        import torch

        return torch.inference_mode()

    def run(self, batch: np.ndarray, one_by_one: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loc [B, P, 4], conf [B, P, 2], landms [B, P, 10]) Tensors on the device."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)  # [B, 3, H, W]
            if not one_by_one:
                return self.net(x)
            outputs = [self.net(x[i:i + 1]) for i in range(x.shape[0])]
            return tuple(torch.cat(parts) for parts in zip(*outputs))

    @staticmethod
    def take_rows(outputs: tuple[torch.Tensor, ...], rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Rows (ndarray[P'] int64) of each of one image's outputs ([P, ...] Tensors)."""
        import torch

        rows = torch.from_numpy(rows).to(outputs[0].device)
        return tuple(o.index_select(0, rows) for o in outputs)


class OnnxRunner:
    """onnxruntime: an exported model's session; outputs are host ndarrays, no torch."""

    exp_ = staticmethod(kernels.float_exp_)  # exp without torch

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session

    def context(self) -> AbstractContextManager:
        return nullcontext()

    def run(self, batch: np.ndarray, one_by_one: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loc [B, P, 4], conf [B, P, 2], landms [B, P, 10]) float32 ndarrays."""
        slices = [batch[i:i + 1] for i in range(batch.shape[0])] if one_by_one else [batch]
        runs = [self.session.run(None, {INPUT_NAME: x}) for x in slices]
        # numpy joins the images: a torch.cat would wake torch's threads, which then
        # spin on the cores the next forward pass needs (see utils.kernels.EXP_CHUNK).
        return tuple(np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*runs))

    @staticmethod
    def take_rows(outputs: tuple[np.ndarray, ...], rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Rows (ndarray[P'] int64) of each of one image's outputs ([P, ...] ndarrays)."""
        return tuple(o[rows] for o in outputs)


class Detector:
    """RetinaFace face detection on BGR images, one or a batch at a time.

    Args:
        net (RetinaFace | None): the model in phase 'test' with its weights loaded; it
            is moved to device and put in eval mode. May be None for the 'onnxruntime'
            backend when onnx_model is given.
        cfg (dict): the network's config (cfg_mnet or cfg_re50). An ONNX file that carries
            the config in its metadata (convert_to_onnx.py) runs with the file's values.
        device (str | torch.device): where the network runs ('cpu', 'cuda', 'cuda:1', 'auto').
        confidence_threshold (float): keep priors whose face score is > this.
        nms_threshold (float): IoU above which NMS suppresses a box.
        top_k (int | None): keep at most this many candidates before NMS (None or <= 0: all).
        keep_top_k (int | None): keep at most this many detections after NMS (<= 0: all;
            None: all, but at most PYRAMID_KEEP_TOP_K, insightface's limit, with pyramid).
        origin_size (bool | None): detect at the original size (True, the default when no
            size is given) or at the reference's test scale (False: short side TARGET_SIZE,
            long side at most MAX_SIZE). True next to target_size or max_size is an error.
        target_size, max_size (int | None): the size the network sees, by the reference's rule
            (layers.functions.detection.resize_factor): the short side becomes target_size
            unless the long side would then round to more than max_size, in which case the
            long side becomes max_size. Either turns the original size off. max_size alone:
            the long side becomes max_size, up or down, for any image; target_size alone:
            the short side becomes target_size, the long side uncapped. With tile, the image
            is resized first, then tiled where it is still larger than a tile; not with pyramid.
        backend (str): 'torch' (eager PyTorch: the reference's exact numbers) or
            'onnxruntime' (the same network exported to ONNX: faster on CPU, numbers
            equal to ~1e-5). None: 'onnxruntime' when onnx_model is given, else 'torch'.
        onnx_model (str | PathLike | onnxruntime.InferenceSession | None): for 'onnxruntime',
            an exported model file (convert_to_onnx.py) or a session of one; None exports
            net in memory. With a file, torch is never imported.
        num_threads (int | None): onnxruntime intra-op threads (None:
            models.onnx_export.default_num_threads()).
        allow_spinning (bool): whether onnxruntime's idle threads busy-wait (see
            models.onnx_export.make_session).
        pyramid (bool): accurate mode (layers/functions/pyramid.py): the image at five
            scales, each also mirrored, candidates merged across the passes. Needs
            origin_size True (the pyramid chooses its own scales).
        pyramid_merge (str): how pyramid candidates are merged: 'vote' (box voting, as
            insightface) or 'nms' (lower AP, bench/README.md "Accurate mode").
        tile (int | None): detect a larger image in overlapping tile x tile windows (at the
            test scale), merged with NMS; an image that fits in one tile is detected as
            without tiles. At least smallest_tile(cfg); not with pyramid.
        large_image_hints (tuple[str]): what the hint on an image of more than
            LARGE_IMAGE_PIXELS at the original size suggests, e.g. the script's flags
            ('--origin_size false detects at the test scale instead'); also the way out
            named when an image does not fit in memory (default there: API_MEMORY_HINTS).

    Attributes:
        network (str | None): the --network name of cfg ('mobile0.25', 'resnet50'), or the
            one the ONNX file names.
        device (torch.device | utils.device.HostDevice): where the network runs.
        mean (tuple): the BGR pixel subtracted from the input.
        postprocessor (layers.functions.detection.Detect): turns outputs into detections, and
            owns the settings that does it with (confidence_threshold, nms_threshold, top_k,
            keep_top_k); the pyramid and tile merges use them too.
        net, session: the PyTorch module and the onnxruntime session (None when unused).
        origin_size (bool), target_size, max_size (int | None): the size rule in effect
            (origin_size False without sizes given: TARGET_SIZE and MAX_SIZE).
        pad_mixed_sizes (bool): whether a batch of images of different sizes is padded to one
            size (where a batch runs as one forward pass: a GPU) or run image by image at each
            image's own size (the CPU, which runs a batch image by image anyway; its detections
            are then exactly detect()'s).

    Raises:
        InputError: a refused combination of settings (origin_size True with a size, pyramid
            with a size or with tile, a tile too small); InputTooLargeError (an InputError and
            a MemoryError) from preprocess and detect_preprocessed where an image does not fit in
            memory at its size, naming that size and the way out.
    """

    def __init__(self, net: RetinaFace | None, cfg: dict, device: str | torch.device = 'cpu',
                 confidence_threshold: float = 0.02,
                 nms_threshold: float = 0.4, top_k: int | None = None, keep_top_k: int | None = None,
                 origin_size: bool | None = None, backend: str | None = None,
                 onnx_model: str | os.PathLike | bytes | onnxruntime.InferenceSession | None = None,
                 num_threads: int | None = None, allow_spinning: bool = True, large_image_hints: Sequence[str] = (),
                 pyramid: bool = False, pyramid_merge: str = 'vote', tile: int | None = None,
                 target_size: int | None = None, max_size: int | None = None) -> None:
        backend = resolve_backend(backend, onnx_model)
        self.origin_size, self.target_size, self.max_size = _size_rule(origin_size, target_size, max_size)
        self.large_image_pixels = LARGE_IMAGE_PIXELS
        self.large_image_hints = tuple(large_image_hints)
        self._large_image_hinted = False
        self._hint_lock = threading.Lock()  # preprocess runs in several reading threads
        self.pyramid = bool(pyramid)
        self.pyramid_merge = pyramid_merge
        # The pyramid's limit on detections: keep_top_k when given (0: none), else insightface's.
        self.pyramid_keep_top_k = (PYRAMID_KEEP_TOP_K if keep_top_k is None
                                   else keep_top_k if keep_top_k > 0 else None)
        self.tile = None if tile is None else int(tile)
        _check_modes(self.pyramid, pyramid_merge, self.tile, self.origin_size, target_size, max_size)
        if not 0 <= nms_threshold <= 1:
            raise ValueError(f"nms_threshold must be in [0, 1], got {nms_threshold}")
        if not 0 <= confidence_threshold <= 1:  # nan fails too
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        self.network = next((name for name, c in NETWORKS.items() if c == cfg), None)
        self.mean = BGR_MEAN
        # The one place where a device setting becomes a device, on every path (scripts,
        # load_detector, direct use): the backend that runs the network decides 'auto'.
        self.device = resolve_device(device, backend)
        self.pad_mixed_sizes = self.device.type != 'cpu'
        self.backend = backend
        self.net = None
        self.session = None
        if backend == 'torch':
            if net is None:
                raise ValueError("the torch backend needs a network (net is None)")
            self.net = net.to(self.device).eval()
            self._runner = TorchRunner(self.net, self.device)
        else:
            # onnxruntime runs the network; a torch module, if given, is only exported.
            self.net = None if net is None else net.eval()
            self.session, cfg = self._open_session(cfg, onnx_model, num_threads, allow_spinning)
            self._runner = OnnxRunner(self.session)
        self.cfg = cfg
        self._anchors = tuple(len(s) for s in cfg['min_sizes'])
        # The post-processing settings live in the Detect alone; the Detector reads them there.
        self.postprocessor = Detect(cfg['variance'], float(confidence_threshold), float(nms_threshold),
                                    top_k if top_k and top_k > 0 else None,
                                    keep_top_k if keep_top_k and keep_top_k > 0 else None, self._runner.exp_)
        if self.tile is not None and self.tile < smallest_tile(cfg):
            raise InputError(f"tile size {self.tile} is too small: at least {smallest_tile(cfg)} pixels (two cells "
                             f"of the network's coarsest stride {max(cfg['steps'])})")

    def _open_session(self, cfg, onnx_model, num_threads, allow_spinning):
        """The onnxruntime session, and the config to run it with: the file's, where it says.

        A file that holds another network than cfg's runs as that network (with a warning):
        the file, not the flag, says what runs, and self.network names it. Older exports
        without the network in their metadata: the network from the graph (read with the
        onnx package)."""
        if onnx_model is None:
            if self.net is None:
                raise ValueError("the onnxruntime backend needs a network to export or an onnx_model file")
            import torch

            with torch.inference_mode(False):
                onnx_model = export_onnx_bytes(self.net, cfg=cfg)
            logger.info("exported the network to ONNX in memory for onnxruntime")
        if hasattr(onnx_model, 'get_modelmeta'):  # already a session
            session, name = onnx_model, str(onnx_model)
        else:
            session = make_session(onnx_model, num_threads=num_threads, device=self.device,
                                   allow_spinning=allow_spinning)
            name = 'the exported model' if isinstance(onnx_model, (bytes, bytearray)) else os.fspath(onnx_model)
        network, file_cfg, mean = pipeline_metadata(session, name)
        if network is None and isinstance(onnx_model, (str, os.PathLike)):
            network = onnx_network(onnx_model)
        if network is not None and self.network is not None and network != self.network:
            logger.warning("%s holds a %s network: running it as %s, not as --network %s",
                           name, network, network, self.network)
            cfg = cfg_for_network(network)
        if file_cfg is not None:
            # The file's values run it, whatever cfg says: they are what it was made with.
            cfg = {**cfg, **file_cfg}
        if network is not None:
            self.network = network
        if mean is not None:
            self.mean = mean
        return session, cfg

    def settings(self, batch_size: int = 1) -> dict:
        """Everything about this detector that changes its detections, as JSON-ready values
        (a results folder's manifest records them; see utils.run_manifest).

        Args:
            batch_size (int): the images per detect_batch of the run, recorded where it changes
                detections: not on the CPU (every batch is exactly detect()), but on a GPU (one
                forward pass per batch, mixed sizes padded)."""
        return {
            'network': self.network,
            'backend': self.backend,
            'device': self.device.type,  # CUDA kernels round differently from the CPU's
            'test_scale': self._scale_text(),
            'confidence_threshold': self.postprocessor.confidence_threshold,
            'nms_threshold': self.postprocessor.nms_threshold,
            'top_k': self.postprocessor.top_k,
            'keep_top_k': self.postprocessor.keep_top_k,
            # The modes appear only when on, so that the default run's record is unchanged.
            **({'pyramid': {'sizes': list(PYRAMID_SIZES), 'flip': True, 'merge': self.pyramid_merge,
                            # Recorded only when not insightface's limit, as records before it was settable.
                            **({'keep_top_k': self.pyramid_keep_top_k}
                               if self.pyramid_keep_top_k != PYRAMID_KEEP_TOP_K else {})}}
               if self.pyramid else {}),
            **({'tile': self.tile} if self.tile is not None else {}),
            **({'batch_size': batch_size} if batch_size != 1 and self.device.type != 'cpu' else {}),
        }

    def _scale_text(self):
        # The reference's test scale keeps the text records made before the sizes were settings.
        if self.origin_size:
            return 'original size'
        if self.target_size is None:
            return f'long side {self.max_size}'
        if self.max_size is None:
            return f'short side {self.target_size}'
        return f'short side {self.target_size}, long side at most {self.max_size}'

    def resize_factor(self, height: int, width: int) -> float:
        """The factor an image of height x width is resized by before the network (1 at the
        original size; layers.functions.detection.resize_factor with this detector's sizes)."""
        return resize_factor(height, width, self.origin_size, self.target_size, self.max_size)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the network input for an image of height x width (before any tiling)."""
        return resized_size(height, width, self.resize_factor(height, width))

    # -- stages, public so that benchmarks can time them one by one ----------------------

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray | list, list, list | None]:
        """Stack images into one network input.

        Each image is converted to float32, resized by resize_factor (cv2.INTER_LINEAR),
        made BGR minus the mean and laid out as CHW, in the reference's order of operations.
        Images of one size are stacked as they are; mixed sizes are padded at the bottom
        and right with zeros (the mean colour) to a common size rounded up to PAD_MULTIPLE
        where pad_mixed_sizes (a GPU), and kept apart otherwise (the CPU).

        Args:
            images (list[ndarray[H, W, 3] uint8]): BGR images.
        Returns:
            (batch ndarray[B, 3, H', W'] float32 on the host,
             sizes list[(h, w)] of each image after resizing,
             resizes list[float] of the resize factors).
            Mixed sizes without padding: batch is a list of B ndarray[1, 3, h, w], one per image.
            With pyramid or tile, batch is instead a list with one plan per image (what
            detect_preprocessed runs for it), sizes the images' sizes and resizes None.
        Raises:
            InputTooLargeError: the images do not fit in memory at their size.
            InputError: an image would be resized to less than one pixel on a side.
        """
        if not images:
            raise ValueError("no images to detect on (empty list)")
        try:
            if self.pyramid or self.tile is not None:
                return self._preprocess_passes(images)
            return self._preprocess_plain(images)
        except Exception as e:  # noqa: BLE001 - only an allocation failure is turned into an input error
            if not is_out_of_memory(e):
                raise
            message = self._out_of_memory_message(e, [img.shape[:2] for img in images])
        # Raised outside the handler, so that the failed allocation's frames (and arrays) are freed.
        raise InputTooLargeError(message)

    def _out_of_memory_message(self, error, originals, inputs=None):
        """What an InputTooLargeError says: the size that did not fit, the error, the way out.

        Args:
            error: the allocation failure.
            originals (list[(h, w)] | None): the images' sizes, None where unknown.
            inputs (list[(h, w)] | None): the network inputs' sizes (default: input_size of originals).
        """
        if inputs is None:
            inputs = [self.input_size(h, w) for h, w in originals]
        h, w = max(inputs, key=lambda size: size[0] * size[1])
        pixels = f"{w * h / 1e6:.1f} megapixels"
        if len(inputs) > 1:
            what = f"a batch of {len(inputs)} images, the largest a {w}x{h} input ({pixels})"
        elif originals is None:
            what = f"an image resized to {w}x{h} ({pixels})"
        elif self.pyramid:
            what = f"the {originals[0][1]}x{originals[0][0]} image in the pyramid's passes"
        elif tuple(originals[0]) == (h, w):
            what = f"the {w}x{h} image at its original size ({pixels})"
        else:
            what = f"the {originals[0][1]}x{originals[0][0]} image, resized to {w}x{h} ({pixels})"
        hints = '; '.join(self.large_image_hints or API_MEMORY_HINTS)
        return f"out of memory: {what} does not fit ({out_of_memory_reason(error)}); {hints}"

    def _preprocess_plain(self, images):
        """preprocess of the default pipeline."""
        sources, sizes, resizes = [], [], []
        for i, img in enumerate(images):
            _check_image(img, i if len(images) > 1 else None)
            resize = self.resize_factor(img.shape[0], img.shape[1])
            if self.origin_size:
                self._hint_if_large(img.shape[1], img.shape[0])
            # The reference resizes the float32 image before subtracting the mean.
            img = resize_image(img, resize)
            sources.append(img)
            sizes.append(img.shape[:2])
            resizes.append(resize)
        if len(set(sizes)) == 1:
            height, width = sizes[0]
            batch = np.empty((len(images), 3, height, width), dtype=np.float32)
        elif not self.pad_mixed_sizes:
            # Each image at its own size: what detect() feeds the network, to the bit.
            batch = [np.empty((1, 3) + size, dtype=np.float32) for size in sizes]
            for src, x in zip(sources, batch):
                to_input(src, x[0], self.mean)
            return batch, sizes, resizes
        else:
            height = -(-max(h for h, _ in sizes) // PAD_MULTIPLE) * PAD_MULTIPLE
            width = -(-max(w for _, w in sizes) // PAD_MULTIPLE) * PAD_MULTIPLE
            batch = np.zeros((len(images), 3, height, width), dtype=np.float32)
        for i, src in enumerate(sources):
            to_input(src, batch[i], self.mean)
        return batch, sizes, resizes

    def _hint_if_large(self, width, height):
        """Log, once, that an image of more than large_image_pixels at the original size is slow."""
        if width * height <= self.large_image_pixels:
            return
        with self._hint_lock:
            if self._large_image_hinted:
                return
            self._large_image_hinted = True
        advice = '; '.join(self.large_image_hints)
        logger.warning("a %dx%d image goes into the network at its original size (%.2f megapixels): slow, and "
                       "memory-hungry%s (this hint is shown once)", width, height, width * height / 1e6,
                       f"; {advice}" if advice else '')

    def forward(self, batch: np.ndarray) -> tuple[torch.Tensor | np.ndarray, ...]:
        """Run the network on a preprocessed batch.

        Args:
            batch (ndarray[B, 3, H, W] float32): from preprocess.
        Returns:
            (loc [B, P, 4], conf [B, P, 2], landms [B, P, 10]): Tensors on self.device for
            'torch', float32 ndarrays for 'onnxruntime'.
        """
        # On the CPU both backends run an NCHW batch slower per image than single images
        # (eager PyTorch's oneDNN then picks other kernels, which also round differently),
        # so image by image is faster there and gives exactly the single-image numbers.
        one_by_one = batch.shape[0] > 1 and self.device.type == 'cpu'
        return self._runner.run(batch, one_by_one)

    def priors(self, size: tuple[int, int]) -> np.ndarray:
        """The priors of an input of size (h, w): ndarray[P, 4] float32, (cx, cy, w, h)
        relative to the input, cached and read-only (layers.functions.prior_box.prior_boxes)."""
        return prior_boxes(self.cfg, size)

    def postprocess(self, loc: torch.Tensor | np.ndarray, conf: torch.Tensor | np.ndarray,
                    landms: torch.Tensor | np.ndarray, size: tuple[int, int], resize: float) -> np.ndarray:
        """Turn one image's network outputs into detections.

        Args:
            loc [P, 4], conf [P, 2], landms [P, 10] (Tensors or float32 ndarrays, as forward
                gives them): the outputs for the priors of an input of size (h, w).
            size (tuple[int, int]): (h, w) of the network input (the resized image).
            resize (float): the resize factor from the original image to size.
        Returns:
            ndarray[N, 15] float32: x1 y1 x2 y2 score and five landmark (x, y) pairs in
            original-image pixels, highest score first.
        """
        with self._runner.context():
            return self.postprocessor(loc, conf, landms, self.priors(size), size, resize)

    # -- the whole pipeline ----------------------------------------------------------------

    def detect(self, img: np.ndarray) -> np.ndarray:
        """Detect faces in one image.

        Args:
            img (ndarray[H, W, 3] uint8): a BGR image (see utils.image.read_image).
        Returns:
            ndarray[N, 15] float32: x1 y1 x2 y2 score, then five landmark (x, y) pairs,
            in pixels of img, highest score first.
        """
        return self.detect_batch([img])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Detect faces in several images with one forward pass.

        On the CPU every batch gives exactly the detections of detect() on each image: the
        CPU runs a batch image by image, each at its own size. On a GPU a batch runs as one
        forward pass (kernels chosen for the batch round differently), and images of
        different sizes are padded (see preprocess): each image's detections then come from
        its own part of the padded feature maps, and differ from detect()'s near the bottom
        and right edges, where the network sees the padding (bench/README.md, *Batching*).

        Args:
            images (list[ndarray[H, W, 3] uint8]): BGR images.
        Returns:
            list[ndarray[N_i, 15] float32]: per image, as detect() returns.
        """
        return self.detect_preprocessed(*self.preprocess(images))

    def detect_preprocessed(self, batch: np.ndarray | list, sizes: list, resizes: list | None) -> list[np.ndarray]:
        """detect_batch(images) given preprocess(images): the forward pass and what follows.

        Folder runs preprocess the next images in reading threads while the network runs.

        Raises:
            InputTooLargeError: the network's activations for these inputs do not fit in memory.
        """
        try:
            if self.pyramid or self.tile is not None:
                return self._detect_passes(batch)
            return self._detect_plain(batch, sizes, resizes)
        except Exception as e:  # noqa: BLE001 - only an allocation failure is turned into an input error
            if not is_out_of_memory(e):
                raise
            if resizes is None:  # pyramid and tile plans: sizes are the images' own
                message = self._out_of_memory_message(e, sizes)
            else:
                at_origin = all(r == 1 for r in resizes)
                message = self._out_of_memory_message(e, sizes if at_origin else None, sizes)
        # Raised outside the handler, so that the failed allocation's frames (and arrays) are freed.
        raise InputTooLargeError(message)

    def _detect_plain(self, batch, sizes, resizes):
        """detect_preprocessed of the default pipeline."""
        if isinstance(batch, list):  # images of different sizes, unpadded: one at a time
            return [self._detect_plain(x, [size], [resize])[0] for x, size, resize in zip(batch, sizes, resizes)]
        outputs = self.forward(batch)
        padded = tuple(batch.shape[2:])
        results = []
        with self._runner.context():
            for i, (size, resize) in enumerate(zip(sizes, resizes)):
                image_outputs = tuple(o[i] for o in outputs)  # [P_padded, ...] each
                if tuple(size) != padded:
                    rows = grid_crop_rows(tuple(self.cfg['steps']), self._anchors, tuple(size), padded)
                    image_outputs = self._runner.take_rows(image_outputs, rows)  # [P, ...] each
                results.append(self.postprocess(*image_outputs, size, resize))
        return results

    # -- accurate mode and tiles (layers/functions/pyramid.py) ------------------------------

    def pass_candidates(self, img: np.ndarray, resize: float) -> tuple[np.ndarray, np.ndarray]:
        """One pyramid scale: every candidate above the threshold in img resized by resize,
        and in its mirror image, both in img's pixels (the mirror's mapped back with
        mirror_candidates).

        Args:
            img (ndarray[H, W, 3] uint8 | ndarray[3, H', W'] float32): a BGR image, or the
                network input made from it at this scale (preprocess does that ahead).
            resize (float): the scale of the pass.
        Returns:
            (candidates, mirrored candidates): ndarray[K, 15] float32 each, in prior order.
        """
        x = self._pyramid_input(img, resize) if img.ndim == 3 and img.shape[2] == 3 else img
        return self._pass_candidates(x, resize)

    def _pyramid_input(self, img, resize):
        """The network input [3, H', W'] of img at one pyramid scale (resized as preprocess does)."""
        img = resize_image(img, resize)
        x = np.empty((3,) + img.shape[:2], dtype=np.float32)
        to_input(img, x, self.mean)
        return x

    def _pass_candidates(self, x, resize):
        # The image and its mirror image in one batch: one forward pass on a GPU. Mirroring the
        # network input equals the input of the mirrored image (to_input is per pixel).
        pair = np.stack((x, x[:, :, ::-1]))
        outputs = self.forward(pair)
        size = x.shape[1:]
        priors = self.priors(size)
        with self._runner.context():
            found = [self.postprocessor.candidates(*(o[k] for o in outputs), priors, size, resize) for k in range(2)]
        # The mirror axis of this pass, in original pixels: the resized width rounds, so it is
        # not exactly the original image's.
        return found[0], mirror_candidates(found[1], x.shape[2] / resize)

    def _merge_pyramid(self, candidates):
        settings = self.postprocessor
        if self.pyramid_merge == 'nms':
            return nms_merge(candidates, settings.nms_threshold, self.pyramid_keep_top_k, settings.top_k)
        return box_vote(candidates, settings.nms_threshold, self.pyramid_keep_top_k)

    def _preprocess_passes(self, images):
        """preprocess for pyramid and tile: one plan per image."""
        plans = []
        for i, img in enumerate(images):
            _check_image(img, i if len(images) > 1 else None)
            h, w = img.shape[:2]
            if self.pyramid:
                plans.append(('pyramid', [(self._pyramid_input(img, r), r) for r in pyramid_scales(h, w)]))
                continue
            resize = self.resize_factor(h, w)
            img = resize_image(img, resize)
            if img.shape[0] <= self.tile and img.shape[1] <= self.tile:
                # One tile: the untiled pipeline, to the bit.
                plans.append(('whole', self._preprocess_plain([images[i]])))
            else:
                plans.append(('tiles', img, resize))
        return plans, [img.shape[:2] for img in images], None

    def _detect_passes(self, plans):
        """detect_preprocessed for pyramid and tile plans."""
        results = []
        for plan in plans:
            if plan[0] == 'pyramid':
                found = [c for x, r in plan[1] for c in self._pass_candidates(x, r)]
                results.append(self._merge_pyramid(np.concatenate(found)))
            elif plan[0] == 'whole':
                results.append(self._detect_plain(*plan[1])[0])
            else:
                results.append(self._detect_tiles(plan[1], plan[2]))
        return results

    def _detect_tiles(self, img, resize):
        """Detections in img (resized by resize from the original) from its tiles."""
        h, w = img.shape[:2]
        overlap = tile_overlap(self.tile, max(max(s) for s in self.cfg['min_sizes']))
        grid, cores = tile_grid(h, w, self.tile, overlap), tile_cores(h, w, self.tile, overlap)
        size = (grid[0][2] - grid[0][0], grid[0][3] - grid[0][1])  # every tile has this size
        priors = self.priors(size)
        per_batch = CPU_TILE_BATCH if self.device.type == 'cpu' else TILE_BATCH
        found = []
        for start in range(0, len(grid), per_batch):
            chunk = grid[start:start + per_batch]
            batch = np.empty((len(chunk), 3) + size, dtype=np.float32)
            for i, (y0, x0, y1, x1) in enumerate(chunk):
                to_input(img[y0:y1, x0:x1], batch[i], self.mean)
            outputs = self.forward(batch)
            with self._runner.context():
                for i, (y0, x0, _, _) in enumerate(chunk):
                    c = self.postprocessor.candidates(*(o[i] for o in outputs), priors, size, 1)
                    c[:, 0:4:2] += x0
                    c[:, 1:4:2] += y0
                    c[:, 5::2] += x0
                    c[:, 6::2] += y0
                    # Only the tile whose core holds a candidate's centre keeps it: that tile holds
                    # the face whole (tile_overlap), its neighbours may see a cut-off part.
                    found.append(c[in_core(c, cores[start + i])])
        candidates = np.concatenate(found)
        if resize != 1:
            candidates[:, :4] /= resize
            candidates[:, 5:] /= resize
        settings = self.postprocessor
        return nms_merge(candidates, settings.nms_threshold, settings.keep_top_k, settings.top_k)


def _size_rule(origin_size, target_size, max_size):
    """(origin_size, target_size, max_size) as a Detector runs them: the original size (the
    default), the reference's test scale (origin_size False alone), or the sizes given."""
    if target_size is None and max_size is None:
        if origin_size is None or origin_size:
            return True, None, None
        return False, TARGET_SIZE, MAX_SIZE
    if origin_size:
        raise InputError(f"origin_size True cannot be combined with {_sizes_given(target_size, max_size)}: a size "
                         f"replaces the original size (leave origin_size out)")
    for name, value in (('target_size', target_size), ('max_size', max_size)):
        if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1):
            raise InputError(f"{name} must be a positive whole number of pixels, got {value!r}")
    return (False, None if target_size is None else int(target_size), None if max_size is None else int(max_size))


def _sizes_given(target_size, max_size):
    """'target_size 480 and max_size 640', naming the sizes that are set."""
    return ' and '.join(f"{name} {value}" for name, value in (('target_size', target_size), ('max_size', max_size))
                        if value is not None)


def _check_modes(pyramid, pyramid_merge, tile, origin_size, target_size=None, max_size=None):
    """The combinations of pyramid, tile, origin_size and the sizes that make sense."""
    if pyramid_merge not in PYRAMID_MERGES:
        raise InputError(f"unknown pyramid merge {pyramid_merge!r}: expected one of {list(PYRAMID_MERGES)}")
    if pyramid and (target_size is not None or max_size is not None):
        raise InputError(f"the pyramid chooses its own scales: it cannot run with "
                         f"{_sizes_given(target_size, max_size)}")
    if pyramid and not origin_size:
        raise InputError("the pyramid chooses its own scales: it cannot run with origin_size False")
    if pyramid and tile is not None:
        raise InputError("the pyramid and tiles do not combine: choose one")
    if not pyramid and pyramid_merge != 'vote':
        raise InputError("pyramid_merge applies to the pyramid only (--pyramid)")


def load_detector(network: str, trained_model: str | os.PathLike, device: str | torch.device = 'cpu',
                  backend: str | None = None, onnx_model: str | os.PathLike | None = None,
                  threads: int | None = None, **detector_kwargs) -> Detector:
    """Build RetinaFace for network, load trained_model into it and wrap it in a Detector.

    On a busy machine it protects eager PyTorch as the scripts do: when torch's OpenMP runtime
    is not loaded yet (torch not imported), it sets OMP_WAIT_POLICY=PASSIVE if other processes
    keep a core busy (utils.cli.choose_openmp_wait_policy); when it is loaded already, the
    policy can no longer change, and a busy machine gets one warning naming the remedy.

    Args:
        network (str): 'mobile0.25' or 'resnet50'. An ONNX model file that holds the other
            network runs as that network (with a warning): the file, not the flag, says
            what runs, and detector.network names it.
        trained_model (str | PathLike): the weights (.pth), loaded with utils.checkpoint.load_model.
            Not read when onnx_model is given.
        threads (int | None): CPU threads for the network, as the scripts' --threads: torch's
            intra-op thread count (torch.set_num_threads, process-wide) and onnxruntime's
            (num_threads). None leaves torch's default.
        device, backend, onnx_model, **detector_kwargs: as for Detector (an onnx_model
            selects the 'onnxruntime' backend). With an onnx_model torch is not imported:
            the network, config and mean come from the file's metadata (older files
            without it: the network from the graph, read with the onnx package, and the
            config of that network).
    Raises:
        InputNotFoundError: the weights file is missing; the message says where to put it.
        InputError: the file is not a checkpoint for this network, or a setting is refused.
    """
    backend = resolve_backend(backend, onnx_model)
    # Looked at before the network is loaded: loading it imports torch, which loads OpenMP.
    too_late = backend == 'torch' and openmp_runtime_loaded()
    if backend == 'torch' and not too_late:
        choose_openmp_wait_policy()
    detector = _build_detector(network, trained_model, device, backend, onnx_model, threads, detector_kwargs)
    if too_late and detector.device.type == 'cpu':
        _warn_once_if_threads_spin()
    return detector


def _build_detector(network, trained_model, device, backend, onnx_model, threads, detector_kwargs):
    """load_detector without its busy-machine check (detector_from_args makes the scripts' own)."""
    cfg = cfg_for_network(network)  # an unknown name is an error even when the file names another
    net = None if onnx_model is not None else _load_network(cfg, trained_model)
    if threads is not None:
        threads = set_threads(threads)  # torch's count when torch is loaded
        detector_kwargs = {'num_threads': threads, **detector_kwargs}
    return Detector(net, cfg, device=device, backend=backend, onnx_model=onnx_model, **detector_kwargs)


# Whether load_detector has warned that torch's threads spin on a busy machine (once per process).
_warned_threads_spin = False


def _warn_once_if_threads_spin():
    """The API's warning where OpenMP was loaded before load_detector could choose its wait
    policy: on a busy machine (and more than one torch thread, no policy set by the user),
    eager PyTorch's waiting threads spin on the cores the working ones need."""
    global _warned_threads_spin
    import torch

    if _warned_threads_spin or 'OMP_WAIT_POLICY' in os.environ or torch.get_num_threads() <= 1:
        return
    busy = other_busy_processes()
    if busy < 1:
        return
    _warned_threads_spin = True
    logger.warning("the CPUs are busy (%.1f other busy processes) and torch was imported before load_detector, so "
                   "its %d OpenMP threads spin while they wait for each other and can run many times slower: set "
                   "OMP_WAIT_POLICY=PASSIVE in the environment before torch is imported, or pass threads=1 to "
                   "load_detector (this warning is shown once)", busy, torch.get_num_threads())


def _load_network(cfg: dict, trained_model: str | os.PathLike) -> RetinaFace:
    """RetinaFace(cfg) in phase 'test', in eval mode, with the weights of trained_model."""
    from models.retinaface import RetinaFace
    from utils.checkpoint import load_model

    path = os.fspath(trained_model)
    if os.path.isdir(path):
        try:
            inside = sorted(f for f in os.listdir(path) if f.endswith(('.pth', '.pt', '.tar')))
        except OSError:  # an unreadable folder: the message still says what is wrong
            inside = []
        holds = f" (it holds {', '.join(inside[:3])})" if inside else ''
        raise InputError(f"weights {path} is a folder, not a weights file{holds}: "
                         f"pass the file itself with -m/--trained_model")
    if not os.path.isfile(path):
        raise InputNotFoundError(
            f"weights not found: {path}. Download the published {os.path.basename(path)} (see README) "
            f"and put it in ./weights/, or pass its path with --trained_model")
    net = RetinaFace(cfg, phase='test')
    load_model(net, path)
    return net.eval()


# ---------------------------------------------------------------------------------------
# The inference scripts' shared flags

def add_detector_arguments(parser: argparse.ArgumentParser, trained_model: str, network: str,
                           top_k: int | None = None, keep_top_k: int | None = None) -> argparse.ArgumentParser:
    """The flags every inference script shares, with that script's reference defaults:
    -m/--trained_model, --network, --cpu, --confidence_threshold, --top_k, --nms_threshold,
    --keep_top_k, --backend, --onnx_model, --pyramid, --tile, --pyramid_merge, --target_size,
    --max_size, --batch_size and --threads. (--origin_size is each script's own, for its help
    text: declare it with action=OriginSizeFlag.)"""
    parser.add_argument('-m', '--trained_model', default=trained_model, type=str,
                        help='Trained state_dict file path to open')
    parser.add_argument('--network', default=network, choices=sorted(NETWORKS),
                        help='Backbone network mobile0.25 or resnet50')
    parser.add_argument('--cpu', action="store_true", default=False,
                        help='Use cpu inference (default: CUDA when there is one)')
    parser.add_argument('--confidence_threshold', default=0.02, type=probability, help='confidence_threshold')
    parser.add_argument('--top_k', default=top_k, type=optional_top_k,
                        help="keep the top_k highest-scoring candidates before NMS (0 or 'none': all)")
    parser.add_argument('--nms_threshold', default=0.4, type=probability, help='nms_threshold')
    parser.add_argument('--keep_top_k', default=keep_top_k, type=optional_top_k,
                        help="keep the keep_top_k highest-scoring detections after NMS (0 or 'none': all; "
                             f"left out with --pyramid: {PYRAMID_KEEP_TOP_K})")
    parser.add_argument('--backend', default=None, choices=BACKENDS,
                        help="'torch' (eager PyTorch, the reference's exact numbers; the default) or "
                             "'onnxruntime' (the same network in onnxruntime: faster on CPU, "
                             "detections equal to ~1e-5; the default with --onnx_model)")
    parser.add_argument('--onnx_model', default=None, type=str,
                        help="run this exported model (convert_to_onnx.py) in onnxruntime instead of "
                             "--trained_model; its network comes from the file. Without it, "
                             "--backend onnxruntime exports the weights in memory at start-up")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument('--pyramid', action=PyramidFlag, default=False,
                       help="accurate mode (insightface's): detect at five scales (short side "
                            f"{'/'.join(map(str, PYRAMID_SIZES))} pixels), each also mirrored, and merge "
                            "the candidates by box voting; many times the work of one pass")
    modes.add_argument('--tile', default=None, type=TILE_SIZE,
                       help='detect a photo larger than TILE x TILE pixels in overlapping TILE x TILE tiles '
                            '(at the test scale), merged with NMS: less memory for large photos')
    parser.add_argument('--pyramid_merge', default='vote', choices=PYRAMID_MERGES,
                        help="with --pyramid: 'vote' (score-weighted means of each group of overlapping "
                             "candidates; the default) or 'nms'")
    parser.add_argument('--target_size', default=None, type=positive_int, action=SizeFlag,
                        help=f"detect with the photo's short side resized to this many pixels, by the reference's "
                             f"rule (its test scale is --target_size {TARGET_SIZE} --max_size {MAX_SIZE}): unless "
                             f"the long side would then be more than --max_size, which then becomes the long side. "
                             f"Alone, the long side is not capped. Either size turns the original size off "
                             f"(--origin_size true next to one is an error); not with --pyramid. With --tile the "
                             f"photo is resized first, then tiled where it is still larger than a tile")
    parser.add_argument('--max_size', default=None, type=positive_int, action=SizeFlag,
                        help="the most pixels the long side may have (see --target_size). Alone, only it decides: "
                             "the long side becomes exactly this, up or down, for every photo (e.g. --max_size 640 "
                             "for speed: time grows with the pixel count)")
    parser.add_argument('--batch_size', default=1, type=BATCH_SIZE,
                        help="images per forward pass in folder runs (default 1). On the CPU every N gives the same "
                             "bytes as 1, at about the same speed: the CPU runs a batch image by image, each at its "
                             "own size. On a GPU a batch is one forward pass: faster, with detections equal to N=1's "
                             "only to float rounding, and images of different sizes are padded to one size, which "
                             "moves detections near their bottom and right edges (bench/README.md, Batching)")
    add_threads_argument(parser)
    return parser


def model_input(args: argparse.Namespace) -> tuple[str, str, str]:
    """(flag, path, what) of the model file a script with add_detector_arguments' flags
    reads, for utils.outputs.RunOutputs.reads: --onnx_model when given, else -m."""
    if getattr(args, 'onnx_model', None):
        return '--onnx_model', args.onnx_model, 'the ONNX model'
    return '-m', args.trained_model, 'the weights'


# --tile: two cells of the coarsest feature map of any network, at least.
TILE_SIZE = number_in(int, min(smallest_tile(cfg) for cfg in NETWORKS.values()), name='tile size')
# --batch_size: a folder run holds a batch in the network and reads the next one ahead, so at
# the test scale (up to 1600x2150, 41 MB of network input each) this bounds it to a few GB.
MAX_BATCH_SIZE = 64
BATCH_SIZE = number_in(int, 1, MAX_BATCH_SIZE, name='batch size')


class PyramidFlag(argparse.Action):
    """--pyramid (no value): refused next to an explicit --origin_size, whose scale the
    pyramid replaces (OriginSizeFlag refuses the other order)."""

    def __init__(self, option_strings: Sequence[str], dest: str, default: bool = False, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        if getattr(namespace, '_origin_size_given', False):
            parser.error("--pyramid cannot be combined with --origin_size: the pyramid chooses its own scales")
        for flag in _given_sizes(namespace):
            parser.error(f"--pyramid cannot be combined with {flag}: the pyramid chooses its own scales")
        setattr(namespace, self.dest, True)


def _given_sizes(namespace):
    """The size flags given so far on the command line ('--target_size', '--max_size')."""
    return [f'--{dest}' for dest in ('target_size', 'max_size') if getattr(namespace, dest, None) is not None]


class SizeFlag(argparse.Action):
    """--target_size N / --max_size N: refused next to --pyramid and an explicit
    --origin_size true, in either order (PyramidFlag and OriginSizeFlag refuse the other)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: int,
                 option_string: str | None = None) -> None:
        if getattr(namespace, 'pyramid', False):
            parser.error(f"--pyramid cannot be combined with {option_string}: the pyramid chooses its own scales")
        if getattr(namespace, '_origin_size_given', False) and getattr(namespace, 'origin_size', False):
            parser.error(f"--origin_size true cannot be combined with {option_string}: {option_string} sets the "
                         f"size the network sees (leave --origin_size out)")
        setattr(namespace, self.dest, values)


class OriginSizeFlag(argparse.Action):
    """--origin_size true|false (the scripts' str2bool flag), remembered as given, so that
    --pyramid next to it, and --origin_size true next to --target_size or --max_size, are
    usage errors (--origin_size false next to a size changes nothing: a size turns the
    original size off)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: str,
                 option_string: str | None = None) -> None:
        if getattr(namespace, 'pyramid', False):
            parser.error("--pyramid cannot be combined with --origin_size: the pyramid chooses its own scales")
        value = str2bool(values)
        for flag in _given_sizes(namespace) if value else ():
            parser.error(f"--origin_size true cannot be combined with {flag}: {flag} sets the size the network "
                         f"sees (leave --origin_size out)")
        setattr(namespace, self.dest, value)
        namespace._origin_size_given = True


def detector_from_args(args: argparse.Namespace, **overrides) -> Detector:
    """A Detector built from the standard flags (network, weights, --cpu, thresholds, backend).

    It applies --threads and stops onnxruntime's idle threads from spinning (spinning
    threads take the cores that other processes, and the working threads, need on a
    shared machine; see bench/bench_threads.py). args.backend and args.network are set to
    what runs, so that logs and result files name it: --onnx_model selects onnxruntime, and
    the ONNX file's network wins over --network.
    """
    onnx_model = getattr(args, 'onnx_model', None)
    busy = None
    if onnx_model is None:
        # Eager PyTorch, or onnxruntime on an in-memory export: both need torch, and torch
        # must be loaded for --threads to reach it. On a busy machine its idle OpenMP
        # threads sleep instead of spinning. The machine is looked at once, for this and
        # for the warning below.
        busy = other_busy_processes()
        choose_openmp_wait_policy(busy)
        import torch  # noqa: F401
    threads = set_threads(getattr(args, 'threads', None))
    target_size, max_size = getattr(args, 'target_size', None), getattr(args, 'max_size', None)
    origin_size = getattr(args, 'origin_size', True)
    if (target_size is not None or max_size is not None) and not getattr(args, '_origin_size_given', False):
        origin_size = None  # the flag's default, not the user's: the sizes decide
    kwargs = dict(
        device='cpu' if getattr(args, 'cpu', False) else 'auto',  # the Detector resolves it
        confidence_threshold=args.confidence_threshold,
        nms_threshold=args.nms_threshold,
        top_k=getattr(args, 'top_k', None),
        keep_top_k=getattr(args, 'keep_top_k', None),
        origin_size=origin_size,
        target_size=target_size,
        max_size=max_size,
        backend=getattr(args, 'backend', None),
        onnx_model=onnx_model,
        num_threads=threads,
        allow_spinning=False,
        # The hint on a huge photo names the flags of the script at hand.
        large_image_hints=((('--origin_size false detects at the test scale instead',)
                            if hasattr(args, 'origin_size') else ())
                           + (('--max_size 2048 detects at a smaller size',) if hasattr(args, 'max_size') else ())
                           + (('--tile 2048 detects in tiles in bounded memory',) if hasattr(args, 'tile') else ())),
        pyramid=getattr(args, 'pyramid', False),
        pyramid_merge=getattr(args, 'pyramid_merge', 'vote'),
        tile=getattr(args, 'tile', None),
    )
    kwargs.update(overrides)
    # The scripts' own busy-machine protection is above: not load_detector's.
    device, backend, onnx_model = kwargs.pop('device'), kwargs.pop('backend'), kwargs.pop('onnx_model')
    detector = _build_detector(args.network, args.trained_model, device, backend, onnx_model, None, kwargs)
    # The backend and device that run, not the flags as given (--backend is None unless given).
    if (detector.backend == 'torch' and detector.device.type == 'cpu' and threads > 1
            and getattr(args, 'threads', None) is None):
        warn_if_cpus_busy(threads, busy)
    args.backend = detector.backend
    args.network = detector.network or args.network
    logger.info("%s (%s) on %s with the %s backend", args.network, onnx_model or args.trained_model,
                detector.device, detector.backend)
    return detector
