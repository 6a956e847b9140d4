"""Detect faces on the WIDER FACE val set and write the prediction files the evaluation reads.

    python test_widerface.py -m weights/mobilenet0.25_Final.pth --network mobile0.25

For each line `event/name.jpg` (or `/event/name.jpg`) of wider_val.txt, which lies beside
the images folder, it writes save_folder/event/name.txt:

    name
    N
    x y w h score      (N lines, integer pixels, a trailing space, as the reference writes them)

With the default eager PyTorch backend the files are byte-identical to the reference's.
Files are written atomically, and a rerun skips images whose file is already complete,
when the same model and settings made it: save_folder/retinaface_run.json records them and
the files the run writes (see utils/run_manifest.py), and a folder holding another run's
files is an error. One run at a time writes into save_folder (it is locked), and the list is
checked before any work: no entry may write outside save_folder, or onto another's file.
"""
import argparse
import logging
import os
from contextlib import closing

from data.label_file import WIDER_IMAGE_LIST, read_wider_list
from models.detector import OriginSizeFlag, add_detector_arguments, detector_from_args, model_input
from utils.atomic import atomic_write_text
from utils.cli import probability, report_skipped, run_cli, str2bool
from utils.distributed import all_gather, merge_in_order, on_rank0, process_group, quiet_other_ranks, shard
from utils.errors import InputError, InputNotFoundError
from utils.folder_run import BackgroundWriter, check_list_entries, detect_images, lock_results_folder
from utils.image import draw_detections, write_image
from utils.input_files import open_input_file, read_text
from utils.memory import keep_freed_memory
from utils.outputs import RunOutputs
from utils.run_manifest import MANIFEST_NAME, prepare_results_folder, run_settings

logger = logging.getLogger(__name__)


def get_args_parser():
    parser = argparse.ArgumentParser(description='Retinaface: WIDER FACE val predictions')
    # top_k and keep_top_k: all, as the reference's outputs were made (it declares 5000 and 750 but
    # never applies them).
    add_detector_arguments(parser, trained_model='./weights/Resnet50_Final.pth', network='resnet50')
    parser.add_argument('--origin_size', default=True, type=str2bool, action=OriginSizeFlag,
                        help='Whether use origin image size to evaluate: true (default) or false '
                             '(short side 1600, long side at most 2150)')
    parser.add_argument('--save_folder', default='./widerface_evaluate/widerface_txt/', type=str,
                        help='Dir to save txt results')
    parser.add_argument('--dataset_folder', default='./data/widerface/val/images/', type=str, help='dataset path')
    parser.add_argument('--image_list', default=None, type=str,
                        help=f'the list of images (default: {WIDER_IMAGE_LIST} beside the dataset folder)')
    parser.add_argument('-s', '--save_image', action="store_true", default=False, help='show detection results')
    parser.add_argument('--vis_thres', default=0.5, type=probability, help='visualization_threshold')
    parser.add_argument('--vis_folder', default='./results/', type=str,
                        help='where --save_image writes the annotated images (<index>.jpg, as the reference)')
    parser.add_argument('--resume', default=True, action=argparse.BooleanOptionalAction,
                        help='skip images whose result file is already complete and made by the same model '
                             'and settings (default); --no-resume recomputes every image, first removing '
                             'the result files of another run from --save_folder')
    return parser


def image_list_path(dataset_folder: str) -> str:
    """wider_val.txt beside the images folder: ./data/widerface/val/images/ -> ./data/widerface/val/wider_val.txt."""
    return os.path.join(os.path.dirname(os.path.normpath(dataset_folder)), WIDER_IMAGE_LIST)


def read_image_list(path: str) -> list[str]:
    """The image paths of a WIDER list file, relative to the images folder (leading '/'
    removed, normalised), checked by utils.folder_run.check_list_entries: none outside the
    folder, no duplicate, no two with one result file."""
    if not os.path.lexists(path):
        raise InputNotFoundError(f"image list not found: {path} (expected {WIDER_IMAGE_LIST} beside the images "
                                 f"folder, or pass --image_list)")
    entries = read_wider_list(path)  # with their line numbers, for the messages
    if not entries:
        raise InputError(f"image list {path} is empty")
    return check_list_entries(path, entries, output_of=result_name)


def result_name(name):
    """The prediction file of image name, relative to the save folder: event/name.jpg -> event/name.txt."""
    return os.path.splitext(name)[0] + '.txt'


def wider_text(name, dets):
    """The WIDER prediction file for one image, in the reference's exact format.

    Args:
        name (str): the image name without extension (the file's first line).
        dets (ndarray[N, 15] float32): detections, boxes as (x1, y1, x2, y2) pixels.
    Returns:
        str: name, N, then per detection "x y w h score \\n" with x, y, w, h the truncated
        integer corners and sizes and score the float32's shortest repr.
    """
    lines = [name + "\n", str(len(dets)) + "\n"]
    for box in dets:
        x = int(box[0])
        y = int(box[1])
        w = int(box[2]) - int(box[0])
        h = int(box[3]) - int(box[1])
        confidence = str(box[4])
        lines.append(str(x) + " " + str(y) + " " + str(w) + " " + str(h) + " " + confidence + " \n")
    return "".join(lines)


def is_complete(path, name):
    """Whether path holds a whole prediction file for image name (header and every line),
    read as the evaluation reads it (utils.input_files.read_text). Missing, not a regular
    file (a FIFO named like a result would block the read) or not text: not complete."""
    try:
        lines = read_text(path).split('\n')
    except InputError:
        return False
    # A complete file ends with a newline: the split leaves one empty string at the end.
    if len(lines) < 3 or lines[0] != name or lines[-1] != '' or not lines[1].isdigit():
        return False
    return len(lines) == int(lines[1]) + 3


