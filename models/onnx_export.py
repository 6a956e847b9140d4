"""Export RetinaFace to ONNX and check the export against PyTorch.

Used by convert_to_onnx.py and by the 'onnxruntime' backend of models.detector, which
exports on the fly when it is not given a model file.

The exported graph takes 'input0' [B, 3, H, W] (float32, BGR minus BGR_MEAN, as the
PyTorch model does) with dynamic B, H and W, and returns 'loc' [B, P, 4], 'conf' [B, P, 2]
(softmax probabilities) and 'landms' [B, P, 10], where P is the number of priors of
PriorBox(cfg, (H, W)).

The file records what the detection pipeline needs to run it in its metadata
(metadata_props, values as JSON): the network ('network': 'mobile0.25' or 'resnet50'),
the config values the pipeline uses ('steps', 'min_sizes', 'clip', 'variance') and the
mean BGR pixel the input is made with ('bgr_mean'). A run of the file then needs neither
torch nor the config dicts, and names the right network whatever --network says. For
files without the network (older exports, the reference's), onnx_network reads it from
the head's width, and files without the config run with the network's config dict. A
file whose metadata names another network than its graph holds, or whose config's priors
are not its outputs (edited, or copied from another file), is refused when it is loaded.

torch is imported only by the functions that export or compare with PyTorch: running an
exported file (make_session, pipeline_metadata) needs numpy and onnxruntime only.
"""
from __future__ import annotations

import io
import json
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from data.config import BGR_MEAN, NETWORKS
from layers.functions.prior_box import prior_boxes
from utils.errors import InputError, InputNotFoundError

if TYPE_CHECKING:  # imported by the functions that use them: the torch-free path never loads torch
    import onnxruntime
    import torch

logger = logging.getLogger(__name__)

INPUT_NAME = 'input0'  # the reference's input name, kept so existing consumers still work
OUTPUT_NAMES = ('loc', 'conf', 'landms')
DEFAULT_OPSET = 17  # supported by every current onnxruntime and TensorRT release
# The opsets convert_to_onnx.py accepts: those its tests export and verify. Below 9 the
# exporter cannot express the FPN's upsampling; above 20 is past what torch's
# TorchScript-based exporter (the one export_onnx uses) supports.
MIN_OPSET, MAX_OPSET = 9, 20
DEFAULT_LONG_SIDE = 640
# The tolerance of the export check: the largest |onnxruntime - PyTorch| allowed in any
# output. The two runtimes order float sums differently, so their outputs differ in the
# last float32 digits; a wrong export differs by far more.
VERIFY_ATOL = 1e-4
# A second, odd (not a multiple of any stride) size for the export check, so that the
# dynamic height / width axes are exercised as well as the export size.
VERIFY_ODD_SIZE = (417, 301)
# The metadata_props key naming the network ('mobile0.25' or 'resnet50') of an export.
NETWORK_KEY = 'network'
# The metadata_props keys of the config values the pipeline uses (cfg[key] as JSON), and
# of the mean BGR pixel subtracted from the input.
CONFIG_KEYS = ('steps', 'min_sizes', 'clip', 'variance')
MEAN_KEY = 'bgr_mean'
# The landmark head's 1x1 conv has 10 outputs per anchor (2 anchors per cell): its weight
# [20, C, 1, 1] gives the FPN width C, which tells the networks apart.
_LANDMARK_HEAD_OUTPUTS = 20
# The input (h, w) an export is run on once when it is loaded, to check that the priors of
# its metadata's config are as many as its outputs. Odd sizes, so that a stride the graph
# does not have rounds to another feature-map size; small, so that it costs little.
PRIOR_CHECK_SIZE = (65, 97)

_DYNAMIC_AXES = {
    INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'},
    'loc': {0: 'batch', 1: 'priors'},
    'conf': {0: 'batch', 1: 'priors'},
    'landms': {0: 'batch', 1: 'priors'},
}


def _network_of_width(width):
    """The --network name whose FPN width (cfg['out_channel']) is width, or None."""
    names = [n for n, cfg in NETWORKS.items() if cfg['out_channel'] == width]
    return names[0] if len(names) == 1 else None


