"""Detect faces on FDDB and write the detection file the FDDB evaluation tool reads.

    python test_fddb.py -m weights/mobilenet0.25_Final.pth --network mobile0.25

Reads data/FDDB/img_list.txt (names like 2002/08/11/big/img_591) and the images
data/FDDB/images/<name>.jpg, or the files given by --image_list / --images_folder, and
writes <save_folder>/FDDB_dets.txt: per image

    name
    N.0
    x y w h score      (N lines: integer pixels with w = x2 - x1 + 1, score with 10 decimals)

in the reference's exact format. The file is written atomically when the run ends, so an
interrupted run never leaves half a file.
"""
import argparse
import logging
import os
from contextlib import closing

import cv2

from models.detector import OriginSizeFlag, add_detector_arguments, detector_from_args
from utils.atomic import atomic_write_text, check_writable
from utils.cli import probability, report_skipped, run_cli, str2bool
from utils.distributed import destroy, gather_to_rank0, init_from_torchrun, merge_in_order, quiet_other_ranks, shard
from utils.errors import InputError, InputNotFoundError
from utils.folder_run import BackgroundWriter, detect_images
from utils.image import draw_detections
from utils.memory import keep_freed_memory

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
                        help='where --save_image writes the annotated images (<index>.jpg)')
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


def main(args):
    """Write FDDB_dets.txt; returns {'path', 'written', 'skipped': [(path, reason)]}.

    Under torchrun rank 0 writes the file and returns the totals; the other ranks return their share.
    """
    list_path = args.image_list or os.path.join('data', args.dataset, 'img_list.txt')
    images_folder = args.images_folder or os.path.join('data', args.dataset, 'images')
    if not os.path.isfile(list_path):
        raise InputNotFoundError(f"image list not found: {list_path} (pass --image_list)")
    with open(list_path, 'r') as fr:
        names = fr.read().split()
    if not names:
        raise InputError(f"image list {list_path} is empty")
    out_path = os.path.join(args.save_folder, args.dataset + '_dets.txt')
    # Checked now: the file is written only at the end of the run.
    check_writable(out_path, '--save_folder')
    if args.save_image:
        check_writable(args.vis_folder, '--vis_folder', folder=True)

    world = init_from_torchrun(use_cuda=False if args.cpu else 'auto')
    try:
        quiet_other_ranks(world, logger)
        return _detect_all(args, names, images_folder, out_path, world)
    finally:
        destroy(world)


def _detect_all(args, names, images_folder, out_path, world):
    """Under torchrun each rank detects every world_size-th image; rank 0 writes the blocks in list order."""
    detector = detector_from_args(args, **({'device': world.device} if world.device else {}))
    if detector.device.type == 'cpu':
        keep_freed_memory()  # a process-wide malloc setting: this script owns its process
    jobs = [(index, os.path.join(images_folder, name + '.jpg'), name)
            for index, name in shard(enumerate(names), world)]

    def draw(index, img_raw, dets):
        os.makedirs(args.vis_folder, exist_ok=True)
        cv2.imwrite(os.path.join(args.vis_folder, f"{index}.jpg"), draw_detections(img_raw, dets, args.vis_thres))

    blocks, skipped = [], []
    with closing(detect_images(detector, jobs, skipped, progress=world.is_main)) as results, \
            BackgroundWriter() as writer:
        for (index, _, name), img_raw, dets, _ in results:
            blocks.append((index, fddb_block(name, dets)))
            if args.save_image:
                writer.submit(draw, index, img_raw, dets)
    # Rank 0 gets every rank's blocks and skipped images, and puts them back in list order.
    parts = gather_to_rank0((blocks, skipped), world)
    if not world.is_main:
        return {'path': out_path, 'written': len(blocks), 'skipped': [s for _, s in skipped]}
    blocks = merge_in_order(p[0] for p in parts)
    skipped = merge_in_order(p[1] for p in parts)
    if not blocks:
        report_skipped(skipped)
        raise InputError(f"none of the {len(names)} images could be read (is --images_folder right?)")
    # Skipped images get no block at all: an empty block would claim "no faces here".
    atomic_write_text(out_path, "".join(blocks))
    logger.info("wrote detections for %d images to %s", len(blocks), out_path)
    report_skipped(skipped)
    return {'path': out_path, 'written': len(blocks), 'skipped': skipped}


if __name__ == '__main__':
    raise SystemExit(run_cli(main, get_args_parser()))
