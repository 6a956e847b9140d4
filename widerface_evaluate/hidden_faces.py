"""How many real faces an anonymiser hides: the hidden-faces rule on WIDER FACE ground truth.

A ground-truth face counts as hidden when one mask covers at least COVERAGE (80%) of its
box's area. The masks of this project are its detections with score >= the threshold,
each box scaled by mask_scale about its centre (utils.anonymize.scale_boxes, the masks
anonymize() draws). The rule is on boxes, whatever the mask's shape, and one mask must do
it: two masks that each cover half of a face leave it counted as not hidden (either half
may be the one that shows the eyes).

Per setting (easy, medium, hard: the WIDER keep-lists, as evaluation.py applies them) it
gives the share of the counted faces that are hidden, and the masks per photo (over all
the ground truth's photos; a photo without a prediction file has none, as evaluation.py
counts it).

    python -m widerface_evaluate.hidden_faces -p ./widerface_txt/ -g ./ground_truth/ --thres 0.1 0.2 0.3

Formats: prediction files and ground truth are read by evaluation.py's readers: ``x y w h
score`` and ``x y w h`` boxes, in pixels; areas are continuous (``w * h``, no +1).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    # Run as a script (python hidden_faces.py): make the package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.anonymize import DEFAULT_MASK_SCALE, scale_boxes  # noqa: E402
from utils.cli import number_in, positive_float, probability, run_cli  # noqa: E402
from widerface_evaluate.evaluation import (GroundTruth, check_predictions_match, load_predictions,  # noqa: E402
                                           load_wider_gt)

COVERAGE = 0.8  # a face is hidden when one mask covers at least this share of its box
DEFAULT_THRES = (0.2,)


def face_coverage(faces: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The share of each face's box that each mask covers.

    Args:
        faces (ndarray[G, 4]): ``x y w h`` (pixels, top-left corner and size).
        masks (ndarray[M, 4]): ``x1 y1 x2 y2``.
    Returns:
        ndarray[G, M] float64 in [0, 1]: intersection area / face area. A face of zero area
        (a point or a line) is 1 where it lies inside the mask, else 0.
    """
    faces = np.asarray(faces, dtype=np.float64).reshape(-1, 4)
    masks = np.asarray(masks, dtype=np.float64).reshape(-1, 4)
    fx1, fy1 = faces[:, 0:1], faces[:, 1:2]  # [G, 1]
    fx2, fy2 = fx1 + faces[:, 2:3], fy1 + faces[:, 3:4]
    mx1, my1, mx2, my2 = (masks[None, :, c] for c in range(4))  # [1, M]
    iw = np.minimum(fx2, mx2) - np.maximum(fx1, mx1)  # [G, M]
    ih = np.minimum(fy2, my2) - np.maximum(fy1, my1)
    area = faces[:, 2:3] * faces[:, 3:4]  # [G, 1]
    inside = (iw >= 0) & (ih >= 0) & (fx1 >= mx1) & (fx2 <= mx2) & (fy1 >= my1) & (fy2 <= my2)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.clip(iw, 0, None) * np.clip(ih, 0, None) / area
    return np.where(area > 0, share, inside.astype(np.float64))


def hidden(faces: np.ndarray, masks: np.ndarray, coverage: float = COVERAGE) -> np.ndarray:
    """ndarray[G] bool: which faces (``x y w h``) one of masks (``x1 y1 x2 y2``) covers to at
    least coverage of their area."""
    share = face_coverage(faces, masks)  # [G, M]
    return (share >= coverage).any(axis=1) if share.shape[1] else np.zeros(len(share), dtype=bool)


def detection_masks(preds: Mapping[str, np.ndarray], thres: float,
                    mask_scale: float = DEFAULT_MASK_SCALE) -> dict[str, np.ndarray]:
    """This project's masks: per image, its detections (``x y w h score``, as
    evaluation.load_predictions reads them) with score >= thres, scaled by mask_scale about
    their centres, as ndarray[M, 4] ``x1 y1 x2 y2``. A box of negative width or height (which
    evaluation.py warns about) hides nothing and is left out."""
    masks = {}
    for name, boxes in preds.items():
        b = boxes[(boxes[:, 4] >= thres) & (boxes[:, 2] >= 0) & (boxes[:, 3] >= 0)]
        masks[name] = scale_boxes(np.hstack([b[:, :2], b[:, :2] + b[:, 2:4]]), mask_scale)
    return masks


