"""widerface_evaluate/hidden_faces.py: the hidden-faces rule on hand-computed cases (79% and 81%
covered, two partial masks, the mask scale, the threshold), per setting on a hand-made ground
truth, and end to end on the val416 ground truth."""
import numpy as np
import pytest

from tests.conftest import need_shared
from tests.test_evaluation import write_pred
from widerface_evaluate import hidden_faces as hf
from widerface_evaluate.evaluation import GroundTruth, load_wider_gt

FACE = [0, 0, 10, 10]  # x y w h: area 100


def test_a_face_79_percent_covered_is_not_hidden_81_percent_is():
    masks = np.array([[0, 0, 7.9, 10], [0, 0, 8.1, 10]])  # x1 y1 x2 y2
    assert hf.face_coverage([FACE], masks)[0] == pytest.approx([0.79, 0.81])
    assert hf.hidden([FACE], masks[:1]).tolist() == [False]
    assert hf.hidden([FACE], masks[1:]).tolist() == [True]


def test_exactly_80_percent_counts_as_hidden():
    assert hf.hidden([FACE], [[2, 0, 10, 10]]).tolist() == [True]


def test_two_partial_masks_do_not_add_up():
    """Each covers half: together all of the face, but no one mask 80% of it."""
    masks = np.array([[-5, -5, 5, 15], [5, -5, 15, 15]])
    assert hf.face_coverage([FACE], masks)[0].tolist() == [0.5, 0.5]
    assert hf.hidden([FACE], masks).tolist() == [False]


def test_a_mask_around_the_face_covers_all_of_it_and_one_elsewhere_none():
    assert hf.face_coverage([[10, 20, 4, 6]], [[0, 0, 100, 100], [50, 50, 60, 60]])[0].tolist() == [1.0, 0.0]


def test_a_face_of_zero_area_is_hidden_when_inside_a_mask():
    faces = [[5, 5, 0, 3], [50, 5, 0, 3]]
    assert hf.hidden(faces, [[0, 0, 10, 10]]).tolist() == [True, False]


def test_no_masks_hide_nothing():
    assert hf.hidden([FACE, FACE], np.zeros((0, 4))).tolist() == [False, False]


def _preds(*rows):
    """{image: ndarray[N, 5] x y w h score}, as evaluation.load_predictions gives them."""
    return {'0--E/a': np.array(rows, dtype=np.float64).reshape(-1, 5)}


@pytest.mark.parametrize('mask_scale, is_hidden', [(0.89, False), (0.9, True), (1.3, True)])
def test_the_mask_scale_scales_the_box_about_its_centre(mask_scale, is_hidden):
    """The detection is the face itself; scaled by s about its centre it covers s^2 of the
    face: 0.7921 at 0.89, 0.81 at 0.9."""
    masks = hf.detection_masks(_preds([0, 0, 10, 10, 0.9]), thres=0.5, mask_scale=mask_scale)['0--E/a']
    assert masks[0] == pytest.approx([5 - 5 * mask_scale, 5 - 5 * mask_scale, 5 + 5 * mask_scale, 5 + 5 * mask_scale])
    assert hf.hidden([FACE], masks).tolist() == [is_hidden]


def test_an_off_centre_detection_scaled_up_covers_more_of_the_face():
    """Box x 2..12 covers 80% of the face; scaled by 1.3 about 7 it spans 0.5..13.5 (and
    -1.5..11.5 in y): 95% of the face."""
    unscaled = hf.detection_masks(_preds([2, 0, 10, 10, 0.9]), thres=0.5, mask_scale=1.0)['0--E/a']
    assert hf.face_coverage([FACE], unscaled)[0, 0] == pytest.approx(0.8)
    masks = hf.detection_masks(_preds([2, 0, 10, 10, 0.9]), thres=0.5, mask_scale=1.3)['0--E/a']
    assert masks[0].tolist() == pytest.approx([0.5, -1.5, 13.5, 11.5])
    assert hf.face_coverage([FACE], masks)[0, 0] == pytest.approx(0.95)


def test_the_threshold_keeps_scores_at_or_above_it():
    preds = _preds([0, 0, 10, 10, 0.19], [20, 0, 10, 10, 0.2], [40, 0, 10, 10, 0.21])
    masks = hf.detection_masks(preds, thres=0.2, mask_scale=1.0)['0--E/a']
    assert masks[:, 0].tolist() == [20, 40]
    faces = [FACE, [20, 0, 10, 10], [40, 0, 10, 10]]
    assert hf.hidden(faces, masks).tolist() == [False, True, True]


