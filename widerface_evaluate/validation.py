"""Validation AP during training: the project's detection pipeline (models.detector.Detector)
on the current weights, scored by the project's WIDER evaluation (widerface_evaluate.evaluation).

Two kinds of validation set:

- a WIDER val folder (``images/`` and ``wider_val.txt``) with the ``.mat`` ground truth
  (``--val_gt``): AP easy / medium / hard, the best checkpoint chosen by hard;
- a RetinaFace ``label.txt`` with boxes (images in ``images/`` beside it): one AP where every
  face counts (evaluation.py's ``--label`` mode).

Detections are turned into exactly the numbers test_widerface.py writes into its files
(truncated integer boxes, the score's shortest float32 text), so the AP is the one
``test_widerface.py`` + ``evaluation.py --only-predicted`` give on the same weights.

The model is validated in place: eval mode and the test phase (softmax scores) for the
duration, then back. Validation draws no random numbers, and the RNG states are restored
around it anyway, so a run with validation trains exactly like one without. Under torchrun
each rank detects a share of the images; rank 0 gathers them and computes the AP.
"""
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from models.detector import Detector
from utils.atomic import atomic_save
from utils.distributed import World, broadcast_from_rank0, gather_to_rank0, shard
from utils.errors import InputError, InputNotFoundError
from utils.image import read_image
from utils.input_files import open_text
from widerface_evaluate.evaluation import (LABEL_SETTING, evaluate, load_label_gt, load_wider_gt,
                                           strip_image_ext)

logger = logging.getLogger(__name__)

# test_widerface.py's defaults: the WIDER protocol keeps every candidate above 0.02.
CONFIDENCE_THRESHOLD = 0.02
NMS_THRESHOLD = 0.4
WIDER_IMAGE_LIST = 'wider_val.txt'
# The setting that chooses the best checkpoint: WIDER's hardest, or the single label-mode AP.
BEST_SETTING_WIDER = 'hard'


@dataclass
class ValidationSet:
    """What to validate on: image keys (``event/name``, no extension) and files, the ground
    truth, and the setting whose AP picks the best checkpoint."""
    keys: list
    paths: list
    gt: object  # widerface_evaluate.evaluation.GroundTruth
    best_setting: str
    source: str


