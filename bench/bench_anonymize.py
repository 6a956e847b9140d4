"""Faces hidden, this project beside deface, in one run on the same photos; and what the masks do.

    .venv/bin/python -m bench.bench_anonymize                          # everything, plot to bench/anonymize_curve.png
    .venv/bin/python -m bench.bench_anonymize --project "original size" --deface_sizes default

Three parts:

1. **Strength** (utils.anonymize on kids_group.jpg with the golden detections, no network):
   how much of each face's detail survives each method and setting. The measure
   (masked_face_correlations) is the one tests/test_anonymize.py bounds: the ArcFace-aligned
   crops (utils.image.align_faces) of the face before and after masking, their detail
   (grey levels minus a Gaussian blur of DETAIL_SIGMA px), correlated over the crop's pixels
   that lie inside the mask and the image. Beside it, the same correlation between two
   different faces of the photo: a mask has done its work when a face looks no more like
   itself than like another child.
2. **Speed of the masks** on a 1920x1080 frame with many faces (largest_selfie.jpg scaled
   up, its golden detections scaled with it): anonymize() per method against deface's own
   anonymize_frame() on the same boxes.
3. **Hidden faces** on the 127 val416 photos with real WIDER ground truth
   (widerface_evaluate/hidden_faces.py's rule): each tool at its defaults, both over the
   score thresholds 0.1 ... 0.6, both over a few inference sizes. Each (tool, size) detects
   every photo once, at the lowest threshold; the thresholds filter those detections (both
   tools' NMS is greedy by score, so a detection's fate never depends on lower scores: the
   filtered set equals a run at that threshold, which tests/test_bench_anonymize.py checks
   for deface). The sweeps give every detector the same masks (the box scaled by 1.3 about
   its centre), this project's settings also masks of deface's size (1.6 times the box),
   and deface at its default size also with its own masks. A curve (hidden share against
   masks per photo, one line per tool and size) goes to --plot. Last, for each of this
   project's settings, the highest threshold that hides more medium and more hard faces
   than deface at its defaults, at equal masks (1.3x, 1.6x) and at each tool's own.

deface (requirements-bench.txt) runs through its Python API exactly as its command line
does: CenterFace(in_shape=--scale or None, backend='auto') on the RGB image imageio reads,
threshold 0.2 (its --thresh default, kept when score > threshold), and its masks
(deface.deface.scale_bb, then clipped as its anonymize_frame clips them). Note that deface's
--mask-scale 1.3 grows each side by 0.3 of the box, so its masks are 1.6 times the box, where
this project's mask_scale 1.3 is 1.3 times the box; the table at defaults adds each tool with
the other's mask size, to tell the detector from the mask.
"""
import argparse
import contextlib
import functools
import io
import os
import time

import cv2
import numpy as np

from bench.common import default_weights, val416_photos
from utils.anonymize import DEFAULT_MASK_SCALE, METHODS, anonymize, scale_boxes
from utils.datapaths import shared_path
from utils.image import ARCFACE_SIZE, align_faces, read_image
from widerface_evaluate.hidden_faces import COVERAGE, format_table, hidden_share
from widerface_evaluate.evaluation import load_wider_gt, check_figure_path, save_figure

# This project's settings: a label and the keyword set of load_detector, in the order of
# their input size. The val416 photos are square, so --target_size N would give the network
# the input of --max_size N (N x N) and is not listed; the test scale is 1600 x 1600 here.
PROJECT_SETTINGS = {
    'original size': {},
    'max_size 640': {'max_size': 640},
    'max_size 800': {'max_size': 800},
    'max_size 1024': {'max_size': 1024},
    'test scale (short side 1600)': {'origin_size': False},
}
PROJECT_DEFAULT = 'original size'
# deface's --scale values (W, H); None is its default, the photo's own size (rounded up to 32).
DEFACE_SIZES = {'default': None, '256x256': (256, 256), '320x320': (320, 320), '640x640': (640, 640),
                '832x832': (832, 832)}
DEFACE_DEFAULT = 'default'
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
DEFAULT_THRES = 0.2  # deface's --thresh default, used for this project too (issue 27)
DEFACE_MASK_SCALE = 1.3  # deface's --mask-scale default (each side grows by 0.3 of the box)
# deface's mask size relative to the box: scale_bb grows each side by (mask_scale - 1).
DEFACE_MASK_SIZE = 1 + 2 * (DEFACE_MASK_SCALE - 1)

