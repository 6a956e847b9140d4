"""The accuracy/speed curve of the inference size: WIDER AP and ms per photo at each size the
network can see, for both backends side by side, and the curve as a picture.

    .venv/bin/python -m bench.bench_sizes                                  # everything (about an hour)
    .venv/bin/python -m bench.bench_sizes --settings 160 320 original 640  # a subset; the rest from the cache
    .venv/bin/python -m bench.bench_sizes --plot /tmp/curve.png

The settings (SETTINGS): the long side made 160 ... 1600 pixels (load_detector(max_size=N), the
flag --max_size N), the original size (the default; 416 on these photos), the reference's test
scale (origin_size=False: short side 1600, long side at most 2150) and the pyramid.

1. **val416**: the 127 minitrain photos with real WIDER ground truth
   (../shared/widerface/val416), MobileNet0.25. AP easy / medium / hard of the torch backend,
   through widerface_evaluate's own evaluation of the numbers test_widerface.py writes
   (widerface_evaluate.validation.wider_boxes), so a row is what test_widerface.py +
   evaluation.py -g give at that setting; the onnxruntime backend's AP is computed the same
   way and compared to the printed digits. ms per photo: Detector.detect(img) from the
   decoded BGR photo to detections, the mean over the photos of each photo's median over
   --rounds. Photo by photo, every (setting, backend) runs in turn, their order reversed
   every other photo, so that the load of this shared machine falls on all of them alike.
2. **The shared photos** (../shared/images), whose sizes are real (the val416 photos are all
   416x416): median ms of --image_rounds runs per photo, (setting, backend) in turn each round.
   street_crowd and largest_selfie are 16:9, so at a long side N the network sees what it sees
   in a 16:9 video frame at --max_size N.

Each (setting, backend) is cached in --cache (detections and times, keyed by the weights'
digest, the setting, the threads, the photos and the library versions): a later run computes
only what is missing (--recompute: everything), so the pyramid, which takes most of the time,
runs once. A table built from entries of earlier runs names those runs.

The picture (--plot): hard AP against ms per val416 photo, one line per backend, each point
labelled with its setting; the AP of both lines is the torch backend's.

The val416 photos are val photos squashed to 416x416: the table compares settings, it is not
the published WIDER val numbers.
"""
import argparse
import datetime
import hashlib
import importlib.metadata
import io
import json
import os
import statistics
import tempfile
import time

import numpy as np

from bench.common import IMAGES, default_weights, val416_photos
from data.config import MAX_SIZE, TARGET_SIZE
from utils.atomic import atomic_write
from utils.datapaths import shared_path
from utils.device import BACKENDS
from utils.image import read_image
from widerface_evaluate.evaluation import SETTINGS as AP_SETTINGS
from widerface_evaluate.evaluation import check_figure_path, evaluate, load_wider_gt, save_figure
from widerface_evaluate.validation import wider_boxes

# The settings of the curve, in the order of their cost: a short name (the --settings value),
# a label, and the keyword set of load_detector. On the 416x416 val416 photos the original size
# is a long side of 416, and 'long side 1600' is the test scale's input (1600x1600): the two
# differ only on photos that are not square (the test scale then makes the short side 1600).
SETTINGS = {
    '160': ('long side 160', {'max_size': 160}),
    '240': ('long side 240', {'max_size': 240}),
    '320': ('long side 320', {'max_size': 320}),
    'original': ('original size', {}),
    '640': ('long side 640', {'max_size': 640}),
    '800': ('long side 800', {'max_size': 800}),
    '1024': ('long side 1024', {'max_size': 1024}),
    '1600': ('long side 1600', {'max_size': 1600}),
    'test_scale': ('test scale', {'origin_size': False}),
    'pyramid': ('pyramid', {'pyramid': True}),
}
NETWORK = 'mobile0.25'
AP_DIGITS = 4  # the AP digits printed, to which the backends are compared
VAL416_SIZE = (416, 416)  # (h, w) of every val416 photo
VIDEO_FRAME = (1080, 1920)  # (h, w): the network input of a 1080p frame is printed beside each setting
CACHE_VERSION = 1  # bump when an entry's layout changes
PLOT_DPI = 80
LABEL_OFFSETS = (4, 15)  # points between a point and its label, alternately


