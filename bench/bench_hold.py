"""The default of --hold, measured: how often a face the detector finds before and after goes
undetected in between, on clips whose faces' positions are known; and what the hold then hides.

    .venv/bin/python -m bench.bench_hold                                   # both 1080p clips, both sizes
    .venv/bin/python -m bench.bench_hold --clips pan --sizes "original size" --backend onnxruntime

The clips (bench/clips.py) are camera moves over a shared photo: the 1080p pan across
largest_selfie.jpg of issue 26 (8 pixels a frame), and a slow zoom into street_crowd.jpg. Each
frame is the photo scaled and shifted by a known amount, so the faces of the clip are the
detections (score >= GT_SCORE) of the reference image (the whole photo at the clip's first
scale, bench.clips.Clip) mapped into each frame; a face counts in the frames that hold it whole.
For each clip and each size (a keyword set of load_detector, SIZES), the published MobileNet0.25
detects every frame as detect.py decodes it. In a frame, a face is
- detected when a detection with score >= --thres (one anonymize masks) overlaps its box with
  IoU >= MATCH_IOU;
- hidden when one of the frame's masks (those detections, the box scaled by --mask_scale)
  covers >= 80% of its box (widerface_evaluate/hidden_faces.py's rule).
Printed, per clip and size:

1. the gaps: runs of frames where a face detected before and after is not detected, by length,
   at --thres and at the other --gap_thres (a lower threshold closes the long gaps: they are
   faces whose score hovers at the threshold);
2. utils.anonymize.MaskHold at holds 0 .. --max_hold on the same detections, following the
   faces' motion (as shipped) and holding each face's last box as it was: the gap frames' faces
   it hides, in all gaps and in the gaps it spans (no longer than the hold), the face-frames
   left shown anywhere (a face found with too small a mask counts there too), and its cost, the
   held masks per frame;
3. --every N: a frame written without detection gets the masks of the processed frame before it
   (MaskHold.masks) or those stretched over the faces' motion (MaskHold.between): the share of
   its faces they hide.
The last lines give, per size, the smallest hold that spans every gap seen, and the share of
the gaps each hold spans.

The detections are cached in --cache_dir per clip, size, backend and weights (a rerun only
prints), as the clips are.
"""
import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_anonymize import DEFAULT_THRES
from bench.clips import CLIP_1080P, ZOOM_1080P, iter_frames, make_clip
from bench.common import default_weights
from utils.anonymize import DEFAULT_MASK_SCALE, MaskHold, _pairwise_iou, scale_boxes
from widerface_evaluate.hidden_faces import COVERAGE, hidden

# Each size is a keyword set of load_detector. Add the sizes of --target_size / --max_size
# here (e.g. 'max_size 640': {'max_size': 640}) once they exist.
SIZES = {
    'original size': {},
    'test scale': {'origin_size': False},
}
CLIPS = {'pan': CLIP_1080P, 'zoom': ZOOM_1080P}
GT_SCORE = 0.5  # the clip's faces: the reference image's detections at least this sure
# A detection is a face's when their boxes overlap this much: below WIDER FACE's 0.5, because a
# face's box here is the detector's own in the reference image, which the detector in a frame at
# another scale or offset places a few pixels apart (a 17-pixel face of the zoom, found in every
# frame with score 0.7-0.9, overlaps its mapped box by 0.41-0.58).
MATCH_IOU = 0.3
GAP_COLUMNS = (1, 2, 3, 4, 5, 10)  # the gap lengths tabled one by one; the last column is that many or more
GAP_THRES = (0.1, 0.2, 0.3, 0.5)
EVERY = (2, 3)