# Strength: the detail kept is what a Gaussian blur of this sigma (pixels of the 112-pixel
# ArcFace crop) removes: the eyes, the mouth, edges; the shading left below it is alike in
# every face (a blurred face still correlates 0.8 with its original in raw grey levels).
DETAIL_SIGMA = 2.0
STRENGTH_IMAGE = 'kids_group'
STRENGTH_MIN_SCORE = 0.5  # the photo's faces (its golden detections above this)
BLUR_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
PIXELATE_BLOCKS = (4, 5, 6, 8, 12)
# Speed: the frame the masks are timed on.
FRAME_SIZE = (1920, 1080)
SPEED_IMAGE = 'largest_selfie'
SPEED_MIN_SCORE = 0.5


# ---------------------------------------------------------------------------------------
# Strength


def _detail(crop):
    """[S, S] float64: the crop's grey levels minus their Gaussian blur (DETAIL_SIGMA)."""
    g = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64)
    return g - cv2.GaussianBlur(g, (0, 0), DETAIL_SIGMA)


def mask_region(matrix, det, image_shape, mask_scale, mask_shape, size=ARCFACE_SIZE):
    """[size, size] bool: the crop pixels (of the crop matrix makes) whose image point lies
    inside det's mask (computed here from the geometry, not from anonymize's pixels) and
    inside the image, shrunk by the detail filter's reach, so that no pixel counted mixes
    in the unmasked surroundings."""
    inverse = cv2.invertAffineTransform(matrix)  # [2, 3] crop -> image
    v, u = np.mgrid[0:size, 0:size]  # [S, S] each
    # cv2's pixel coordinates are pixel centres; the boxes' are corners (+0.5).
    x = inverse[0, 0] * u + inverse[0, 1] * v + inverse[0, 2] + 0.5
    y = inverse[1, 0] * u + inverse[1, 1] * v + inverse[1, 2] + 0.5
    x1, y1, x2, y2 = scale_boxes(det[None, :4], mask_scale)[0]
    if mask_shape == 'ellipse':
        cx, cy, ax, ay = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        inside = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1
    else:
        inside = (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
    h, w = image_shape[:2]
    inside &= (x >= 0) & (x <= w) & (y >= 0) & (y <= h)
    reach = 2 * int(np.ceil(3 * DETAIL_SIGMA)) + 1  # the Gaussian's reach: 3 sigma either side
    return cv2.erode(inside.astype(np.uint8), np.ones((reach, reach), np.uint8)).astype(bool)


def _correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm else 0.0


def masked_face_correlations(img, dets, method, mask_scale=DEFAULT_MASK_SCALE, mask_shape='ellipse'):
    """(correlations, pixels): for each detection, the correlation of the detail of its
    aligned crop after anonymize(method) with the original's, over the crop's pixels inside
    its mask (mask_region), and how many pixels that is. 1 is the face untouched, 0 nothing
    of its detail left. img is not changed."""
    original, matrices = align_faces(img, dets)
    masked = img.copy()
    anonymize(masked, dets, method, mask_scale=mask_scale, mask_shape=mask_shape)
    after, _ = align_faces(masked, dets)
    corr, pixels = [], []
    for det, m, a, b in zip(dets, matrices, original, after):
        region = mask_region(m, det, img.shape, mask_scale, mask_shape)
        corr.append(_correlation(_detail(a)[region], _detail(b)[region]))
        pixels.append(int(region.sum()))
    return np.array(corr), np.array(pixels)


def other_face_correlations(img, dets, mask_scale=DEFAULT_MASK_SCALE, mask_shape='ellipse'):
    """The same correlation between two different faces' original crops (over the first
    face's mask region), for every ordered pair: how alike two people's details are."""
    crops, matrices = align_faces(img, dets)
    out = []
    for i, (det, m) in enumerate(zip(dets, matrices)):
        region = mask_region(m, det, img.shape, mask_scale, mask_shape)
        out += [_correlation(_detail(crops[i])[region], _detail(crops[j])[region])
                for j in range(len(dets)) if j != i]
    return np.array(out)


def strength(image=STRENGTH_IMAGE):
    """Print the detail each method leaves, on image's golden faces, for a few strengths."""
    import utils.anonymize as anon

    img = read_image(shared_path('images', f'{image}.jpg'))
    dets = np.load(shared_path('golden', 'mnet', f'{image}_dets.npy'))
    dets = dets[dets[:, 4] >= STRENGTH_MIN_SCORE]
    print(f"Strength: detail correlation of each face's aligned crop with its original, inside the mask "
          f"(ellipse, mask scale {DEFAULT_MASK_SCALE}), {image}.jpg, {len(dets)} faces; 1 = untouched")
    others = other_face_correlations(img, dets)
    print(f"  two different faces of the photo: median {np.median(others):.3f}, max {others.max():.3f}")
    settings = ([('blur', 'BLUR_KERNEL_FRACTION', f) for f in BLUR_FRACTIONS]
                + [('pixelate', 'PIXELATE_BLOCKS', n) for n in PIXELATE_BLOCKS] + [('solid', None, None)])
    print(f"  {'method':10s} {'setting':36s} {'median':>7s} {'max':>7s}")
    for method, name, value in settings:
        saved = getattr(anon, name) if name else None
        if name:
            setattr(anon, name, value)
        try:
            corr, _ = masked_face_correlations(img, dets, method)
        finally:
            if name:
                setattr(anon, name, saved)
        shipped = ' (shipped)' if name is None or value == saved else ''
        label = f"{name} = {value:g}{shipped}" if name else ''
        print(f"  {method:10s} {label:36s} {np.median(corr):7.3f} {corr.max():7.3f}")


# ---------------------------------------------------------------------------------------
# Speed of the masks


def deface_mask_rectangles(dets, shape, mask_scale=DEFACE_MASK_SCALE):
    """deface's masks, as its anonymize_frame makes them: [N, 4] int x1 y1 x2 y2, the blurred
    pixels being frame[y1:y2, x1:x2] (each box truncated to int, scaled by its scale_bb,
    clipped to [0, W - 1] and [0, H - 1])."""
    from deface.deface import scale_bb

    h, w = shape[:2]
    out = []
    for det in dets:
        x1, y1, x2, y2 = scale_bb(*np.asarray(det[:4]).astype(int), mask_scale)
        out.append([max(0, x1), max(0, y1), min(w - 1, x2), min(h - 1, y2)])
    return np.array(out, dtype=np.int64).reshape(-1, 4)


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - tic))
    return float(np.median(times))


