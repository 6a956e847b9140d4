import contextlib
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


@contextlib.contextmanager
def recorded_steps():
    """Record train.py's training steps as they run, by wrapping train._train_step for the
    duration: yields a list that fills with {'iteration', 'lr', 'loc', 'cla', 'landm',
    'step_time', 'data_time'} per step (the learning rate the step trained with)."""
    import train

    records = []
    real = train._train_step

    def recording(net, criterion, optimizer, *args, iteration, **kwargs):
        lr = optimizer.param_groups[0]['lr']
        (loc, cla, landm), stop, step_time, data_time = real(net, criterion, optimizer, *args, iteration=iteration,
                                                             **kwargs)
        records.append({'iteration': iteration, 'lr': lr, 'loc': loc, 'cla': cla, 'landm': landm,
                        'step_time': step_time, 'data_time': data_time})
        return (loc, cla, landm), stop, step_time, data_time

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, '_train_step', recording)
        yield records
