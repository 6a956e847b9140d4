"""Detect faces in images and draw them (the reference's demo), or write them as JSON.

    python detect.py -m weights/mobilenet0.25_Final.pth --image photo.jpg
    python detect.py --image 'photos/*.jpg' --output annotated/ --json faces.json --no-save_image

--image takes a file, a folder (every image in it and its sub-folders, links to folders
followed) or a glob; a file that exists is that file, even when its name holds glob
characters ('photo[1].jpg'). Images in the --output and --save_crops folders are not inputs
(a rerun does not take its own annotated copies for photos). Only regular files are read (a
FIFO or a device is refused, not waited on). Annotated images go to --output/<path below the
inputs' common folder>; an input without an image extension is drawn to <name>.jpg. No
output may replace an input or another output (utils.outputs checks them all before the
first image). Each image gets a one-line summary (on stderr when --json is stdout, `-`).
Ctrl-C (or SIGTERM, exit 143) writes the --json of the images done so far, marked
partial.

File names that are not valid UTF-8 (Linux allows any bytes) are shown with the undecodable
bytes as \\xNN, in the summary and in the JSON's "image"; the JSON then also holds the name's
exact bytes as hex in "image_path_hex", since JSON text cannot hold them.

Under torchrun (torchrun --nproc_per_node=N detect.py ...) each process takes every N-th
image and rank 0 writes the --json, in the images' order.

    python detect.py --video clip.mp4 --output annotated/ --json faces.jsonl --every 2
    python detect.py --video 0 --max_frames 300 --no-save_image --json faces.jsonl   # camera 0

--video takes a video file or a camera index: --output/<name>.mp4 gets every frame, the
processed ones annotated, and --json one JSON line per processed frame. --save_crops DIR
writes each face above --vis_thres aligned for a face-recognition model (ArcFace's
112x112 landmark template, or --crop_size), for photos and videos.

    python detect.py --image 'photos/*.jpg' --anonymize blur --output hidden/ --json faces.json

--anonymize {blur,pixelate,solid} writes anonymised copies instead of annotated ones (photos
only for now): every detection >= --anonymize_thres is hidden under a mask --mask_scale times
its box (utils.anonymize), and nothing is drawn. The JSON marks each detection "masked".
"""
import argparse
import glob
import json
import logging
import os
import sys
import time
from contextlib import closing

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from models.detector import OriginSizeFlag, add_detector_arguments, detector_from_args, model_input
from utils.atomic import LineFile, atomic_write_text, stream_kind
from utils.anonymize import (DEFAULT_ANONYMIZE_THRES, DEFAULT_MASK_SCALE, DEFAULT_MASK_SHAPE, MASK_SHAPES, METHODS,
                             PIXELATE_BLOCKS, anonymize, masked_detections)
from utils.cli import number_in, positive_int, probability, report_skipped, run_cli, str2bool
from utils.datapaths import shared_path
from utils.distributed import gather_to_rank0, merge_in_order, process_group, quiet_other_ranks, shard
from utils.errors import InputError, InputNotFoundError
from utils.folder_run import BackgroundWriter, detect_images
from utils.image import ARCFACE_SIZE, IMAGE_EXTENSIONS, MAX_CROP_SIZE, align_faces, draw_detections, write_image
from utils.input_files import check_regular_file, printable, valid_unicode
from utils.memory import keep_freed_memory
from utils.outputs import RunOutputs
from utils.signals import deferred_interrupts
from utils.video import DEFAULT_CODEC, VideoWriter, fourcc, open_video, read_frames

logger = logging.getLogger(__name__)

# The annotated copy of an input without an image extension (e.g. 'snapshot', matched by a
# glob) gets this one added: OpenCV chooses the encoder by the extension.
DEFAULT_OUTPUT_EXTENSION = '.jpg'

# The reference's demo image; the same photo is ../shared/images/test.jpg.
REFERENCE_DEMO_IMAGE = './curve/test.jpg'

