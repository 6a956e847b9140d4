"""Accurate mode (layers/functions/pyramid.py, Detector(pyramid=True), --pyramid): the scales,
the mirror mapping, box voting against a plain implementation of its description, and
the scripts' flags."""
import json

import numpy as np
import pytest

import detect
import test_fddb as fddb_script
import test_widerface as wider_script
from layers.functions.pyramid import (MIRRORED_LANDMARKS, PYRAMID_KEEP_TOP_K, box_vote, mirror_candidates,
                                      nms_merge, pyramid_scales)
from models.detector import load_detector
from tests.conftest import need_shared
from utils.cli import run_cli
from utils.errors import InputError
from utils.image import read_image
from utils.nms.py_cpu_nms import py_cpu_nms

VAL416 = ('minitrain', 'train', 'images', '0--Parade', '0_Parade_Parade_0_102.jpg')


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


@pytest.fixture(scope='module')
def photo():
    return read_image(need_shared(*VAL416))  # 416 x 416, a crowd of small faces


@pytest.fixture(scope='module')
def pyramid_detector(weights):
    return load_detector('mobile0.25', weights, pyramid=True)


@pytest.fixture(scope='module')
def voted(pyramid_detector, photo):
    return pyramid_detector.detect(photo)


# -- a plain implementation of the description, for comparison ---------------------------------

def plain_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = w * h
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def plain_vote(rows, threshold, cap=750, keep_singletons=False):
    """Box voting as the issue describes it, one Python float at a time."""
    pool = sorted([list(map(float, r)) for r in rows], key=lambda r: -r[4])  # sorted() is stable
    out = []
    while pool and len(out) < cap:
        top = pool[0]
        group = [r for r in pool if plain_iou(top, r) >= threshold]
        pool = [r for r in pool if plain_iou(top, r) < threshold]
        if len(group) == 1 and not keep_singletons:
            continue
        total = sum(r[4] for r in group)
        merged = [sum(r[k] * r[4] for r in group) / total for k in range(15)]
        merged[4] = max(r[4] for r in group)
        out.append(merged)
    return np.array(out, dtype=np.float32).reshape(-1, 15)


def row(x1, y1, x2, y2, score, points=None):
    if points is None:  # five points inside the box
        points = [x1 + 1, y1 + 1, x2 - 1, y1 + 1, (x1 + x2) / 2, (y1 + y2) / 2, x1 + 1, y2 - 1, x2 - 1, y2 - 1]
    return [x1, y1, x2, y2, score] + list(points)


def dets(*rows):
    return np.array(rows, dtype=np.float32).reshape(-1, 15)


# -- scales ----------------------------------------------------------------------------------

def test_pyramid_scales_follow_insightface_mode_1():
    # 416 x 416: short side 416 -> 800, long side 800 <= 1200.
    b = 800 / 416
    assert pyramid_scales(416, 416) == [s / 800 * b for s in (500, 800, 1100, 1400, 1700)]
    # 768 x 1024: 1024 * 800 / 768 = 1067 <= 1200, the short side rules.
    assert pyramid_scales(768, 1024)[1] == 800 / 768
    # 500 x 2000: the short side would make the long one 3200 > 1200, so the long side rules.
    assert pyramid_scales(500, 2000) == [s / 800 * (1200 / 2000) for s in (500, 800, 1100, 1400, 1700)]
    assert pyramid_scales(2000, 500) == pyramid_scales(500, 2000)


# -- box voting ------------------------------------------------------------------------------

def test_vote_of_a_hand_made_group():
    a = row(10, 10, 30, 30, 0.9, [12, 14, 26, 14, 20, 20, 14, 26, 26, 26])
    b = row(12, 10, 32, 30, 0.6, [14, 16, 28, 16, 22, 22, 16, 28, 28, 28])
    far = row(100, 100, 120, 120, 0.8)  # a group of one: dropped
    out = box_vote(dets(a, b, far), 0.4)
    # IoU(a, b) = 19*21 / (2*21*21 - 19*21) = 0.826 >= 0.4: one group; weights 0.9 and 0.6.
    expected = [(0.9 * p + 0.6 * q) / 1.5 for p, q in zip(a, b)]
    expected[4] = 0.9
    np.testing.assert_allclose(out, [expected], rtol=1e-6)
    assert out[0, 0] == pytest.approx(10.8) and out[0, 5] == pytest.approx(12.8)  # box and left eye
    kept = box_vote(dets(a, b, far), 0.4, keep_singletons=True)
    np.testing.assert_allclose(kept, [expected, far], rtol=1e-6)


