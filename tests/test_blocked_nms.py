"""blocked_nms returns exactly the keep list of the reference's py_cpu_nms."""
import numpy as np
import pytest
import torch

from data import cfg_mnet
from tests.conftest import GOLDEN_IMAGES, golden_image_path, need_shared
from utils.inference import Detector
from utils.nms.blocked_nms import blocked_nms
from utils.nms.py_cpu_nms import py_cpu_nms


def _candidates(name):
    """The pre-NMS candidates (x1, y1, x2, y2, score) of a golden image, as the pipeline makes them."""
    import cv2
    raw = np.load(need_shared('golden', 'mnet', f'{name}_raw.npz'))
    h, w = cv2.imread(str(golden_image_path(name))).shape[:2]
    captured = {}

    import utils.inference as inference
    original = inference.blocked_nms

    def spy(dets, thresh):
        captured['dets'] = dets.copy()
        return original(dets, thresh)

    inference.blocked_nms = spy
    try:
        from models.retinaface import RetinaFace
        Detector(RetinaFace(cfg_mnet, 'test'), cfg_mnet).postprocess(
            *(torch.from_numpy(raw[k][0]) for k in ('loc', 'conf', 'landms')), (h, w), 1)
    finally:
        inference.blocked_nms = original
    return captured['dets']


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
@pytest.mark.parametrize('thresh', [0.3, 0.4, 0.5])
def test_equals_py_cpu_nms_on_golden_candidates(name, thresh):
    dets = _candidates(name)
    expected = list(py_cpu_nms(dets, thresh))
    # Small blocks and no size cut-off, so that every image exercises the blocked path.
    assert list(blocked_nms(dets, thresh, block=97, min_boxes=0)) == expected
    assert list(blocked_nms(dets, thresh)) == expected


def test_largest_selfie_is_blocked_and_exact():
    dets = _candidates('largest_selfie')
    assert len(dets) > 10000
    keep = blocked_nms(dets, 0.4)
    assert len(keep) == 2850 and list(keep) == list(py_cpu_nms(dets, 0.4))


@pytest.mark.parametrize('seed', range(6))
def test_equals_py_cpu_nms_on_random_boxes(seed):
    """Clusters of boxes of mixed sizes, with tied scores, duplicates and negative coordinates."""
    rng = np.random.default_rng(seed)
    n = 1500
    centres = rng.uniform(-20, 400, size=(60, 2))[rng.integers(0, 60, n)] + rng.normal(0, 6, size=(n, 2))
    sizes = rng.choice([4.0, 12.0, 30.0, 90.0], n)[:, None] * rng.uniform(0.7, 1.4, size=(n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    scores = np.round(rng.uniform(0.02, 1.0, n), 2)  # many ties
    dets = np.hstack([boxes, scores[:, None]]).astype(np.float32)
    dets[100:110] = dets[200:210]  # exact duplicates
    for thresh in (0.0, 0.4, 0.7):
        assert list(blocked_nms(dets, thresh, block=128, min_boxes=0)) == list(py_cpu_nms(dets, thresh)), thresh


def test_float64_and_degenerate_inputs_fall_back_or_agree():
    rng = np.random.default_rng(7)
    dets = np.hstack([rng.uniform(0, 50, (300, 2)), rng.uniform(60, 120, (300, 2)), rng.uniform(0, 1, (300, 1))])
    assert list(blocked_nms(dets, 0.4, block=50, min_boxes=0)) == list(py_cpu_nms(dets, 0.4))
    huge = dets.astype(np.float32)
    huge[0, 2:4] = 1e9  # a box too big for a grid
    assert list(blocked_nms(huge, 0.4, min_boxes=0)) == list(py_cpu_nms(huge, 0.4))
    assert list(blocked_nms(np.zeros((0, 5), np.float32), 0.4, min_boxes=0)) == []
