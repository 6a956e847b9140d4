"""What the command-line scripts share: flag parsing, device choice, building the
detector from flags, atomic text files, and turning errors into clear exit messages."""
import argparse
import logging
import math
import sys

from utils.inference import BACKENDS, load_detector
from utils.memory import keep_freed_memory

logger = logging.getLogger(__name__)

_TRUE = ('true', '1', 'yes', 'y', 'on')
_FALSE = ('false', '0', 'no', 'n', 'off')
# Extensions a folder or glob of images is filtered by (case-insensitive).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def str2bool(value):
    """Parse a boolean flag value: true/false, 1/0, yes/no, y/n, on/off (any case).

    The reference declares --origin_size with type=str, so '--origin_size False' gave the
    non-empty, truthy string 'False'; this parser makes the flag mean what it says.
    """
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, 1/0, yes/no), got {value!r}")


def optional_top_k(value):
    """An optional count: a positive int applies it; 0, a negative value or 'none' turns it off."""
    if str(value).strip().lower() in ('none', 'off', ''):
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (or 'none'), got {value!r}") from None
    return n if n > 0 else None


def bounded(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: kind(value) (int or float), finite and within the bounds
    (low <= x, or low < x with low_open; x <= high, or x < high with high_open).

    A value out of range is a usage error naming the flag, the range and the value,
    e.g. "argument --lr: expected a number > 0, got '-1'".
    """
    limits = []
    if low is not None:
        limits.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        limits.append(f"{'<' if high_open else '<='} {high}")
    what = ('an integer' if kind is int else 'a number') + (' ' + ' and '.join(limits) if limits else '')

    def parse(value):
        try:
            x = kind(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if (not math.isfinite(x)
                or (low is not None and (x <= low if low_open else x < low))
                or (high is not None and (x >= high if high_open else x > high))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return x

    parse.__name__ = what
    return parse


def add_backend_arguments(parser):
    """--backend and --onnx_model, the same in every script."""
    parser.add_argument('--backend', default=None, choices=BACKENDS,
                        help="'torch' (eager PyTorch, the reference's exact numbers; the default) or "
                             "'onnxruntime' (the same network in onnxruntime: about 2x faster on CPU, "
                             "detections equal to ~1e-5; the default with --onnx_model)")
    parser.add_argument('--onnx_model', default=None, type=str,
                        help="run this exported model (convert_to_onnx.py) in onnxruntime instead of "
                             "--trained_model; its network comes from the file. Without it, "
                             "--backend onnxruntime exports the weights in memory at start-up")
    return parser


def select_device(cpu):
    """'cpu' when --cpu is given or no CUDA device exists (logged), else 'cuda'.

    The reference used CUDA unless --cpu was given and crashed on machines without a GPU.
    """
    import torch

    if cpu:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        logger.info("no CUDA device found: running on the CPU")
        return torch.device('cpu')
    return torch.device('cuda')


def select_onnxruntime_device(cpu):
    """select_device for an ONNX model file, without importing torch (that path runs
    without it): 'cuda' unless --cpu is given or onnxruntime has no CUDA provider (logged)."""
    if cpu:
        return 'cpu'
    import onnxruntime

    if 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
        return 'cuda'
    logger.info("onnxruntime has no CUDA provider: running on the CPU")
    return 'cpu'


def detector_from_args(args, **overrides):
    """A Detector built from the standard flags (network, weights, device, thresholds, backend).

    On the CPU it also makes malloc keep freed memory (utils.memory.keep_freed_memory).
    args.backend and args.network are set to what runs, so that logs and result files name
    it: --onnx_model selects onnxruntime, and the ONNX file's network wins over --network.
    """
    kwargs = dict(
        device=(select_device(getattr(args, 'cpu', False)) if getattr(args, 'onnx_model', None) is None
                else select_onnxruntime_device(getattr(args, 'cpu', False))),
        confidence_threshold=args.confidence_threshold,
        nms_threshold=args.nms_threshold,
        top_k=getattr(args, 'top_k', None),
        keep_top_k=getattr(args, 'keep_top_k', None),
        origin_size=getattr(args, 'origin_size', True),
        backend=getattr(args, 'backend', None),
        onnx_model=getattr(args, 'onnx_model', None),
    )
    kwargs.update(overrides)
    if str(kwargs['device']).partition(':')[0] == 'cpu':
        # Eager PyTorch's forward pass is ~1.5x faster when malloc keeps freed memory
        # (see utils/memory.py); a script owns its process, so it may change that.
        keep_freed_memory()
    detector = load_detector(args.network, args.trained_model, **kwargs)
    args.backend = detector.backend
    args.network = getattr(detector, 'network', None) or args.network
    logger.info("%s (%s) on %s with the %s backend", args.network, kwargs['onnx_model'] or args.trained_model,
                detector.device, detector.backend)
    return detector


def report_skipped(skipped, what='images'):
    """Log the final count of skipped inputs, each with its reason."""
    if skipped:
        logger.warning("skipped %d unreadable %s:", len(skipped), what)
        for path, reason in skipped:
            logger.warning("  %s: %s", path, reason)
    else:
        logger.info("skipped 0 %s", what)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message is logged (tqdm and
    test harnesses swap it), not to the stream that was current when it was made."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(level=logging.INFO):
    """Plain messages on stderr, for the scripts (library modules only create loggers)."""
    logging.basicConfig(level=level, format='%(message)s', handlers=[_StderrHandler()], force=True)


def run_cli(main, parser, argv=None):
    """Parse argv, run main(args) and return the process exit status.

    Expected failures (a missing file, bad input or settings) print one clear line,
    'error: ...', instead of a traceback, and give status 1; Ctrl-C gives 130.
    """
    args = parser.parse_args(argv)
    setup_logging()
    try:
        main(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
