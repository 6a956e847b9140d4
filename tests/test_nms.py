"""fast_nms returns exactly the keep list of the reference's py_cpu_nms, compiled or not."""
import logging

import numpy as np
import pytest
import torch

import utils.compiled
import utils.nms
from data import cfg_mnet
from layers.functions.prior_box import PriorBox
from tests.conftest import GOLDEN_IMAGES, need_shared
from utils.box_utils import decode
from utils.nms import fast_nms
from utils.nms.py_cpu_nms import py_cpu_nms

SCORE_THRESHOLD = 0.02


def _candidates(name):
    """Pre-NMS detections of a golden image, from its golden raw network outputs."""
    raw = np.load(need_shared('golden', 'mnet', f'{name}_raw.npz'))
    shape = np.load(need_shared('golden', 'mnet', f'{name}_dets.npy')).shape  # only to check it exists
    assert shape[1] == 15
    summary_h_w = {'test': (624, 1024), 'kids_group': (768, 1024), 'street_crowd': (719, 1280),
                   'largest_selfie': (898, 1600)}
    h, w = summary_h_w.get(name, (416, 416))
    priors = PriorBox(cfg_mnet, image_size=(h, w)).forward()
    boxes = decode(torch.from_numpy(raw['loc'][0]), priors, cfg_mnet['variance']).numpy()
    boxes = boxes * np.array([w, h, w, h], dtype=np.float32)
    scores = raw['conf'][0, :, 1]
    inds = np.where(scores > SCORE_THRESHOLD)[0]
    order = scores[inds].argsort()[::-1]
    return np.hstack((boxes[inds][order], scores[inds][order, None])).astype(np.float32)


@pytest.fixture
def unbuilt(monkeypatch, caplog):
    """fast_nms as in a checkout whose compiled NMS is not built; caplog records its warnings."""
    monkeypatch.setattr(utils.nms, 'compiled', None)
    utils.compiled.warn_not_built.cache_clear()
    caplog.set_level(logging.WARNING, logger='utils.compiled')
    yield caplog
    utils.compiled.warn_not_built.cache_clear()


@pytest.fixture
def unbuilt_nms(monkeypatch):
    """A context manager that runs fast_nms as if the compiled NMS were not built."""
    from contextlib import contextmanager

    @contextmanager
    def run():
        with monkeypatch.context() as m:
            m.setattr(utils.nms, 'compiled', None)
            yield

    return run


def _keep_lists(dets, thresh, unbuilt_nms):
    """py_cpu_nms's keep list, the compiled kernel's and the fallback's, as lists of ints."""
    from utils.nms.cpu_nms import cpu_nms
    compiled = list(cpu_nms(dets, thresh))
    with unbuilt_nms():
        fallback = fast_nms(dets, thresh)
    assert fallback.dtype == np.int64
    return [int(i) for i in py_cpu_nms(dets, thresh)], compiled, list(fallback)


def test_fallback_warns_once_naming_the_root_build_command(unbuilt):
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]], dtype=np.float32)
    assert list(fast_nms(dets, 0.3)) == [0]
    assert list(fast_nms(dets, 0.34)) == [0, 1]
    warnings = [r.getMessage() for r in unbuilt.records if 'not built' in r.getMessage()]
    assert len(warnings) == 1 and 'cpu_nms.pyx' in warnings[0]
    assert '`python setup.py build_ext --inplace` at the repository root' in warnings[0]


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
@pytest.mark.parametrize('thresh', [0.3, 0.4, 0.5])
def test_compiled_and_fallback_equal_py_cpu_nms_on_golden_candidates(name, thresh, unbuilt_nms):
    reference, compiled, fallback = _keep_lists(_candidates(name), thresh, unbuilt_nms)
    assert compiled == reference and fallback == reference


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
def test_golden_detections_survive_nms_unchanged(name, unbuilt_nms):
    dets = np.load(need_shared('golden', 'mnet', f'{name}_dets.npy'))[:, :5]
    reference, compiled, fallback = _keep_lists(dets, 0.4, unbuilt_nms)
    assert compiled == fallback == reference == list(range(len(dets)))