def pipeline_metadata_props(network: str | None, cfg: dict | None) -> dict[str, str]:
    """The metadata_props an export carries: {key: value (str)}.

    Args:
        network (str | None): the --network name; cfg (dict | None): its config.
    """
    props = {}
    if network is not None:
        props[NETWORK_KEY] = network
    if cfg is not None:
        props.update({key: json.dumps(cfg[key]) for key in CONFIG_KEYS})
        props[MEAN_KEY] = json.dumps(list(BGR_MEAN))
    return props


def export_onnx(net: torch.nn.Module, f: str | os.PathLike | BinaryIO, opset: int = DEFAULT_OPSET,
                long_side: int = DEFAULT_LONG_SIDE, cfg: dict | None = None) -> str | os.PathLike | BinaryIO:
    """Export net (a RetinaFace in phase 'test') to ONNX, with what the pipeline needs to
    run it in the metadata (see pipeline_metadata_props).

    Args:
        net (nn.Module): the model; it is put in eval mode and traced on its own device.
        f (str | PathLike | BinaryIO): where to write the model (a path or a buffer).
        opset (int): the ONNX opset.
        long_side (int): the side of the square dummy input used for tracing
            (the reference's --long_side); the exported axes stay dynamic.
        cfg (dict | None): net's config; None: the config of the network its head's
            width names.
    Returns:
        f.
    """
    import onnx  # the exporter needs it anyway
    import torch

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
    if cfg is None and network is not None:
        cfg = NETWORKS[network]
    for key, value in pipeline_metadata_props(network, cfg).items():
        model.metadata_props.add(key=key, value=value)
    data = model.SerializeToString()
    if hasattr(f, 'write'):
        f.write(data)
    else:
        with open(f, 'wb') as out:
            out.write(data)
    return f


def onnx_network(model: str | os.PathLike | bytes) -> str | None:
    """The network ('mobile0.25' or 'resnet50') an ONNX export holds, or None if unknown.

    Read from the metadata export_onnx writes; for files without it, from the width of
    the landmark head's weights. A file that is not ONNX gives None (make_session reports it).

    Args:
        model (str | PathLike | bytes): the ONNX model.
    """
    import onnx

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
    return _graph_network(proto)[0]


def _graph_network(proto):
    """(network name or None, FPN width or None) of an ONNX graph, read from the width of
    its landmark head's 1x1 conv weights (cfg['out_channel']), whatever its metadata says."""
    widths = {int(t.dims[1]) for t in proto.graph.initializer
              if len(t.dims) == 4 and t.dims[0] == _LANDMARK_HEAD_OUTPUTS and tuple(t.dims[2:]) == (1, 1)}
    if len(widths) != 1:
        return None, None
    width = widths.pop()
    return _network_of_width(width), width


def export_onnx_bytes(net: torch.nn.Module, opset: int = DEFAULT_OPSET, cfg: dict | None = None) -> bytes:
    """Export net to ONNX in memory and return the serialised model (bytes)."""
    buffer = io.BytesIO()
    export_onnx(net, buffer, opset=opset, cfg=cfg)
    return buffer.getvalue()


def pipeline_metadata(session: onnxruntime.InferenceSession, name: str = 'the ONNX model'
                      ) -> tuple[str | None, dict | None, tuple[float, ...] | None]:
    """What an export's metadata says about the pipeline that runs it.

    Args:
        session (onnxruntime.InferenceSession): the loaded model.
        name (str): the file, for error messages.
    Returns:
        (network str | None, config dict | None with CONFIG_KEYS, mean tuple | None):
        None for what the file does not carry (older exports).
    Raises:
        InputError: a value is there but malformed; the message names the file and key.
    """
    props = session.get_modelmeta().custom_metadata_map
    network = props.get(NETWORK_KEY)
    if network is not None and network not in NETWORKS:
        raise InputError(f"{name}: metadata {NETWORK_KEY!r} is {network!r}, expected one of {sorted(NETWORKS)}")

    def value(key):
        try:
            return json.loads(props[key])
        except ValueError:
            raise InputError(f"{name}: metadata {key!r} is not JSON: {props[key]!r}") from None

    def numbers(x, n=None):
        return (isinstance(x, list) and (n is None or len(x) == n) and len(x) > 0
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x))

    cfg = None
    if all(key in props for key in CONFIG_KEYS):
        cfg = {key: value(key) for key in CONFIG_KEYS}
        steps, min_sizes = cfg['steps'], cfg['min_sizes']
        if not (numbers(steps) and all(isinstance(x, int) and x > 0 for x in steps)
                and isinstance(min_sizes, list) and len(min_sizes) == len(steps)
                and all(numbers(m) and min(m) > 0 for m in min_sizes)
                and isinstance(cfg['clip'], bool) and numbers(cfg['variance'], 2)):
            raise InputError(f"{name}: metadata config is malformed: "
                             + ", ".join(f"{k}={props[k]}" for k in CONFIG_KEYS))
    mean = None
    if MEAN_KEY in props:
        mean = value(MEAN_KEY)
        if not numbers(mean, 3):
            raise InputError(f"{name}: metadata {MEAN_KEY!r} must be 3 numbers (B, G, R), got {props[MEAN_KEY]!r}")
        mean = tuple(mean)
    return network, cfg, mean


