"""Validation during training, the training side: the model being trained run as a detector
(models.detector.Detector) on the validation images, scored by widerface_evaluate.validation;
train.py's --val_dataset / --val_gt / --eval_every; the best checkpoint, <name>_best.pth.

The model is validated in place: eval mode and the test phase (softmax scores) for the
duration, then back. Validation draws no random numbers, and the RNG states are restored
around it anyway, so a run with validation trains exactly like one without. Under torchrun
each rank detects a share of the images; rank 0 gathers them and computes the AP.
"""
import argparse
import contextlib
import logging
import random
import time

import numpy as np
import torch

from models.detector import Detector
from utils.atomic import atomic_save
from utils.distributed import World, broadcast_from_rank0, gather_to_rank0, shard
from utils.errors import InputError
from utils.image import read_image
from utils.run_history import RunHistory
from widerface_evaluate.validation import ValidationSet, format_aps, load_validation_set, score_detections, wider_boxes

logger = logging.getLogger(__name__)

# test_widerface.py's defaults: the WIDER protocol keeps every candidate above 0.02.
CONFIDENCE_THRESHOLD = 0.02
NMS_THRESHOLD = 0.4


@contextlib.contextmanager
def preserved_rng():
    """Restore the Python, numpy and torch (CPU and initialised CUDA) RNG states on exit."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def inference_phase(model):
    """The training model as a detector for the duration: eval mode, softmax scores."""
    was_training, phase = model.training, model.phase
    try:
        model.phase = 'test'
        model.eval()
        yield model
    finally:
        model.phase = phase
        model.train(was_training)


class Validator:
    """validator(model) -> {'ap': {setting: AP}, 'key': setting, 'images': n, 'time': s}.

    Under torchrun every rank of world calls it together (collective calls); each detects
    its share of the images (utils.distributed.shard), rank 0 computes the AP and shares
    the result.
    """

    def __init__(self, vset: ValidationSet, cfg: dict, device: torch.device | str,
                 confidence_threshold: float = CONFIDENCE_THRESHOLD, nms_threshold: float = NMS_THRESHOLD,
                 world: World = World()):
        self.vset = vset
        self.cfg = cfg
        self.device = device
        self.confidence_threshold = confidence_threshold
        self.nms_threshold = nms_threshold
        self.world = world

    def detect_share(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        """{key: [N, 5] x y w h score} for this rank's share of the images."""
        with preserved_rng(), inference_phase(model):
            detector = Detector(model, self.cfg, device=self.device, confidence_threshold=self.confidence_threshold,
                                nms_threshold=self.nms_threshold, origin_size=True)
            return {key: wider_boxes(detector.detect(read_image(path)))
                    for key, path in shard(zip(self.vset.keys, self.vset.paths), self.world)}

    def __call__(self, model: torch.nn.Module) -> dict:
        start = time.perf_counter()
        world = self.world
        if world.distributed:
            # Each rank's BatchNorm statistics come from its own batches; DDP copies rank 0's over
            # them at the start of every forward pass. Do the same now, so that every share is
            # detected by the model rank 0 saves (training is unchanged: the next forward pass
            # would have copied them anyway).
            import torch.distributed as dist
            with torch.no_grad():
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)
        shares = gather_to_rank0(self.detect_share(model), world)
        result = None
        if world.is_main:
            result = score_detections({k: v for share in shares for k, v in share.items()}, self.vset)
        result = broadcast_from_rank0(result, world)
        result['time'] = time.perf_counter() - start
        return result


def validator_from_args(args: argparse.Namespace, cfg: dict, device: torch.device, world: World,
                        log: logging.Logger = logger) -> Validator | None:
    """The Validator of train.py's --val_dataset / --val_gt / --eval_every (its files checked now), or None.
    Messages go to log (train.py passes its own logger)."""
    if args.val_dataset is None:
        if args.val_gt is not None:
            raise InputError("--val_gt needs --val_dataset (the WIDER val folder with images/ and wider_val.txt)")
        return None
    vset = load_validation_set(args.val_dataset, args.val_gt)
    log.info("validating on %s: %d images, every %d epoch(s); best checkpoint by %s AP",
                args.val_dataset, len(vset.keys), args.eval_every, vset.best_setting)
    return Validator(vset, cfg, device, world=world)


def validate_epoch(validator: Validator, model: torch.nn.Module, history: RunHistory, epoch: int, best_path: str,
                   is_main: bool, log: logging.Logger = logger) -> dict:
    """Validate (every rank together), note the AP in history, keep the best weights in
    best_path (rank 0 logs on log and saves); returns the fields for the epoch's record."""
    res = validator(model)
    new_best = history.add_validation(epoch, res)
    if is_main:
        log.info("validation after epoch %d: AP %s | %d images in %.2f s%s", epoch, format_aps(res['ap']),
                    res['images'], res['time'], ' | new best' if new_best else '')
        if new_best:
            atomic_save(model.state_dict(), best_path)
            log.info("saved %s (epoch %d, %s AP %.4f)", best_path, epoch, res['key'], res['ap'][res['key']])
    return {'val': res['ap'], 'val_key': res['key'], 'val_images': res['images'], 'val_time': res['time']}