# --mask_scale is at most this: a mask four times the face's box already covers the head and
# shoulders; a larger one hides the scene rather than a face (and 13 typed for 1.3 would
# black out most of a group photo).
MAX_MASK_SCALE = 4.0
MASK_SCALE = number_in(float, 0, MAX_MASK_SCALE, exclusive_minimum=True, name='mask scale')
# The flags that set how --anonymize hides a face: meaningless without it.
ANONYMIZE_FLAGS = ('mask_scale', 'mask_shape', 'anonymize_thres')


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
    parser.add_argument('--origin_size', default=True, type=str2bool, action=OriginSizeFlag,
                        help='detect at the original image size: true (default, as the reference) or false '
                             '(short side 1600, long side at most 2150, as test_widerface.py --origin_size false)')
    parser.add_argument('--image', default=None, type=str,
                        help='an image file, a folder of images or a glob (quote it); default: the '
                             f'reference\'s {REFERENCE_DEMO_IMAGE}, else $RETINAFACE_DATA/images/test.jpg')
    parser.add_argument('--output', default='./results/', type=str,
                        help='folder for the annotated images (the anonymised ones with --anonymize)')
    parser.add_argument('--json', default=None, type=str,
                        help='write every detection (box, score, five landmarks) of every image to this JSON file '
                             '(with --video: JSON Lines, one line per processed frame); - or /dev/stdout writes '
                             'it to stdout (the per-image lines then go to stderr)')
    parser.add_argument('--video', default=None, type=str,
                        help='detect in a video file, or a camera (its index: 0, 1, ...), instead of --image; '
                             '--output gets <name>.mp4 with the faces drawn')
    parser.add_argument('--every', default=None, type=positive_int,
                        help='with --video: detect in every N-th frame only (0, N, 2N, ...; the others are '
                             'written to the video as they are); default 1')
    parser.add_argument('--max_frames', default=None, type=positive_int,
                        help='with --video: stop after this many frames (a camera otherwise runs until Ctrl-C)')
    parser.add_argument('--video_codec', default=DEFAULT_CODEC, type=fourcc,
                        help='with --video: the four-character code of the annotated .mp4\'s codec '
                             f'(default {DEFAULT_CODEC})')
    parser.add_argument('--save_crops', default=None, type=str,
                        help='write each face >= --vis_thres, aligned for face recognition (the ArcFace landmark '
                             'template), to this folder: <image>_<k>.jpg, or <video>_<frame>_<k>.jpg (k: the '
                             'detection\'s index, highest score first); the JSON records each crop and its matrix')
    parser.add_argument('--crop_size', default=ARCFACE_SIZE, type=number_in(int, 1, MAX_CROP_SIZE, name='crop_size'),
                        help=f'the aligned crops\' width and height, 1 to {MAX_CROP_SIZE} (default {ARCFACE_SIZE}, '
                             f'the template\'s own size)')
    parser.add_argument('--anonymize', default=None, choices=METHODS,
                        help='hide every face >= --anonymize_thres in the copies written to --output, instead of '
                             'drawing it: blur (a kernel proportional to the face), pixelate '
                             f'({PIXELATE_BLOCKS} blocks across it) or solid (black). Nothing is drawn on these copies '
                             '(landmark dots would outline a hidden face); the JSON marks each detection "masked". '
                             'Not with --save_crops (its crops are the faces unmasked) or --no-save_image. '
                             '--image runs only for now')
    parser.add_argument('--mask_scale', default=None, type=MASK_SCALE,
                        help=f'with --anonymize: the mask\'s size relative to the face\'s box, about its centre, '
                             f'above 0 and at most {MAX_MASK_SCALE:g} (default {DEFAULT_MASK_SCALE})')
    parser.add_argument('--mask_shape', default=None, choices=MASK_SHAPES,
                        help='with --anonymize: the ellipse inscribed in the scaled box, or the box itself '
                             f'(default {DEFAULT_MASK_SHAPE})')
    parser.add_argument('--anonymize_thres', default=None, type=probability,
                        help='with --anonymize: the lowest score hidden (default '
                             f'{DEFAULT_ANONYMIZE_THRES}), its own threshold, below --vis_thres: hiding a face '
                             'wrongly costs less than missing one. Only detections above --confidence_threshold '
                             'exist to be hidden')
    return parser