def mask_speed(repeats=5):
    """Print ms per 1080p frame of anonymize() per method and of deface's anonymize_frame."""
    from deface.deface import anonymize_frame

    img = read_image(shared_path('images', f'{SPEED_IMAGE}.jpg'))
    dets = np.load(shared_path('golden', 'mnet', f'{SPEED_IMAGE}_dets.npy'))
    dets = dets[dets[:, 4] >= SPEED_MIN_SCORE].copy()
    sx, sy = FRAME_SIZE[0] / img.shape[1], FRAME_SIZE[1] / img.shape[0]
    frame = cv2.resize(img, FRAME_SIZE, interpolation=cv2.INTER_LINEAR)
    dets[:, 0:15:2] *= sx
    dets[:, 1:15:2] *= sy
    widths = dets[:, 2] - dets[:, 0]
    print(f"Speed of the masks: {FRAME_SIZE[0]}x{FRAME_SIZE[1]} frame ({SPEED_IMAGE}.jpg scaled up), {len(dets)} "
          f"faces (median {np.median(widths):.0f} px wide), median of {repeats}, ms per frame; this project's masks "
          f"{DEFAULT_MASK_SCALE:g}x the box unless said, deface's {DEFACE_MASK_SIZE:g}x")
    work = frame.copy()

    def ours(method, shape, mask_scale=DEFAULT_MASK_SCALE):
        def run():
            work[...] = frame
            anonymize(work, dets, method, mask_scale=mask_scale, mask_shape=shape)
        return run

    def deface(ellipse):
        def run():
            work[...] = frame
            anonymize_frame(dets[:, :5], work, mask_scale=DEFACE_MASK_SCALE, replacewith='blur', ellipse=ellipse,
                            draw_scores=False, replaceimg=None, mosaicsize=20)
        return run

    copy_ms = _median_ms(lambda: np.copyto(work, frame), repeats)
    rows = [(f"this project, {m}, {s}", ours(m, s)) for m in METHODS for s in ('ellipse', 'box')]
    rows.append((f"this project, blur, ellipse, {DEFACE_MASK_SIZE:g}x box", ours('blur', 'ellipse', DEFACE_MASK_SIZE)))
    rows += [("deface, blur, ellipse (its default)", deface(True)), ("deface, blur, box", deface(False))]
    times = {label: _median_ms(fn, repeats) - copy_ms for label, fn in rows}
    ref = times["deface, blur, ellipse (its default)"]
    for label, ms in times.items():
        print(f"  {label:40s} {ms:8.1f} ms   {ref / ms:5.1f}x deface's default")