def default_num_threads() -> int:
    """onnxruntime's intra-op threads when none are asked for: torch's count when torch is
    loaded (both backends then use the same cores); otherwise OMP_NUM_THREADS when set,
    else 0 (onnxruntime's default: one per physical core). Importing torch just to ask
    would cost the torch-free path its start-up time."""
    if 'torch' in sys.modules:
        return sys.modules['torch'].get_num_threads()
    try:
        return max(int(os.environ.get('OMP_NUM_THREADS', '')), 0)
    except ValueError:
        return 0


def make_session(model: str | os.PathLike | bytes, num_threads: int | None = None, device: str | torch.device = 'cpu',
                 allow_spinning: bool = True) -> onnxruntime.InferenceSession:
    """An onnxruntime InferenceSession for model (a path or serialised bytes).

    Args:
        model (str | PathLike | bytes): the ONNX model.
        num_threads (int | None): intra-op threads; None: default_num_threads().
        device (str | torch.device | utils.device.HostDevice): 'cpu', or 'cuda' when
            onnxruntime has the CUDA provider.
        allow_spinning (bool): whether idle intra-op threads busy-wait for the next piece of
            work (onnxruntime's default) instead of sleeping. Spinning saves a wake-up per
            operator on an idle machine, but on a machine shared with other busy processes
            the spinning threads take the cores the working ones need.
    Raises:
        InputNotFoundError: model is a path that does not exist.
        InputError: the model is not a RetinaFace export (inputs / outputs do not match),
            its metadata disagrees with its graph (check_metadata_matches_graph), or
            device is CUDA and this onnxruntime has no CUDA provider.
    """
    import onnxruntime as ort  # imported here: only the onnxruntime backend needs it

    if not isinstance(model, (bytes, bytearray)):
        model = os.fspath(model)
        if os.path.isdir(model):
            raise InputError(f"ONNX model {model} is a folder, not an .onnx file")
        if not os.path.isfile(model):
            raise InputNotFoundError(f"ONNX model not found: {model} (make one with convert_to_onnx.py)")
    device_type, _, index = str(device).partition(':')
    providers = ['CPUExecutionProvider']
    if device_type == 'cuda':
        if 'CUDAExecutionProvider' not in ort.get_available_providers():
            raise InputError("device is CUDA but this onnxruntime has no CUDAExecutionProvider "
                             "(install onnxruntime-gpu, or use the torch backend on GPU)")
        providers = [('CUDAExecutionProvider', {'device_id': int(index or 0)}), 'CPUExecutionProvider']
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(num_threads or default_num_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if allow_spinning else '0')
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    name = 'the exported model' if isinstance(model, (bytes, bytearray)) else model
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise InputError(f"{name} is not a loadable ONNX model: {type(e).__name__}: {e}") from e
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or len(outputs) != len(OUTPUT_NAMES):
        raise InputError(f"{name} is not a RetinaFace export: inputs {inputs}, outputs {outputs} "
                         f"(expected [{INPUT_NAME!r}] and {list(OUTPUT_NAMES)})")
    check_metadata_matches_graph(session, model, name)
    return session


