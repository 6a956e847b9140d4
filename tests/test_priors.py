"""Prior boxes: golden sizes and a hand-computed tiny image."""
import numpy as np
import pytest
import torch

from data import cfg_mnet
from layers.functions.prior_box import PriorBox, prior_boxes
from tests.conftest import need_shared

GOLDEN_SIZES = ['640x640', '624x1024', '417x301', '32x32', '840x840', '1x1']


@pytest.mark.parametrize('size', GOLDEN_SIZES)
def test_priors_match_golden(size):
    golden = np.load(need_shared('golden', 'priors.npz'))[size]
    h, w = map(int, size.split('x'))
    priors = PriorBox(cfg_mnet, image_size=(h, w)).forward()
    assert priors.dtype == torch.float32
    assert priors.shape == golden.shape
    assert np.abs(priors.numpy() - golden).max() <= 1e-6


def test_priors_hand_computed_16x16():
    # 16x16 image: level 0 (step 8) has a 2x2 grid, levels 1 and 2 (steps 16, 32) one cell each.
    p = PriorBox(cfg_mnet, image_size=(16, 16)).forward()
    expected = []
    for (cy, cx) in [(4, 4), (4, 12), (12, 4), (12, 12)]:  # row-major cell centres in pixels
        for s in (16, 32):
            expected.append([cx / 16, cy / 16, s / 16, s / 16])
    for s in (64, 128):  # step 16: centre (8, 8)
        expected.append([0.5, 0.5, s / 16, s / 16])
    for s in (256, 512):  # step 32: ceil(16/32) = 1 cell, centre at 16 px
        expected.append([1.0, 1.0, s / 16, s / 16])
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float32))


def test_priors_non_square_hand_computed():
    # 8 rows x 24 cols image: level 0 is 1 row x 3 cols; widths are relative to 24, heights to 8.
    p = PriorBox(cfg_mnet, image_size=(8, 24)).forward()
    assert p.shape == (2 * 3 + 2 * 2 + 2 * 1, 4)
    torch.testing.assert_close(p[2], torch.tensor([12 / 24, 4 / 8, 16 / 24, 16 / 8]))


def test_forward_returns_a_fresh_tensor():
    a = PriorBox(cfg_mnet, image_size=(32, 32)).forward()
    a.zero_()
    b = PriorBox(cfg_mnet, image_size=(32, 32)).forward()
    assert b.abs().sum() > 0


def test_numpy_priors_are_computed_once_per_size_and_read_only():
    a = prior_boxes(cfg_mnet, (64, 48))
    assert prior_boxes(dict(cfg_mnet), [64, 48]) is a  # keyed on the values, not the objects
    assert prior_boxes(cfg_mnet, (48, 64)) is not a
    assert not a.flags.writeable
    assert a.tobytes() == PriorBox(cfg_mnet, image_size=(64, 48)).forward().numpy().tobytes()


def test_bad_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match='image_size'):
        PriorBox(cfg_mnet, image_size=(0, 10))
    with pytest.raises(ValueError, match=r'image_size must be a positive \(height, width\), got \(5,\)'):
        prior_boxes(cfg_mnet, (5,))
