"""Detect faces in images and draw them (the reference's demo), or write them as JSON.

    python detect.py -m weights/mobilenet0.25_Final.pth --image photo.jpg
    python detect.py --image 'photos/*.jpg' --output annotated/ --json faces.json --no-save_image

--image takes a file, a folder (every image in it and its sub-folders) or a glob. Annotated
images go to --output/<path below the inputs' common folder> (never over an input); each image
gets a one-line summary. Ctrl-C writes the --json of the images done so far, marked partial.
Under torchrun (torchrun --nproc_per_node=N detect.py ...) each process takes every N-th
image and rank 0 writes the --json, in the images' order.
"""
import argparse
import glob
import json
import logging
import os
from contextlib import closing

import cv2

from models.detector import add_detector_arguments, detector_from_args
from utils.atomic import atomic_write_text, check_writable
from utils.cli import probability, report_skipped, run_cli
from utils.datapaths import shared_path
from utils.distributed import gather_to_rank0, merge_in_order, process_group, quiet_other_ranks, shard
from utils.errors import InputError, InputNotFoundError
from utils.folder_run import BackgroundWriter, detect_images
from utils.image import IMAGE_EXTENSIONS, draw_detections
from utils.memory import keep_freed_memory

logger = logging.getLogger(__name__)

# The reference's demo image; the same photo is ../shared/images/test.jpg.
REFERENCE_DEMO_IMAGE = './curve/test.jpg'


def default_image():
    """The reference's ./curve/test.jpg if present, else the same photo in the shared data folder."""
    if os.path.isfile(REFERENCE_DEMO_IMAGE):
        return REFERENCE_DEMO_IMAGE
    return str(shared_path('images', 'test.jpg'))


def get_args_parser():
    parser = argparse.ArgumentParser(description='Retinaface: detect faces in images')
    add_detector_arguments(parser, trained_model='./weights/mobilenet0.25_Final.pth', network='mobile0.25',
                           top_k=5000, keep_top_k=750)
    parser.add_argument('-s', '--save_image', default=True, action=argparse.BooleanOptionalAction,
                        help='write annotated images to --output (default; --no-save_image turns it off)')
    parser.add_argument('--vis_thres', default=0.6, type=probability, help='visualization_threshold')
    parser.add_argument('--image', default=None, type=str,
                        help='an image file, a folder of images or a glob (quote it); default: the '
                             f'reference\'s {REFERENCE_DEMO_IMAGE}, else $RETINAFACE_DATA/images/test.jpg')
    parser.add_argument('--output', default='./results/', type=str, help='folder for the annotated images')
    parser.add_argument('--json', default=None, type=str,
                        help='write every detection (box, score, five landmarks) of every image to this JSON file')
    return parser


def list_images(spec, exclude=None):
    """The image files named by spec: a file, a folder (its images and those of its
    sub-folders, sorted) or a glob (sorted).

    Args:
        spec (str): a file, a folder or a glob.
        exclude (str | None): a folder not to look into (the output folder, so that a rerun
            does not take the previous run's annotated images for inputs).
    Raises:
        FileNotFoundError: nothing matches spec.
    """
    if os.path.isdir(spec):
        skip = os.path.realpath(exclude) if exclude else None
        files = []
        for folder, subfolders, names in os.walk(spec):
            subfolders[:] = sorted(d for d in subfolders if os.path.realpath(os.path.join(folder, d)) != skip)
            files += [os.path.join(folder, f) for f in names
                      if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))]
        if not files:
            raise InputNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {spec} or its sub-folders")
        return sorted(files)
    if glob.has_magic(spec):
        files = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
        if not files:
            raise InputNotFoundError(f"no files match {spec}")
        return files
    if not os.path.exists(spec):
        raise InputNotFoundError(f"image not found: {spec}")
    return [spec]


def output_paths(files, output, base=None):
    """Where the annotated images go: output/<path below base>, base being the given folder
    or the inputs' common folder, so that photos of one name in different folders keep
    apart (a single file or a flat folder gives output/<file name>, as before).

    Raises:
        ValueError: an output would overwrite one of the inputs (e.g. --output is the input folder).
    """
    if base is None:
        base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    outs = [os.path.join(output, os.path.relpath(os.path.abspath(f), os.path.abspath(base))) for f in files]
    inputs = {os.path.realpath(f): f for f in files}
    for out in outs:
        if os.path.realpath(out) in inputs:
            raise InputError(f"--output {output} would overwrite the input {inputs[os.path.realpath(out)]} "
                             f"with its annotated copy: choose another --output folder")
    return outs