def get_args_parser():
    parser = argparse.ArgumentParser(description='AP and ms per photo at each inference size, both backends')
    parser.add_argument('-m', '--trained_model', default=None,
                        help='weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA/weights/)')
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS),
                        help='the settings to print (default: all); missing cache entries are computed')
    parser.add_argument('--backends', nargs='+', default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument('--photos', default=None, type=int,
                        help='only the first N val416 photos (default: all 127); AP over those photos only')
    parser.add_argument('--images', nargs='*', default=None,
                        help='photos of real size to time (default: the four of $RETINAFACE_DATA/images; '
                             'none: leave this part out)')
    parser.add_argument('--rounds', default=1, type=int, help='timed runs of each val416 photo (median counts)')
    parser.add_argument('--image_rounds', default=3, type=int,
                        help='timed runs of each real-size photo (median counts), after one untimed run')
    parser.add_argument('--threads', default=1, type=int, help='CPU threads of both backends (default 1)')
    parser.add_argument('--cache', default=os.path.join(tempfile.gettempdir(), 'retinaface_bench_sizes'),
                        help='folder of the cached detections and times (default: %(default)s)')
    parser.add_argument('--recompute', action='store_true', help='ignore the cache: run every setting asked for')
    parser.add_argument('--plot', default=os.path.join(os.path.dirname(__file__), 'sizes_curve.png'),
                        help='the picture (default: %(default)s); empty: none')
    return parser


# ---------------------------------------------------------------------------------------
# The cache


def file_digest(path):
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def library_versions():
    """The installed versions of the two backends' libraries (read without importing torch,
    so that load_detector still chooses torch's wait policy as it would for a user)."""
    return {name: importlib.metadata.version(name) for name in ('torch', 'onnxruntime')}


def cache_path(folder, part, setting, backend):
    return os.path.join(folder, f"{part}_{setting}_{backend}.npz")


def save_entry(path, key, names, dets, times, run):
    """One (part, setting, backend): its key (what made it), and per photo its detections
    ([N, 15], concatenated with their counts) and timed runs (ms)."""
    counts = np.array([len(dets[n]) for n in names], dtype=np.int64)
    rows = np.concatenate([dets[n] for n in names]).astype(np.float32) if names else np.zeros((0, 15), np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, key=json.dumps(key, sort_keys=True), run=json.dumps(run), counts=counts,
             dets=rows.reshape(-1, 15), times=np.array([times[n] for n in names], dtype=np.float64))
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def load_entry(path, key, names):
    """(dets, times, run) of a cached entry made with key, or None (missing, or made otherwise)."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as z:
            if json.loads(str(z['key'])) != json.loads(json.dumps(key, sort_keys=True)):
                return None
            counts, rows, times, run = z['counts'], z['dets'], z['times'], json.loads(str(z['run']))
    except (OSError, ValueError, KeyError):
        return None
    starts = np.concatenate(([0], np.cumsum(counts)))
    dets = {n: rows[starts[i]:starts[i + 1]] for i, n in enumerate(names)}
    return dets, {n: list(times[i]) for i, n in enumerate(names)}, run


# ---------------------------------------------------------------------------------------
# Measuring


def build_detector(setting, backend, weights, threads):
    from models.detector import load_detector

    # allow_spinning=False: onnxruntime's idle threads sleep, as the scripts make them.
    extra = {'allow_spinning': False} if backend == 'onnxruntime' else {}
    return load_detector(NETWORK, weights, backend=backend, threads=threads, **SETTINGS[setting][1], **extra)


def _ms(detector, img):
    tic = time.perf_counter()
    dets = detector.detect(img)
    return dets, 1000 * (time.perf_counter() - tic)


def measure(jobs, photos, rounds, warmup):
    """Detect every photo with every detector, in turn.

    Args:
        jobs: {(setting, backend): Detector}.
        photos: {name: path}.
        rounds: timed runs of each photo.
        warmup: 'once' (one untimed run of each detector on the first photo: the photos are
            all of one size) or 'each' (one untimed run per photo: each has its own size, and
            both backends prepare their work per input shape).
    Returns:
        (dets, times): {(setting, backend): {name: [N, 15]}} of the first round and
        {(setting, backend): {name: [ms of each round]}}.
    """
    order = list(jobs)
    dets = {job: {} for job in order}
    times = {job: {name: [] for name in photos} for job in order}
    names = list(photos)
    if warmup == 'once' and names:
        first = read_image(photos[names[0]])
        for job in order:
            jobs[job].detect(first)
    for r in range(rounds):
        for i, name in enumerate(names):
            img = read_image(photos[name])
            if warmup == 'each' and r == 0:
                for job in order:
                    jobs[job].detect(img)
            for job in (order if (i + r) % 2 == 0 else order[::-1]):
                d, ms = _ms(jobs[job], img)
                if r == 0:
                    dets[job][name] = d
                times[job][name].append(ms)
    return dets, times


def run_info():
    return {'date': datetime.datetime.now().isoformat(timespec='minutes'),
            'load': round(os.getloadavg()[0], 2)}


def collect(args, part, photos, rounds, warmup, weights, digest, versions):
    """{(setting, backend): (dets, times, run)} of one part, from the cache where it holds an
    entry made the same way, the rest measured now (in one interleaved loop) and cached."""
    entries, missing = {}, []
    key_of = {}
    for setting in args.settings:
        for backend in args.backends:
            key = {'version': CACHE_VERSION, 'part': part, 'network': NETWORK, 'weights': digest,
                   'setting': SETTINGS[setting][1], 'backend': backend, 'threads': args.threads, 'rounds': rounds,
                   'photos': {n: os.path.getsize(p) for n, p in photos.items()}, 'libraries': versions}
            key_of[setting, backend] = key
            path = cache_path(args.cache, part, setting, backend)
            entry = None if args.recompute else load_entry(path, key, list(photos))
            if entry is None:
                missing.append((setting, backend))
            else:
                entries[setting, backend] = entry
    if missing:
        print(f"{part}: measuring {', '.join(f'{s}/{b}' for s, b in missing)} on {len(photos)} photos "
              f"({rounds} round(s)); load average {os.getloadavg()[0]:.2f}", flush=True)
        jobs = {job: build_detector(*job, weights, args.threads) for job in missing}
        start = run_info()
        dets, times = measure(jobs, photos, rounds, warmup)
        run = {**start, 'end_load': round(os.getloadavg()[0], 2)}
        for job in missing:
            save_entry(cache_path(args.cache, part, *job), key_of[job], list(photos), dets[job], times[job], run)
            entries[job] = dets[job], times[job], run
    return entries


# ---------------------------------------------------------------------------------------
# Summaries


def average_ms(times):
    """The mean over the photos of each photo's median ms."""
    return statistics.mean(statistics.median(t) for t in times.values())


def average_precision(dets, gt):
    """{setting: AP} of detections {image key: [N, 15]}, as evaluation.py scores the files
    test_widerface.py writes of them (over the photos given)."""
    preds = {name: wider_boxes(d) for name, d in dets.items()}
    return {s: r['ap'] for s, r in evaluate(preds, gt, only_predicted=True).items()}


def input_text(setting, height, width):
    """The network input of a height x width photo at setting, 'W x H' ('5 scales x 2' for the pyramid)."""
    from layers.functions.detection import resize_factor, resized_size
    from layers.functions.pyramid import PYRAMID_SIZES

    kw = SETTINGS[setting][1]
    if kw.get('pyramid'):
        return f"{len(PYRAMID_SIZES)} scales x2"
    origin = kw.get('origin_size', None)
    target, cap = kw.get('target_size'), kw.get('max_size')
    if target is None and cap is None:
        origin, target, cap = (True, None, None) if origin is None else (False, TARGET_SIZE, MAX_SIZE)
    h, w = resized_size(height, width, resize_factor(height, width, origin, target, cap))
    return f"{w}x{h}"


def _run_text(run):
    return f"{run['date']}, load average {run['load']:.1f}-{run['end_load']:.1f}"


def print_runs(entries, part):
    runs = sorted({_run_text(run) for _, _, run in entries.values()})
    print(f"{part} measured in {len(runs)} run(s): " + '; '.join(runs))


def plot_curve(rows, backends, path):
    """Hard AP against ms per photo, a line per backend, each point labelled with its setting.
    Settings that give these photos the same input (1600 and the test scale) are labelled once.
    The first backend's labels sit below right of its points, the others' above left: the
    slower backend's line lies to the right."""
    from matplotlib.figure import Figure

    labels, seen = {}, {}
    for row in rows:
        same = (input_text(row['setting'], *VAL416_SIZE), tuple(row['ap'].values()))
        if same in seen:
            labels[seen[same]] += f" / {row['short']}"
            labels[row['setting']] = ''
        else:
            seen[same] = row['setting']
            labels[row['setting']] = row['short']
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
    for k, (backend, marker) in enumerate(zip(backends, 'os^')):
        points = sorted((row['ms'][backend], row['ap']['hard'], labels[row['setting']]) for row in rows)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=backend)
        for j, (x, y, label) in enumerate(p for p in points if p[2]):
            # Every other label further out, so that close neighbours (the plateau) stay apart.
            shift = LABEL_OFFSETS[j % 2]
            place = (dict(xytext=(5, -shift), ha='left', va='top') if k == 0
                     else dict(xytext=(-5, shift), ha='right', va='bottom'))
            ax.annotate(label, (x, y), textcoords='offset points', fontsize=8, **place)
    ax.set_xscale('log')
    ax.margins(x=0.1, y=0.08)
    ax.set(xlabel='ms per photo (416x416 val416 photos, 1 thread; log scale)', ylabel='hard AP (torch)',
           title='MobileNet0.25 on val416: hard AP against time, by inference size')
    ax.grid(True, which='both', linestyle=':')
    ax.legend(loc='lower right')
    fig.tight_layout()
    save_figure(fig, path, dpi=PLOT_DPI)