@dataclass
class HiddenShare:
    """The rule's result on one image set.

    Attributes:
        share: setting -> the share of the setting's counted faces that are hidden.
        hidden: setting -> counted faces hidden; faces: setting -> counted faces.
        masks_per_photo: masks over all photos of the ground truth, per photo.
        hidden_face: (G,) bool over all ground-truth faces (gt.boxes), whether hidden.
    """
    share: dict[str, float]
    hidden: dict[str, int]
    faces: dict[str, int]
    masks_per_photo: float
    hidden_face: np.ndarray


def hidden_share(gt: GroundTruth, masks: Mapping[str, np.ndarray], coverage: float = COVERAGE) -> HiddenShare:
    """The hidden-faces rule over gt's photos: masks maps an image key (``event/name``) to its
    masks (ndarray[M, 4] ``x1 y1 x2 y2``); a photo without an entry has none."""
    none = np.zeros((0, 4))
    hidden_face = np.zeros(len(gt.boxes), dtype=bool)
    n_masks = 0
    for name, start, count in zip(gt.names, gt.box_start, gt.box_count):
        m = masks.get(name, none)
        n_masks += len(m)
        hidden_face[start:start + count] = hidden(gt.boxes[start:start + count], m, coverage)
    hid = {s: int((hidden_face & keep).sum()) for s, keep in gt.keep.items()}
    faces = {s: int(keep.sum()) for s, keep in gt.keep.items()}
    share = {s: hid[s] / faces[s] if faces[s] else float('nan') for s in gt.keep}
    return HiddenShare(share, hid, faces, n_masks / max(len(gt.names), 1), hidden_face)


def format_table(rows: Sequence[tuple[str, HiddenShare]], first: str = "threshold") -> str:
    """One line per (label, result): the hidden share of each setting, and the masks per photo."""
    settings = list(rows[0][1].share) if rows else []
    width = max([len(first)] + [len(label) for label, _ in rows])
    head = f"{first:<{width}}  " + "  ".join(f"{s:>7}" for s in settings) + "  masks/photo"
    lines = [head, "-" * len(head)]
    for label, r in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{100 * r.share[s]:6.1f}%" for s in settings)
                     + f"  {r.masks_per_photo:11.1f}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The share of WIDER FACE faces that detections hide: a face is hidden "
                                                 "when one mask (a detection's box scaled about its centre) covers "
                                                 f"at least {COVERAGE:.0%} of it.")
    parser.add_argument("-p", "--pred", default="./widerface_txt/",
                        help="prediction folder: <event>/<image>.txt as written by test_widerface.py")
    parser.add_argument("-g", "--gt", default="./ground_truth/",
                        help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    parser.add_argument("--thres", nargs="+", type=probability, default=list(DEFAULT_THRES),
                        help="score thresholds: detections with score >= this are masks (several: one line each)")
    parser.add_argument("--mask_scale", type=positive_float, default=DEFAULT_MASK_SCALE,
                        help="the mask's size relative to the box, about its centre")
    parser.add_argument("--coverage", type=number_in(float, 0, 1, exclusive_minimum=True), default=COVERAGE,
                        help="the share of a face's box one mask must cover for it to count as hidden")
    return parser


def main(args: argparse.Namespace) -> list[tuple[float, HiddenShare]]:
    """Prints one line per threshold; returns [(threshold, HiddenShare)]."""
    preds = load_predictions(args.pred)
    gt = load_wider_gt(args.gt)
    check_predictions_match(preds, gt, args.pred)
    results = [(t, hidden_share(gt, detection_masks(preds, t, args.mask_scale), args.coverage)) for t in args.thres]
    print(f"Faces hidden (one mask, the box x {args.mask_scale:g} about its centre, covers >= {args.coverage:.0%} "
          f"of the face), {len(gt.names)} photos:")
    print(format_table([(f"{t:g}", r) for t, r in results]))
    return results


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