def check_anonymize_flags(args):
    """--anonymize and its flags, checked before any work: its settings without it, and what
    it cannot run with (video for now; --save_crops, whose crops are the faces unmasked;
    --no-save_image, which would write no anonymised copy), are InputErrors."""
    if args.anonymize is None:
        for flag in ANONYMIZE_FLAGS:
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag} applies with --anonymize only")
        return
    if args.video is not None:
        raise InputError(f"--anonymize applies to --image runs for now: it cannot hide the faces of --video "
                         f"{args.video} yet")
    if args.save_crops:
        raise InputError(f"--save_crops writes the faces unmasked: it cannot be combined with --anonymize "
                         f"(--save_crops {args.save_crops})")
    if not args.save_image:
        raise InputError("--anonymize writes the anonymised copies to --output: --no-save_image would write none")
    settings = anonymize_settings(args)
    if settings['anonymize_thres'] < args.confidence_threshold:
        logger.warning("--anonymize_thres %s is below --confidence_threshold %s: only the detections above %s exist "
                       "to be hidden", settings['anonymize_thres'], args.confidence_threshold,
                       args.confidence_threshold)


def anonymize_settings(args):
    """How --anonymize hides faces, the defaults filled in: {'method', 'mask_scale', 'mask_shape',
    'anonymize_thres'} (the JSON's "anonymize"), or None without --anonymize."""
    if args.anonymize is None:
        return None
    return {'method': args.anonymize,
            'mask_scale': DEFAULT_MASK_SCALE if args.mask_scale is None else args.mask_scale,
            'mask_shape': DEFAULT_MASK_SHAPE if args.mask_shape is None else args.mask_shape,
            'anonymize_thres': DEFAULT_ANONYMIZE_THRES if args.anonymize_thres is None else args.anonymize_thres}


def list_images(spec, exclude=()):
    """The image files named by spec: a file, a folder (its images and those of its
    sub-folders, links to folders followed, sorted) or a glob (sorted). A file that exists is
    taken as it is, even when its name has glob characters. Only regular files are listed.

    Args:
        spec (str): a file, a folder or a glob.
        exclude (iterable of str): folders whose files are not inputs (the output and crops
            folders, so that a rerun does not take the previous run's annotated images or
            crops for inputs), whether a folder's walk or a glob reaches them.
    Raises:
        InputNotFoundError: nothing matches spec.
        InputError: spec is a FIFO, a device or a socket, not an image file.
    """
    skip = {os.path.realpath(folder) for folder in exclude}
    if os.path.isdir(spec):
        # Each folder is walked once, by the first name that reaches it: a link to a folder
        # is followed, and a link back up (a cycle) or a second name of a folder is not.
        walked = {os.path.realpath(spec)}
        files = []
        for folder, subfolders, names in os.walk(spec, followlinks=True):
            kept = []
            for d in sorted(subfolders):
                real = os.path.realpath(os.path.join(folder, d))
                if real in walked:
                    logger.info("not following %s: it leads to %s, already listed", os.path.join(folder, d), real)
                elif real not in skip:
                    walked.add(real)
                    kept.append(d)
            subfolders[:] = kept
            files += [os.path.join(folder, f) for f in names
                      if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))]
        if not files:
            raise InputNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {spec} or its sub-folders")
        return sorted(files)
    if os.path.lexists(spec) or not glob.has_magic(spec):
        check_regular_file(spec, expected='an image file', missing='image')
        return [spec]
    matches = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
    files = [f for f in matches if not _inside(f, skip)]
    if not files:
        outside = f" outside {', '.join(exclude)}" if matches else ''
        raise InputNotFoundError(f"no files match {spec}{outside}")
    return files


def _inside(path, folders):
    """Whether the file path lies in (or below) one of folders (real paths); its own link not followed."""
    where = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    return any(where == f or where.startswith(f + os.sep) for f in folders)