def test_vote_threshold_is_inclusive_and_a_group_is_removed_whole():
    # A box inside another with half its pixels (+1 pixel convention): IoU exactly 0.5.
    outer = row(0, 0, 9, 9, 0.9)        # 100 pixels
    inner = row(0, 0, 9, 4, 0.5)        # 50 pixels, inside: IoU 0.5
    assert box_vote(dets(outer, inner), 0.5).shape == (1, 15)
    assert box_vote(dets(outer, inner), 0.5 + 1e-6).shape == (0, 15)
    # A candidate taken into the first group does not seed or join a second one.
    c = row(0, 5, 9, 14, 0.8)  # IoU with outer 50/150 = 1/3, with inner 0
    out = box_vote(dets(outer, inner, c), 0.3, keep_singletons=True)
    np.testing.assert_allclose(out, plain_vote(dets(outer, inner, c), 0.3, keep_singletons=True), rtol=1e-6)
    assert len(out) == 1  # c joined outer's group


def test_vote_ties_take_the_earlier_candidate_first():
    # b and c tie; b comes first, so b seeds its group and takes a; c is then alone.
    a = row(0, 0, 20, 20, 0.5)
    b = row(2, 0, 22, 20, 0.7)
    c = row(40, 0, 60, 20, 0.7)
    d = row(42, 0, 62, 20, 0.2)
    out = box_vote(dets(a, b, c, d), 0.4)
    np.testing.assert_allclose(out, plain_vote(dets(a, b, c, d), 0.4), rtol=1e-6)
    assert out[0, 0] == pytest.approx((0.7 * 2 + 0.5 * 0) / 1.2)
    # Ties decide which box seeds a group when one candidate could join either.
    left, right = row(0, 0, 20, 20, 0.7), row(10, 0, 30, 20, 0.7)
    middle = row(5, 0, 25, 20, 0.3)
    # IoU(left, right) = 11/31 < 0.4; IoU of middle with either = 16/26 >= 0.4.
    first = box_vote(dets(left, middle, right), 0.4, keep_singletons=True)
    np.testing.assert_allclose(first, plain_vote(dets(left, middle, right), 0.4, keep_singletons=True), rtol=1e-6)
    swapped = box_vote(dets(right, middle, left), 0.4, keep_singletons=True)
    assert first[0, 0] == pytest.approx(1.5) and swapped[0, 0] == pytest.approx(8.5)  # the seed's group


def test_vote_of_random_candidates_equals_the_plain_implementation():
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 300, (40, 2))
    rows = []
    for cx, cy in centres:
        for _ in range(rng.integers(1, 6)):
            x, y, s = cx + rng.normal(0, 3), cy + rng.normal(0, 3), rng.uniform(10, 40)
            rows.append(row(x, y, x + s, y + s * 1.2, rng.uniform(0.02, 1), rng.uniform(0, 300, 10)))
    cands = dets(*rows)
    for keep_singletons in (False, True):
        np.testing.assert_allclose(box_vote(cands, 0.4, keep_singletons=keep_singletons),
                                   plain_vote(cands, 0.4, keep_singletons=keep_singletons), rtol=1e-5, atol=1e-4)


