"""WIDER FACE validation AP (easy / medium / hard), as the reference computes it.

This is the WiderFace-Evaluation algorithm the reference ships (wondervictor), giving the
same AP to the last bit, reorganised to be many times faster (bench/bench_evaluation.py).
One fix: each image's rows are matched in score order (by_score), where the reference took
the file's order; files in score order (the reference's, this project's) score the same.


* every prediction file is parsed with one numpy conversion, and the ``.mat`` files once;
* the best overlap of every detection is computed once by the Cython kernel (or, when it
  is not built, by its numpy twin, which gives the same bits) and shared by the three
  settings (only the set of counted faces differs between them);
* the reference's per-image, per-threshold loop (1000 thresholds) becomes one histogram:
  a detection contributes to every threshold from the first one its image's score prefix
  reaches, so the counts of all thresholds are a cumulative sum.

All counts are integers, so their sums are exact whatever the order; the precision,
recall and AP steps are the reference's float64 operations on the same arrays.

Formats: prediction files hold ``x y w h score`` lines (pixels, top-left corner and size);
ground-truth boxes are ``x y w h`` too. The overlap is computed on corners
``[x1, y1, x2, y2] = [x, y, x + w, y + h]`` with the kernel's inclusive ``+1`` areas.

Run from this folder as the reference documents (``python evaluation.py -p ... -g ...``)
or from the repository root as ``python -m widerface_evaluate.evaluation``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

if __package__ in (None, ""):
    # Run as a script (python evaluation.py): make the package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.label_file import read_label_file  # noqa: E402
from utils.atomic import atomic_write  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.compiled import load_kernel, warn_not_built  # noqa: E402
from utils.errors import InputError, InputNotFoundError  # noqa: E402
from utils.image import IMAGE_EXTENSIONS  # noqa: E402
from utils.input_files import read_text  # noqa: E402
from utils.outputs import RunOutputs  # noqa: E402

logger = logging.getLogger(__name__)

IOU_THRESH = 0.5  # a detection matches a face when their overlap is at least this
THRESH_NUM = 1000  # score thresholds 0.999, 0.998, ..., 0.0 of the PR curve
SETTINGS = ("easy", "medium", "hard")
LABEL_SETTING = "all"  # the single setting of --label mode: every face counts
# The variables each ground-truth .mat must hold: the annotations, and a setting's keep-list.
GT_MAT_KEYS = ("event_list", "file_list", "face_bbx_list")
SETTING_MAT_KEYS = ("gt_list",)
EXAMPLES = 3  # files a warning names, of many
# The built box_overlaps module, or None: the numpy versions below then give the same bits.
compiled = load_kernel("widerface_evaluate.box_overlaps")


def _warn_not_built():
    warn_not_built("box-overlap kernel (widerface_evaluate/box_overlaps.pyx)", "its numpy version")


def bbox_overlaps(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU with the reference's +1 areas (box_overlaps.pyx's bbox_overlaps).

    Args:
        boxes: (N, 4) ``[x1, y1, x2, y2]``; query_boxes: (K, 4) likewise (as float64).
    Returns:
        (N, K) float64 overlaps, 0 where the boxes do not intersect.
    """
    if compiled is not None:
        return compiled.bbox_overlaps(boxes, query_boxes)
    _warn_not_built()
    return _bbox_overlaps_numpy(boxes, query_boxes)


