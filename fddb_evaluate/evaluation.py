"""FDDB evaluation: discrete and continuous ROC of face detections, in Python.

The reference leaves FDDB scoring to the external C++ tool of Jain & Learned-Miller
("FDDB: A Benchmark for Face Detection in Unconstrained Settings", UMass TR UM-CS-2010-009).
This follows that protocol:

* An annotated face is a filled ellipse ``major_radius minor_radius angle center_x center_y``
  (pixels; ``angle`` in radians; the major axis points along ``(cos angle, sin angle)`` in
  image coordinates, x right and y down, as OpenCV draws it in the official tool).
* A detection is the rectangle ``[x, x + w] x [y, y + h]`` of an ``x y w h score`` line.
* The overlap of a face and a detection is area(intersection) / area(union).
* At every score threshold (each distinct detection score), the detections scoring at least
  that much are matched one-to-one to the faces of their image by the Hungarian algorithm,
  maximising the total overlap. A matched pair scores 1 in the discrete ROC when its overlap
  is above 0.5, and its overlap in the continuous ROC. False positives are the detections
  that are not a discrete match.

One documented difference: the official tool measures the overlap by rasterising both regions
on the image's pixel grid, which needs the photos and cuts regions at the image border. Here
the areas are exact (the ellipse/rectangle intersection in closed form), so they need no
photos; the two agree to the rasterisation error, except for faces that extend beyond
the image.

Files: ``FDDB_dets.txt`` as test_fddb.py writes it (blocks of an image name line, a count
line such as ``3.0``, then ``x y w h score`` lines), and ``FDDB-fold-XX-ellipseList.txt``
annotations (blocks of a name line, a count line, then ``ra rb angle cx cy 1`` lines).
The ROC files have one line ``true_positive_rate false_positives threshold`` per threshold,
from the highest threshold down, as the official tool's ``DiscROC.txt`` / ``ContROC.txt``;
plot column 2 against column 1.
"""
import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

if __package__ in (None, ""):
    # Run as a script (python fddb_evaluate/evaluation.py, as the README does): make the
    # project's packages importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.atomic import atomic_write_text  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.errors import InputError, InputNotFoundError  # noqa: E402
from utils.input_files import open_text, read_text  # noqa: E402
from utils.outputs import RunOutputs  # noqa: E402
from widerface_evaluate.evaluation import check_figure_path, save_figure  # noqa: E402

logger = logging.getLogger(__name__)

MATCH_OVERLAP = 0.5  # a matched pair is a discrete true positive when its overlap is above this
HEADLINE_FP = 1000  # the published figure: true positive rate at this many false positives
ELLIPSE_FILE_GLOB = "FDDB-fold-*-ellipseList.txt"


# ---- parsing ----

def _blocks(path, values_per_line, what):
    """Yields ``(name, (k, values_per_line) float64 array, name_lineno)`` for each block of a
    name line, a count line and ``count`` number lines. Errors name the file and line."""
    lines = read_text(path).splitlines()
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:  # blank lines between blocks are tolerated
            i += 1
            continue
        name_lineno = i + 1
        if i + 1 >= len(lines):
            raise InputError(f"{path}:{i + 2}: missing the {what} count after image {name!r}")
        try:
            count = float(lines[i + 1])  # test_fddb.py writes the count as a float ("3.0")
            if not count.is_integer() or count < 0:
                raise ValueError
        except ValueError:
            raise InputError(f"{path}:{i + 2}: expected a {what} count, got {lines[i + 1]!r}") from None
        count = int(count)
        rows = []
        for j in range(i + 2, i + 2 + count):
            if j >= len(lines):
                raise InputError(f"{path}:{j + 1}: image {name!r} announces {count} {what}s "
                                 f"but the file ends after {len(rows)}")
            parts = lines[j].split()
            try:
                row = [float(v) for v in parts]
            except ValueError:
                row = []
            if len(row) != values_per_line or not np.isfinite(row).all():
                raise InputError(f"{path}:{j + 1}: expected {values_per_line} numbers for a {what}, "
                                 f"got {lines[j]!r}")
            rows.append(row)
        yield name, np.array(rows, dtype=np.float64).reshape(-1, values_per_line), name_lineno
        i += 2 + count


def _collect(path, values_per_line, what):
    out, first_line = {}, {}
    for name, rows, lineno in _blocks(path, values_per_line, what):
        if name in out:
            raise InputError(f"{path}:{lineno}: image {name!r} appears a second time "
                             f"(first at line {first_line[name]})")
        out[name], first_line[name] = rows, lineno
    return out