def output_paths(files, output, base=None):
    """Where the annotated images go: output/<path below base>, base being the given folder
    or the inputs' common folder, so that photos of one name in different folders keep
    apart (a single file or a flat folder gives output/<file name>, as before). An input
    without an image extension gets DEFAULT_OUTPUT_EXTENSION added. (check_photo_outputs
    refuses an output over an input, and two inputs with one output: 'a' and 'a.jpg'.)"""
    if base is None:
        base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    outs = []
    for f in files:
        out = os.path.join(output, os.path.relpath(os.path.abspath(f), os.path.abspath(base)))
        if not out.lower().endswith(IMAGE_EXTENSIONS):
            out += DEFAULT_OUTPUT_EXTENSION
        outs.append(out)
    return outs


def check_photo_outputs(args, files, out_paths, crop_stems):
    """Every output of a photo run, checked before the first image (utils.outputs): the
    annotated copies, --json (a file or stdout) and the crops, against the images, the model
    and each other."""
    outputs = RunOutputs()
    outputs.reads('--image', files, 'the input image')
    outputs.reads(*model_input(args))
    if args.save_image:
        outputs.folder('--output', args.output)
        copy = 'annotated' if args.anonymize is None else 'anonymised'
        for f, out in zip(files, out_paths):
            outputs.file('--output', out, given=args.output, what=f"the {copy} copy of {printable(f)}", source=f)
    if args.json:
        outputs.file('--json', args.json, what='the detections', stream=True)
    if crop_stems is not None:
        outputs.folder('--save_crops', args.save_crops)
        outputs.numbered('--save_crops', args.save_crops, zip(crop_stems, files))
    outputs.check()