def max_overlaps_segmented(boxes: np.ndarray, query_boxes: np.ndarray, box_image: np.ndarray, query_start: np.ndarray,
                           query_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every box, its best overlap among the query boxes of its image, and where that
    is (box_overlaps.pyx's max_overlaps_segmented, which documents the arguments)."""
    if compiled is not None:
        return compiled.max_overlaps_segmented(boxes, query_boxes, box_image, query_start, query_count)
    _warn_not_built()
    return _max_overlaps_segmented_numpy(boxes, query_boxes, box_image, query_start, query_count)


def _as_boxes(boxes, query_boxes):
    b = np.ascontiguousarray(boxes, dtype=np.float64)
    q = np.ascontiguousarray(query_boxes, dtype=np.float64)
    if b.ndim != 2 or q.ndim != 2:
        raise ValueError(f"boxes must be 2-D, got {b.ndim}-D and {q.ndim}-D")
    if b.shape[1] != 4 or q.shape[1] != 4:
        raise ValueError(f"boxes must have 4 columns, got {b.shape[1]} and {q.shape[1]}")
    return b, q


def _bbox_overlaps_numpy(boxes, query_boxes):
    """box_overlaps.pyx's bbox_overlaps in numpy: its float64 operations in its order, so
    the same bits. Cython's min(a, b) is ``b if b < a else a`` and max(a, b) ``b if b > a
    else a`` (which also settles NaNs and signed zeros); the overlap is 0 unless both the
    intersection's width and height are > 0."""
    b, q = _as_boxes(boxes, query_boxes)
    bx1, by1, bx2, by2 = (b[:, c, np.newaxis] for c in range(4))  # [N, 1]
    qx1, qy1, qx2, qy2 = (q[np.newaxis, :, c] for c in range(4))  # [1, K]
    iw = (np.where(qx2 < bx2, qx2, bx2) - np.where(qx1 > bx1, qx1, bx1)) + 1
    ih = (np.where(qy2 < by2, qy2, by2) - np.where(qy1 > by1, qy1, by1)) + 1
    box_area = ((bx2 - bx1) + 1) * ((by2 - by1) + 1)
    query_area = ((qx2 - qx1) + 1) * ((qy2 - qy1) + 1)
    with np.errstate(all="ignore"):  # only where the overlap is 0 anyway, or as in C
        overlap = (iw * ih) / ((box_area + query_area) - iw * ih)
    return np.where((iw > 0) & (ih > 0), overlap, 0.0)


def _max_overlaps_segmented_numpy(boxes, query_boxes, box_image, query_start, query_count):
    """box_overlaps.pyx's max_overlaps_segmented in numpy, image by image: the kernel's
    overlaps, and its choice among them (the first maximum; a NaN first overlap stays, a
    later NaN never wins)."""
    b, q = _as_boxes(boxes, query_boxes)
    img = np.ascontiguousarray(box_image, dtype=np.int64)
    qs = np.ascontiguousarray(query_start, dtype=np.int64)
    qc = np.ascontiguousarray(query_count, dtype=np.int64)
    if img.shape[0] != b.shape[0] or qs.shape[0] != qc.shape[0]:
        raise ValueError("box_image must have one entry per box, query_start/query_count one per image")
    bad = (img < 0) | (img >= len(qs))
    inside = np.flatnonzero(~bad)
    bad[inside] = (qs[img[inside]] < 0) | (qs[img[inside]] + qc[img[inside]] > len(q))
    if bad.any():
        n = int(np.argmax(bad))
        raise ValueError(f"box {n}: image index {img[n]} or its query range is out of bounds")
    best = np.zeros(len(b))
    arg = np.full(len(b), -1, dtype=np.int64)
    order = np.argsort(img, kind="stable")
    images, starts = np.unique(img[order], return_index=True)
    for i, rows in zip(images, np.split(order, starts[1:])):
        first, last = qs[i], qs[i] + qc[i]
        if last <= first:
            continue
        o = _bbox_overlaps_numpy(b[rows], q[first:last])
        a = np.argmax(np.where(np.isnan(o), -np.inf, o), axis=1)
        a[np.isnan(o[:, 0])] = 0
        arg[rows] = a
        best[rows] = o[np.arange(len(rows)), a]
    return best, arg


@dataclass
class GroundTruth:
    """Ground-truth faces of an image set, all images concatenated.

    Attributes:
        names: I image keys ``event/name`` (no extension), in evaluation order.
        boxes: (G, 4) float64 ``[x, y, w, h]`` of every face.
        box_start: (I,) int64 first row of each image in ``boxes``.
        box_count: (I,) int64 number of faces of each image.
        keep: setting -> (G,) bool, whether the face counts in that setting (the
            reference's ``ignore == 1``); the other faces are "don't care" regions.
        keep_count: setting -> (I,) int64 number of counted faces of each image (the
            length of the setting's keep-list, which the reference adds to ``count_face``).
    """
    names: list[str]
    boxes: np.ndarray
    box_start: np.ndarray
    box_count: np.ndarray
    keep: dict[str, np.ndarray]
    keep_count: dict[str, np.ndarray]

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(self.keep)


def _concat_boxes(box_list):
    count = np.array([len(b) for b in box_list], dtype=np.int64)
    start = np.concatenate(([0], np.cumsum(count)[:-1])).astype(np.int64)
    boxes = (np.concatenate(box_list).astype(np.float64).reshape(-1, 4)
             if box_list else np.zeros((0, 4)))
    return boxes, start, count


def wider_gt_files(gt_dir: str | os.PathLike) -> dict[str, Path]:
    """The ground-truth files load_wider_gt reads: {'all': wider_face_val.mat, setting: wider_<setting>_val.mat}."""
    return {key: Path(gt_dir) / fname for key, fname in
            [("all", "wider_face_val.mat")] + [(s, f"wider_{s}_val.mat") for s in SETTINGS]}


def load_wider_gt(gt_dir: str | os.PathLike) -> GroundTruth:
    """Loads the official WIDER FACE val ground truth.

    Args:
        gt_dir: folder with ``wider_face_val.mat`` (event_list, file_list, face_bbx_list)
            and ``wider_{easy,medium,hard}_val.mat`` (gt_list: 1-based indices of the faces
            that count in that setting).

    Returns:
        GroundTruth with the settings easy, medium and hard, in ``.mat`` order.
    """
    from scipy.io import loadmat

    gt_dir = Path(gt_dir)
    mats = {}
    for key, path in wider_gt_files(gt_dir).items():
        if not path.is_file():
            raise InputNotFoundError(f"WIDER FACE ground truth file not found: {path}")
        try:
            mats[key] = loadmat(str(path))
        except Exception as e:  # scipy raises its own types for files that are not .mat
            raise InputError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from e
        _check_mat_kind(path, mats[key], key)
    _check_mats_agree(gt_dir, mats)
    gt_mat = mats["all"]
    names, box_list = [], []
    keep_lists = {s: [] for s in SETTINGS}
    for i in range(len(gt_mat["event_list"])):
        event = str(gt_mat["event_list"][i][0][0])
        files = gt_mat["file_list"][i][0]
        for j in range(len(files)):
            names.append(f"{event}/{files[j][0][0]}")
            box_list.append(gt_mat["face_bbx_list"][i][0][j][0])
            for s in SETTINGS:
                keep_lists[s].append(mats[s]["gt_list"][i][0][j][0].reshape(-1).astype(np.int64))
    boxes, start, count = _concat_boxes(box_list)
    keep, keep_count = {}, {}
    for s in SETTINGS:
        mask = np.zeros(len(boxes), dtype=bool)
        for b0, n, idx in zip(start, count, keep_lists[s]):
            if len(idx) and (idx.min() < 1 or idx.max() > n):
                raise InputError(f"wider_{s}_val.mat: keep index out of range 1..{n}: {idx}")
            mask[b0 + idx - 1] = True
        keep[s] = mask
        keep_count[s] = np.array([len(k) for k in keep_lists[s]], dtype=np.int64)
    return GroundTruth(names, boxes, start, count, keep, keep_count)


def _check_mat_kind(path, mat, setting):
    """Raise InputError unless mat holds the variables of its kind: the annotations
    (setting 'all', wider_face_val.mat) or a setting's keep-list (e.g. a wider_face_val.mat
    copied in as wider_hard_val.mat holds no gt_list)."""
    needed = GT_MAT_KEYS if setting == "all" else SETTING_MAT_KEYS
    held = sorted(k for k in mat if not k.startswith("__"))
    missing = [k for k in needed if k not in held]
    if missing:
        what = "ground-truth annotation file" if setting == "all" else f"{setting} keep-list"
        looks = ""
        if setting == "all" and "gt_list" in held:
            looks = " (it looks like a keep-list, wider_<setting>_val.mat)"
        elif setting != "all" and "face_bbx_list" in held:
            looks = " (it looks like the annotations, wider_face_val.mat)"
        raise InputError(f"{path}: not a WIDER FACE {what}: it holds {', '.join(held) or 'no variables'}, "
                         f"without {', '.join(missing)}{looks}")


def _check_mats_agree(gt_dir, mats):
    """Raise InputError unless every keep-list has an entry for each image of the annotations
    (a keep-list of another image set, e.g. the full val set's beside a subset's)."""
    events = mats["all"]["event_list"]
    n_files = [len(mats["all"]["file_list"][i][0]) for i in range(len(events))]
    for s in SETTINGS:
        gt_list = mats[s]["gt_list"]
        counts = [len(gt_list[i][0]) for i in range(len(gt_list))]
        if counts != n_files:
            raise InputError(f"{gt_dir / f'wider_{s}_val.mat'} does not match {gt_dir / 'wider_face_val.mat'}: "
                             f"its keep-lists cover {len(counts)} events and {sum(counts)} images, the annotations "
                             f"{len(n_files)} events and {sum(n_files)} images (files of two image sets?)")


def load_label_gt(label_path: str | os.PathLike) -> GroundTruth:
    """Loads a RetinaFace ``label.txt`` as ground truth where every face counts.

    The file has ``# path/name.jpg`` lines, each followed by one line per face: ``x y w h``
    or the 20-value training line (its landmarks and score are ignored). It is read by
    data.label_file.read_label_file, the parser training uses.

    Returns:
        GroundTruth with the single setting ``all``; image keys are the paths without
        their extension, matching the prediction files ``<pred_dir>/<path>.txt``.
    """
    return label_gt_from_entries(read_label_file(label_path))


def label_gt_from_entries(entries: list[tuple[str, np.ndarray]]) -> GroundTruth:
    """load_label_gt's GroundTruth from data.label_file.read_label_file's entries."""
    names = [strip_image_ext(rel) for rel, _ in entries]
    boxes, start, count = _concat_boxes([faces[:, :4] for _, faces in entries])
    return GroundTruth(names, boxes, start, count,
                       keep={LABEL_SETTING: np.ones(len(boxes), dtype=bool)},
                       keep_count={LABEL_SETTING: count.copy()})


def strip_image_ext(name: str) -> str:
    """``a/b.jpg`` -> ``a/b``: drops an image extension only (the reference's
    ``rstrip('.jpg')`` also ate trailing j/p/g letters of the name)."""
    root, ext = os.path.splitext(name)
    return root if ext.lower() in IMAGE_EXTENSIONS else name


def read_pred_file(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """Reads one WIDER prediction file.

    Format: the image name line, the box count line, then one ``x y w h score`` line per
    box (pixels; any score range).

    Returns:
        ``(name, boxes)``: the image name without folder and extension, and (N, 5)
        float64 ``[x, y, w, h, score]`` in file order.

    Raises:
        InputError naming the file and line of the first malformed line.
    """
    lines = read_text(path).splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{path}:1: missing the image name line")
    name = strip_image_ext(lines[0].strip().split("/")[-1])
    if len(lines) < 2:
        raise InputError(f"{path}:2: missing the box count line")
    try:
        count = float(lines[1])
        if not count.is_integer() or count < 0:
            raise ValueError
        count = int(count)
    except ValueError:
        raise InputError(f"{path}:2: expected a box count, got {lines[1]!r}") from None
    body = lines[2:]
    while body and not body[-1].strip():  # tolerate trailing blank lines
        body.pop()
    tokens = " ".join(body).split()
    values = None
    if len(tokens) == 5 * len(body):
        try:
            values = np.array(tokens, dtype=np.float64)
        except ValueError:
            pass
    if values is None or not np.isfinite(values).all():
        _raise_bad_line(path, body)
    boxes = values.reshape(-1, 5)
    if count != len(boxes):
        raise InputError(f"{path}:2: the count line says {count} boxes but {len(boxes)} follow")
    return name, boxes


def _raise_bad_line(path, body):
    """Finds the first malformed box line (slow path, only on error) and raises."""
    for lineno, line in enumerate(body, start=3):
        parts = line.split()
        try:
            ok = len(parts) == 5 and all(math.isfinite(float(v)) for v in parts)
        except ValueError:
            ok = False
        if not ok:
            raise InputError(f"{path}:{lineno}: expected 5 finite numbers 'x y w h score', got {line!r}")
    raise InputError(f"{path}: malformed box lines")  # not reached: some line must be bad


def load_predictions(pred_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every ``*.txt`` prediction file below ``pred_dir``.

    Returns:
        dict ``folder/name`` -> (N, 5) float64 ``[x, y, w, h, score]``, where ``folder`` is
        the file's folder relative to ``pred_dir`` (the WIDER event) and ``name`` comes
        from the file's name line, as in the reference.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputNotFoundError(f"prediction folder not found: {pred_dir}")
    preds = {}
    not_predictions, odd_scores, negative_sizes = [], [], []
    for path in tqdm(_prediction_paths(pred_dir), desc="Reading predictions", disable=None, leave=False):
        try:
            name, boxes = read_pred_file(path)
        except InputError:
            if _names_its_image(path):  # a prediction file with a bad line: the user must know
                raise
            not_predictions.append(path)  # notes (README.txt) beside the results, as test_widerface.py allows
            continue
        if len(boxes) and ((boxes[:, 4] < 0) | (boxes[:, 4] > 1)).any():
            odd_scores.append(path)
        if len(boxes) and ((boxes[:, 2] < 0) | (boxes[:, 3] < 0)).any():
            negative_sizes.append(path)
        folder = path.parent.relative_to(pred_dir).as_posix()
        key = name if folder == "." else f"{folder}/{name}"
        if key in preds:
            raise InputError(f"{path}: a second prediction file for image {key!r}")
        preds[key] = boxes
    logger.info("read %d prediction files from %s", len(preds), pred_dir)
    if not_predictions:
        logger.warning("skipped %d file(s) in %s that are not prediction files (not parseable, and their first line "
                       "is not their image's name): %s", len(not_predictions), pred_dir,
                       _examples([p.relative_to(pred_dir) for p in not_predictions]))
    if odd_scores:
        logger.warning("%d prediction files have scores outside [0, 1] (the scores are min-max normalised over the "
                       "whole set, as the reference does), e.g. %s", len(odd_scores), _examples(odd_scores))
    if negative_sizes:
        logger.warning("%d prediction files have boxes with a negative width or height (they match no face), "
                       "e.g. %s", len(negative_sizes), _examples(negative_sizes))
    return preds


def _prediction_paths(pred_dir):
    """The .txt files below pred_dir, sorted, without hidden files and folders (an editor's
    or a sync tool's, or a run's temporary files), as test_widerface.py finds its own."""
    paths = []
    for root, dirs, files in os.walk(pred_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        paths += [Path(root) / f for f in files if f.endswith(".txt") and not f.startswith(".")]
    return sorted(paths)


def _names_its_image(path):
    """Whether the first line of path names the image the file is named after (as every
    prediction file's does), telling a damaged prediction file from a note such as README.txt."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return True  # not readable text: read_pred_file's error stands
    return strip_image_ext(first.split("/")[-1]) == path.stem


def _examples(items):
    """A few of items, for a warning about many."""
    return ", ".join(map(str, items[:EXAMPLES])) + (", ..." if len(items) > EXAMPLES else "")


def check_predictions_match(preds: dict[str, np.ndarray], gt: GroundTruth, pred_dir: str | os.PathLike) -> None:
    """Raise an InputError when not one prediction file belongs to an image of gt.

    The reference's protocol counts a missing file as an image without detections; when
    every file is missing, the folder is the wrong one (empty, or a level too high or too
    low), and an AP of 0 would only hide that.
    """
    names = set(gt.names)
    if any(key in names for key in preds):
        return
    pred_dir = Path(pred_dir)
    example = pred_dir / f"{gt.names[0]}.txt" if gt.names else pred_dir / "<event>/<name>.txt"
    message = (f"no prediction file in {pred_dir} matches the ground truth: expected <event>/<name>.txt "
               f"files for its images, such as {example}")
    if not preds:
        raise InputError(message + ", but the folder holds no .txt files")
    found = next(iter(preds))
    message += f", but found e.g. {found}.txt"
    deeper = {key.split("/", 1)[0] for key in preds if "/" in key and key.split("/", 1)[1] in names}
    by_basename = {n.rsplit("/", 1)[-1] for n in names}
    if deeper:
        message += f" (one level too high? try -p {pred_dir / sorted(deeper)[0]})"
    elif any("/" not in key and key in by_basename for key in preds):
        message += f" (one level too low? -p is the folder that holds the event folders, e.g. {pred_dir.parent})"
    raise InputError(message)


def score_range(preds: dict[str, np.ndarray]) -> tuple[float, float]:
    """Global (min, max) score over all predictions, for the min-max normalisation.

    The reference started from min=1, max=0 (assuming scores in [0, 1]); the true extremes
    give the same result there and also handle other score ranges.
    """
    scores = [b[:, 4] for b in preds.values() if len(b)]
    if not scores:
        return 0.0, 1.0
    return min(s.min() for s in scores), max(s.max() for s in scores)


def pr_thresholds(thresh_num: int = THRESH_NUM) -> np.ndarray:
    """(T,) decreasing score thresholds ``1 - (t + 1) / T``, as the reference computes them."""
    return 1 - np.arange(1, thresh_num + 1) / thresh_num


def dataset_pr_info(pr_curve: np.ndarray, count_face: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, 2) [proposals, true positives] counts -> (T,) precision and (T,) recall.

    Thresholds without any proposal give 0/0 = NaN precision, as in the reference.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return pr_curve[:, 1] / pr_curve[:, 0], pr_curve[:, 1] / count_face


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the precision envelope, the reference's VOC-style AP (float64)."""
    mrec = np.concatenate(([0.], rec, [1.]))
    mpre = np.concatenate(([0.], prec, [0.]))
    # The reference's backward loop mpre[i-1] = max(mpre[i-1], mpre[i]), NaN included.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _segment_suffix_min(values, segment, n_values):
    """Per-segment suffix minimum of non-negative ints below ``n_values``.

    ``segment`` is non-decreasing. Offsetting each segment by ``segment * n_values``
    makes a running minimum over the reversed array restart at every segment.
    """
    key = values + segment * n_values
    return np.minimum.accumulate(key[::-1])[::-1] - segment * n_values


def by_score(boxes: np.ndarray) -> np.ndarray:
    """(N, 5) ``[x, y, w, h, score]`` rows ordered by score, highest first; rows of equal
    score keep their order (a stable sort). Rows already in that order come back as they are."""
    if len(boxes) < 2 or (boxes[1:, 4] <= boxes[:-1, 4]).all():
        return boxes
    return boxes[np.argsort(-boxes[:, 4], kind="stable")]


def evaluate(preds: dict[str, np.ndarray], gt: GroundTruth, iou_thresh: float = IOU_THRESH,
             thresh_num: int = THRESH_NUM, only_predicted: bool = False, sort_rows: bool = True) -> dict[str, dict]:
    """AP and PR curve of every setting of ``gt``.

    Args:
        preds: dict image key -> (N, 5) float64 ``[x, y, w, h, score]`` (raw scores; they
            are min-max normalised over all of ``preds`` here). An image of ``gt`` without
            an entry counts as an image without detections.
        gt: GroundTruth.
        only_predicted: evaluate only the images of ``gt`` that have an entry in ``preds``
            (their faces alone make up the recall denominator).
        sort_rows: match each image's detections in score order (by_score), as the
            protocol means: the reference matched them in the file's order, which gives
            another detector's files written in another order (NMS order, say) a wrong AP.
            For rows already in score order (the reference's files, this project's) both
            are the same; False reproduces the reference's number for files that are not.

    Returns:
        dict setting -> dict with ``ap`` (float), ``thresholds``, ``precision`` and
        ``recall`` ((T,) float64 each), plus ``num_images`` (images evaluated).
    """
    n_img = len(gt.names)
    evaluated = np.array([name in preds for name in gt.names], dtype=bool)
    if not only_predicted:
        missing = n_img - int(evaluated.sum())
        if missing:
            logger.warning("%d of %d images have no prediction file: counted as images "
                           "without detections", missing, n_img)
        evaluated[:] = True
    unused = len(preds) - int(sum(name in preds for name in gt.names))
    if unused:
        logger.warning("%d prediction files match no ground-truth image and are ignored", unused)

    lo, hi = score_range(preds)
    empty = np.zeros((0, 5))
    pred_list = [preds.get(name, empty) for name in gt.names]
    if sort_rows:
        pred_list = [by_score(p) for p in pred_list]
    n_pred = np.array([len(p) for p in pred_list], dtype=np.int64)
    # The reference skips images without faces or without detections.
    active = np.flatnonzero(evaluated & (gt.box_count > 0) & (n_pred > 0))
    det = (np.concatenate([pred_list[i] for i in active]) if len(active) else empty).copy()
    det_image = np.repeat(active, n_pred[active])
    # Min-max normalisation, element by element as the reference does it; equal scores
    # everywhere (hi == lo) all become 1.
    det[:, 4] = (det[:, 4] - lo) / (hi - lo) if hi > lo else 1.0

    # Best face of every detection: corners x2 = x + w (the reference adds no 1 here; the
    # kernel does), and the first maximum wins ties.
    det_xyxy = np.hstack([det[:, :2], det[:, :2] + det[:, 2:4]])
    gt_xyxy = np.hstack([gt.boxes[:, :2], gt.boxes[:, :2] + gt.boxes[:, 2:4]])
    best, arg = max_overlaps_segmented(det_xyxy, gt_xyxy, det_image, gt.box_start, gt.box_count)
    matched = best >= iou_thresh
    face = gt.box_start[det_image] + arg  # global face index of the best face

    # The reference's img_pr_info takes, per threshold, the detections up to the LAST one
    # whose score passes, so detection h is in once the maximum score from h to the end of
    # its image passes. first_t[h] is the first threshold index where that happens (T: never).
    thresholds = pr_thresholds(thresh_num)
    first_t = thresh_num - np.searchsorted(thresholds[::-1], det[:, 4], side="right")
    segment = np.cumsum(np.r_[0, det_image[1:] != det_image[:-1]]) if len(det) else det_image
    first_t = _segment_suffix_min(first_t, segment, thresh_num + 1)

    results = {}
    for setting in gt.settings:
        keep = gt.keep[setting][face] if len(det) else np.zeros(0, dtype=bool)
        # A match to a face that does not count removes the detection from the proposals;
        # a match to a counted face is a true positive the first time that face is hit.
        proposal = ~(matched & ~keep)
        hits = np.flatnonzero(matched & keep)
        first_hit = np.zeros(len(det))
        first_hit[hits[np.unique(face[hits], return_index=True)[1]]] = 1
        pr_curve = np.stack([
            np.cumsum(np.bincount(first_t, weights=proposal.astype(np.float64), minlength=thresh_num + 1))[:thresh_num],
            np.cumsum(np.bincount(first_t, weights=first_hit, minlength=thresh_num + 1))[:thresh_num],
        ], axis=1)
        count_face = int(gt.keep_count[setting][evaluated].sum())
        if count_face == 0:
            raise InputError(f"setting {setting!r}: no ground-truth face among the evaluated images")
        precision, recall = dataset_pr_info(pr_curve, count_face)
        results[setting] = dict(ap=float(voc_ap(recall, precision)), thresholds=thresholds,
                                precision=precision, recall=recall, num_images=int(evaluated.sum()))
    return results


def format_results(results: dict[str, dict]) -> str:
    """The reference's result block."""
    lines = ["==================== Results ===================="]
    lines += [f"{(s.capitalize() + ' ' * 6)[:6]} Val AP: {r['ap']}" for s, r in results.items()]
    lines.append("=================================================")
    return "\n".join(lines)


def save_curves(results: dict[str, dict], path: str | os.PathLike) -> None:
    """Writes the PR curves as JSON (``.json``) or CSV (any other suffix).

    JSON: ``{setting: {"ap", "thresholds", "precision", "recall"}}`` (NaN precision as null);
    CSV: one row per setting and threshold: ``setting,threshold,precision,recall``.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        def clean(a):
            return [None if math.isnan(v) else v for v in a.tolist()]
        data = {s: dict(ap=r["ap"], thresholds=clean(r["thresholds"]), precision=clean(r["precision"]),
                        recall=clean(r["recall"])) for s, r in results.items()}
        atomic_write(path, lambda f: f.write(json.dumps(data, indent=1) + "\n"), binary=False)
    else:
        def write_csv(f):
            w = csv.writer(f)
            w.writerow(["setting", "threshold", "precision", "recall"])
            for s, r in results.items():
                w.writerows(zip([s] * len(r["thresholds"]), r["thresholds"].tolist(),
                                r["precision"].tolist(), r["recall"].tolist()))
        atomic_write(path, write_csv, binary=False)
    logger.info("wrote PR curves to %s", path)


def plot_curves(results: dict[str, dict], path: str | os.PathLike, label: str) -> None:
    """Plots precision against recall, one panel per setting, into an image file."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(results), 4.8))
    for ax, (setting, r) in zip(fig.subplots(1, len(results), squeeze=False)[0], results.items()):
        ok = ~np.isnan(r["precision"])
        ax.plot(r["recall"][ok], r["precision"][ok], color="tab:red", linewidth=2,
                label=f"{label}-{r['ap']:.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall", ylabel="Precision",
               title=f"Precision-Recall ({setting})")
        ax.grid(True, linestyle=":")
        ax.legend(loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)
    logger.info("wrote PR plot to %s", path)


def _figure_format(path):
    """The image format matplotlib writes for path's suffix (no suffix: PNG)."""
    return Path(path).suffix[1:].lower() or "png"


def check_figure_path(path: str | os.PathLike, what: str) -> None:
    """Check, before any work, that path's suffix is an image format matplotlib writes (where
    it goes is utils.outputs' to check). Raises InputError naming the flag."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if _figure_format(path) not in formats:
        raise InputError(f"{what} {path}: matplotlib cannot write '.{_figure_format(path)}' images "
                         f"(use one of {', '.join('.' + f for f in sorted(formats))})")


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float = 100) -> None:
    """Write a matplotlib Figure to path atomically, in the format of its suffix."""
    atomic_write(path, lambda f: fig.savefig(f, format=_figure_format(path), dpi=dpi))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="WIDER FACE val AP of a folder of prediction files.")
    parser.add_argument("-p", "--pred", default="./widerface_txt/",
                        help="prediction folder: <event>/<image>.txt as written by test_widerface.py")
    parser.add_argument("-g", "--gt", default="./ground_truth/",
                        help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    parser.add_argument("--label", default=None,
                        help="evaluate against this RetinaFace label.txt instead of --gt (every face counts, one AP)")
    parser.add_argument("--only-predicted", action="store_true",
                        help="evaluate only the images that have a prediction file")
    parser.add_argument("--curve-data", default=None, help="write the PR curves here (.json or .csv)")
    parser.add_argument("--curve-plot", default=None, help="plot the PR curves into this image (e.g. .png)")
    parser.add_argument("--curve-label", default=None, help="legend name of the plot (default: the --pred folder name)")
    return parser


def check_outputs(args: argparse.Namespace) -> None:
    """The curves can be written, and never over a prediction or ground-truth file or each
    other: checked before the evaluation (utils.outputs), not after it."""
    if args.curve_plot:
        check_figure_path(args.curve_plot, "--curve-plot")
    outputs = RunOutputs()
    if os.path.isdir(args.pred):
        outputs.reads("-p", [str(p) for p in _prediction_paths(Path(args.pred))], "the prediction file")
    if args.label:
        outputs.reads("--label", args.label, "the ground-truth label file")
    else:
        outputs.reads("-g", wider_gt_files(args.gt).values(), "the ground-truth file")
    outputs.file("--curve-data", args.curve_data, what="the PR curves")
    outputs.file("--curve-plot", args.curve_plot, what="the PR plot")
    outputs.check()


def main(args: argparse.Namespace) -> dict[str, dict]:
    """Evaluates, prints the result block, writes the optional curves; returns the results."""
    if args.curve_data or args.curve_plot:
        check_outputs(args)
    preds = load_predictions(args.pred)
    gt = load_label_gt(args.label) if args.label else load_wider_gt(args.gt)
    check_predictions_match(preds, gt, args.pred)
    results = evaluate(preds, gt, only_predicted=args.only_predicted)
    if args.only_predicted:
        print(f"Evaluated {next(iter(results.values()))['num_images']} of {len(gt.names)} images "
              f"(those with a prediction file)")
    print(format_results(results))
    if args.curve_data:
        save_curves(results, args.curve_data)
    if args.curve_plot:
        plot_curves(results, args.curve_plot, args.curve_label or Path(args.pred).resolve().name)
    return results


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