def check_metadata_matches_graph(session: onnxruntime.InferenceSession, model: str | bytes, name: str) -> None:
    """Check that what an export's metadata says is true of its graph.

    The metadata is plain text anyone can edit (or copy from another file), and the
    pipeline trusts it: a wrong network mislabels every result, and a config whose priors
    are not the graph's outputs decodes boxes against the wrong priors (or indexes past
    them). Two checks, each of what the graph itself shows:

    * the network: the width of the landmark head (cfg['out_channel']: 64 for mobile0.25,
      256 for resnet50) is the one difference between the two networks' graphs that does
      not depend on reading every layer, and onnx_network already reads it for older files;
    * the config: one run on a PRIOR_CHECK_SIZE input gives the graph's prior count, which
      the metadata's steps and min_sizes must give too.

    Args:
        session (onnxruntime.InferenceSession): the loaded model.
        model (str | bytes): the same model, as make_session was given it (its graph is
            read with the onnx package).
        name (str): the file, for error messages.
    Raises:
        InputError: the metadata is malformed, or disagrees with the graph.
    """
    network, cfg, _ = pipeline_metadata(session, name)
    if network is not None:
        import onnx

        if isinstance(model, (bytes, bytearray)):
            proto = onnx.load_from_string(bytes(model))
        else:
            proto = onnx.load(model, load_external_data=False)
        found, width = _graph_network(proto)
        if found is not None and found != network:
            raise InputError(f"{name}: its metadata says network {network!r}, but its graph is a {found} network "
                             f"(its landmark head is {width} channels wide, {network}'s "
                             f"{NETWORKS[network]['out_channel']}); the metadata was edited or copied from "
                             f"another file: export the model again with convert_to_onnx.py")
    if cfg is None:  # an older export: it runs with its network's own config
        return
    h, w = PRIOR_CHECK_SIZE
    x = np.zeros((1, 3, h, w), dtype=np.float32)
    outputs = session.get_outputs()[0].name
    got = session.run([outputs], {INPUT_NAME: x})[0].shape[1]
    expected = len(prior_boxes(cfg, (h, w)))
    if got != expected:
        raise InputError(f"{name}: its metadata (steps {cfg['steps']}, min_sizes {cfg['min_sizes']}) gives "
                         f"{expected} priors for a {h}x{w} input, but the graph outputs {got}; the metadata was "
                         f"edited or copied from another file: export the model again with convert_to_onnx.py")


def verification_inputs(long_side: int = DEFAULT_LONG_SIDE, seed: int = 0) -> list[np.ndarray]:
    """Two deterministic network inputs of different sizes for the export check.

    Returns:
        list[ndarray[1, 3, H, W]] float32: random BGR uint8 images minus BGR_MEAN, at
        long_side x long_side and VERIFY_ODD_SIZE.
    """
    rng = np.random.default_rng(seed)
    mean = np.asarray(BGR_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    sizes = [(long_side, long_side), VERIFY_ODD_SIZE]
    return [rng.integers(0, 256, size=(1, 3, h, w)).astype(np.float32) - mean for h, w in sizes]


def verify_onnx(net: torch.nn.Module, model: str | os.PathLike | bytes, inputs: list[np.ndarray],
                atol: float = VERIFY_ATOL) -> list[dict]:
    """Check that onnxruntime running model gives net's outputs on each input.

    Args:
        net (nn.Module): the PyTorch model the export was made from.
        model (str | PathLike | bytes): the ONNX model.
        inputs (list[ndarray[1, 3, H, W]]): network inputs (float32).
        atol (float): the largest allowed absolute difference in any output.
    Returns:
        list[dict]: per input, {'size': (H, W), 'max_abs_diff': {output name: float}}.
    Raises:
        InputError: an output differs by more than atol, or has another shape; the
            message names the output, the input size and the difference.
    """
    import torch

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
                raise InputError(f"ONNX output {name!r} has shape {a.shape} but PyTorch gives {b.shape} "
                                 f"for a {size[0]}x{size[1]} input")
            diffs[name] = float(np.abs(a - b).max()) if a.size else 0.0
            if not diffs[name] <= atol:  # also catches NaN
                raise InputError(f"ONNX export does not match PyTorch: output {name!r} differs by "
                                 f"{diffs[name]:.3g} (> {atol:g}) on a {size[0]}x{size[1]} input")
        logger.info("onnxruntime matches PyTorch on %dx%d: max |diff| %s (<= %g)", size[0], size[1],
                    ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()), atol)
        report.append({'size': size, 'max_abs_diff': diffs})
    return report
