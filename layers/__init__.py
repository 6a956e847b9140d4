from .functions import *
# The loss (layers.modules, which needs torch) loads when first used, so that the priors
# can be imported by the torch-free inference path.
__all__ = ['PriorBox', 'prior_boxes', 'MultiBoxLoss']


def __getattr__(name):
    if name == 'MultiBoxLoss':
        from .modules import MultiBoxLoss

        return MultiBoxLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