def json_path_fields(path):
    """The JSON fields naming an image file: {'image': path}, the undecodable bytes of a
    name that is not UTF-8 shown as \\xNN, plus 'image_path_hex' (the path's exact bytes)
    for such a name, so that the file can still be found. (JSON escapes control characters
    itself: a name with a newline is written exactly.)"""
    shown = valid_unicode(path)
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
    raises KeyboardInterrupt (SIGTERM too, under utils.cli.run_cli). With --video, see detect_video.
    """
    check_anonymize_flags(args)
    if args.video is not None:
        if args.image is not None:
            raise InputError(f"give --image or --video, not both (--image {args.image}, --video {args.video})")
        if args.batch_size != 1:
            raise InputError(f"--batch_size {args.batch_size} applies to --image runs: --video detects frame by frame")
        return detect_video(args)
    for flag in ('every', 'max_frames'):
        if getattr(args, flag) is not None:
            raise InputError(f"--{flag} applies to --video only")
    spec = args.image or default_image()
    output_folders = ([args.output] if args.save_image else []) + ([args.save_crops] if args.save_crops else [])
    files = list_images(spec, exclude=output_folders)
    base = spec if os.path.isdir(spec) else None
    out_paths = output_paths(files, args.output, base) if args.save_image else [None] * len(files)
    crop_stems = crop_stem_paths(files, args.save_crops, base) if args.save_crops else None
    # Every output is checked before the first image, not found unwritable after the last.
    check_photo_outputs(args, files, out_paths, crop_stems)
    with process_group(use_cuda=False if args.cpu else 'auto') as world:
        quiet_other_ranks(world, logger)
        return _detect_all(args, files, out_paths, world, crop_stems)


def _detect_all(args, files, out_paths, world, crop_stems=None):
    """Under torchrun each rank detects every world_size-th image and writes its annotated
    copies; rank 0 writes the JSON, images in list order."""
    detector = detector_from_args(args, **({'device': world.device} if world.device else {}))
    if detector.device.type == 'cpu':
        keep_freed_memory()  # a process-wide malloc setting: this script owns its process
    jobs = [(index, path, out_path) for index, (path, out_path) in shard(enumerate(zip(files, out_paths)), world)]
    hide = anonymize_settings(args)

    def draw(img_raw, dets, out_path):
        if hide is None:
            draw_detections(img_raw, dets, args.vis_thres)
        else:
            anonymize(img_raw, dets, hide['method'], hide['mask_scale'], hide['mask_shape'], hide['anonymize_thres'])
        # Encoded and written from Python, atomically (utils.image.write_image): cv2.imwrite
        # crashes the process on a file name that is not valid UTF-8, and leaves half a file
        # when interrupted.
        write_image(out_path, img_raw)

    # With --json on stdout, stdout is the JSON's alone.
    summary = sys.stderr if args.json and stream_kind(args.json) == 'stdout' else sys.stdout
    results, skipped = [], []
    try:
        with closing(detect_images(detector, jobs, skipped, batch_size=args.batch_size)) as detected, \
                BackgroundWriter() as writer:
            for (index, path, out_path), img_raw, dets, ms in detected:
                faces = int((dets[:, 4] >= args.vis_thres).sum())
                line = (f"{printable(path)}: {faces} faces >= {args.vis_thres} ({len(dets)} detections > "
                        f"{args.confidence_threshold}), {img_raw.shape[1]}x{img_raw.shape[0]}, {ms:.1f} ms")
                # Recorded before the image is drawn and the summary printed, so that the JSON of an
                # interrupted run holds every image the user saw done.
                record = {**json_path_fields(path), 'width': int(img_raw.shape[1]),
                          'height': int(img_raw.shape[0]), 'detections': detections_to_json(dets)}
                if hide is not None:
                    # Which faces the copy hides, told before it is made (anonymize masks the same).
                    masked = masked_detections(dets, img_raw.shape, hide['mask_scale'], hide['anonymize_thres'])
                    for entry, m in zip(record['detections'], masked.tolist()):
                        entry['masked'] = m
                    line += f", {int(masked.sum())} faces hidden (>= {hide['anonymize_thres']})"
                    _warn_if_capped(detector, dets, hide['anonymize_thres'], path)
                if crop_stems is not None:
                    # Cropped before the image is drawn on (in the writer's thread).
                    crops = face_crops(img_raw, dets, args.vis_thres, args.crop_size, crop_stems[index], path,
                                       record['detections'])
                    writer.submit(write_crops, crops)
                results.append((index, record))
                if out_path is not None:
                    writer.submit(draw, img_raw, dets, out_path)
                    line += f" -> {printable(out_path)}"
                print(line, file=summary, flush=True)
    except KeyboardInterrupt:
        # The other ranks are being interrupted too: no gathering now. Rank 0 writes what it has.
        if args.json and world.is_main:
            if world.distributed:
                logger.warning("interrupted under torchrun: the partial --json holds rank 0's images only")
            with deferred_interrupts():  # a second Ctrl-C or SIGTERM waits for the file
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


def _warn_if_capped(detector, dets, thres, name):
    """Warn when the detections stopped at the detector's limit (--keep_top_k) with every one
    kept still >= thres: faces past the limit may score as high and are left unhidden."""
    cap = detector.pyramid_keep_top_k if detector.pyramid else detector.postprocessor.keep_top_k
    if cap and len(dets) >= cap and dets[:, 4].min() >= thres:
        logger.warning("%s: all %d detections kept (--keep_top_k) score >= --anonymize_thres %s: more faces may "
                       "be left unhidden; rerun with --keep_top_k none", printable(name), len(dets), thres)


def crop_stem_paths(files, folder, base=None):
    """Where each image's crops go, without the _<k>.jpg: folder/<path below base, no
    extension>, base being the given folder or the inputs' common folder (as output_paths)."""
    if base is None:
        base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return [os.path.join(folder, os.path.splitext(os.path.relpath(os.path.abspath(f), os.path.abspath(base)))[0])
            for f in files]


def face_crops(img, dets, vis_thres, size, stem, name, detections_json):
    """The aligned crops of the detections >= vis_thres: [(stem_<k>.jpg, crop)], k being the
    detection's index in dets (highest score first). Each cropped detection's entry in
    detections_json (detections_to_json(dets)) gets its 'crop' path and 'crop_matrix' (the
    2x3 matrix from image pixels to crop pixels). Faces with degenerate landmarks are
    skipped with a warning naming name and k."""
    keep = np.flatnonzero(dets[:, 4] >= vis_thres)
    crops, matrices = align_faces(img, dets[keep], size=size, name=name)
    out = []
    for k, crop, matrix in zip(keep, crops, matrices):
        if crop is None:
            continue
        path = f"{stem}_{k}.jpg"
        detections_json[k]['crop'] = path
        detections_json[k]['crop_matrix'] = matrix.tolist()
        out.append((path, crop))
    return out