def looks_like_prediction(path):
    """Whether path looks like a WIDER prediction file: a .txt file whose first line is its own
    name. Asked only of files in the event folders of a results folder (see
    utils.run_manifest.prepare_results_folder), for results that no manifest lists."""
    f = os.path.basename(path)
    if not f.endswith('.txt') or f.startswith('.'):
        return False
    try:
        with open_input_file(path) as fh:  # a regular file only: a FIFO would block the read
            first = fh.readline().decode('utf-8-sig').rstrip('\r\n')
    except (InputError, UnicodeDecodeError):
        return False
    return first == f[:-len('.txt')]


def main(args):
    """Write the prediction files; returns {'written', 'resumed', 'skipped': [(path, reason)]}.

    Under torchrun each rank detects every world_size-th image of the list and writes its
    files; rank 0 prepares the folder first and reports the totals (returned on every rank).
    """
    list_path = args.image_list or image_list_path(args.dataset_folder)
    names = read_image_list(list_path)
    check_outputs(args, list_path, names)
    with process_group(use_cuda=False if args.cpu else 'auto') as world:
        quiet_other_ranks(world, logger)
        # Held to the end: a second run with other settings would mix its files with these.
        lock = lock_results_folder(args.save_folder, '--save_folder', world)
        try:
            return _detect_all(args, names, world)
        finally:
            if lock is not None:
                lock.release()


def check_outputs(args, list_path, names):
    """Every output, checked before any work (utils.outputs): the prediction files and the
    record in --save_folder, the --save_image copies, against the list, images and model."""
    outputs = RunOutputs()
    outputs.reads('--image_list', list_path, 'the image list')
    outputs.reads('--dataset_folder', [os.path.join(args.dataset_folder, n) for n in names],
                  'the input image')
    outputs.reads(*model_input(args))
    outputs.folder('--save_folder', args.save_folder)
    outputs.file('--save_folder', os.path.join(args.save_folder, MANIFEST_NAME), given=args.save_folder,
                 what="the results folder's record")
    for name in names:
        outputs.file('--save_folder', os.path.join(args.save_folder, result_name(name)), given=args.save_folder,
                     what=f"the prediction file of {name}", source=name)
    if args.save_image:
        outputs.folder('--vis_folder', args.vis_folder)
        for i, name in enumerate(names):
            outputs.file('--vis_folder', os.path.join(args.vis_folder, f"{i}.jpg"), given=args.vis_folder,
                         what=f"the annotated copy of {name}", source=name)
    outputs.check()


def _detect_all(args, names, world):
    # Built before anything is skipped: the model and settings decide which files are resumable.
    detector = detector_from_args(args, **({'device': world.device} if world.device else {}))
    if detector.device.type == 'cpu':
        keep_freed_memory()  # a process-wide malloc setting: this script owns its process
    model_path = args.onnx_model or args.trained_model
    # Rank 0 alone prepares the folder (it may remove another run's files) before any rank
    # looks for files to resume or writes one.
    on_rank0(lambda: prepare_results_folder(
        args.save_folder, run_settings(model_path, detector.settings(args.batch_size)), [result_name(n) for n in names], model_path,
        script='test_widerface.py', recompute=not args.resume, recompute_flag='--no-resume',
        is_result=looks_like_prediction), world)

    todo, resumed = [], 0
    for index, name in shard(enumerate(names), world):
        stem = os.path.splitext(name)[0]
        save_name = os.path.join(args.save_folder, result_name(name))
        if args.resume and is_complete(save_name, os.path.basename(stem)):
            resumed += 1
            continue
        todo.append((index, os.path.join(args.dataset_folder, name), stem, save_name))
    resumed = sum(all_gather(resumed, world))
    if resumed and world.is_main:
        logger.info("resuming: %d of %d images already have complete results in %s (--no-resume recomputes them)",
                    resumed, len(names), args.save_folder)

    def write(job, img_raw, dets):
        index, _, stem, save_name = job
        atomic_write_text(save_name, wider_text(os.path.basename(stem), dets))
        if args.save_image:
            # Atomically, like every output (cv2.imwrite would leave half a file when interrupted).
            write_image(os.path.join(args.vis_folder, f"{index}.jpg"), draw_detections(img_raw, dets, args.vis_thres))

    skipped, written = [], 0
    with closing(detect_images(detector, todo, skipped, progress=world.is_main,
                               batch_size=args.batch_size)) as results, \
            BackgroundWriter() as writer:
        for job, img_raw, dets, _ in results:
            writer.submit(write, job, img_raw, dets)
            written += 1

    # One summary for the whole run, on rank 0: every rank's counts, skipped images in list order.
    parts = all_gather((written, len(todo), skipped), world)
    written, attempted = sum(p[0] for p in parts), sum(p[1] for p in parts)
    skipped = merge_in_order(p[2] for p in parts)
    logger.info("wrote %d prediction files to %s", written, args.save_folder)
    if world.is_main:
        report_skipped(skipped)
    if skipped and not written and not resumed and world.is_main:
        raise InputError(f"none of the {attempted} images could be read (is --dataset_folder right?)")
    return {'written': written, 'resumed': resumed, 'skipped': skipped}


if __name__ == '__main__':
    raise SystemExit(run_cli(main, get_args_parser()))