def test_vote_keeps_at_most_750():
    # 800 disjoint pairs: 800 groups, of which the 750 best are kept.
    rows = []
    for k in range(800):
        x = 30 * (k % 40)
        y = 30 * (k // 40)
        rows += [row(x, y, x + 20, y + 20, 0.9 - k * 1e-4), row(x + 1, y, x + 21, y + 20, 0.5)]
    out = box_vote(dets(*rows), 0.4)
    assert PYRAMID_KEEP_TOP_K == 750 and out.shape == (750, 15)
    np.testing.assert_allclose(out[:, 4], [0.9 - k * 1e-4 for k in range(750)], rtol=1e-6)
    assert len(box_vote(dets(*rows), 0.4, keep_top_k=None)) == 800


def test_vote_of_nothing_and_of_lone_candidates():
    assert box_vote(dets(), 0.4).shape == (0, 15)
    assert box_vote(dets(row(0, 0, 9, 9, 0.9), row(50, 50, 59, 59, 0.8)), 0.4).shape == (0, 15)


def test_nms_merge_is_py_cpu_nms_in_score_order():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, (300, 2))
    wh = rng.uniform(5, 40, (300, 2))
    cands = np.hstack((xy, xy + wh, rng.uniform(0.02, 1, (300, 1)), rng.uniform(0, 200, (300, 10)))).astype(np.float32)
    order = np.argsort(-cands[:, 4].astype(np.float64), kind='stable')
    expected = cands[order][py_cpu_nms(cands[order][:, :5], 0.4)]
    np.testing.assert_array_equal(nms_merge(cands, 0.4, keep_top_k=None), expected)
    np.testing.assert_array_equal(nms_merge(cands, 0.4, keep_top_k=5), expected[:5])


# -- the mirror mapping ----------------------------------------------------------------------

def test_mirror_maps_x_to_width_minus_x_and_swaps_left_and_right():
    # In a mirror image of width 100 a face has its left eye (smaller x) at 60, right eye at 70.
    face = dets(row(55, 10, 80, 40, 0.9, [60, 20, 70, 21, 65, 27, 61, 33, 69, 34]))
    out = mirror_candidates(face, 100)
    np.testing.assert_array_equal(out[0, :5], [100 - 80, 10, 100 - 55, 40, np.float32(0.9)])
    # The face's left eye (smaller x in the image) is the mirror's right eye: 100 - 70 = 30.
    np.testing.assert_array_equal(out[0, 5:], [30, 21, 40, 20, 35, 27, 31, 34, 39, 33])
    assert out[0, 5] < out[0, 7] and out[0, 11] < out[0, 13]  # left of right, eyes and mouth
    assert MIRRORED_LANDMARKS == (1, 0, 2, 4, 3)
    np.testing.assert_array_equal(mirror_candidates(out, 100), face)  # an involution


def test_flipped_pass_of_a_flipped_photo_gives_the_unflipped_candidates(pyramid_detector, photo):
    # At scale 1 the network sees the same pixels: the mirrored pass of the mirrored photo is the
    # plain pass of the photo, mapped by the mirror, to the bit.
    plain, mirrored = pyramid_detector.pass_candidates(photo, 1.0)
    flipped_plain, flipped_mirrored = pyramid_detector.pass_candidates(np.ascontiguousarray(photo[:, ::-1]), 1.0)
    width = photo.shape[1]
    np.testing.assert_array_equal(flipped_mirrored, mirror_candidates(plain, width))
    np.testing.assert_array_equal(mirrored, mirror_candidates(flipped_plain, width))
    assert len(plain) > 100


def test_mirror_axis_of_a_resized_pass_is_its_input_width_over_the_scale(pyramid_detector, photo):
    # At 0.6 the 416-pixel photo becomes 250 pixels wide: the axis is 250 / 0.6 = 416.67
    # original pixels, where the network's mirror (width - x of the image it saw) puts it.
    x = pyramid_detector._pyramid_input(photo, 0.6)
    assert x.shape[2] == 250
    plain, _ = pyramid_detector.pass_candidates(x, 0.6)
    _, mirrored_of_flipped = pyramid_detector.pass_candidates(np.ascontiguousarray(x[:, :, ::-1]), 0.6)
    np.testing.assert_array_equal(mirrored_of_flipped, mirror_candidates(plain, 250 / 0.6))


