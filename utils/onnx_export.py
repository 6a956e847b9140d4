"""Export RetinaFace to ONNX and check the export against PyTorch.

Used by convert_to_onnx.py and by the 'onnxruntime' backend of utils.inference, which
exports on the fly when it is not given a model file.

The exported graph takes 'input0' [B, 3, H, W] (float32, BGR minus BGR_MEAN, as the
PyTorch model does) with dynamic B, H and W, and returns 'loc' [B, P, 4], 'conf' [B, P, 2]
(softmax probabilities) and 'landms' [B, P, 10], where P is the number of priors of
PriorBox(cfg, (H, W)).

The file records the network it holds ('mobile0.25' or 'resnet50') in its metadata
(metadata_props 'network'), so that a run of the file names the right one; for files
without it (older exports, the reference's), onnx_network reads it from the head's width.
"""
import io
import logging
import os
import warnings

import numpy as np
import torch

logger = logging.getLogger(__name__)

INPUT_NAME = 'input0'  # the reference's input name, kept so existing consumers still work
OUTPUT_NAMES = ('loc', 'conf', 'landms')
DEFAULT_OPSET = 17  # supported by every current onnxruntime and TensorRT release
DEFAULT_LONG_SIDE = 640
# The tolerance of the export check: the largest |onnxruntime - PyTorch| allowed in any
# output. The two runtimes order float sums differently; measured differences on real
# and random images are ~3e-5 at most.
VERIFY_ATOL = 1e-4
# A second, odd (not a multiple of any stride) size for the export check, so that the
# dynamic height / width axes are exercised as well as the export size.
VERIFY_ODD_SIZE = (417, 301)
# The metadata_props key naming the network ('mobile0.25' or 'resnet50') of an export.
NETWORK_KEY = 'network'
# The landmark head's 1x1 conv has 10 outputs per anchor (2 anchors per cell): its weight
# [20, C, 1, 1] gives the FPN width C, which tells the networks apart.
_LANDMARK_HEAD_OUTPUTS = 20

_DYNAMIC_AXES = {
    INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'},
    'loc': {0: 'batch', 1: 'priors'},
    'conf': {0: 'batch', 1: 'priors'},
    'landms': {0: 'batch', 1: 'priors'},
}


def _network_of_width(width):
    """The --network name whose FPN width (cfg['out_channel']) is width, or None."""
    from data import NETWORKS

    names = [n for n, cfg in NETWORKS.items() if cfg['out_channel'] == width]
    return names[0] if len(names) == 1 else None


def export_onnx(net, f, opset=DEFAULT_OPSET, long_side=DEFAULT_LONG_SIDE):
    """Export net (a RetinaFace in phase 'test') to ONNX, its network name in the metadata.

    Args:
        net (nn.Module): the model; it is put in eval mode and traced on its own device.
        f (str | PathLike | BinaryIO): where to write the model (a path or a buffer).
        opset (int): the ONNX opset.
        long_side (int): the side of the square dummy input used for tracing
            (the reference's --long_side); the exported axes stay dynamic.
    Returns:
        f.
    """
    import onnx  # the exporter needs it anyway

    net.eval()
    device = next(net.parameters()).device
    dummy = torch.randn(1, 3, long_side, long_side, device=device)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The torch.export-based exporter (the default since torch 2.9) needs the
        # onnxscript package; the TorchScript-based one needs nothing beyond torch and
        # gives the same graph for this convolution-only model. Its deprecation notice
        # is not actionable for users of this project, so it is silenced here.
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', category=FutureWarning)
        torch.onnx.export(net, (dummy,), buffer, dynamo=False, export_params=True, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=_DYNAMIC_AXES, do_constant_folding=True)
    model = onnx.load_from_string(buffer.getvalue())
    network = _network_of_width(net.LandmarkHead[0].conv1x1.in_channels)
    if network is not None:
        model.metadata_props.add(key=NETWORK_KEY, value=network)
    data = model.SerializeToString()
    if hasattr(f, 'write'):
        f.write(data)
    else:
        with open(f, 'wb') as out:
            out.write(data)
    return f


def onnx_network(model):
    """The network ('mobile0.25' or 'resnet50') an ONNX export holds, or None if unknown.

    Read from the metadata export_onnx writes; for files without it, from the width of
    the landmark head's weights. A file that is not ONNX gives None (make_session reports it).

    Args:
        model (str | PathLike | bytes): the ONNX model.
    """
    import onnx

    from data import NETWORKS

    try:
        if isinstance(model, (bytes, bytearray)):
            proto = onnx.load_from_string(bytes(model))
        else:
            proto = onnx.load(os.fspath(model), load_external_data=False)
    except Exception:  # protobuf raises its own types for files that are not ONNX
        return None
    for prop in proto.metadata_props:
        if prop.key == NETWORK_KEY and prop.value in NETWORKS:
            return prop.value
    widths = {int(t.dims[1]) for t in proto.graph.initializer
              if len(t.dims) == 4 and t.dims[0] == _LANDMARK_HEAD_OUTPUTS and tuple(t.dims[2:]) == (1, 1)}
    return _network_of_width(widths.pop()) if len(widths) == 1 else None