def load_ellipse_list(path):
    """Reads one ``FDDB-fold-XX-ellipseList.txt``.

    Returns:
        dict image name -> (k, 5) float64 ``[major_radius, minor_radius, angle, cx, cy]``.
    """
    faces = _collect(path, 6, "face")
    return {name: rows[:, :5] for name, rows in faces.items()}


def load_detections(path):
    """Reads ``FDDB_dets.txt``.

    Returns:
        dict image name -> (n, 5) float64 ``[x, y, w, h, score]``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"FDDB detection file not found: {path}")
    return _collect(path, 5, "detection")


def read_fold_list(path, names):
    """Checks a fold's image list (``FDDB-fold-XX.txt``) against its ellipse file's images.

    A name listed twice is reported (a warning naming it and its lines) and counted once:
    the list only says which images belong to the fold. Names in only one of the two files
    are an error.

    Returns:
        The listed image names, without repeats, in list order.
    """
    seen = {}
    with open_text(path, 'fold list') as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                seen.setdefault(line.strip(), []).append(lineno)
    repeated = {n: ls for n, ls in seen.items() if len(ls) > 1}
    if repeated:
        logger.warning("%s: %d images are listed more than once (counted once): %s", path, len(repeated),
                       "; ".join(f"{n} at lines {', '.join(map(str, ls))}" for n, ls in repeated.items()))
    unannotated = [n for n in seen if n not in names]
    if unannotated:
        raise InputError(f"{path}: {len(unannotated)} listed images have no ellipse annotation, "
                         f"e.g. {unannotated[0]!r}")
    unlisted = [n for n in names if n not in seen]
    if unlisted:
        raise InputError(f"{path}: {len(unlisted)} annotated images are not listed, e.g. {unlisted[0]!r}")
    return list(seen)


def load_annotations(paths):
    """Loads FDDB ellipse annotations.

    Args:
        paths: ellipse-list files, or folders holding ``FDDB-fold-XX-ellipseList.txt`` files;
            in a folder, each fold's ``FDDB-fold-XX.txt`` list, when present, is checked
            against it (see read_fold_list).

    Returns:
        dict image name -> (k, 5) float64 ``[major_radius, minor_radius, angle, cx, cy]``.
    """
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob(ELLIPSE_FILE_GLOB))
            if not found:
                raise InputNotFoundError(f"no {ELLIPSE_FILE_GLOB} file in {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputNotFoundError(f"FDDB annotation file or folder not found: {p}")
    annotations = {}
    for f in files:
        faces = load_ellipse_list(f)
        fold_list = f.with_name(re.sub(r"-ellipseList\.txt$", ".txt", f.name))
        if fold_list != f and fold_list.is_file():
            read_fold_list(fold_list, faces)
        for name in faces:
            if name in annotations:
                raise InputError(f"{f}: image {name!r} is annotated in another file too")
        annotations.update(faces)
    logger.info("read %d annotated images, %d faces", len(annotations), sum(map(len, annotations.values())))
    return annotations


# ---- geometry ----

def _disc_triangle_area(ax, ay, bx, by):
    """Signed area of triangle (origin, A, B) intersected with the unit disc (elementwise).

    The edge AB is split where it crosses the circle: the part inside adds its triangle with
    the origin, the parts outside add the circular sector they subtend.
    """
    dx, dy = bx - ax, by - ay
    a = dx * dx + dy * dy
    b = ax * dx + ay * dy
    c = ax * ax + ay * ay - 1
    disc = b * b - a * c
    crosses = (disc > 0) & (a > 0)
    root = np.sqrt(np.where(crosses, disc, 0))
    safe_a = np.where(crosses, a, 1)
    t1 = np.where(crosses, np.clip((-b - root) / safe_a, 0, 1), 0)
    t2 = np.where(crosses, np.clip((-b + root) / safe_a, 0, 1), 0)
    p1x, p1y = ax + t1 * dx, ay + t1 * dy
    p2x, p2y = ax + t2 * dx, ay + t2 * dy

    def sector(px, py, qx, qy):
        return 0.5 * np.arctan2(px * qy - py * qx, px * qx + py * qy)

    return sector(ax, ay, p1x, p1y) + 0.5 * (p1x * p2y - p1y * p2x) + sector(p2x, p2y, bx, by)


def ellipse_rect_overlap(ellipses, rects):
    """Exact area(intersection) / area(union) of every ellipse with every rectangle.

    Args:
        ellipses: (K, 5) ``[major_radius, minor_radius, angle, cx, cy]``.
        rects: (N, 4) ``[x, y, w, h]``: the region ``[x, x + w] x [y, y + h]``.

    Returns:
        (K, N) float64 overlaps.
    """
    e = np.asarray(ellipses, dtype=np.float64).reshape(-1, 1, 5)
    r = np.asarray(rects, dtype=np.float64).reshape(1, -1, 4)
    ra, rb, angle, cx, cy = (e[..., i] for i in range(5))
    x, y, w, h = (r[..., i] for i in range(4))
    cos, sin = np.cos(angle), np.sin(angle)
    # Corners in the ellipse's frame scaled to the unit disc: the rectangle becomes a
    # parallelogram, and areas scale by ra * rb.
    corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    uv = [(((px - cx) * cos + (py - cy) * sin) / ra, (-(px - cx) * sin + (py - cy) * cos) / rb)
          for px, py in corners]
    inter = sum(_disc_triangle_area(*uv[k], *uv[(k + 1) % 4]) for k in range(4))
    inter = np.abs(inter) * ra * rb
    union = np.pi * ra * rb + w * h - inter
    return inter / union


# ---- matching and ROC ----

@dataclass
class Roc:
    """ROC points, one per distinct detection score, highest threshold first.

    Attributes: thresholds (P,), true_positives_discrete (P,), true_positives_continuous (P,),
    false_positives (P,) int, and num_faces (the true positive rate's denominator).
    """
    thresholds: np.ndarray
    true_positives_discrete: np.ndarray
    true_positives_continuous: np.ndarray
    false_positives: np.ndarray
    num_faces: int

    @property
    def tpr_discrete(self):
        return self.true_positives_discrete / self.num_faces

    @property
    def tpr_continuous(self):
        return self.true_positives_continuous / self.num_faces

    def tpr_at(self, false_positives=HEADLINE_FP, continuous=False):
        """The best true positive rate reached with at most ``false_positives`` false positives."""
        tpr = self.tpr_continuous if continuous else self.tpr_discrete
        ok = self.false_positives <= false_positives
        return float(tpr[ok].max()) if ok.any() else 0.0


def image_steps(faces, dets):
    """Matching results of one image at each of its distinct detection scores.

    Args:
        faces: (K, 5) ellipses ``[major_radius, minor_radius, angle, cx, cy]``.
        dets: (N, 5) detections ``[x, y, w, h, score]``.

    Returns:
        ``(scores, tp_discrete, tp_continuous, num_dets)``: (M,) arrays over the image's
        distinct scores, highest first, each the totals for the detections scoring at least
        that much.
    """
    order = np.argsort(-dets[:, 4], kind="stable")
    dets = dets[order]
    scores, first = np.unique(-dets[:, 4], return_index=True)
    ends = np.r_[first[1:], len(dets)]  # prefix length of each distinct score
    overlap = ellipse_rect_overlap(faces, dets[:, :4]) if len(faces) else np.zeros((0, len(dets)))
    touches = (overlap > 0).any(axis=0)
    tp_disc, tp_cont = np.zeros(len(ends)), np.zeros(len(ends))
    disc = cont = 0.0
    start = 0
    for k, end in enumerate(ends):
        # Detections that touch no face cannot change the best matching: skip the solve.
        if touches[start:end].any():
            rows, cols = linear_sum_assignment(overlap[:, :end], maximize=True)
            pair = overlap[rows, cols]
            disc, cont = float((pair > MATCH_OVERLAP).sum()), float(pair.sum())
        tp_disc[k], tp_cont[k] = disc, cont
        start = end
    return -scores, tp_disc, tp_cont, ends


def evaluate(annotations, detections):
    """ROC of ``detections`` over the images of ``annotations`` (see the module docstring).

    Args:
        annotations: dict image name -> (K, 5) ellipses.
        detections: dict image name -> (N, 5) ``[x, y, w, h, score]``; an annotated image
            without an entry has no detections, and entries for other images are ignored.

    Returns:
        Roc.
    """
    missing = [n for n in annotations if n not in detections]
    if missing:
        logger.warning("%d annotated images have no detection block (no detections), e.g. %s",
                       len(missing), missing[0])
    extra = sum(n not in annotations for n in detections)
    if extra:
        logger.info("%d images with detections are not annotated here and are ignored", extra)
    num_faces = sum(len(f) for f in annotations.values())
    if num_faces == 0:
        raise InputError("the annotations hold no face")
    # Each image adds step changes at its own scores; the dataset curve is their running sum.
    events = []
    for name, faces in annotations.items():
        dets = detections.get(name)
        if dets is None or len(dets) == 0:
            continue
        scores, disc, cont, ndet = image_steps(faces, dets)
        events.append(np.stack([scores, np.diff(disc, prepend=0), np.diff(cont, prepend=0),
                                np.diff(ndet, prepend=0)], axis=1))
    events = np.concatenate(events) if events else np.zeros((0, 4))
    thresholds, inverse = np.unique(-events[:, 0], return_inverse=True)
    totals = np.zeros((len(thresholds), 3))
    np.add.at(totals, inverse, events[:, 1:])
    disc, cont, ndet = np.cumsum(totals, axis=0).T
    return Roc(thresholds=-thresholds, true_positives_discrete=disc, true_positives_continuous=cont,
               false_positives=np.rint(ndet - disc).astype(np.int64), num_faces=num_faces)


# ---- output ----

ROC_FILES = ("DiscROC.txt", "ContROC.txt")


def check_outputs(args):
    """The ROC files and the plot can be written, and never over the detections, an
    annotation file or each other: checked before any work (utils.outputs)."""
    if args.plot:
        check_figure_path(args.plot, '--plot')
    outputs = RunOutputs()
    outputs.reads('-d', args.dets, 'the detections')
    for p in args.annotations:
        files = [os.path.join(p, f) for f in sorted(os.listdir(p))] if os.path.isdir(p) else [p]
        outputs.reads('-a', files, 'the annotation file')
    outputs.folder('-o', args.out)
    for fname in ROC_FILES:
        outputs.file('-o', os.path.join(args.out, fname), given=args.out, what=f"the ROC file {fname}")
    outputs.file('--plot', args.plot, what='the ROC plot')
    outputs.check()


def write_roc(roc, out_dir):
    """Writes ``DiscROC.txt`` and ``ContROC.txt``: ``tpr false_positives threshold`` lines
    (each atomically: a failed write leaves the previous file)."""
    out_dir = Path(out_dir)
    paths = []
    for fname, tpr in zip(ROC_FILES, (roc.tpr_discrete, roc.tpr_continuous)):
        path = out_dir / fname
        atomic_write_text(path, "".join(f"{t:g} {fp} {s:g}\n" for t, fp, s in
                                        zip(tpr.tolist(), roc.false_positives.tolist(), roc.thresholds.tolist())))
        paths.append(path)
    logger.info("wrote %s", ", ".join(map(str, paths)))
    return paths


def plot_roc(roc, path, label, max_fp=2000):
    """Plots the discrete and continuous ROC (true positive rate against false positives)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.8))
    for ax, continuous in zip(fig.subplots(1, 2), (False, True)):
        tpr = roc.tpr_continuous if continuous else roc.tpr_discrete
        ax.plot(np.r_[0, roc.false_positives], np.r_[0, tpr], color="tab:red", linewidth=2,
                label=f"{label} ({roc.tpr_at(continuous=continuous):.4f} at {HEADLINE_FP} FP)")
        ax.set(xlim=(0, max_fp), ylim=(0, 1), xlabel="False positives", ylabel="True positive rate",
               title=f"FDDB {'continuous' if continuous else 'discrete'} score")
        ax.grid(True, linestyle=":")
        ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    logger.info("wrote ROC plot to %s", path)