def write_crops(crops):
    """Write [(path, crop)] (each atomically), making their folders."""
    for path, crop in crops:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        write_image(path, crop)


def write_json(args, results, skipped, total, partial):
    """Write the detections (atomically); partial: the run was interrupted after len(results) images."""
    payload = {'network': args.network, 'backend': args.backend,
               'confidence_threshold': args.confidence_threshold, 'nms_threshold': args.nms_threshold,
               'box_format': 'x1 y1 x2 y2 (pixels)',
               'landmarks': 'left eye, right eye, nose, left mouth corner, right mouth corner (x, y pixels)',
               **({'anonymize': anonymize_settings(args)} if args.anonymize is not None else {}),
               'partial': partial, 'images_total': total, 'images_done': len(results) + len(skipped),
               'images': results,
               'skipped': [{**json_path_fields(p), 'error': valid_unicode(r)} for p, r in skipped]}
    atomic_write_text(args.json, json.dumps(payload, indent=1) + "\n")
    where = stream_kind(args.json) if stream_kind(args.json) in ('stdout', 'stderr') else args.json
    if partial:
        logger.warning("interrupted: wrote the detections of the %d of %d images done so far to %s "
                       "(marked \"partial\": true)", len(results), total, where)
    else:
        logger.info("wrote detections of %d images to %s", len(results), where)


# ---------------------------------------------------------------------------------------
# Video

def detect_video(args):
    """Detect faces in the frames of args.video (a file, or a camera index).

    Every frame, or every args.every-th, goes through the detector; the next frames are
    decoded (and preprocessed) in a thread meanwhile. Outputs, each checked before the
    first frame: --output/<name>.mp4 (unless --no-save_image), every frame at the input's
    size (an odd width or height one pixel larger: see utils.video.VideoWriter) and frame
    rate, the processed ones annotated; --json, JSON Lines, one {"frame", "time",
    "detections"} line per processed frame; --save_crops, aligned faces.

    The JSON Lines file is written line by line as frames are done, so that it can be
    read while it grows (a camera has no end); each line is written whole, and a full disk
    leaves the lines before it whole (an InputError). The video is checked and moved into
    place when the run ends; a video the encoder failed to write (a full disk) is an
    InputError and leaves an earlier file there as it was. Ctrl-C (or SIGTERM) ends the run
    there: the video then holds every frame done, the JSON the lines of those frames, and
    KeyboardInterrupt is raised.

    Returns:
        {'frames': frames read, 'processed': frames detected in, 'faces': faces >= --vis_thres,
         'output': the video written (or None), 'json': args.json}.
    """
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        raise InputError("--video runs in one process: start it without torchrun")
    video = open_video(args.video)
    try:
        out_path = os.path.join(args.output, video.stem + '.mp4') if args.save_image else None
        check_video_outputs(args, video, out_path)
        # Opening the writer is the check that OpenCV can encode the codec.
        writer = VideoWriter(out_path, video.fps, (video.width, video.height), args.video_codec) if out_path else None
        try:
            detector = detector_from_args(args)
            if detector.device.type == 'cpu':
                keep_freed_memory()  # a process-wide malloc setting: this script owns its process
            result = _detect_frames(args, video, detector, writer)
        except BaseException:
            # Ctrl-C, SIGTERM or a failed --json write: the video of the frames done is still kept.
            if writer is not None:
                try:
                    _finish_video(writer)
                except InputError as e:
                    logger.warning("%s", e)  # the run's own error is the one reported
            raise
        if writer is not None:
            _finish_video(writer)
        return result
    finally:
        video.close()


def _finish_video(writer):
    """Move the annotated copy into place (checked: utils.video.VideoWriter.close), or drop it
    when no frame was written."""
    if writer.frames:
        writer.close()
        logger.info("wrote %d frames to %s", writer.frames, writer.path)
    else:
        writer.discard()


