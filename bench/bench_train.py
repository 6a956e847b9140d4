"""A real short training run on this CPU: MobileNet0.25 on ../shared/minitrain from the
ImageNet backbone, then the AP of the result on the minitrain labels.

    python -m bench.bench_train                     # 20 epochs, 640x640, batch 8: ~400 steps
    python -m bench.bench_train --epochs 2 --image_size 320   # a quick look

It trains with train.py's main() (default workers), prints the loss curve (per-epoch mean
losses), the median step time and data-loading time, then detects faces on the 160
minitrain photos with models.detector.Detector (at original size, score > 0.02, NMS 0.4)
and scores them with widerface_evaluate.evaluation against minitrain/train/label.txt
(every face counts, IoU 0.5). For comparison it scores the same backbone with untrained
(randomly initialised) heads, and the published mobilenet0.25_Final.pth whose detections
the minitrain labels were made from (an upper bound, close to 1).

The reference, patched to run on this CPU, takes a median 0.92 s per step at batch 8 and
640x640 with data loading at about 7 ms.
"""
import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import train
from data import cfg_mnet
from data.wider_face import read_label_file
from models.retinaface import RetinaFace, load_pretrained_backbone
from utils.checkpoint import load_model
from utils.datapaths import shared_path

REFERENCE_STEP_S = 0.92
REFERENCE_DATA_S = 0.007


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--image_size', type=int, default=640)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--num_workers', type=int, default=4)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--decay1', type=int, default=None,
                   help='epoch of the first LR step (default: 76%% of the epochs, like 190 of 250)')
    p.add_argument('--decay2', type=int, default=None,
                   help='epoch of the second LR step (default: 88%% of the epochs, like 220 of 250)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None, help='checkpoint folder (default: a temporary folder)')
    p.add_argument('--skip_train', action='store_true', help='evaluate the Final checkpoint already in --out')
    return p


def detect_and_evaluate(net, label_path):
    """AP of net (phase 'test') on the images of label_path, every face counting."""
    from models.detector import Detector
    from widerface_evaluate.evaluation import evaluate, load_label_gt
    import cv2

    detector = Detector(net, cfg_mnet, device='cpu', confidence_threshold=0.02, nms_threshold=0.4)
    image_root = Path(label_path).parent / 'images'
    preds = {}
    with torch.inference_mode():
        for rel, _ in read_label_file(label_path):
            img = cv2.imread(str(image_root / rel), cv2.IMREAD_COLOR)
            dets = detector.detect(img)  # [N, 15]: x1 y1 x2 y2 score, landmarks
            boxes = dets[:, :5].astype('float64').copy()
            boxes[:, 2:4] -= boxes[:, 0:2]  # -> x y w h score, the evaluator's format
            preds[os.path.splitext(rel)[0]] = boxes
    results = evaluate(preds, load_label_gt(label_path))
    return results['all']['ap'], sum(len(b) for b in preds.values())


def main(args):
    label_path = shared_path('minitrain', 'train', 'label.txt')
    backbone = shared_path('weights', 'mobilenetV1X0.25_pretrain.tar')
    for p in (label_path, backbone):
        if not p.exists():
            raise FileNotFoundError(f"reference data not found: {p} (set RETINAFACE_DATA)")
    out = Path(args.out or tempfile.mkdtemp(prefix='bench_train_'))
    decay1 = args.decay1 if args.decay1 is not None else round(0.76 * args.epochs)
    decay2 = args.decay2 if args.decay2 is not None else round(0.88 * args.epochs)
    final = out / f"{cfg_mnet['name']}_Final.pth"

    if not args.skip_train:
        train_args = train.get_args_parser().parse_args([
            '--training_dataset', str(label_path), '--network', 'mobile0.25', '--device', 'cpu',
            '--pretrained', str(backbone), '--save_folder', str(out), '--max_epoch', str(args.epochs),
            '--image_size', str(args.image_size), '--batch_size', str(args.batch_size),
            '--num_workers', str(args.num_workers), '--lr', str(args.lr), '--decay1', str(decay1),
            '--decay2', str(decay2), '--seed', str(args.seed), '--log_interval', '20'])
        t0 = time.perf_counter()
        result = train.main(train_args)
        wall = time.perf_counter() - t0
        if result.exit_code != 0:
            print(f"training stopped early (exit code {result.exit_code})")
            return 1
        # Each epoch's record holds its median step and data-loading times.
        step = statistics.median(e['step_time'] for e in result.epochs)
        data_t = statistics.median(e['data_time'] for e in result.epochs)
        print(f"\n== training: {result.iteration} steps of batch {args.batch_size} at {args.image_size}x{args.image_size}, "
              f"{args.num_workers} workers, LR {args.lr} x0.1 at epochs {decay1} and {decay2}, {wall:.0f} s ==")
        print(f"{'epoch':>5} {'loc':>8} {'cla':>8} {'landm':>8} {'loss':>8}")
        for e in result.epochs:
            print(f"{e['epoch']:>5} {e['loc']:8.4f} {e['cla']:8.4f} {e['landm']:8.4f} {e['loss']:8.4f}")
        print(f"median step time (of the epochs' medians) {step:.3f} s (reference {REFERENCE_STEP_S} s), median data time "
              f"{1000 * data_t:.1f} ms = {100 * data_t / step:.1f}% of the step (reference {1000 * REFERENCE_DATA_S:.0f} ms)")
        first, last = result.epochs[0]['loss'], result.epochs[-1]['loss']
        print(f"mean loss: epoch 1 {first:.3f} -> epoch {result.epochs[-1]['epoch']} {last:.3f} "
              f"({100 * (first - last) / first:.0f}% lower)")

    print("\n== AP on minitrain/train/label.txt (every face, IoU 0.5) ==")
    torch.manual_seed(args.seed)
    untrained = load_pretrained_backbone(RetinaFace(cfg_mnet, phase='test'), cfg_mnet, backbone)
    rows = [('trained', load_model(RetinaFace(cfg_mnet, phase='test'), final)),
            ('untrained heads', untrained)]
    published = shared_path('weights', 'mobilenet0.25_Final.pth')
    if published.exists():
        rows.append(('published weights', load_model(RetinaFace(cfg_mnet, phase='test'), published)))
    for name, net in rows:
        t0 = time.perf_counter()
        ap, n_det = detect_and_evaluate(net, label_path)
        print(f"{name:>18}: AP {ap:.4f}  ({n_det} detections, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    sys.exit(main(get_args_parser().parse_args()))