def detections_to_json(dets):
    """Detections ndarray[N, 15] -> [{'box': [x1, y1, x2, y2], 'score', 'landmarks': [[x, y] * 5]}] (pixels).

    Each float32 is written as its shortest repr, which reads back as the same float32.
    """
    def f(v):
        return float(str(v))
    return [{'box': [f(v) for v in d[:4]],
             'score': f(d[4]),
             'landmarks': [[f(d[5 + 2 * k]), f(d[6 + 2 * k])] for k in range(5)]}
            for d in dets]


def main(args):
    """Detect, draw and summarise; returns {'results': [...], 'skipped': [(path, reason)]}.

    Ctrl-C still writes the JSON of the images done so far, marked "partial": true, then
    raises KeyboardInterrupt.
    """
    spec = args.image or default_image()
    files = list_images(spec, exclude=args.output if args.save_image else None)
    # Every output is checked before the first image, not found unwritable after the last.
    out_paths = [None] * len(files)
    if args.save_image:
        check_writable(args.output, '--output', folder=True)
        out_paths = output_paths(files, args.output, base=spec if os.path.isdir(spec) else None)
    if args.json:
        check_writable(args.json, '--json')
    with process_group(use_cuda=False if args.cpu else 'auto') as world:
        quiet_other_ranks(world, logger)
        return _detect_all(args, files, out_paths, world)


def _detect_all(args, files, out_paths, world):
    """Under torchrun each rank detects every world_size-th image and writes its annotated
    copies; rank 0 writes the JSON, images in list order."""
    detector = detector_from_args(args, **({'device': world.device} if world.device else {}))
    if detector.device.type == 'cpu':
        keep_freed_memory()  # a process-wide malloc setting: this script owns its process
    jobs = [(index, path, out_path) for index, (path, out_path) in shard(enumerate(zip(files, out_paths)), world)]

    def draw(img_raw, dets, out_path):
        os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
        if not cv2.imwrite(out_path, draw_detections(img_raw, dets, args.vis_thres)):
            raise InputError(f"could not write {out_path} (unsupported extension or unwritable folder)")

    results, skipped = [], []
    try:
        with closing(detect_images(detector, jobs, skipped)) as detected, BackgroundWriter() as writer:
            for (index, path, out_path), img_raw, dets, ms in detected:
                faces = int((dets[:, 4] >= args.vis_thres).sum())
                line = (f"{path}: {faces} faces >= {args.vis_thres} ({len(dets)} detections > "
                        f"{args.confidence_threshold}), {img_raw.shape[1]}x{img_raw.shape[0]}, {ms:.1f} ms")
                # Recorded before the image is drawn and the summary printed, so that the JSON of an
                # interrupted run holds every image the user saw done.
                results.append((index, {'image': path, 'width': int(img_raw.shape[1]),
                                        'height': int(img_raw.shape[0]), 'detections': detections_to_json(dets)}))
                if out_path is not None:
                    writer.submit(draw, img_raw, dets, out_path)
                    line += f" -> {out_path}"
                print(line, flush=True)
    except KeyboardInterrupt:
        # The other ranks are being interrupted too: no gathering now. Rank 0 writes what it has.
        if args.json and world.is_main:
            if world.distributed:
                logger.warning("interrupted under torchrun: the partial --json holds rank 0's images only")
            write_json(args, [r for _, r in results], [s for _, s in skipped], len(files), partial=True)
        raise
    # Rank 0 gets every rank's results and skipped images, and puts them back in list order.
    parts = gather_to_rank0((results, skipped), world)
    if not world.is_main:
        return {'results': [r for _, r in results], 'skipped': [s for _, s in skipped]}
    results = merge_in_order(p[0] for p in parts)
    skipped = merge_in_order(p[1] for p in parts)
    if args.json:
        write_json(args, results, skipped, len(files), partial=False)
    if len(files) > 1 or skipped:
        report_skipped(skipped)
    if not results:
        raise InputError(f"none of the {len(files)} images could be read")
    return {'results': results, 'skipped': skipped}


def write_json(args, results, skipped, total, partial):
    """Write the detections (atomically); partial: the run was interrupted after len(results) images."""
    payload = {'network': args.network, 'backend': args.backend,
               'confidence_threshold': args.confidence_threshold, 'nms_threshold': args.nms_threshold,
               'box_format': 'x1 y1 x2 y2 (pixels)',
               'landmarks': 'left eye, right eye, nose, left mouth corner, right mouth corner (x, y pixels)',
               'partial': partial, 'images_total': total, 'images_done': len(results) + len(skipped),
               'images': results,
               'skipped': [{'image': p, 'error': r} for p, r in skipped]}
    atomic_write_text(args.json, json.dumps(payload, indent=1) + "\n")
    if partial:
        logger.warning("interrupted: wrote the detections of the %d of %d images done so far to %s "
                       "(marked \"partial\": true)", len(results), total, args.json)
    else:
        logger.info("wrote detections of %d images to %s", len(results), args.json)


if __name__ == '__main__':
    raise SystemExit(run_cli(main, get_args_parser()))