def get_args_parser():
    parser = argparse.ArgumentParser(description="FDDB discrete and continuous ROC of a detection file.")
    parser.add_argument("-d", "--dets", default="./eval/FDDB_dets.txt", help="detections written by test_fddb.py")
    parser.add_argument("-a", "--annotations", nargs="+", default=["./data/FDDB/FDDB-folds/"],
                        help="FDDB-fold-XX-ellipseList.txt files, or folders holding them")
    parser.add_argument("-o", "--out", default="./eval/", help="folder for DiscROC.txt and ContROC.txt")
    parser.add_argument("--plot", default=None, help="plot the ROC curves into this image (e.g. .png)")
    parser.add_argument("--label", default="RetinaFace", help="legend name of the plot")
    parser.add_argument("--annotations-only", action="store_true",
                        help="only read and check the annotations, print their size, and stop")
    return parser


def main(args):
    """Evaluates, writes the ROC files and the optional plot, prints the headline; returns the Roc."""
    if not args.annotations_only:  # the outputs can be written: checked before any work
        check_outputs(args)
    annotations = load_annotations(args.annotations)
    if args.annotations_only:
        print(f"{len(annotations)} annotated images, {sum(map(len, annotations.values()))} faces")
        return None
    roc = evaluate(annotations, load_detections(args.dets))
    write_roc(roc, args.out)
    if args.plot:
        plot_roc(roc, args.plot, args.label)
    print(f"FDDB: {roc.num_faces} faces in {len(annotations)} images")
    print(f"True positive rate at {HEADLINE_FP} false positives: discrete {roc.tpr_at():.4f} "
          f"({100 * roc.tpr_at():.2f}%), continuous {roc.tpr_at(continuous=True):.4f}")
    return roc


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
