"""The compiled NMS (utils/nms/cpu_nms.pyx) returns exactly the reference py_cpu_nms's keep list.

cpu_nms compares a candidate only with the kept boxes near it (a grid), or with every kept
box where that shortcut is unsafe (the plain loop); the inputs below exercise both, and the
keep list must be py_cpu_nms's either way.
"""
import numpy as np
import pytest

import utils.nms
from tests.conftest import GOLDEN_IMAGES
from tests.test_nms import _candidates
from utils.nms.py_cpu_nms import py_cpu_nms


def test_kernel_is_built():
    # .ci/setup builds it; the pipeline slows down on crowds without it.
    from utils.nms import cpu_nms
    assert utils.nms.compiled is cpu_nms


def _keep(dets, thresh):
    from utils.nms.cpu_nms import cpu_nms
    keep = cpu_nms(dets, thresh)
    assert keep.dtype == np.int64
    return list(keep)


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
@pytest.mark.parametrize('thresh', [0.3, 0.4, 0.5])
def test_equals_py_cpu_nms_on_golden_candidates(name, thresh):
    dets = _candidates(name)
    assert _keep(dets, thresh) == list(py_cpu_nms(dets, thresh))


def test_largest_selfie_is_exact():
    dets = _candidates('largest_selfie')
    assert len(dets) > 10000
    keep = _keep(dets, 0.4)
    assert len(keep) == 2850 and keep == list(py_cpu_nms(dets, 0.4))


def _random_dets(seed, n=1500, dtype=np.float32):
    """Clusters of boxes of mixed sizes, with tied scores, duplicates, nested boxes and
    negative coordinates."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-20, 400, size=(60, 2))[rng.integers(0, 60, n)] + rng.normal(0, 6, size=(n, 2))
    sizes = rng.choice([0.0, 4.0, 12.0, 30.0, 90.0], n)[:, None] * rng.uniform(0.7, 1.4, size=(n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    scores = np.round(rng.uniform(0.02, 1.0, n), 2)  # many ties
    dets = np.hstack([boxes, scores[:, None]]).astype(dtype)
    dets[100:110] = dets[200:210]  # exact duplicates
    outer = dets[310:320, :4]
    centre, half = (outer[:, :2] + outer[:, 2:]) / 2, (outer[:, 2:] - outer[:, :2]) / 4
    dets[300:310, :4] = np.hstack([centre - half, centre + half])  # nested, half the size
    dets[400:405, :4] = np.round(dets[400:405, :4])  # integer boxes: the +1 border cases
    dets[405:410, :4] = dets[400:405, :4] + np.array([1, 0, 1, 0], dtype=dtype)  # touching by one pixel
    return dets


@pytest.mark.parametrize('seed', range(6))
def test_equals_py_cpu_nms_on_random_boxes(seed):
    """Finite boxes and thresholds >= 0: the inputs the grid takes."""
    dets = _random_dets(seed)
    for thresh in (0.0, 0.1, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0):
        assert _keep(dets, thresh) == list(py_cpu_nms(dets, thresh)), thresh


def test_float64_dets():
    dets = _random_dets(7, n=400, dtype=np.float64)
    assert _keep(dets, 0.4) == list(py_cpu_nms(dets, 0.4))


def test_inputs_that_take_the_plain_loop():
    """Negative or NaN thresholds, degenerate boxes, non-finite and huge coordinates."""
    dets = _random_dets(8, n=300)
    for thresh in (-0.1, float('nan')):
        assert _keep(dets, thresh) == list(py_cpu_nms(dets, thresh)), thresh
    inverted = dets.copy()
    inverted[::7, [0, 2]] = inverted[::7, [2, 0]] - 5  # x2 < x1 - 1: width <= 0 (area may be > 0)
    inverted[1::7, [0, 1, 2, 3]] = inverted[1::7, [2, 3, 0, 1]] - 3  # both negative: area > 0
    nan, inf, huge = dets.copy(), dets.copy(), dets.copy()
    nan[5, 2] = np.nan
    nan[9, 4] = np.nan  # a NaN score too: argsort puts it first, as in py_cpu_nms
    inf[3, 3] = np.inf
    huge[0, 2:4] = 1e9  # beyond MAX_COORDINATE
    wide = dets.copy()
    wide[0, 2:4] = 5e6  # within MAX_COORDINATE but covering too many cells
    with np.errstate(invalid='ignore', over='ignore'):
        for case in (inverted, nan, inf, huge, wide):
            assert _keep(case, 0.4) == list(py_cpu_nms(case, 0.4))


def test_small_inputs():
    assert _keep(np.zeros((0, 5), np.float32), 0.4) == []
    assert _keep(np.array([[0, 0, 9, 9, 0.5]], np.float32), 0.4) == [0]
    # Two 10x10-pixel boxes offset by 5 px: IoU 1/3 with the +1 convention.
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]], dtype=np.float32)
    assert _keep(dets, 0.3) == [0]
    assert _keep(dets, 0.34) == [0, 1]