def check_video_outputs(args, video, out_path):
    """Every output of a video run, checked before the first frame (utils.outputs): the
    annotated video, the JSON Lines (a file or stdout) and the crops
    (<video>_<frame>_<k>.jpg), against the video, the model and each other."""
    outputs = RunOutputs()
    if not video.is_camera:
        outputs.reads('--video', video.source, 'the input video')
    outputs.reads(*model_input(args))
    if out_path is not None:
        outputs.folder('--output', args.output)
        outputs.file('--output', out_path, given=args.output, what=f"the annotated copy of {printable(video.name)}")
    if args.json:
        outputs.file('--json', args.json, what='the JSON Lines', stream=True)
    if args.save_crops:
        outputs.folder('--save_crops', args.save_crops)
        outputs.numbered('--save_crops', args.save_crops, [(os.path.join(args.save_crops, video.stem), video.name)],
                         suffix=r'_\d+_\d+\.jpg', shown='_<frame>_<k>.jpg')
    outputs.check()


def _frame_outputs(args, video, index, frame, dets, jsonl, writer):
    """One processed frame's outputs, in the writer's thread (formatting the JSON of a few
    hundred detections takes longer than a small frame's forward pass): its crops, then its
    JSON line (so that a line never names a crop not yet written), then the annotated frame
    (drawn after the crops were cut from it)."""
    if jsonl is not None or args.save_crops:
        record = {'frame': index, 'time': round(index / video.fps, 6), 'detections': detections_to_json(dets)}
    if args.save_crops:
        write_crops(face_crops(frame, dets, args.vis_thres, args.crop_size,
                               os.path.join(args.save_crops, f"{video.stem}_{index}"),
                               f"{video.name} frame {index}", record['detections']))
    if jsonl is not None:
        jsonl.write_line(json.dumps(record))
    if writer is not None:
        writer.write(draw_detections(frame, dets, args.vis_thres))


def _detect_frames(args, video, detector, writer):
    every = args.every or 1
    total = video.frame_count
    if args.max_frames is not None:
        total = min(total, args.max_frames) if total is not None else args.max_frames
    frames_read = processed = faces = bad = 0
    last = None  # the last frame written: it stands in for a frame that could not be decoded
    jsonl = None
    start = time.perf_counter()
    bar = tqdm(total=total, desc=video.name if video.is_camera else os.path.basename(video.name),
               unit='frame', dynamic_ncols=True)
    try:
        if args.json:
            jsonl = LineFile(args.json)  # a full disk truncates it to its last whole line, and says so
        with logging_redirect_tqdm(), bar, BackgroundWriter() as out, \
                closing(read_frames(video, every, args.max_frames, keep_skipped=writer is not None,
                                    prepare=lambda frame: detector.preprocess([frame]))) as frames:
            for index, status, frame, prepared in frames:
                frames_read = index + 1
                bar.update(1)
                if status == 'bad':
                    bad += 1
                    if writer is not None and last is not None:
                        out.submit(writer.write, last)  # keeps the copy in step with the input's timing
                    continue
                if status == 'skipped':
                    if writer is not None:
                        out.submit(writer.write, frame)
                        last = frame
                    continue
                dets = detector.detect_preprocessed(*prepared)[0]
                out.submit(_frame_outputs, args, video, index, frame, dets, jsonl, writer)
                last = frame
                processed += 1
                faces += int((dets[:, 4] >= args.vis_thres).sum())
                seconds = time.perf_counter() - start
                bar.set_postfix(realtime=f"{frames_read / seconds / video.fps:.2f}x", refresh=False)
    except KeyboardInterrupt:
        logger.warning("interrupted after %d frames: the outputs hold the %d processed frames done", frames_read,
                       processed)
        raise
    finally:
        if jsonl is not None:
            jsonl.close()
    seconds = time.perf_counter() - start
    logger.info("%s: %d frames in %.1f s (%.1f fps, %.2fx real time), detected in %d (every %d), %d faces >= %s%s",
                video.name, frames_read, seconds, frames_read / seconds, frames_read / seconds / video.fps,
                processed, every, faces, args.vis_thres,
                f"; {bad} frames could not be decoded" if bad else '')
    if args.json:
        logger.info("wrote %d JSON lines to %s", processed, args.json)
    return {'frames': frames_read, 'processed': processed, 'faces': faces,
            'output': writer.path if writer is not None else None, 'json': args.json}


if __name__ == '__main__':
    raise SystemExit(run_cli(main, get_args_parser()))
