import os
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

from utils.datapaths import shared_path


def need_shared(*parts):
    """Return a path below the shared data folder, or skip the test if it is absent.

    Tests that need reference data may skip only when the data is missing, and say why.
    """
    p = shared_path(*parts)
    if not p.exists():
        pytest.skip(f"reference data not found: {p} (set RETINAFACE_DATA to the shared folder)")
    return p


# The images that ../shared/golden/mnet holds reference outputs for. The val416_* ones
# are the first three minitrain photos, named after the photo.
GOLDEN_IMAGES = ['test', 'kids_group', 'street_crowd', 'largest_selfie',
                 'val416_0_Parade_Parade_0_102', 'val416_0_Parade_Parade_0_125', 'val416_0_Parade_Parade_0_137']
VAL416_PREFIX = 'val416_'


def golden_image_path(name):
    """The photo behind a golden name (skips the test if the shared data is absent)."""
    if name.startswith(VAL416_PREFIX):
        stem = name[len(VAL416_PREFIX):]
        return need_shared('minitrain', 'train', 'images', '0--Parade', f'{stem}.jpg')
    return need_shared('images', f'{name}.jpg')


def signal_after(iteration, signum=signal.SIGTERM):
    """An on_step hook for train.main (see models.training.RunBook.on_step) that sends this
    process signum once the step of iteration (0-based) has run, as a Ctrl-C or a job
    scheduler would: the next step sees it at its sync, and the run stops after that step."""
    def hook(step):
        if step.iteration == iteration:
            os.kill(os.getpid(), signum)
    return hook
