"""Detect faces on FDDB and write the detection file the FDDB evaluation tool reads.

    python test_fddb.py -m weights/mobilenet0.25_Final.pth --network mobile0.25

Reads data/FDDB/img_list.txt (names like 2002/08/11/big/img_591) and the images
data/FDDB/images/<name>.jpg, or the files given by --image_list / --images_folder, and
writes <save_folder>/FDDB_dets.txt: per image

    name
    N.0
    x y w h score      (N lines: integer pixels with w = x2 - x1 + 1, score with 10 decimals)

in the reference's exact format. The file is written atomically when the run ends, so an
interrupted run never leaves half a file. Meanwhile each image's block is kept in a hidden
folder beside it (.<dataset>_dets.parts/<name>.txt), so that a rerun of an interrupted run
detects only the images not done; it is removed once the file is written. As in
test_widerface.py, save_folder/retinaface_run.json records the model and settings, a rerun
resumes only the same run's results (another run's are an error, unless --no-resume), and
one run at a time writes into save_folder (it is locked).
"""
import argparse
import logging
import os
from contextlib import closing

from models.detector import OriginSizeFlag, add_detector_arguments, detector_from_args, model_input
from utils.atomic import atomic_write_text
from utils.cli import probability, report_skipped, run_cli, str2bool
from utils.distributed import (broadcast_from_rank0, gather_to_rank0, merge_in_order, on_rank0, process_group,
                               quiet_other_ranks, shard)
from utils.errors import InputError, InputNotFoundError
from utils.folder_run import BackgroundWriter, check_list_entries, detect_images, lock_results_folder
from utils.image import draw_detections, write_image
from utils.input_files import open_text, read_text
from utils.memory import keep_freed_memory
from utils.outputs import RunOutputs
from utils.run_manifest import MANIFEST_NAME, prepare_results_folder, run_settings

logger = logging.getLogger(__name__)


def get_args_parser():
    parser = argparse.ArgumentParser(description='Retinaface: FDDB detections')
    # top_k and keep_top_k: all, as the reference's outputs were made (it declares 5000 and 750 but
    # never applies them).
    add_detector_arguments(parser, trained_model='./weights/Resnet50_Final.pth', network='resnet50')
    parser.add_argument('--origin_size', default=True, type=str2bool, action=OriginSizeFlag,
                        help='Whether use origin image size to evaluate: true (default, as the reference, '
                             'which always does) or false (short side 1600, long side at most 2150)')
    parser.add_argument('--save_folder', default='eval/', type=str, help='Dir to save results')
    parser.add_argument('--dataset', default='FDDB', type=str, choices=['FDDB'], help='dataset')
    parser.add_argument('--image_list', default=None, type=str,
                        help='the list of image names (default: data/<dataset>/img_list.txt)')
    parser.add_argument('--images_folder', default=None, type=str,
                        help='the folder holding <name>.jpg (default: data/<dataset>/images/)')
    parser.add_argument('-s', '--save_image', action="store_true", default=False, help='show detection results')
    parser.add_argument('--vis_thres', default=0.5, type=probability, help='visualization_threshold')
    parser.add_argument('--vis_folder', default='./results/', type=str,
                        help='where --save_image writes the annotated images (<name>.jpg, the name as listed)')
    parser.add_argument('--resume', default=True, action=argparse.BooleanOptionalAction,
                        help='reuse the detections of an interrupted or earlier run made by the same model and '
                             'settings (default); --no-resume recomputes every image, first removing the results '
                             'of another run from --save_folder')
    return parser


def fddb_block(name, dets):
    """The FDDB detection block for one image, in the reference's exact format.

    Args:
        name (str): the image name as listed (e.g. 2002/08/11/big/img_591).
        dets (ndarray[N, 15] float32): detections, boxes as (x1, y1, x2, y2) pixels.
    Returns:
        str: name, N as '{:.1f}', then per detection "x y w h score" with w = x2 - x1 + 1 and
        h = y2 - y1 + 1 computed in float32 and truncated, and the score with 10 decimals.
    """
    lines = ['{:s}\n'.format(name), '{:.1f}\n'.format(dets.shape[0])]
    for k in range(dets.shape[0]):
        xmin = dets[k, 0]
        ymin = dets[k, 1]
        xmax = dets[k, 2]
        ymax = dets[k, 3]
        score = dets[k, 4]
        w = xmax - xmin + 1
        h = ymax - ymin + 1
        lines.append('{:d} {:d} {:d} {:d} {:.10f}\n'.format(int(xmin), int(ymin), int(w), int(h), score))
    return "".join(lines)