def get_args_parser():
    parser = argparse.ArgumentParser(description="the hold's default: gaps in the masks of faces across frames")
    parser.add_argument('-m', '--trained_model', default=None,
                        help='mobile0.25 weights (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA)')
    parser.add_argument('--clips', nargs='+', default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument('--sizes', nargs='+', default=list(SIZES), choices=list(SIZES))
    parser.add_argument('--backend', default='torch', choices=['torch', 'onnxruntime'])
    parser.add_argument('--threads', default=None, type=int, help="CPU threads (default: the library's)")
    parser.add_argument('--thres', default=DEFAULT_THRES, type=float, help='the lowest score masked')
    parser.add_argument('--gap_thres', nargs='*', default=list(GAP_THRES), type=float,
                        help='further thresholds to count the gaps at')
    parser.add_argument('--mask_scale', default=DEFAULT_MASK_SCALE, type=float)
    parser.add_argument('--max_hold', default=6, type=int, help='the largest hold tried')
    parser.add_argument('--every_hold', default=1, type=int, help='the hold in the --every measurement')
    parser.add_argument('--cache_dir', default=os.path.join(tempfile.gettempdir(), 'retinaface_bench_clips'),
                        help='where the clips and their detections are kept between runs')
    # For the tests: a smaller clip of the same move.
    parser.add_argument('--size', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--frames', default=None, type=int, help=argparse.SUPPRESS)
    return parser


def gap_runs(flags):
    """The runs of False strictly between two Trues in flags (a face hidden before and after):
    list of (start, length)."""
    flags = list(flags)
    runs, start = [], None
    seen = False
    for i, f in enumerate(flags):
        if f:
            if start is not None:
                runs.append((start, i - start))
            start, seen = None, True
        elif seen and start is None:
            start = i
    return runs


def _weights_id(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def clip_detections(clip, detector, cache):
    """(reference detections, [per frame detections]) of the clip, ndarray[N, 15] each, cached in cache."""
    if cache.is_file():
        data = np.load(cache)
        return data['reference'], [data[f'frame{k}'] for k in range(clip.spec.frames)]
    tic = time.perf_counter()
    reference = detector.detect(clip.reference_image())
    frames = [detector.detect(frame) for frame in iter_frames(clip.path)]
    if len(frames) != clip.spec.frames:
        raise SystemExit(f"error: {clip.path} decodes to {len(frames)} frames, not {clip.spec.frames}")
    print(f"  (detected the reference image and {len(frames)} frames in {time.perf_counter() - tic:.0f} s)")
    tmp = cache.with_name(cache.name + '.tmp.npz')
    np.savez(tmp, reference=reference, **{f'frame{k}': d for k, d in enumerate(frames)})
    os.replace(tmp, cache)
    return reference, frames


def _xywh(boxes):
    return np.hstack([boxes[:, :2], boxes[:, 2:4] - boxes[:, :2]])


class FaceTrack:
    """Where the clip's faces are, and which of them detections find and masks hide, frame by frame.

    Attributes:
        faces (ndarray[G, 4]): the reference image's faces (x1 y1 x2 y2).
        inside (ndarray[F, G] bool): the face lies wholly inside frame k.
    """

    def __init__(self, clip, reference):
        self.clip = clip
        self.faces = reference[reference[:, 4] >= GT_SCORE, :4].astype(np.float64)
        self.inside = np.stack([clip.inside(k, self.faces) for k in range(clip.spec.frames)])  # [F, G]

    def in_frame(self, k):
        return self.clip.to_frame(k, self.faces)  # [G, 4]

    def detected(self, k, boxes):
        """ndarray[G] bool: the faces inside frame k that one of boxes (x1 y1 x2 y2) matches."""
        if not len(boxes):
            return np.zeros(len(self.faces), dtype=bool)
        iou = _pairwise_iou(self.in_frame(k), np.asarray(boxes, dtype=np.float64)[:, :4])  # [G, N]
        return (iou >= MATCH_IOU).any(axis=1) & self.inside[k]

    def hidden(self, k, masks):
        """ndarray[G] bool: the faces inside frame k that one of masks (x1 y1 x2 y2) hides."""
        return hidden(_xywh(self.in_frame(k)), masks, COVERAGE) & self.inside[k]

    def gaps(self, flags):
        """[(face, start frame, length)] of the gaps in flags (ndarray[F, G] bool), over each
        face's frames inside the clip."""
        out = []
        for g in range(self.faces.shape[0]):
            frames = np.flatnonzero(self.inside[:, g])
            for start, length in gap_runs(flags[frames, g]):
                out.append((g, int(frames[start]), length))
        return out


class StillHold(MaskHold):
    """MaskHold holding each face's last box as it was (not following its motion)."""
    follow_motion = False


def _shown(dets, thres):
    return dets[dets[:, 4] >= thres]


def gap_table(track, frames, thres):
    """(gaps, one line): the gaps at thres, by length."""
    flags = np.stack([track.detected(k, _shown(frames[k], thres)) for k in range(len(frames))])  # [F, G]
    gaps = track.gaps(flags)
    lengths = np.array([length for _, _, length in gaps], dtype=np.int64)
    last = GAP_COLUMNS[-1]
    cells = []
    for i, n in enumerate(GAP_COLUMNS):
        if n == last:
            cells.append(f"{n}+: {int((lengths >= n).sum())}")
        else:
            hi = GAP_COLUMNS[i + 1] - 1
            label = f"{n}" if hi == n else f"{n}-{hi}"
            cells.append(f"{label}: {int(((lengths >= n) & (lengths <= hi)).sum())}")
    detected = (flags & track.inside).sum() / max(track.inside.sum(), 1)
    line = (f"score >= {thres:g}: detected in {100 * detected:.1f}% of face-frames; {len(gaps)} gaps by length "
            f"({', '.join(cells)}), longest {int(lengths.max()) if len(gaps) else 0}")
    return gaps, line


def hold_rows(track, frames, gaps, args):
    """Print the hold table: per hold and kind of hold, the faces of the gap frames it hides (in
    all gaps, and in the gaps it spans, those no longer than the hold), the face-frames left
    shown anywhere, and the held masks per frame."""
    thres, scale = args.thres, args.mask_scale
    cells = [(k, g, length) for g, start, length in gaps for k in range(start, start + length)]
    print(f"  {'':>4}  {'follows its motion (shipped)':^40}  {'its last box as it was':^40}")
    head = f"{'all gaps':>12}  {'gaps <= hold':>12}  {'shown':>5}  {'held/frame':>10}"
    print(f"  {'hold':>4}  {head}  {head}")
    for h in range(args.max_hold + 1):
        row = [f"  {h:>4}"]
        for cls in (MaskHold, StillHold):
            hold = cls(h)
            flags, extra = [], 0
            for k in range(len(frames)):
                own = _shown(frames[k], thres)
                boxes = hold.update(own)
                extra += len(boxes) - len(own)
                flags.append(track.hidden(k, scale_boxes(boxes, scale)))
            flags = np.stack(flags)  # [F, G]
            hid = sum(bool(flags[k, g]) for k, g, _ in cells)
            spanned = [(k, g) for k, g, length in cells if length <= h]
            hid_spanned = sum(bool(flags[k, g]) for k, g in spanned)
            shown = int((track.inside & ~flags).sum())
            row.append(f"{f'{hid}/{len(cells)}':>12}  {f'{hid_spanned}/{len(spanned)}':>12}  {shown:>5}  "
                       f"{extra / len(frames):>10.1f}")
        print('  '.join(row))


def every_line(track, frames, args):
    """--every N: the faces of the frames written without detection that their masks hide."""
    thres, scale = args.thres, args.mask_scale
    parts = []
    for every in EVERY:
        hit_last = hit_between = total = 0
        hold = MaskHold(args.every_hold)
        for k in range(len(frames)):
            if k % every == 0:
                hold.update(_shown(frames[k], thres))
                last, between = scale_boxes(hold.masks, scale), scale_boxes(hold.between(), scale)
                continue
            hit_last += int(track.hidden(k, last).sum())
            hit_between += int(track.hidden(k, between).sum())
            total += int(track.inside[k].sum())
        parts.append(f"--every {every}: {100 * hit_last / max(total, 1):.1f}% with the last masks, "
                     f"{100 * hit_between / max(total, 1):.1f}% stretched over the motion")
    every_frame = np.mean([track.hidden(k, scale_boxes(_shown(frames[k], thres), scale)).sum()
                           / max(track.inside[k].sum(), 1) for k in range(len(frames))])
    print(f"  frames written without detection (hold {args.every_hold}), faces hidden: " + '; '.join(parts)
          + f" (a frame detected, no hold: {100 * every_frame:.1f}%)")


def report(track, frames, args):
    """Print the measurements for one clip and size; returns the gaps at --thres."""
    counted = int(track.inside.sum())
    print(f"  {track.faces.shape[0]} faces in the reference image (score >= {GT_SCORE}), {counted} face-frames "
          f"inside the frame")
    gaps, line = gap_table(track, frames, args.thres)
    print(f"  gaps (detected before and after, not in between), {line}")
    for t in args.gap_thres:
        if t != args.thres:
            print(f"                                              {gap_table(track, frames, t)[1]}")
    hold_rows(track, frames, gaps, args)
    every_line(track, frames, args)
    return gaps


def main(args):
    from utils.cli import choose_openmp_wait_policy, set_threads

    choose_openmp_wait_policy()  # as the scripts do, before torch starts its threads
    import torch  # noqa: F401  (loaded for set_threads to reach it)

    from models.detector import load_detector

    weights = args.trained_model or default_weights()
    cache_dir = Path(args.cache_dir)
    n = set_threads(args.threads)
    changes = {}
    if args.size:
        changes['size'] = tuple(int(v) for v in args.size.lower().split('x'))
    if args.frames:
        changes['frames'] = args.frames
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; mobile0.25 ({args.backend}, {n} threads); "
          f"masks: score >= {args.thres:g}, box x {args.mask_scale:g}; a face is hidden when one mask covers >= "
          f"{COVERAGE:.0%} of it")
    gaps = {}
    wid = _weights_id(weights)
    for size in args.sizes:
        detector = None
        for name in args.clips:
            clip = make_clip(cache_dir, CLIPS[name], **changes)
            spec = clip.spec
            print(f"\n{name}: {spec.photo}.jpg, {spec.size[0]}x{spec.size[1]}, {spec.frames} frames at {spec.fps:g} fps; "
                  f"{size}")
            slug = size.replace(' ', '_')
            cache = cache_dir / f"{clip.path.stem}__{slug}__{args.backend}__{wid}.npz"
            if detector is None and not cache.is_file():
                detector = load_detector('mobile0.25', weights, backend=args.backend, **SIZES[size])
            reference, frames = clip_detections(clip, detector, cache)
            gaps[size, name] = [length for _, _, length in report(FaceTrack(clip, reference), frames, args)]
    print()
    for size in args.sizes:
        lengths = np.array([n for name in args.clips for n in gaps[size, name]], dtype=np.int64)
        worst = int(lengths.max()) if len(lengths) else 0
        spans = ', '.join(f"{h}: {100 * (lengths <= h).mean():.0f}%" for h in range(1, args.max_hold + 1)) \
            if len(lengths) else 'no gaps'
        print(f"{size}: the smallest hold that spans every gap seen is {worst} frame(s) ("
              + ', '.join(f"{name} {max(gaps[size, name], default=0)}" for name in args.clips)
              + f"); the share of the {len(lengths)} gaps each hold spans: {spans}")
    return gaps


if __name__ == '__main__':
    main(get_args_parser().parse_args())