def test_plus_one_convention_hand_computed(unbuilt_nms):
    # Two 10x10-pixel boxes (0..9) offset by 5 px: +1 widths give inter 5*10=50,
    # union 100+100-50=150, IoU 1/3; without +1 it would be 4*9/(81+81-36) = 0.286.
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]], dtype=np.float32)
    for thresh, expected in ((0.3, [0]), (0.34, [0, 1])):
        assert _keep_lists(dets, thresh, unbuilt_nms) == (expected, expected, expected)


def test_iou_exactly_at_the_threshold_keeps_the_box(unbuilt_nms):
    # IoU 50/150 rounds to float32(1/3), and so does the threshold 1/3: `ovr <= thresh`
    # keeps the box; one float32 step lower suppresses it.
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]], dtype=np.float32)
    third = np.float32(1 / 3)
    assert _keep_lists(dets, 1 / 3, unbuilt_nms) == ([0, 1], [0, 1], [0, 1])
    assert _keep_lists(dets, float(third), unbuilt_nms) == ([0, 1], [0, 1], [0, 1])
    assert _keep_lists(dets, float(np.nextafter(third, np.float32(0))), unbuilt_nms) == ([0], [0], [0])


def _plus_one_pairs(seed, n):
    """Overlapping float32 box pairs (a, b) for which the +1 is not associative: for a
    width or height (of a, of b, or of their intersection) (hi - lo) + 1 != (hi + 1) - lo
    in float32, so emulating the +1 by widening the boxes first would change the IoU."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 2000, (n, 2)).astype(np.float32)
    size = rng.uniform(1, 300, (n, 2)).astype(np.float32)
    a = np.hstack([corner, corner + size])
    b = (a + (rng.uniform(-1, 1, (n, 4)) * np.hstack([size, size]) / 4).astype(np.float32))
    one = np.float32(1)

    def reordered(lo, hi):
        return ((hi - lo) + one) != ((hi + one) - lo)

    chosen = np.zeros(n, dtype=bool)
    for c in (0, 1):
        chosen |= reordered(a[:, c], a[:, c + 2]) | reordered(b[:, c], b[:, c + 2])
        chosen |= reordered(np.maximum(a[:, c], b[:, c]), np.minimum(a[:, c + 2], b[:, c + 2]))
    return a[chosen], b[chosen]


def _py_cpu_nms_iou(a, b):
    """py_cpu_nms's float32 IoU of boxes a and b, op for op."""
    one, zero = np.float32(1), np.float32(0)

    def area(p):
        return ((p[2] - p[0]) + one) * ((p[3] - p[1]) + one)

    w = max(zero, (min(a[2], b[2]) - max(a[0], b[0])) + one)
    h = max(zero, (min(a[3], b[3]) - max(a[1], b[1])) + one)
    inter = w * h
    return inter / ((area(a) + area(b)) - inter)


def test_near_ties_where_the_plus_one_order_matters(unbuilt_nms):
    """Thresholds at the pair's own IoU and one float32 step either side: the compiled
    kernel and the fallback decide every near tie as py_cpu_nms does."""
    a, b = _plus_one_pairs(0, 20000)
    assert len(a) > 40
    for p, q in zip(a, b):
        dets = np.array([[*p, 0.9], [*q, 0.8]], dtype=np.float32)
        iou = _py_cpu_nms_iou(p, q)
        assert 0 < iou < 1
        below, above = np.nextafter(iou, np.float32(0)), np.nextafter(iou, np.float32(1))
        for thresh, expected in ((iou, [0, 1]), (below, [0]), (above, [0, 1])):
            assert _keep_lists(dets, float(thresh), unbuilt_nms) == (expected, expected, expected)


def test_empty_input(unbuilt_nms):
    assert _keep_lists(np.zeros((0, 5), np.float32), 0.4, unbuilt_nms) == ([], [], [])


def test_dtypes_the_kernel_does_not_take_go_to_py_cpu_nms():
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8], [20, 20, 29, 29, 0.7]], dtype=np.float16)
    keep = fast_nms(dets, 0.3)
    assert keep.dtype == np.int64 and list(keep) == py_cpu_nms(dets, 0.3) == [0, 2]