def test_boxes_of_negative_size_mask_nothing():
    masks = hf.detection_masks(_preds([0, 0, -10, 10, 0.9], [0, 0, 10, 10, 0.9]), thres=0.5)['0--E/a']
    assert len(masks) == 1


def _gt():
    """Two photos: a has faces 0 (easy, medium, hard), 1 (medium, hard), 2 (hard); b one hard face."""
    boxes = np.array([[0, 0, 10, 10], [20, 0, 10, 10], [40, 0, 10, 10], [0, 0, 20, 20]], dtype=np.float64)
    keep = {'easy': np.array([1, 0, 0, 0], bool), 'medium': np.array([1, 1, 0, 0], bool),
            'hard': np.array([1, 1, 1, 1], bool)}
    return GroundTruth(['0--E/a', '0--E/b'], boxes, np.array([0, 3]), np.array([3, 1]), keep,
                       {s: np.array([int(k[:3].sum()), int(k[3])]) for s, k in keep.items()})


def test_shares_per_setting_and_masks_per_photo():
    """Photo a: masks hide faces 0 and 2, one mask hides nothing; photo b has no entry."""
    masks = {'0--E/a': np.array([[0, 0, 10, 10], [40, 0, 50, 10], [100, 100, 110, 110]])}
    r = hf.hidden_share(_gt(), masks)
    assert r.hidden == {'easy': 1, 'medium': 1, 'hard': 2}
    assert r.faces == {'easy': 1, 'medium': 2, 'hard': 4}
    assert r.share == {'easy': 1.0, 'medium': 0.5, 'hard': 0.5}
    assert r.masks_per_photo == 1.5  # 3 masks over 2 photos
    assert r.hidden_face.tolist() == [True, False, True, False]


def test_the_table_prints_percentages_and_masks_per_photo():
    r = hf.hidden_share(_gt(), {'0--E/a': np.array([[0, 0, 10, 10]])})
    lines = hf.format_table([('0.2', r)]).splitlines()
    assert lines[0].split() == ['threshold', 'easy', 'medium', 'hard', 'masks/photo']
    assert lines[2].split() == ['0.2', '100.0%', '50.0%', '25.0%', '0.5']


@pytest.fixture(scope='module')
def val416_gt():
    return need_shared('widerface', 'val416', 'ground_truth')


def _faces_as_predictions(gt_dir, folder):
    """Every ground-truth face of gt_dir written as a prediction of score 1."""
    gt = load_wider_gt(gt_dir)
    for name, start, count in zip(gt.names, gt.box_start, gt.box_count):
        boxes = gt.boxes[start:start + count]
        write_pred(folder / f"{name}.txt", name.split('/')[-1], [[*map(repr, b), '1'] for b in boxes.tolist()])
    return gt


def test_the_command_on_val416_hides_every_face_its_own_boxes_cover(val416_gt, tmp_path, capsys):
    """The faces themselves as detections: scaled by 0.9 each covers 81% of its face (all
    hidden), by 0.89 79.21% (none). The masks per photo are the faces per photo."""
    gt = _faces_as_predictions(val416_gt, tmp_path / 'pred')
    parser = hf.get_args_parser()
    for scale, expected in (('0.9', 1.0), ('0.89', 0.0)):
        args = parser.parse_args(['-p', str(tmp_path / 'pred'), '-g', str(val416_gt), '--thres', '0.5', '1',
                                  '--mask_scale', scale])
        results = hf.main(args)
        for thres, r in results:
            assert r.share == {'easy': expected, 'medium': expected, 'hard': expected}
            assert r.faces == {'easy': 415, 'medium': 847, 'hard': 2236}
            assert r.masks_per_photo == len(gt.boxes) / 127
    out = capsys.readouterr().out
    assert '127 photos' in out and '  0.0%' in out and '100.0%' in out


@pytest.mark.parametrize('flag, value', [('--mask_scale', '0'), ('--coverage', '0'), ('--coverage', '1.5'),
                                         ('--thres', '2')])
def test_bad_flags_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        hf.get_args_parser().parse_args([flag, value])
    assert e.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