# ---------------------------------------------------------------------------------------
# Hidden faces


def project_detections(photos, weights, settings, threads=None):
    """{image key: ndarray[N, 15]} of this project's detector built with load_detector(**settings)."""
    from models.detector import load_detector
    from utils.cli import set_threads

    set_threads(threads)
    detector = load_detector('mobile0.25', weights, **settings)
    return {name: detector.detect(read_image(path)) for name, path in photos.items()}


@functools.lru_cache(maxsize=None)
def _centerface(size):
    """deface's CenterFace as its command line makes it: --scale size (None: its default), backend auto."""
    from deface.centerface import CenterFace

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its execution provider
        return CenterFace(in_shape=size, backend='auto')


def deface_detections(photos, size, thres):
    """{image key: ndarray[N, 5] x1 y1 x2 y2 score} of deface's CenterFace at --scale size
    (None: its default), threshold thres, on the RGB photo as deface reads it."""
    import imageio.v2 as iio

    centerface = _centerface(size)
    return {name: centerface(iio.imread(path), threshold=thres)[0] for name, path in photos.items()}


def project_masks(dets, thres, mask_scale=DEFAULT_MASK_SCALE):
    """This project's masks (anonymize's rule: score >= thres, the box scaled about its centre)."""
    return {name: scale_boxes(d[d[:, 4] >= thres], mask_scale) for name, d in dets.items()}


def deface_masks(dets, shapes, thres, mask_scale=DEFACE_MASK_SCALE):
    """deface's masks (score > thres, deface_mask_rectangles), as continuous boxes: the
    pixels x1 .. x2 - 1 span x1 to x2."""
    return {name: deface_mask_rectangles(d[d[:, 4] > thres], shapes[name], mask_scale).astype(np.float64)
            for name, d in dets.items()}


def centre_masks(dets, thres, mask_scale):
    """deface's detections (score > thres) with this project's mask rule."""
    return {name: scale_boxes(d[d[:, 4] > thres], mask_scale) for name, d in dets.items()}


def plot_curves(curves, path):
    """Hidden share against masks per photo, a panel per setting, a line per (tool, size)
    over the thresholds (the default threshold marked): this project solid, deface dashed,
    deface with its own masks dotted black. Each tool's sizes take shades of one colour map,
    in the order they are listed (this project blue to green, deface red to orange)."""
    import matplotlib
    from matplotlib.figure import Figure

    settings = list(next(iter(curves.values()))[0][1].share)
    ours = [label for label in curves if label.startswith('this project')]
    theirs = [label for label in curves if not label.startswith('this project') and not label.endswith('its masks')]
    colour = {label: matplotlib.colormaps[cmap](0.8 * k / max(len(labels) - 1, 1))
              for labels, cmap in ((ours, 'winter'), (theirs, 'autumn')) for k, label in enumerate(labels)}
    fig = Figure(figsize=(4.2 * len(settings), 3.8))
    for ax, setting in zip(fig.subplots(1, len(settings), squeeze=False)[0], settings):
        for label, points in curves.items():
            x = [r.masks_per_photo for _, r in points]
            y = [100 * r.share[setting] for _, r in points]
            own = label.endswith('its masks')
            line, = ax.plot(x, y, marker='.', linewidth=2 if own else 1.5, color=colour.get(label, 'black'),
                            linestyle=':' if own else '-' if label in ours else '--', label=label)
            for t, r in points:
                if t == DEFAULT_THRES:
                    ax.plot(r.masks_per_photo, 100 * r.share[setting], marker='o', color=line.get_color())
        ax.set(xlabel='masks per photo', ylabel='faces hidden (%)',
               title=f'{setting}: thresholds {max(THRESHOLDS):g} (left) ... {min(THRESHOLDS):g}')
        ax.grid(True, linestyle=':')
    fig.axes[0].legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    save_figure(fig, path, dpi=72)


def get_args_parser():
    parser = argparse.ArgumentParser(description='faces hidden, this project beside deface, on val416')
    parser.add_argument('-m', '--trained_model', default=None,
                        help='weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA/weights/)')
    parser.add_argument('--project', nargs='+', default=list(PROJECT_SETTINGS), choices=list(PROJECT_SETTINGS),
                        help="this project's settings to run")
    parser.add_argument('--deface_sizes', nargs='+', default=list(DEFACE_SIZES), choices=list(DEFACE_SIZES),
                        help="deface's --scale values to run")
    parser.add_argument('--threads', default=None, type=int, help="this project's CPU threads (default: torch's)")
    parser.add_argument('--plot', default=os.path.join(os.path.dirname(__file__), 'anonymize_curve.png'),
                        help='the curve picture')
    parser.add_argument('--skip', nargs='*', default=[], choices=['strength', 'speed', 'hidden'],
                        help='parts not to run')
    return parser


