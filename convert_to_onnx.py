"""Export RetinaFace to ONNX and check the export with onnxruntime.

    python convert_to_onnx.py -m weights/mobilenet0.25_Final.pth --network mobile0.25

The model takes 'input0' [B, 3, H, W] (float32 BGR minus (104, 117, 123)) with dynamic
batch, height and width, and returns 'loc' [B, P, 4], 'conf' [B, P, 2] (softmax) and
'landms' [B, P, 10]. After exporting, onnxruntime runs it on two inputs of different sizes;
if any output differs from PyTorch's by more than --tolerance, the script fails (exit 1).
"""
import argparse
import os

from data import NETWORKS
from models.detector import load_detector
from models.onnx_export import (DEFAULT_LONG_SIDE, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, VERIFY_ATOL, export_onnx,
                                verification_inputs, verify_onnx)
from utils.atomic import move_into_place, temp_path
from utils.cli import add_threads_argument, non_negative_float, number_in, positive_int, run_cli, set_threads
from utils.device import resolve_device
from utils.errors import InputError
from utils.outputs import RunOutputs


def get_args_parser():
    parser = argparse.ArgumentParser(description='Retinaface: export to ONNX')
    parser.add_argument('-m', '--trained_model', default='./weights/mobilenet0.25_Final.pth', type=str,
                        help='Trained state_dict file path to open')
    parser.add_argument('--network', default='mobile0.25', choices=sorted(NETWORKS),
                        help='Backbone network mobile0.25 or resnet50')
    parser.add_argument('--long_side', default=DEFAULT_LONG_SIDE, type=positive_int,
                        help='side of the square dummy input used for tracing (the exported height and '
                             'width stay dynamic)')
    parser.add_argument('--cpu', default=True, action=argparse.BooleanOptionalAction,
                        help='export on the CPU (default; --no-cpu traces on CUDA when available)')
    parser.add_argument('--output', default='FaceDetector.onnx', type=str, help='the ONNX file to write')
    parser.add_argument('--opset', default=DEFAULT_OPSET, type=number_in(int, MIN_OPSET, MAX_OPSET, name='opset'),
                        help=f'ONNX opset version, {MIN_OPSET} to {MAX_OPSET} (the ones this project exports and '
                             f'checks; default {DEFAULT_OPSET})')
    parser.add_argument('--verify', default=True, action=argparse.BooleanOptionalAction,
                        help='check the export with onnxruntime on two input sizes (default)')
    parser.add_argument('--tolerance', default=VERIFY_ATOL, type=non_negative_float,
                        help='largest allowed |onnxruntime - PyTorch| in any output')
    add_threads_argument(parser)
    return parser


def main(args):
    """Export and verify; returns {'path', 'verification': [...]}. Raises InputError if the check fails."""
    if args.long_side < 1:
        raise InputError(f"--long_side must be a positive number of pixels, got {args.long_side}")
    outputs = RunOutputs()  # checked before the export: never over the weights it reads
    outputs.reads('-m', args.trained_model, 'the weights')
    outputs.file('--output', args.output, what='the ONNX model')
    outputs.check()
    device = resolve_device('cpu' if args.cpu else 'auto')
    net = load_detector(args.network, args.trained_model, device=device).net
    set_threads(args.threads)  # torch is loaded now
    print(f"==> Exporting model to ONNX format at '{args.output}' (opset {args.opset})")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    # Exported to a temporary name first: a failed export or check leaves no file behind
    # that looks like a good model. The name is a new one (never a file of the user's).
    tmp = temp_path(args.output)
    try:
        export_onnx(net, tmp, opset=args.opset, long_side=args.long_side)
        report = []
        if args.verify:
            # verify_onnx logs each size's differences: one line per check, printed once.
            report = verify_onnx(net, tmp, verification_inputs(args.long_side), atol=args.tolerance)
        move_into_place(tmp, args.output)  # over a link's target, never over the link
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {args.output}" + (" (verified with onnxruntime)" if args.verify else ""))
    return {'path': args.output, 'verification': report}


if __name__ == '__main__':
    raise SystemExit(run_cli(main, get_args_parser()))