def short_label(setting):
    return {'original': 'original (416)', 'test_scale': 'test scale', 'pyramid': 'pyramid'}.get(setting, setting)


def main(args):
    if args.plot:
        check_figure_path(args.plot, '--plot')
    for flag in ('rounds', 'image_rounds', 'threads'):
        if getattr(args, flag) < 1:
            raise SystemExit(f"error: --{flag} must be at least 1")
    weights = args.trained_model or default_weights()
    digest = file_digest(weights)
    versions = library_versions()
    from utils.memory import keep_freed_memory

    kept = keep_freed_memory()  # as the scripts do on the CPU
    gt = load_wider_gt(shared_path('widerface', 'val416', 'ground_truth'))
    photos = val416_photos(gt)
    if args.photos is not None:
        photos = dict(list(photos.items())[:args.photos])
    image_paths = ([str(shared_path('images', f'{n}.jpg')) for n in IMAGES] if args.images is None
                   else [p for p in args.images if p != 'none'])
    images = {os.path.splitext(os.path.basename(p))[0]: p for p in image_paths}
    print(f"{NETWORK} ({weights}), CPU, {args.threads} thread(s), backends {', '.join(args.backends)}, "
          f"malloc keeps freed memory: {'yes' if kept else 'no'}; {len(photos)} val416 photos, "
          f"{len(images)} real-size photos; cache {args.cache}", flush=True)

    val = collect(args, 'val416', photos, args.rounds, 'once', weights, digest, versions)
    real = collect(args, 'photos', images, args.image_rounds, 'each', weights, digest, versions) if images else {}

    # -- the val416 table ----------------------------------------------------------------------
    ref = 'torch' if 'torch' in args.backends else args.backends[0]
    rows = []
    for setting in args.settings:
        row = {'setting': setting, 'short': short_label(setting), 'label': SETTINGS[setting][0]}
        row['ap'] = average_precision(val[setting, ref][0], gt)
        row['ms'] = {b: average_ms(val[setting, b][1]) for b in args.backends}
        row['dets'] = statistics.mean(len(d) for d in val[setting, ref][0].values())
        row['others'] = {b: average_precision(val[setting, b][0], gt) for b in args.backends if b != ref}
        rows.append(row)
    print(f"\nval416: AP ({ref}) over {len(photos)} photos (real WIDER ground truth; 416x416, squashed: compare the "
          f"settings, not with the published val numbers), mean ms per photo (median of {args.rounds} round(s) each)")
    print_runs(val, 'val416')
    ms_cols = ''.join(f"{b + ' ms':>16}" for b in args.backends)
    others = [b for b in args.backends if b != ref]
    header = (f"{'setting':<16}{'val416 input':>13}{'1080p input':>13}" + ''.join(f"{s:>8}" for s in AP_SETTINGS)
              + f"{'dets/photo':>11}" + ms_cols + ''.join(f"  {b + ' AP':<20}" for b in others))
    print(header.rstrip() + "\n" + "-" * len(header.rstrip()))
    for row in rows:
        line = (f"{row['label']:<16}{input_text(row['setting'], *VAL416_SIZE):>13}"
                f"{input_text(row['setting'], *VIDEO_FRAME):>13}"
                + ''.join(f"{row['ap'][s]:8.{AP_DIGITS}f}" for s in AP_SETTINGS) + f"{row['dets']:11.1f}"
                + ''.join(f"{row['ms'][b]:16.1f}" for b in args.backends))
        for b in others:
            diff = [f"{s} {row['others'][b][s]:.{AP_DIGITS}f}" for s in AP_SETTINGS
                    if f"{row['others'][b][s]:.{AP_DIGITS}f}" != f"{row['ap'][s]:.{AP_DIGITS}f}"]
            line += f"  {'same' if not diff else ', '.join(diff):<20}"
        print(line.rstrip())
    base = next((row for row in rows if row['setting'] == 'original'), None)
    if base is not None:
        print("time against the original size: " + ', '.join(
            f"{row['short']} " + '/'.join(f"{row['ms'][b] / base['ms'][b]:.2f}x" for b in args.backends)
            for row in rows) + f" ({'/'.join(args.backends)})")

    # -- the real-size photos ------------------------------------------------------------------
    if real:
        sizes = {n: read_image(p).shape[:2] for n, p in images.items()}
        print(f"\nReal-size photos: median ms of {args.image_rounds} runs (after one untimed), "
              + '/'.join(args.backends))
        print_runs(real, 'photos')
        width = 26
        header = f"{'setting':<16}" + ''.join(f"{f'{n} {w}x{h}':>{width}}" for n, (h, w) in sizes.items())
        print(header + "\n" + "-" * len(header))
        for setting in args.settings:
            cells = []
            for n, (h, w) in sizes.items():
                ms = '/'.join(f"{statistics.median(real[setting, b][1][n]):.0f}" for b in args.backends)
                cells.append(f"{input_text(setting, h, w)} {ms}")
            print(f"{SETTINGS[setting][0]:<16}" + ''.join(f"{c:>{width}}" for c in cells))

    if args.plot:
        plot_curve(rows, args.backends, args.plot)
        print(f"\ncurve written to {args.plot}")
    return rows


if __name__ == '__main__':
    main(get_args_parser().parse_args())