def split_blocks(text):
    """{name: block} for the whole blocks at the start of an FDDB detection text (fddb_block's
    format); parsing stops at the first block that is cut short or malformed."""
    lines = text.split('\n')
    blocks, i = {}, 0
    while i + 1 < len(lines):
        try:
            count = float(lines[i + 1])
        except ValueError:
            break
        if not count.is_integer() or count < 0 or i + 2 + int(count) > len(lines) - 1:
            break  # every line of a whole block ends with a newline: the split leaves '' after it
        end = i + 2 + int(count)
        blocks.setdefault(lines[i], "\n".join(lines[i:end]) + "\n")
        i = end
    return blocks


def parts_folder(out_path):
    """The hidden folder beside out_path that keeps a run's blocks until the file is written."""
    return os.path.join(os.path.dirname(out_path), '.' + os.path.splitext(os.path.basename(out_path))[0] + '.parts')


def _read_text(path):
    """The text of an earlier run's file as utils.input_files reads text, or '' where there
    is none to trust: missing, not a regular file (a FIFO would block the read), not text."""
    try:
        return read_text(path)
    except InputError:
        return ''


def done_blocks(out_path, names, parts):
    """{index: block} of the images of names whose detections a run already wrote: in the
    finished file, or in the parts folder of an interrupted run."""
    finished = split_blocks(_read_text(out_path)) if os.path.isfile(out_path) else {}
    done = {}
    for index, (name, part) in enumerate(zip(names, parts)):
        if name in finished:
            done[index] = finished[name]
        elif os.path.isfile(part):
            text = _read_text(part)
            if split_blocks(text).get(name) == text:  # one whole block, of this image
                done[index] = text
    return done


def remove_parts(parts_root, parts):
    """Remove the block files, then the folders they leave empty (nothing else)."""
    for part in parts:
        try:
            os.unlink(part)
        except FileNotFoundError:
            pass
    for root, _, _ in sorted(os.walk(parts_root), key=lambda w: -len(w[0])):
        try:
            os.rmdir(root)
        except OSError:
            pass  # not empty (a file that is not ours) or gone: left as it is


def main(args):
    """Write FDDB_dets.txt; returns {'path', 'written' (images detected by this run), 'resumed'
    (images whose block an earlier run of the same model and settings had written), 'skipped':
    [(path, reason)]}.

    Under torchrun rank 0 writes the file and returns the totals; the other ranks return their share.
    """
    list_path = args.image_list or os.path.join('data', args.dataset, 'img_list.txt')
    images_folder = args.images_folder or os.path.join('data', args.dataset, 'images')
    if not os.path.lexists(list_path):
        raise InputNotFoundError(f"image list not found: {list_path} (pass --image_list)")
    with open_text(list_path, 'image list') as fr:
        text = fr.read()
    # Whitespace-separated names, as the reference reads them, with their line numbers for the messages.
    entries = [(lineno, n, n) for lineno, line in enumerate(text.split('\n'), 1) for n in line.split()]
    if not entries:
        raise InputError(f"image list {list_path} is empty")
    # Checked before any work: none outside the folders, no duplicate (its block would count twice).
    paths = check_list_entries(list_path, entries)
    names = [n for _, n, _ in entries]  # as listed: the blocks name them so
    out_path = os.path.join(args.save_folder, args.dataset + '_dets.txt')
    vis_paths = [os.path.join(args.vis_folder, p + '.jpg') for p in paths]
    # Checked now: the file is written only at the end of the run.
    check_outputs(args, list_path, images_folder, names, paths, out_path, vis_paths)

    with process_group(use_cuda=False if args.cpu else 'auto') as world:
        quiet_other_ranks(world, logger)
        # Held to the end: a second run would mix its blocks with these, or replace the file.
        lock = lock_results_folder(args.save_folder, '--save_folder', world)
        try:
            return _detect_all(args, names, paths, vis_paths, images_folder, out_path, world)
        finally:
            if lock is not None:
                lock.release()


