"""Validation AP during training, the scoring side: the validation set (images and ground
truth) and the AP of detections held in memory, by the project's WIDER evaluation
(widerface_evaluate.evaluation). Running the model being trained and keeping the best
checkpoint are models.validation's; this module imports only data and utils.

Two kinds of validation set:

- a WIDER val folder (``images/`` and ``wider_val.txt``) with the ``.mat`` ground truth
  (``--val_gt``): AP easy / medium / hard, the best checkpoint chosen by hard;
- a RetinaFace ``label.txt`` with boxes (images in ``images/`` beside it): one AP where every
  face counts (evaluation.py's ``--label`` mode).

Detections are turned into exactly the numbers test_widerface.py writes into its files
(truncated integer boxes, the score's shortest float32 text), so the AP is the one
``test_widerface.py`` + ``evaluation.py --only-predicted`` give on the same weights.
"""
import os
from dataclasses import dataclass

import numpy as np

from data.label_file import WIDER_IMAGE_LIST, read_label_file, read_wider_list
from utils.errors import InputError, InputNotFoundError
from widerface_evaluate.evaluation import (LABEL_SETTING, GroundTruth, evaluate, label_gt_from_entries,
                                           load_wider_gt, strip_image_ext)

# The setting that chooses the best checkpoint: WIDER's hardest, or the single label-mode AP.
BEST_SETTING_WIDER = 'hard'


@dataclass
class ValidationSet:
    """What to validate on: image keys (``event/name``, no extension) and files, the ground
    truth, and the setting whose AP picks the best checkpoint."""
    keys: list[str]
    paths: list[str]
    gt: GroundTruth
    best_setting: str
    source: str


def load_validation_set(val_dataset: str | os.PathLike, val_gt: str | None = None) -> ValidationSet:
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
        names = [name for _, _, name in read_wider_list(list_path, '--val_dataset image list')]
        image_root = os.path.join(val_dataset, 'images')
        gt = load_wider_gt(val_gt)
        best_setting = BEST_SETTING_WIDER
    elif os.path.isfile(val_dataset):
        if val_gt is not None:
            raise InputError(f"--val_gt is for a WIDER val folder; --val_dataset {val_dataset} is a label file "
                             f"that holds its own boxes")
        entries = read_label_file(val_dataset)
        gt = label_gt_from_entries(entries)
        names = [rel for rel, _ in entries]
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


def wider_boxes(dets: np.ndarray) -> np.ndarray:
    """Detections [N, 15] (x1 y1 x2 y2 score ...) -> [N, 5] float64 ``x y w h score``, the
    numbers test_widerface.py writes and evaluation.py reads back."""
    out = np.empty((len(dets), 5), dtype=np.float64)
    if len(dets):
        corners = np.trunc(dets[:, :4].astype(np.float64))  # int(): towards zero
        out[:, 0:2] = corners[:, 0:2]
        out[:, 2:4] = corners[:, 2:4] - corners[:, 0:2]
        out[:, 4] = [float(str(s)) for s in dets[:, 4]]  # the file's text, read back
    return out


def format_aps(aps: dict[str, float]) -> str:
    """{'easy': 0.9, ...} -> 'easy 0.9000 ...', for the log."""
    return ' '.join(f"{s} {ap:.4f}" for s, ap in aps.items())


def score_detections(preds: dict[str, np.ndarray], vset: ValidationSet) -> dict:
    """The AP of detections held in memory against vset's ground truth.

    Args:
        preds: {image key: [N, 5] x y w h score (wider_boxes)}, an entry (maybe empty) for
            every image of vset that was detected.
        vset: the ValidationSet.
    Returns:
        {'ap': {setting: AP}, 'key': the setting that picks the best checkpoint, 'images': len(preds)}
    """
    # only_predicted: the listed images (every one has an entry, maybe empty) are the set.
    aps = {s: r['ap'] for s, r in evaluate(preds, vset.gt, only_predicted=True).items()}
    return {'ap': aps, 'key': vset.best_setting, 'images': len(preds)}
