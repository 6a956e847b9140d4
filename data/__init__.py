# The reference's exports: the dataset, its collate function, the augmentation and the configs.
# The configs load at once; the training data modules (which need torch) load when first
# used, so that inference with an exported ONNX model can read the configs without torch.
from .config import *
from .config import BGR_MEAN, MAX_SIZE, NETWORKS, TARGET_SIZE, cfg_for_network, cfg_mnet, cfg_re50

# Lazily loaded name -> the submodule that defines it.
_LAZY = {'WiderFaceDetection': 'wider_face', 'detection_collate': 'wider_face', 'preproc': 'data_augment'}
__all__ = ['cfg_mnet', 'cfg_re50', 'cfg_for_network', 'NETWORKS', 'BGR_MEAN', 'TARGET_SIZE', 'MAX_SIZE', *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f'{__name__}.{_LAZY[name]}'), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