def test_mirrored_pass_agrees_with_the_plain_pass(pyramid_detector):
    # The network is nearly mirror-symmetric: the confident faces of the mirrored pass, mapped
    # back, lie on those of the plain pass, each landmark on the same side of the face.
    photo = read_image(need_shared('images', 'test.jpg'))  # faces of 40-80 pixels
    plain, mirrored = pyramid_detector.pass_candidates(photo, 1.0)
    plain = nms_merge(plain[plain[:, 4] > 0.9], 0.4)
    mirrored = nms_merge(mirrored[mirrored[:, 4] > 0.9], 0.4)
    assert len(plain) >= 20
    swapped_order = [2, 3, 0, 1, 4, 5, 8, 9, 6, 7]  # left and right exchanged
    matched = 0
    for face in plain:
        ious = [plain_iou(face, m) for m in mirrored]
        if max(ious) < 0.7:
            continue
        other = mirrored[int(np.argmax(ious))]
        size = face[2] - face[0]
        error = np.abs(face[5:] - other[5:]).max()
        assert error < 0.15 * size
        assert error < np.abs(face[5:] - other[5:][swapped_order]).max()
        matched += 1
    assert matched >= 0.8 * len(plain)


# -- the pipeline ----------------------------------------------------------------------------

def test_pyramid_finds_the_single_scale_faces_and_more(weights, photo, voted):
    single = load_detector('mobile0.25', weights, origin_size=False).detect(photo)
    pyramid = voted
    assert pyramid.dtype == np.float32 and pyramid.shape[1] == 15
    assert np.all(np.diff(pyramid[:, 4]) <= 0)  # highest score first
    confident = single[single[:, 4] > 0.9]
    for face in confident:
        assert max(plain_iou(face, p) for p in pyramid) > 0.5
    assert (pyramid[:, 4] > 0.9).sum() >= len(confident)
    # Voted landmarks keep the image's left-right order on frontal faces.
    frontal = pyramid[(pyramid[:, 4] > 0.9)]
    assert np.mean(frontal[:, 5] < frontal[:, 7]) > 0.9


def test_pyramid_merge_by_nms(weights, photo, voted):
    nms = load_detector('mobile0.25', weights, pyramid=True, pyramid_merge='nms', keep_top_k=100000).detect(photo)
    assert np.all(np.diff(nms[:, 4]) <= 0)
    # Voting and NMS make the same greedy groups (IoU >= and > the threshold aside): NMS keeps
    # each group's best candidate as it is, voting its mean with the best score, and drops the
    # groups of one.
    assert len(nms) > len(voted)
    assert np.isin(voted[:, 4], nms[:, 4]).all()


def test_pyramid_onnxruntime_agrees_with_torch(weights, photo, pyramid_detector):
    pytest.importorskip('onnxruntime')
    small = photo[200:330].copy()  # a strip of faces: smaller passes, quicker
    ort = load_detector('mobile0.25', weights, pyramid=True, backend='onnxruntime').detect(small)
    ref = pyramid_detector.detect(small)
    confident = ref[ref[:, 4] > 0.5]
    assert len(confident) > 0
    for face in confident:
        best = max(ort, key=lambda o: plain_iou(face, o))
        assert plain_iou(face, best) > 0.95 and abs(best[4] - face[4]) < 1e-3


def test_detect_batch_in_pyramid_mode_is_detect_per_image(pyramid_detector, photo, voted):
    small = np.ascontiguousarray(photo[:100, :350])
    out = pyramid_detector.detect_batch([photo, small])
    np.testing.assert_array_equal(out[0], voted)
    np.testing.assert_array_equal(out[1], pyramid_detector.detect(small))


def test_settings_record_the_mode_and_the_default_is_unchanged(weights, pyramid_detector):
    default = load_detector('mobile0.25', weights).settings()
    assert set(default) == {'network', 'backend', 'device', 'test_scale', 'confidence_threshold',
                            'nms_threshold', 'top_k', 'keep_top_k'}
    pyr = pyramid_detector.settings()
    assert pyr['pyramid'] == {'sizes': [500, 800, 1100, 1400, 1700], 'flip': True, 'merge': 'vote'}
    assert {k: v for k, v in pyr.items() if k != 'pyramid'} == default


