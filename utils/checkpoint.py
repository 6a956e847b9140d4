"""The one checkpoint loader every script uses.

It accepts what users actually have on disk: a raw state_dict, a {'state_dict': ...}
wrapper (the ImageNet backbone file), a {'model': ...} wrapper (this project's full
training state), keys with the 'module.' prefix that DataParallel / DDP add, and the
legacy non-zip torch format of the published weights. Tensors are always loaded on the
CPU first, so a checkpoint saved on a GPU opens on a machine without one.

Unlike the reference, which loads with strict=False and carries on with whatever
matched, a checkpoint that does not fit the model is an error that names the file, and so
is one holding a NaN or an infinity (it would detect nothing, silently).
"""
import logging
import os
from typing import TypeVar

import torch

from utils.errors import InputError, InputNotFoundError
from utils.input_files import file_sha256

logger = logging.getLogger(__name__)

# A key that only one of the two architectures has, to tell the user which network a
# mismatching file was trained for.
_NETWORK_SIGNATURES = {
    'body.stage1.0.0.weight': 'mobilenet0.25 (--network mobile0.25)',
    'body.conv1.weight': 'Resnet50 (--network resnet50)',
}


# SHA-256 of the published files (the checksums in the shared data's weights/SHA256SUMS),
# so that a log names the exact weights a result came from.
OFFICIAL_WEIGHTS = {
    '2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220':
        'mobilenet0.25_Final.pth, the published RetinaFace MobileNet0.25 weights',
    '75c37f8d438b7c6aed2e6b310fd0540c40dabf0dd820770bd7082668dfd7c1c1':
        'mobilenetV1X0.25_pretrain.tar, the published ImageNet MobileNetV1 x0.25 backbone',
}
# torchvision names its weight files after the first hex digits of their SHA-256, and
# checks them on download; the ResNet50 backbone the reference trains from is one.
OFFICIAL_PREFIXES = {
    '0676ba61': "resnet50-0676ba61.pth, torchvision's ImageNet ResNet50 backbone",
}
_identified = {}  # (real path, size, mtime) -> sha256, so each file is hashed and logged once
# load_model gives back the model it was given, typed as that model's own class.
_Model = TypeVar('_Model', bound=torch.nn.Module)


def identify_weights(path: str | os.PathLike) -> tuple[str, str | None]:
    """Log which weights path holds, once per file: the official file's name when its
    SHA-256 is one of the published files', else the SHA-256 itself, so that any result
    can be traced to the weights that made it. Returns (sha256, official name or None)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    known = key in _identified
    sha = _identified[key] if known else file_sha256(path)
    _identified[key] = sha
    name = OFFICIAL_WEIGHTS.get(sha) or next((n for p, n in OFFICIAL_PREFIXES.items() if sha.startswith(p)), None)
    if not known:
        if name:
            logger.info("%s is %s (sha256 %s)", path, name, sha)
        else:
            logger.info("%s is not one of the published weight files: sha256 %s", path, sha)
    return sha, name


def _strip_prefix(state_dict, prefix='module.'):
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return a plain {key: Tensor} dict on the CPU.

    Raises InputNotFoundError if path does not exist, and InputError if it is not a
    PyTorch checkpoint (a truncated or text file) or holds no state_dict.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise InputNotFoundError(f"checkpoint not found: {path}")
    identify_weights(path)
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # unpickling arbitrary bytes can fail in many ways; all mean "not a checkpoint"
        raise InputError(
            f"{path} is not a readable PyTorch checkpoint (truncated, corrupt or not a .pth file): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    if isinstance(obj, dict):
        for wrapper in ('state_dict', 'model'):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        desc = list(obj.keys())[:5] if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{path} does not hold a state_dict of tensors (found {desc})")
    state_dict = _strip_prefix(obj)
    check_finite(state_dict, path)
    return state_dict


def non_finite_keys(tensors: dict[str, object]) -> list[str]:
    """The keys of the floating-point tensors holding a NaN or an infinity, in order; nested
    dicts and lists (an optimizer's state) are searched too, their keys joined by '.'."""
    bad = []

    def visit(key, value):
        if torch.is_tensor(value):
            if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
                bad.append(key)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(f"{key}.{k}" if key else str(k), v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(f"{key}.{i}" if key else str(i), v)

    visit('', tensors)
    return bad


def check_finite(tensors: dict[str, object], path: str | os.PathLike, what: str = 'weight') -> None:
    """Refuse a checkpoint with a NaN or an infinity in any of its tensors: a network with
    one gives NaN scores, which no threshold keeps, so it would detect nothing without a
    word. Such a file comes from a training run that diverged, or is damaged.

    Raises:
        InputError: naming path, the count and the first keys that hold them.
    """
    bad = non_finite_keys(tensors)
    if bad:
        raise InputError(f"{os.fspath(path)} holds NaN or infinite values in {len(bad)} {what} tensors "
                         f"(e.g. {bad[:3]}): it was saved by a training run that diverged, or is damaged; "
                         f"use a checkpoint saved before the loss became NaN")


def _guess_network(keys):
    for key, network in _NETWORK_SIGNATURES.items():
        if key in keys:
            return network
    return None


def load_model(model: _Model, path: str | os.PathLike) -> _Model:
    """Load a checkpoint file into model with strict key and shape checking.

    Returns the model. Raises InputError naming the file, the counts of missing and
    unexpected keys with a few examples, and the network the file seems to be for.
    """
    state_dict = load_state_dict_file(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        guess = _guess_network(state_dict)
        hint = f" The file looks like weights for {guess}." if guess else ""
        raise InputError(
            f"{path} does not fit this model: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), "
            f"{len(mismatched)} shape mismatches (e.g. {mismatched[:2]}).{hint}")
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded %d tensors from %s", len(state_dict), path)
    return model