def load_validation_set(val_dataset, val_gt=None):
    """The ValidationSet of --val_dataset / --val_gt.

    val_dataset is a WIDER val folder (``images/`` and ``wider_val.txt``; val_gt is then the
    ``.mat`` folder), or a label.txt with boxes (val_gt must be None). Every image is
    checked to exist now, so that a bad set fails before training starts.
    Raises FileNotFoundError / ValueError naming the file or flag.
    """
    val_dataset = os.fspath(val_dataset)
    if os.path.isdir(val_dataset):
        if val_gt is None:
            raise InputError(f"--val_dataset {val_dataset} is a WIDER val folder: give its ground truth "
                             f"with --val_gt (the folder with wider_face_val.mat), or pass a label.txt")
        list_path = os.path.join(val_dataset, WIDER_IMAGE_LIST)
        if not os.path.isfile(list_path):
            raise InputNotFoundError(f"--val_dataset {val_dataset}: {WIDER_IMAGE_LIST} not found in it")
        with open_text(list_path, '--val_dataset image list') as f:
            names = [n.lstrip('/') for n in f.read().split()]
        image_root = os.path.join(val_dataset, 'images')
        gt = load_wider_gt(val_gt)
        best_setting = BEST_SETTING_WIDER
    elif os.path.isfile(val_dataset):
        if val_gt is not None:
            raise InputError(f"--val_gt is for a WIDER val folder; --val_dataset {val_dataset} is a label file "
                             f"that holds its own boxes")
        gt = load_label_gt(val_dataset)
        with open_text(val_dataset, '--val_dataset label file') as f:
            names = [line[1:].strip() for line in f if line.startswith('#')]
        image_root = os.path.join(os.path.dirname(os.path.abspath(val_dataset)), 'images')
        best_setting = LABEL_SETTING
    else:
        raise InputNotFoundError(f"--val_dataset not found: {val_dataset}")
    if not names:
        raise InputError(f"--val_dataset {val_dataset} lists no images")
    paths = [os.path.join(image_root, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputNotFoundError(f"{len(missing)} of the {len(paths)} validation images are missing, e.g. "
                                f"{missing[0]}")
    keys = [strip_image_ext(n) for n in names]
    known = set(gt.names)
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise InputError(f"{len(unknown)} validation images have no ground truth, e.g. {unknown[0]!r}")
    listed = np.isin(np.array(gt.names, dtype=object), np.array(keys, dtype=object))
    for setting in gt.settings:
        if gt.keep_count[setting][listed].sum() == 0:
            raise InputError(f"--val_dataset {val_dataset}: no face of setting {setting!r} in its images, "
                             f"so there is no AP to compute")
    return ValidationSet(keys, paths, gt, best_setting, val_dataset)


def wider_boxes(dets):
    """Detections [N, 15] (x1 y1 x2 y2 score ...) -> [N, 5] float64 ``x y w h score``, the
    numbers test_widerface.py writes and evaluation.py reads back."""
    out = np.empty((len(dets), 5), dtype=np.float64)
    if len(dets):
        corners = np.trunc(dets[:, :4].astype(np.float64))  # int(): towards zero
        out[:, 0:2] = corners[:, 0:2]
        out[:, 2:4] = corners[:, 2:4] - corners[:, 0:2]
        out[:, 4] = [float(str(s)) for s in dets[:, 4]]  # the file's text, read back
    return out


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

    def __init__(self, vset, cfg, device, confidence_threshold=CONFIDENCE_THRESHOLD,
                 nms_threshold=NMS_THRESHOLD, world=World()):
        self.vset = vset
        self.cfg = cfg
        self.device = device
        self.confidence_threshold = confidence_threshold
        self.nms_threshold = nms_threshold
        self.world = world

    def detect_share(self, model):
        """{key: [N, 5] x y w h score} for this rank's share of the images."""
        with preserved_rng(), inference_phase(model):
            detector = Detector(model, self.cfg, device=self.device, confidence_threshold=self.confidence_threshold,
                                nms_threshold=self.nms_threshold, origin_size=True)
            return {key: wider_boxes(detector.detect(read_image(path)))
                    for key, path in shard(zip(self.vset.keys, self.vset.paths), self.world)}

    def __call__(self, model):
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
            preds = {k: v for share in shares for k, v in share.items()}
            # only_predicted: the listed images (every one has an entry, maybe empty) are the set.
            aps = {s: r['ap'] for s, r in evaluate(preds, self.vset.gt, only_predicted=True).items()}
            result = {'ap': aps, 'key': self.vset.best_setting, 'images': len(preds)}
        result = broadcast_from_rank0(result, world)
        result['time'] = time.perf_counter() - start
        return result


def format_aps(aps):
    return ' '.join(f"{s} {ap:.4f}" for s, ap in aps.items())


def validator_from_args(args, cfg, device, world, log=logger):
    """The Validator of train.py's --val_dataset / --val_gt / --eval_every (its files checked now), or None.
    Messages go to log (train.py passes its own logger)."""
    if args.eval_every < 1:
        raise InputError(f"--eval_every must be >= 1, got {args.eval_every}")
    if args.val_dataset is None:
        if args.val_gt is not None:
            raise InputError("--val_gt needs --val_dataset (the WIDER val folder with images/ and wider_val.txt)")
        return None
    vset = load_validation_set(args.val_dataset, args.val_gt)
    log.info("validating on %s: %d images, every %d epoch(s); best checkpoint by %s AP",
                args.val_dataset, len(vset.keys), args.eval_every, vset.best_setting)
    return Validator(vset, cfg, device, world=world)


def validate_epoch(validator, model, history, epoch, best_path, is_main, log=logger):
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