def test_api_refuses_combinations_that_make_no_sense(weights):
    with pytest.raises(InputError, match='origin_size'):
        load_detector('mobile0.25', weights, pyramid=True, origin_size=False)
    with pytest.raises(InputError, match='do not combine'):
        load_detector('mobile0.25', weights, pyramid=True, tile=512)
    with pytest.raises(InputError, match='pyramid only'):
        load_detector('mobile0.25', weights, pyramid_merge='nms')
    with pytest.raises(InputError, match="unknown pyramid merge 'mean'"):
        load_detector('mobile0.25', weights, pyramid=True, pyramid_merge='mean')


# -- the scripts -----------------------------------------------------------------------------

@pytest.mark.parametrize('script', [wider_script, fddb_script, detect])
@pytest.mark.parametrize('argv', [['--pyramid', '--origin_size', 'true'], ['--origin_size', 'false', '--pyramid']])
def test_pyramid_with_origin_size_is_a_usage_error_naming_both(script, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.get_args_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert '--pyramid cannot be combined with --origin_size' in err


@pytest.mark.parametrize('merge', ['vote', 'nms'])
@pytest.mark.parametrize('flag, cap', [(None, 750), ('none', None), ('0', None), ('300', 300)])
def test_keep_top_k_sets_the_pyramid_s_limit_and_none_lifts_it(weights, merge, flag, cap):
    """Left out, the pyramid keeps insightface's 750; --keep_top_k N keeps N, and 'none' all
    (it once gave 750 too), and the results folder's record tells them apart."""
    argv = ['-m', weights, '--network', 'mobile0.25', '--pyramid', '--pyramid_merge', merge]
    args = wider_script.get_args_parser().parse_args(argv + ([] if flag is None else ['--keep_top_k', flag]))
    detector = load_detector('mobile0.25', weights, pyramid=True, pyramid_merge=merge, keep_top_k=args.keep_top_k)
    rows = []  # 800 disjoint pairs: 800 faces, each voted by two candidates
    for k in range(800):
        x, y = 30 * (k % 40), 30 * (k // 40)
        rows += [row(x, y, x + 20, y + 20, 0.9 - k * 1e-4), row(x + 1, y, x + 21, y + 20, 0.5)]
    assert len(detector._merge_pyramid(dets(*rows))) == (cap or 800)
    recorded = detector.settings()['pyramid']
    assert recorded.get('keep_top_k', 750) == cap and ('keep_top_k' in recorded) == (cap != 750)


def test_pyramid_flag_reaches_the_detector():
    args = detect.get_args_parser().parse_args(['--pyramid', '--pyramid_merge', 'nms'])
    assert (args.pyramid, args.pyramid_merge) == (True, 'nms')
    args = wider_script.get_args_parser().parse_args([])
    assert (args.pyramid, args.tile, args.origin_size) == (False, None, True)


def test_widerface_pyramid_run_records_its_mode_and_is_not_resumed_by_the_default(weights, tmp_path, capsys):
    images = tmp_path / 'val' / 'images'
    (images / '0--Parade').mkdir(parents=True)
    photo_path = need_shared(*VAL416)
    (images / '0--Parade' / photo_path.name).symlink_to(photo_path)
    (tmp_path / 'val' / 'wider_val.txt').write_text(f"/0--Parade/{photo_path.name}\n")
    out = tmp_path / 'out'
    base = ['-m', weights, '--network', 'mobile0.25', '--cpu', '--dataset_folder', str(images),
            '--save_folder', str(out)]
    assert run_cli(wider_script.main, wider_script.get_args_parser(), base + ['--pyramid']) == 0
    manifest = json.loads((out / 'retinaface_run.json').read_text())
    assert manifest['settings']['pyramid']['merge'] == 'vote'
    lines = (out / '0--Parade' / (photo_path.stem + '.txt')).read_text().splitlines()
    assert lines[0] == photo_path.stem and int(lines[1]) == len(lines) - 2 > 0
    capsys.readouterr()
    assert run_cli(wider_script.main, wider_script.get_args_parser(), base) == 1
    assert 'pyramid' in capsys.readouterr().err