def main(args):
    if 'hidden' not in args.skip:
        check_figure_path(args.plot, '--plot')
    if 'strength' not in args.skip:
        strength()
        print()
    if 'speed' not in args.skip:
        mask_speed()
        print()
    if 'hidden' in args.skip:
        return None
    gt = load_wider_gt(shared_path('widerface', 'val416', 'ground_truth'))
    photos = val416_photos(gt)
    shapes = {name: read_image(path).shape for name, path in photos.items()}
    weights = args.trained_model or default_weights()
    low = min(THRESHOLDS)
    project, deface, seconds = {}, {}, {}
    for label in args.project:
        tic = time.perf_counter()
        project[label] = project_detections(photos, weights, PROJECT_SETTINGS[label], args.threads)
        seconds[f"this project, {label}"] = time.perf_counter() - tic
    for label in args.deface_sizes:
        tic = time.perf_counter()
        deface[label] = deface_detections(photos, DEFACE_SIZES[label], low)
        seconds[f"deface, {label}"] = time.perf_counter() - tic

    print(f"Faces hidden on the {len(photos)} val416 photos (real WIDER ground truth): a face is hidden when one mask "
          f"covers >= {COVERAGE:.0%} of its box; faces counted: "
          + ", ".join(f"{s} {n}" for s, n in hidden_share(gt, {}).faces.items()))
    print(f"\nAt the defaults: threshold {DEFAULT_THRES}; deface's masks (its --mask-scale {DEFACE_MASK_SCALE:g}) are "
          f"{DEFACE_MASK_SIZE:g} times the box, this project's (mask_scale {DEFAULT_MASK_SCALE:g}) {DEFAULT_MASK_SCALE:g} "
          f"times; each tool also with the other's mask size")
    rows = []
    if DEFACE_DEFAULT in deface:
        d = deface[DEFACE_DEFAULT]
        rows.append(("deface, CenterFace at its default size, its masks (1.6x box)",
                     hidden_share(gt, deface_masks(d, shapes, DEFAULT_THRES))))
        rows.append((f"deface, CenterFace at its default size, masks {DEFAULT_MASK_SCALE:g}x box",
                     hidden_share(gt, centre_masks(d, DEFAULT_THRES, DEFAULT_MASK_SCALE))))
    for label, p in project.items():
        for scale in (DEFAULT_MASK_SCALE, DEFACE_MASK_SIZE):
            rows.append((f"this project, MobileNet0.25 {label}, masks {scale:g}x box",
                         hidden_share(gt, project_masks(p, DEFAULT_THRES, scale))))
    print(format_table(rows, first='detector'))

    # The sweeps compare the detectors under one mask rule (the box x DEFAULT_MASK_SCALE about
    # its centre), plus deface as it runs (its own masks).
    curves = {}
    for label, dets in project.items():
        curves[f"this project, {label}"] = [(t, hidden_share(gt, project_masks(dets, t))) for t in THRESHOLDS]
    for label, dets in deface.items():
        curves[f"deface, {label}"] = [(t, hidden_share(gt, centre_masks(dets, t, DEFAULT_MASK_SCALE)))
                                      for t in THRESHOLDS]
    if DEFACE_DEFAULT in deface:
        curves[f"deface, {DEFACE_DEFAULT}, its masks"] = [
            (t, hidden_share(gt, deface_masks(deface[DEFACE_DEFAULT], shapes, t))) for t in THRESHOLDS]
    # This project's settings also with masks of deface's size, for the comparison at equal masks.
    wide = {f"this project, {label}": [(t, hidden_share(gt, project_masks(dets, t, DEFACE_MASK_SIZE)))
                                       for t in THRESHOLDS] for label, dets in project.items()}
    print(f"\nOver the thresholds, masks {DEFAULT_MASK_SCALE:g}x the box unless said (this project: score >= t, also "
          f"with {DEFACE_MASK_SIZE:g}x masks; deface: score > t, as each tool compares); time to detect the "
          f"{len(photos)} photos")
    for label, points in curves.items():
        took = seconds.get(label.removesuffix(', its masks'))
        print(f"\n{label}" + (f" ({took:.1f} s, {1000 * took / len(photos):.0f} ms/photo)"
                              if not label.endswith('its masks') else f" ({DEFACE_MASK_SIZE:g}x box)"))
        print(sweep_table(points, wide.get(label)))
    if DEFACE_DEFAULT in deface:
        d = deface[DEFACE_DEFAULT]
        references = [
            (f"masks {DEFAULT_MASK_SCALE:g}x box for both", hidden_share(gt, centre_masks(d, DEFAULT_THRES,
                                                                                         DEFAULT_MASK_SCALE)), curves),
            (f"masks {DEFACE_MASK_SIZE:g}x box for both (deface's own)", hidden_share(gt, deface_masks(d, shapes,
                                                                                                     DEFAULT_THRES)),
             wide),
            (f"each tool's default masks: deface's {DEFACE_MASK_SIZE:g}x box, this project's {DEFAULT_MASK_SCALE:g}x",
             hidden_share(gt, deface_masks(d, shapes, DEFAULT_THRES)), curves),
        ]
        ms_per_photo = {label: 1000 * took / len(photos) for label, took in seconds.items()}
        print(f"\nThis project against deface at its default (CenterFace at the photo's size, threshold "
              f"{DEFAULT_THRES}): for each setting, the highest threshold that hides more medium AND more hard faces "
              f"(the fewest masks that do), else the threshold that comes closest")
        for title, ref, ours in references:
            print(f"\n{title}: deface hides medium {100 * ref.share['medium']:.1f}%, hard "
                  f"{100 * ref.share['hard']:.1f}%, {ref.masks_per_photo:.1f} masks/photo")
            print(beating_table({label: points for label, points in ours.items() if label.startswith('this project')},
                                ref, ms_per_photo))
    plot_curves(curves, args.plot)
    print(f"\ncurve written to {args.plot}")
    return curves


