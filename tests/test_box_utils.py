"""Box conversions, IoU, encode/decode round trips and matching on hand-computed cases."""
import numpy as np
import torch

from tests.conftest import need_shared
from utils.box_utils import (center_size, decode, decode_landm, encode, encode_landm, intersect, jaccard,
                             log_sum_exp, match, matrix_iof, matrix_iou, point_form)

VARIANCES = [0.1, 0.2]


def _priors():
    torch.manual_seed(0)
    cxcy = torch.rand(50, 2)
    wh = torch.rand(50, 2) * 0.3 + 0.02
    return torch.cat([cxcy, wh], 1)


def test_center_size_inverts_point_form():
    x = _priors()
    torch.testing.assert_close(center_size(point_form(x)), x)


def test_point_form_hand_computed():
    torch.testing.assert_close(point_form(torch.tensor([[5., 5., 4., 2.]])), torch.tensor([[3., 4., 7., 6.]]))


def test_intersect_and_jaccard_hand_computed():
    a = torch.tensor([[0., 0., 2., 2.], [0., 0., 1., 1.]])
    b = torch.tensor([[1., 1., 3., 3.], [5., 5., 6., 6.]])
    torch.testing.assert_close(intersect(a, b), torch.tensor([[1., 0.], [0., 0.]]))
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7.
    torch.testing.assert_close(jaccard(a, b), torch.tensor([[1 / 7, 0.], [0., 0.]]))


def test_point_form_and_jaccard_are_the_reference_to_the_bit():
    # point_form and jaccard wrap torchvision's box_convert and box_iou; the matches that
    # training makes depend on every bit of the overlaps, so compare them with the
    # reference's own arithmetic on the golden priors of every size and random faces.
    def ref_point_form(boxes):
        return torch.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)

    def ref_jaccard(box_a, box_b):
        inter = intersect(box_a, box_b)
        area_a = ((box_a[:, 2] - box_a[:, 0]) * (box_a[:, 3] - box_a[:, 1]))[:, None]
        area_b = ((box_b[:, 2] - box_b[:, 0]) * (box_b[:, 3] - box_b[:, 1]))[None, :]
        return inter / (area_a + area_b - inter)

    golden = np.load(need_shared('golden', 'priors.npz'))
    torch.manual_seed(0)
    for size in golden.files:
        priors = torch.from_numpy(golden[size])
        corners = point_form(priors)
        assert torch.equal(corners, ref_point_form(priors)), size
        centre, half = torch.rand(50, 2), torch.rand(50, 2) * 0.25
        faces = torch.cat([centre - half, centre + half], 1)
        faces[:3] = corners[:3]  # exact copies of priors: IoU 1
        for a, b in ((faces, corners), (faces.double(), corners.double())):
            assert torch.equal(jaccard(a, b), ref_jaccard(a, b)), size


def test_matrix_iou_hand_computed():
    a = np.array([[0., 0., 2., 2.]])
    b = np.array([[1., 1., 3., 3.], [0., 0., 2., 2.]])
    np.testing.assert_allclose(matrix_iou(a, b), [[1 / 7, 1.0]])


def test_matrix_iof_hand_computed():
    faces = np.array([[0., 0., 2., 2.], [10., 10., 12., 12.], [1., 0., 5., 1.]])
    roi = np.array([[0., 0., 4., 4.]])
    # inside: 1; outside: 0; [1,0,5,1] has area 4, 3 of it inside the roi.
    np.testing.assert_allclose(matrix_iof(faces, roi), [[1.0], [0.0], [0.75]])


def test_encode_decode_round_trip():
    priors = _priors()
    torch.manual_seed(1)
    boxes = point_form(torch.cat([priors[:, :2] + 0.01 * torch.randn(50, 2), priors[:, 2:] * (1 + 0.2 * torch.rand(50, 2))], 1))
    torch.testing.assert_close(decode(encode(boxes, priors, VARIANCES), priors, VARIANCES), boxes, atol=1e-6, rtol=1e-5)


def test_encode_landm_decode_landm_round_trip():
    priors = _priors()
    torch.manual_seed(2)
    landms = torch.rand(50, 10)
    torch.testing.assert_close(decode_landm(encode_landm(landms, priors, VARIANCES), priors, VARIANCES), landms,
                               atol=1e-6, rtol=1e-5)


def test_decode_hand_computed():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    # zero offsets decode to the prior itself
    torch.testing.assert_close(decode(torch.zeros(1, 4), prior, VARIANCES), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    # dcx = 1 moves the centre by 0.1 * w = 0.02; dw = 5 scales the width by exp(1)
    out = decode(torch.tensor([[1.0, 0.0, 5.0, 0.0]]), prior, VARIANCES)
    w = 0.2 * np.e
    torch.testing.assert_close(out, torch.tensor([[0.52 - w / 2, 0.3, 0.52 + w / 2, 0.7]]))


def test_log_sum_exp_matches_torch():
    # The reference shifts by the global max (not per row), so keep the rows' ranges close
    # enough that no row underflows.
    torch.manual_seed(0)
    x = torch.randn(20, 2) * 3
    torch.testing.assert_close(log_sum_exp(x), torch.logsumexp(x, dim=1, keepdim=True))


def _run_match(truths, priors, labels):
    n = priors.shape[0]
    loc_t, conf_t, landm_t = torch.zeros(1, n, 4), torch.zeros(1, n, dtype=torch.long), torch.zeros(1, n, 10)
    landms = torch.rand(truths.shape[0], 10)
    match(0.35, truths, priors, VARIANCES, labels, landms, loc_t, conf_t, landm_t, 0)
    return loc_t[0], conf_t[0], landm_t[0]


def test_match_hand_computed():
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5],   # the top-left quarter
                           [0.75, 0.75, 0.5, 0.5],   # the bottom-right quarter
                           [0.75, 0.25, 0.1, 0.1]])  # a small box far from both faces
    truths = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.9]])
    loc, conf, _ = _run_match(truths, priors, torch.tensor([1., -1.]))
    assert conf.tolist() == [1, -1, 0]
    torch.testing.assert_close(loc[0], torch.zeros(4))  # exact fit encodes to zero


def test_match_forces_best_prior_below_threshold():
    # The face overlaps its best prior with IoU 0.25 < 0.35, yet that prior must be positive.
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]])
    truths = torch.tensor([[0.4, 0.4, 0.5, 0.5]])
    _, conf, _ = _run_match(truths, priors, torch.tensor([1.]))
    assert conf.tolist() == [1, 0]


def test_match_two_faces_sharing_a_best_prior_gives_it_to_the_later_face():
    priors = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.9, 0.9, 0.01, 0.01]])
    truths = torch.tensor([[0.3, 0.3, 0.7, 0.7], [0.31, 0.31, 0.69, 0.69]])
    loc, conf, _ = _run_match(truths, priors, torch.tensor([1., 1.]))
    assert conf.tolist() == [1, 0]
    expected = encode(truths[1:], priors[:1], VARIANCES)[0]
    torch.testing.assert_close(loc[0], expected)


def test_match_without_faces_is_all_background():
    priors = _priors()
    loc, conf, landm = _run_match(torch.zeros(0, 4), priors, torch.zeros(0))
    assert conf.abs().sum() == 0 and loc.abs().sum() == 0 and landm.abs().sum() == 0
