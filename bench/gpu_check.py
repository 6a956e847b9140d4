"""GPU check: the same code on a CUDA device, side by side with the CPU.

    python -m bench.gpu_check [--device cuda] [--train_epochs 3]

Prints, for a CUDA machine (falls back to whatever --device says, for a dry run):
1. detections on CUDA against the CPU's on the four ../shared/images photos (counts,
   max box difference in pixels, max score difference);
2. forward and end-to-end milliseconds on the device, and batch-of-8 against batch-of-1
   throughput, for MobileNet0.25 (published weights) and ResNet50 (random weights);
3. train.py on the device (float32, then --amp) on ../shared/minitrain: median step time
   and the losses of the first and last epoch, and that the final checkpoint loads.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from bench.common import IMAGES, ROOT, _median_ms
from data import cfg_mnet, cfg_re50
from models.detector import Detector, load_detector
from models.retinaface import RetinaFace
from utils.checkpoint import load_model
from utils.datapaths import shared_path
from utils.image import read_image

def check_detections(device):
    weights = shared_path('weights', 'mobilenet0.25_Final.pth')
    cpu = load_detector('mobile0.25', weights, device='cpu')
    dev = load_detector('mobile0.25', weights, device=device)
    print(f"== 1. detections on {device} vs cpu (mobile0.25, published weights, origin size)")
    for name in IMAGES:
        img = read_image(shared_path('images', f'{name}.jpg'))
        a, b = cpu.detect(img), dev.detect(img)
        golden = np.load(shared_path('golden', 'mnet', f'{name}_dets.npy'))
        strong = a[a[:, 4] > 0.5]
        line = (f"{name:15s} cpu {len(a):5d} dets (golden {len(golden)}), {device.type} {len(b):5d}; "
                f"score>0.5: {len(strong)} vs {int((b[:, 4] > 0.5).sum())}")
        if len(strong) and len(b):
            # Near-tied scores may come out in another order on the GPU: pair each CPU face
            # with the closest GPU box.
            nearest = np.abs(b[None, :, :4] - strong[:, None, :4]).max(axis=2).argmin(axis=1)  # [F]
            line += (f"; max |box diff| {np.abs(b[nearest, :4] - strong[:, :4]).max():.4f} px, "
                     f"max |score diff| {np.abs(b[nearest, 4] - strong[:, 4]).max():.2e}")
        print(line)


def speed(device):
    print(f"== 2. speed on {device} (median ms)")
    weights = shared_path('weights', 'mobilenet0.25_Final.pth')
    img = read_image(shared_path('images', 'test.jpg'))
    nets = [('mobile0.25', load_detector('mobile0.25', weights, device=device)),
            ('resnet50', Detector(RetinaFace(cfg_re50, phase='test').eval(), cfg_re50, device=device))]
    for name, det in nets:
        batch1, _, _ = det.preprocess([img])
        batch8, _, _ = det.preprocess([img] * 8)
        fwd1 = _median_ms(lambda: det.forward(batch1), device)
        fwd8 = _median_ms(lambda: det.forward(batch8), device)
        line = f"{name:10s} test.jpg 1024x624: forward b1 {fwd1:7.2f}  b8 {fwd8:7.2f}"
        if name == 'resnet50':
            # Random weights score every prior above the threshold, so end-to-end would
            # time NMS over all priors, not the pipeline of a trained model.
            print(line + " (random weights: forward only)")
            continue
        e2e1 = _median_ms(lambda: det.detect(img), device)
        e2e8 = _median_ms(lambda: det.detect_batch([img] * 8), device)
        print(f"{line} | end-to-end b1 {e2e1:7.2f}  b8 {e2e8:7.2f} | throughput b1 {1000 / e2e1:6.1f} img/s, "
              f"b8 {8000 / e2e8:6.1f} img/s ({e2e1 * 8 / e2e8:.2f}x)")


def train(device, epochs, workers):
    print(f"== 3. train.py on {device}, minitrain, batch 8, 640x640, {epochs} epochs")
    label = shared_path('minitrain', 'train', 'label.txt')
    pretrained = shared_path('weights', 'mobilenetV1X0.25_pretrain.tar')
    for amp in (False, True):
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, os.path.join(ROOT, 'train.py'), '--training_dataset', str(label), '--network', 'mobile0.25',
                   '--device', str(device), '--batch_size', '8', '--image_size', '640', '--max_epoch', str(epochs),
                   '--num_workers', str(workers), '--pretrained', str(pretrained), '--seed', '0',
                   '--save_folder', out + '/', '--log_interval', '10'] + (['--amp'] if amp else [])
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                raise SystemExit(f"train.py failed with exit code {proc.returncode} (amp={amp})")
            epochs_log = [json.loads(line) for line in open(os.path.join(out, 'mobilenet0.25_metrics.jsonl'))]
            net = load_model(RetinaFace(cfg_mnet, phase='test'),
                             os.path.join(out, 'mobilenet0.25_Final.pth'))
            finite = all(torch.isfinite(p).all() for p in net.state_dict().values() if p.is_floating_point())
            first, last = epochs_log[0], epochs_log[-1]
            print(f"amp={amp!s:5s} wall {wall:6.1f} s | median step {statistics.median(e['step_time'] for e in epochs_log):.4f} s, "
                  f"data {statistics.median(e['data_time'] for e in epochs_log):.4f} s | loss epoch 1 {first['loss']:.3f} "
                  f"-> epoch {last['epoch']} {last['loss']:.3f} | Final.pth loads: True, finite: {finite}")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--train_epochs', type=int, default=3)
    parser.add_argument('--num_workers', type=int, default=4)
    parser.add_argument('--skip', default='', help='comma-separated parts to skip: detect,speed,train')
    return parser


def main(args):
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == 'cuda' else ''))
    skip = set(filter(None, args.skip.split(',')))
    if 'detect' not in skip:
        check_detections(device)
    if 'speed' not in skip:
        speed(device)
    if 'train' not in skip:
        train(device, args.train_epochs, args.num_workers)


if __name__ == '__main__':
    main(get_args_parser().parse_args())
