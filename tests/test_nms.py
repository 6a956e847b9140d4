"""The fast NMS returns exactly the keep list of the reference's py_cpu_nms."""
import numpy as np
import pytest
import torch

from data import cfg_mnet
from layers.functions.prior_box import PriorBox
from tests.conftest import GOLDEN_IMAGES, need_shared
from utils.box_utils import decode
from utils.nms.py_cpu_nms import nms, py_cpu_nms

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


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
@pytest.mark.parametrize('thresh', [0.3, 0.4, 0.5])
def test_fast_nms_equals_py_cpu_nms_on_golden_candidates(name, thresh):
    dets = _candidates(name)
    assert list(nms(dets, thresh)) == list(py_cpu_nms(dets, thresh))


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
def test_golden_detections_survive_nms_unchanged(name):
    dets = np.load(need_shared('golden', 'mnet', f'{name}_dets.npy'))[:, :5]
    assert list(nms(dets, 0.4)) == list(py_cpu_nms(dets, 0.4)) == list(range(len(dets)))


def test_plus_one_convention_hand_computed():
    # Two 10x10-pixel boxes (0..9) offset by 5 px: +1 widths give inter 5*10=50,
    # union 100+100-50=150, IoU 1/3; without +1 it would be 4*9/(81+81-36) = 0.286.
    dets = np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]], dtype=np.float32)
    assert py_cpu_nms(dets, 0.3) == [0]
    assert list(nms(dets, 0.3)) == [0]
    assert list(nms(dets, 0.34)) == [0, 1]


def test_empty_input():
    assert list(nms(np.zeros((0, 5), np.float32), 0.4)) == []
