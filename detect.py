"""Detect faces in images and draw them (the reference's demo), or write them as JSON.

    python detect.py -m weights/mobilenet0.25_Final.pth --image photo.jpg
    python detect.py --image 'photos/*.jpg' --output annotated/ --json faces.json --no-save_image

--image takes a file, a folder (every image in it and its sub-folders) or a glob; a file that
exists is that file, even when its name holds glob characters ('photo[1].jpg'). Only regular
files are read (a FIFO or a device is refused, not waited on). Annotated images go to
--output/<path below the inputs' common folder> (never over an input); an input without an
image extension is drawn to <name>.jpg. Each image gets a one-line summary. Ctrl-C writes the
--json of the images done so far, marked partial.

File names that are not valid UTF-8 (Linux allows any bytes) are shown with the undecodable
bytes as \\xNN, in the summary and in the JSON's "image"; the JSON then also holds the name's
exact bytes as hex in "image_path_hex", since JSON text cannot hold them.

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
import numpy as np

from models.detector import add_detector_arguments, detector_from_args
from utils.atomic import atomic_write, atomic_write_text, check_writable
from utils.cli import probability, report_skipped, run_cli, str2bool
from utils.datapaths import shared_path
from utils.distributed import destroy, gather_to_rank0, init_from_torchrun, merge_in_order, quiet_other_ranks, shard
from utils.errors import InputError, InputNotFoundError
from utils.folder_run import BackgroundWriter, detect_images
from utils.image import IMAGE_EXTENSIONS, draw_detections
from utils.input_files import check_regular_file, printable
from utils.memory import keep_freed_memory

logger = logging.getLogger(__name__)

# The annotated copy of an input without an image extension (e.g. 'snapshot', matched by a
# glob) gets this one added: OpenCV chooses the encoder by the extension.
DEFAULT_OUTPUT_EXTENSION = '.jpg'

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
    parser.add_argument('--origin_size', default=True, type=str2bool,
                        help='detect at the original image size: true (default, as the reference) or false '
                             '(short side 1600, long side at most 2150, as test_widerface.py --origin_size false)')
    parser.add_argument('--image', default=None, type=str,
                        help='an image file, a folder of images or a glob (quote it); default: the '
                             f'reference\'s {REFERENCE_DEMO_IMAGE}, else $RETINAFACE_DATA/images/test.jpg')
    parser.add_argument('--output', default='./results/', type=str, help='folder for the annotated images')
    parser.add_argument('--json', default=None, type=str,
                        help='write every detection (box, score, five landmarks) of every image to this JSON file')
    return parser


def list_images(spec, exclude=None):
    """The image files named by spec: a file, a folder (its images and those of its
    sub-folders, sorted) or a glob (sorted). A file that exists is taken as it is, even when
    its name has glob characters. Only regular files are listed.

    Args:
        spec (str): a file, a folder or a glob.
        exclude (str | None): a folder not to look into (the output folder, so that a rerun
            does not take the previous run's annotated images for inputs).
    Raises:
        InputNotFoundError: nothing matches spec.
        InputError: spec is a FIFO, a device or a socket, not an image file.
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
    if os.path.lexists(spec) or not glob.has_magic(spec):
        check_regular_file(spec, expected='an image file', missing='image')
        return [spec]
    files = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
    if not files:
        raise InputNotFoundError(f"no files match {spec}")
    return files


def output_paths(files, output, base=None):
    """Where the annotated images go: output/<path below base>, base being the given folder
    or the inputs' common folder, so that photos of one name in different folders keep
    apart (a single file or a flat folder gives output/<file name>, as before). An input
    without an image extension gets DEFAULT_OUTPUT_EXTENSION added.

    Raises:
        InputError: an output would overwrite one of the inputs (e.g. --output is the input
            folder), or two inputs would be drawn to one output ('a' and 'a.jpg').
    """
    if base is None:
        base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    outs = []
    for f in files:
        out = os.path.join(output, os.path.relpath(os.path.abspath(f), os.path.abspath(base)))
        if not out.lower().endswith(IMAGE_EXTENSIONS):
            out += DEFAULT_OUTPUT_EXTENSION
        outs.append(out)
    inputs = {os.path.realpath(f): f for f in files}
    drawn = {}
    for f, out in zip(files, outs):
        real = os.path.realpath(out)
        if real in inputs:
            raise InputError(f"--output {output} would overwrite the input {inputs[real]} "
                             f"with its annotated copy: choose another --output folder")
        if real in drawn:
            raise InputError(f"{drawn[real]} and {f} would both be drawn to {out}: rename one of them")
        drawn[real] = f
    return outs


def check_json_path(json_path, files, out_paths):
    """Refuse a --json that is one of the inputs or one of this run's annotated copies:
    writing it would destroy the photo, or be overwritten by the drawing."""
    real = os.path.realpath(json_path)
    for f in files:
        if os.path.realpath(f) == real:
            raise InputError(f"--json {json_path} is one of the input images: choose another file")
    for f, out in zip(files, out_paths):
        if out is not None and os.path.realpath(out) == real:
            raise InputError(f"--json {json_path} is where the annotated copy of {f} goes: choose another file")


def json_path_fields(path):
    """The JSON fields naming an image file: {'image': path}, the undecodable bytes of a
    name that is not UTF-8 shown as \\xNN, plus 'image_path_hex' (the path's exact bytes)
    for such a name, so that the file can still be found."""
    shown = printable(path)
    if shown == path:
        return {'image': path}
    return {'image': shown, 'image_path_hex': os.fsencode(path).hex()}


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
        check_json_path(args.json, files, out_paths)
        check_writable(args.json, '--json')
    world = init_from_torchrun(use_cuda=False if args.cpu else 'auto')
    try:
        quiet_other_ranks(world, logger)
        return _detect_all(args, files, out_paths, world)
    finally:
        destroy(world)


def _detect_all(args, files, out_paths, world):
    """Under torchrun each rank detects every world_size-th image and writes its annotated
    copies; rank 0 writes the JSON, images in list order."""
    detector = detector_from_args(args, **({'device': world.device} if world.device else {}))
    if detector.device.type == 'cpu':
        keep_freed_memory()  # a process-wide malloc setting: this script owns its process
    jobs = [(index, path, out_path) for index, (path, out_path) in shard(enumerate(zip(files, out_paths)), world)]

    def draw(img_raw, dets, out_path):
        # Encoded here and written from Python, atomically: cv2.imwrite crashes the process
        # on a file name that is not valid UTF-8, and leaves half a file when interrupted.
        ok, data = cv2.imencode(os.path.splitext(out_path)[1], draw_detections(img_raw, dets, args.vis_thres))
        if not ok:
            raise InputError(f"could not encode the annotated copy {printable(out_path)} "
                             f"({img_raw.shape[1]}x{img_raw.shape[0]} image)")
        atomic_write(out_path, lambda f: f.write(np.asarray(data).tobytes()))

    results, skipped = [], []
    try:
        with closing(detect_images(detector, jobs, skipped)) as detected, BackgroundWriter() as writer:
            for (index, path, out_path), img_raw, dets, ms in detected:
                faces = int((dets[:, 4] >= args.vis_thres).sum())
                line = (f"{printable(path)}: {faces} faces >= {args.vis_thres} ({len(dets)} detections > "
                        f"{args.confidence_threshold}), {img_raw.shape[1]}x{img_raw.shape[0]}, {ms:.1f} ms")
                # Recorded before the image is drawn and the summary printed, so that the JSON of an
                # interrupted run holds every image the user saw done.
                results.append((index, {**json_path_fields(path), 'width': int(img_raw.shape[1]),
                                        'height': int(img_raw.shape[0]), 'detections': detections_to_json(dets)}))
                if out_path is not None:
                    writer.submit(draw, img_raw, dets, out_path)
                    line += f" -> {printable(out_path)}"
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
               'skipped': [{**json_path_fields(p), 'error': printable(r)} for p, r in skipped]}
    atomic_write_text(args.json, json.dumps(payload, indent=1) + "\n")
    if partial:
        logger.warning("interrupted: wrote the detections of the %d of %d images done so far to %s "
                       "(marked \"partial\": true)", len(results), total, args.json)
    else:
        logger.info("wrote detections of %d images to %s", len(results), args.json)


if __name__ == '__main__':
    raise SystemExit(run_cli(main, get_args_parser()))