def check_outputs(args, list_path, images_folder, names, paths, out_path, vis_paths):
    """Every output, checked before any work (utils.outputs): the detection file, its parts
    and the record in --save_folder, the --save_image copies, against the list, images and model."""
    outputs = RunOutputs()
    outputs.reads('--image_list', list_path, 'the image list')
    outputs.reads('--images_folder', [os.path.join(images_folder, n + '.jpg') for n in names],
                  'the input image')
    outputs.reads(*model_input(args))
    outputs.file('--save_folder', out_path, given=args.save_folder, what='the detection file')
    outputs.file('--save_folder', os.path.join(args.save_folder, MANIFEST_NAME), given=args.save_folder,
                 what="the results folder's record")
    parts_root = parts_folder(out_path)
    for name, p in zip(names, paths):
        outputs.file('--save_folder', os.path.join(parts_root, p + '.txt'), given=args.save_folder,
                     what=f"the kept detections of {name}", source=name)
    if args.save_image:
        outputs.folder('--vis_folder', args.vis_folder)
        for name, vis in zip(names, vis_paths):
            outputs.file('--vis_folder', vis, given=args.vis_folder, what=f"the annotated copy of {name}", source=name)
    outputs.check()


def _detect_all(args, names, paths, vis_paths, images_folder, out_path, world):
    """Under torchrun each rank detects every world_size-th image not done yet and keeps its
    blocks; rank 0 writes the file, blocks in list order."""
    detector = detector_from_args(args, **({'device': world.device} if world.device else {}))
    if detector.device.type == 'cpu':
        keep_freed_memory()  # a process-wide malloc setting: this script owns its process
    model_path = args.onnx_model or args.trained_model
    parts_root = parts_folder(out_path)
    parts = [os.path.join(parts_root, p + '.txt') for p in paths]

    def prepare():
        # Rank 0 alone: it may remove another run's results before any rank writes a block.
        relative = [os.path.relpath(p, args.save_folder) for p in [out_path] + parts]
        same_run = prepare_results_folder(
            args.save_folder, run_settings(model_path, detector.settings(args.batch_size)), relative, model_path,
            script='test_fddb.py', recompute=not args.resume, recompute_flag='--no-resume')
        return done_blocks(out_path, names, parts) if same_run and args.resume else {}
    done = on_rank0(prepare, world)
    done_indexes = broadcast_from_rank0(sorted(done) if world.is_main else None, world)
    if done_indexes and world.is_main:
        logger.info("resuming: %d of %d images already have detections in %s (--no-resume recomputes them)",
                    len(done_indexes), len(names), args.save_folder)
    skip = set(done_indexes)
    jobs = shard([(index, os.path.join(images_folder, name + '.jpg'), name)
                  for index, name in enumerate(names) if index not in skip], world)

    def keep(index, block, img_raw, dets):
        atomic_write_text(parts[index], block)
        if args.save_image:
            # Atomically, like every output (cv2.imwrite would leave half a file when interrupted).
            write_image(vis_paths[index], draw_detections(img_raw, dets, args.vis_thres))

    blocks, skipped = [], []
    with closing(detect_images(detector, jobs, skipped, progress=world.is_main,
                               batch_size=args.batch_size)) as results, \
            BackgroundWriter() as writer:
        for (index, _, name), img_raw, dets, _ in results:
            block = fddb_block(name, dets)
            blocks.append((index, block))
            writer.submit(keep, index, block, img_raw if args.save_image else None, dets)
    # Rank 0 gets every rank's blocks and skipped images, and puts them back in list order.
    gathered = gather_to_rank0((blocks, skipped), world)
    if not world.is_main:
        return {'path': out_path, 'written': len(blocks), 'resumed': 0, 'skipped': [s for _, s in skipped]}
    written = sum(len(p[0]) for p in gathered)
    every_block = merge_in_order([list(done.items())] + [p[0] for p in gathered])
    skipped = merge_in_order(p[1] for p in gathered)
    if not every_block:
        report_skipped(skipped)
        raise InputError(f"none of the {len(names)} images could be read (is --images_folder right?)")
    # Skipped images get no block at all: an empty block would claim "no faces here".
    atomic_write_text(out_path, "".join(every_block))
    remove_parts(parts_root, parts)
    logger.info("wrote detections for %d images to %s", len(every_block), out_path)
    report_skipped(skipped)
    return {'path': out_path, 'written': written, 'resumed': len(done), 'skipped': skipped}


if __name__ == '__main__':
    raise SystemExit(run_cli(main, get_args_parser()))