def export_onnx_bytes(net, opset=DEFAULT_OPSET):
    """Export net to ONNX in memory and return the serialised model (bytes)."""
    buffer = io.BytesIO()
    export_onnx(net, buffer, opset=opset)
    return buffer.getvalue()


def make_session(model, num_threads=None, device='cpu', allow_spinning=True):
    """An onnxruntime InferenceSession for model (a path or serialised bytes).

    Args:
        model (str | PathLike | bytes): the ONNX model.
        num_threads (int | None): intra-op threads; None means torch.get_num_threads(),
            so both backends use the same number of cores.
        device (str | torch.device): 'cpu', or 'cuda' when onnxruntime has the CUDA provider.
        allow_spinning (bool): whether idle intra-op threads busy-wait for the next piece of
            work (onnxruntime's default) instead of sleeping. Spinning saves a wake-up per
            operator on an idle machine, but on a machine shared with other busy processes
            the spinning threads take the cores the working ones need.
    Raises:
        FileNotFoundError: model is a path that does not exist.
        ValueError: the model is not a RetinaFace export (inputs / outputs do not match),
            or device is CUDA and this onnxruntime has no CUDA provider.
    """
    import onnxruntime as ort  # imported here: only the onnxruntime backend needs it

    if not isinstance(model, (bytes, bytearray)):
        model = os.fspath(model)
        if not os.path.isfile(model):
            raise FileNotFoundError(f"ONNX model not found: {model} (make one with convert_to_onnx.py)")
    device = torch.device(device)
    providers = ['CPUExecutionProvider']
    if device.type == 'cuda':
        if 'CUDAExecutionProvider' not in ort.get_available_providers():
            raise ValueError("device is CUDA but this onnxruntime has no CUDAExecutionProvider "
                             "(install onnxruntime-gpu, or use the torch backend on GPU)")
        providers = [('CUDAExecutionProvider', {'device_id': device.index or 0}), 'CPUExecutionProvider']
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if allow_spinning else '0')
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    name = 'the exported model' if isinstance(model, (bytes, bytearray)) else model
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise ValueError(f"{name} is not a loadable ONNX model: {type(e).__name__}: {e}") from e
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or len(outputs) != len(OUTPUT_NAMES):
        raise ValueError(f"{name} is not a RetinaFace export: inputs {inputs}, outputs {outputs} "
                         f"(expected [{INPUT_NAME!r}] and {list(OUTPUT_NAMES)})")
    return session


def verification_inputs(long_side=DEFAULT_LONG_SIDE, seed=0):
    """Two deterministic network inputs of different sizes for the export check.

    Returns:
        list[ndarray[1, 3, H, W]] float32: random BGR uint8 images minus BGR_MEAN, at
        long_side x long_side and VERIFY_ODD_SIZE.
    """
    from utils.inference import BGR_MEAN  # late import: utils.inference imports this module

    rng = np.random.default_rng(seed)
    mean = np.asarray(BGR_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    sizes = [(long_side, long_side), VERIFY_ODD_SIZE]
    return [rng.integers(0, 256, size=(1, 3, h, w)).astype(np.float32) - mean for h, w in sizes]


def verify_onnx(net, model, inputs, atol=VERIFY_ATOL):
    """Check that onnxruntime running model gives net's outputs on each input.

    Args:
        net (nn.Module): the PyTorch model the export was made from.
        model (str | PathLike | bytes): the ONNX model.
        inputs (list[ndarray[1, 3, H, W]]): network inputs (float32).
        atol (float): the largest allowed absolute difference in any output.
    Returns:
        list[dict]: per input, {'size': (H, W), 'max_abs_diff': {output name: float}}.
    Raises:
        ValueError: an output differs by more than atol, or has another shape; the
            message names the output, the input size and the difference.
    """
    session = make_session(model)
    net.eval()
    device = next(net.parameters()).device
    report = []
    for x in inputs:
        size = tuple(x.shape[2:])
        ort_outputs = session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
        with torch.inference_mode():
            torch_outputs = [t.cpu().numpy() for t in net(torch.from_numpy(x).to(device))]
        diffs = {}
        for name, a, b in zip(OUTPUT_NAMES, ort_outputs, torch_outputs):
            if a.shape != b.shape:
                raise ValueError(f"ONNX output {name!r} has shape {a.shape} but PyTorch gives {b.shape} "
                                 f"for a {size[0]}x{size[1]} input")
            diffs[name] = float(np.abs(a - b).max()) if a.size else 0.0
            if not diffs[name] <= atol:  # also catches NaN
                raise ValueError(f"ONNX export does not match PyTorch: output {name!r} differs by "
                                 f"{diffs[name]:.3g} (> {atol:g}) on a {size[0]}x{size[1]} input")
        logger.info("onnxruntime matches PyTorch on %dx%d: %s", size[0], size[1],
                    ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
        report.append({'size': size, 'max_abs_diff': diffs})
    return report