def sweep_table(points, wide_points=None):
    """One line per threshold: the hidden shares with points' masks, then (when given) with
    wide_points' (the same detections, larger masks), then the masks per photo."""
    settings = list(points[0][1].share)
    scales = [points] + ([wide_points] if wide_points else [])
    cells = "  ".join(f"{s:>7}" for s in settings)
    head = f"{'threshold':<9}  " + "  |  ".join([cells] * len(scales)) + "  masks/photo"
    lines = []
    if wide_points:
        width = len(cells)
        lines.append(f"{'':<9}  {f'masks {DEFAULT_MASK_SCALE:g}x box':<{width}}  |  "
                     f"masks {DEFACE_MASK_SIZE:g}x box")
    lines += [head, "-" * len(head)]
    for k, (t, r) in enumerate(points):
        shares = ["  ".join(f"{100 * p[k][1].share[s]:6.1f}%" for s in settings) for p in scales]
        lines.append(f"{t:<9g}  " + "  |  ".join(shares) + f"  {r.masks_per_photo:11.1f}")
    return "\n".join(lines)


def beats(result, ref):
    """Whether result hides more medium and more hard faces than ref."""
    return result.share['medium'] > ref.share['medium'] and result.share['hard'] > ref.share['hard']


def beating_table(curves, ref, ms_per_photo):
    """Per setting (curves: label -> [(threshold, HiddenShare)]): the highest threshold whose
    masks hide more medium and hard faces than ref, or, where none does, the threshold with
    the smallest shortfall (the larger of the two gaps), marked 'no'."""
    head = (f"{'setting':<45}{'threshold':>10}{'beats':>7}{'medium':>9}{'hard':>9}{'masks/photo':>13}"
            f"{'ms/photo':>10}")
    lines = [head, "-" * len(head)]
    for label, points in curves.items():
        winning = [(t, r) for t, r in points if beats(r, ref)]
        if winning:
            t, r = max(winning, key=lambda p: p[0])
        else:
            t, r = min(points, key=lambda p: max(ref.share['medium'] - p[1].share['medium'],
                                                 ref.share['hard'] - p[1].share['hard']))
        ms = ms_per_photo.get(label)
        lines.append(f"{label:<45}{t:>10g}{'yes' if winning else 'no':>7}{100 * r.share['medium']:8.1f}%"
                     f"{100 * r.share['hard']:8.1f}%{r.masks_per_photo:13.1f}" + (f"{ms:10.0f}" if ms else ''))
    return "\n".join(lines)


if __name__ == '__main__':
    main(get_args_parser().parse_args())
