"""Aligned face crops (utils.image.align_faces): the similarity transform against
scikit-image's Umeyama estimate, a synthetic face landing on the ArcFace template, and
degenerate landmarks skipped with a warning."""
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.transform as skimage_transform  # requirements-test.txt

from tests.conftest import need_shared
from utils.image import (ARCFACE_TEMPLATE, align_faces, degenerate_reason, landmark_template,
                         similarity_transform, write_image)


def _skimage_matrix(src, dst):
    """scikit-image's least-squares similarity (Umeyama, no reflection) as a 2x3 matrix."""
    cls = skimage_transform.SimilarityTransform
    if hasattr(cls, 'from_estimate'):  # scikit-image >= 0.26
        t = cls.from_estimate(src, dst)
    else:
        t = cls()
        assert t.estimate(src, dst)
    return t.params[:2]


def _similarity(angle_deg, scale, tx, ty):
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def _apply(m, points):
    return points @ m[:, :2].T + m[:, 2]


def _det(landmarks, score=0.99):
    """A detection row [15] around the landmarks."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    box = [*landmarks.min(axis=0) - 10, *landmarks.max(axis=0) + 10]
    return np.array([*box, score, *landmarks.ravel()], dtype=np.float32)


def test_matches_scikit_image_on_random_points():
    rng = np.random.default_rng(0)
    mirrored = 0
    for _ in range(200):
        src = rng.uniform(-300, 900, size=(5, 2))
        dst = rng.uniform(-50, 150, size=(5, 2))
        m = similarity_transform(src, dst)
        np.testing.assert_allclose(m, _skimage_matrix(src, dst), atol=1e-6, rtol=0)
        assert np.linalg.det(m[:, :2]) > 0  # never a reflection
        mirrored += np.linalg.det((dst - dst.mean(0)).T @ (src - src.mean(0))) < 0
    assert mirrored > 20  # the reflection branch was exercised


def test_matches_scikit_image_on_noisy_faces_and_recovers_an_exact_similarity():
    rng = np.random.default_rng(1)
    for _ in range(50):
        true = _similarity(rng.uniform(-60, 60), rng.uniform(0.2, 5), *rng.uniform(-100, 1000, 2))
        src = _apply(true, ARCFACE_TEMPLATE)
        # Exact correspondences: the inverse comes back exactly.
        inverse = similarity_transform(src, ARCFACE_TEMPLATE)
        np.testing.assert_allclose(_apply(inverse, src), ARCFACE_TEMPLATE, atol=1e-9)
        noisy = src + rng.normal(0, 2, src.shape)
        np.testing.assert_allclose(similarity_transform(noisy, ARCFACE_TEMPLATE),
                                   _skimage_matrix(noisy, ARCFACE_TEMPLATE), atol=1e-6, rtol=0)


@pytest.mark.parametrize('name', ['kids_group', 'street_crowd'])
def test_matches_scikit_image_on_real_landmarks(name):
    dets = np.load(need_shared('golden', 'mnet', f'{name}_dets.npy'))
    dets = dets[dets[:, 4] >= 0.6]
    assert len(dets) >= 5
    for size in (112, 224):
        template = landmark_template(size)
        for det in dets:
            src = det[5:15].reshape(5, 2).astype(np.float64)
            np.testing.assert_allclose(similarity_transform(src, template), _skimage_matrix(src, template),
                                       atol=1e-6, rtol=0)


def _blob_image(shape, points, sigma):
    """A black image with a white Gaussian dot at each point (pixel centres at integer coordinates)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    img = np.zeros(shape[:2])
    for x, y in points:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return np.repeat(np.clip(img * 255, 0, 255).round().astype(np.uint8)[:, :, None], 3, axis=2)


def _dot_centres(crop, expected, radius):
    """The intensity centroid of the crop around each expected point."""
    grey = crop[:, :, 0].astype(np.float64)
    centres = []
    for x, y in expected:
        x0, y0 = int(round(x)), int(round(y))
        window = grey[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
        ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
        centres.append([(window * xs).sum() / window.sum(), (window * ys).sum() / window.sum()])
    return np.array(centres)


@pytest.mark.parametrize('size, angle, scale, offset', [(112, 25.0, 2.3, (170.4, 60.7)),
                                                         (112, -40.0, 1.4, (230.2, 150.1)),
                                                         (224, 10.0, 1.1, (90.5, 20.3))])
def test_synthetic_face_lands_on_the_template(size, angle, scale, offset):
    # A "face" of five dots, placed in a 480x400 image by a known similarity of the template.
    landmarks = _apply(_similarity(angle, scale, *offset), ARCFACE_TEMPLATE)
    img = _blob_image((400, 480, 3), landmarks, sigma=2.0 * scale)
    crops, matrices = align_faces(img, _det(landmarks)[None], size=size)
    assert crops[0].shape == (size, size, 3) and crops[0].dtype == np.uint8
    template = landmark_template(size)
    found = _dot_centres(crops[0], template, radius=int(np.ceil(8 * size / 112)))
    assert np.abs(found - template).max() < 0.5, found - template
    # The matrix maps the image's landmarks onto the template.
    np.testing.assert_allclose(_apply(matrices[0], landmarks), template, atol=1e-3)


def test_crop_is_warp_affine_bilinear_with_black_border():
    img = np.full((100, 120, 3), 200, np.uint8)
    # A face at the image's top-left corner: the crop's top-left lies outside the image.
    landmarks = _apply(_similarity(0, 0.5, -15, -20), ARCFACE_TEMPLATE)
    crops, matrices = align_faces(img, _det(landmarks)[None])
    expected = cv2.warpAffine(img, matrices[0], (112, 112), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    np.testing.assert_array_equal(crops[0], expected)
    assert (crops[0][0, 0] == 0).all() and (crops[0][-1, -1] == 200).all()


def test_degenerate_landmarks_are_skipped_with_one_warning_each(caplog):
    good = _apply(_similarity(5, 1.5, 40, 30), ARCFACE_TEMPLATE)
    same = np.full((5, 2), 60.0)
    line = np.stack([np.linspace(10, 90, 5), np.linspace(20, 60, 5)], axis=1)
    nan = good.copy()
    nan[2, 0] = np.nan
    dets = np.stack([_det(good), _det(same), _det(line), _det(good), np.r_[_det(good)[:5], nan.ravel()]])
    img = np.full((240, 320, 3), 128, np.uint8)
    with caplog.at_level(logging.WARNING):
        crops, matrices = align_faces(img, dets, name='photo.jpg')
    assert [c is None for c in crops] == [False, True, True, False, True]
    assert [m is None for m in matrices] == [False, True, True, False, True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["photo.jpg: face 1: no aligned crop, its landmarks are all equal",
                        "photo.jpg: face 2: no aligned crop, its landmarks are collinear",
                        "photo.jpg: face 4: no aligned crop, its landmarks are not finite"]
    np.testing.assert_array_equal(crops[0], crops[3])


def test_degenerate_reason_and_errors():
    assert degenerate_reason(ARCFACE_TEMPLATE) is None
    assert degenerate_reason(np.zeros((5, 2))) == 'all equal'
    assert degenerate_reason([[0, 0], [1, 1], [2, 2.0000001], [3, 3], [4, 4]]) == 'collinear'
    with pytest.raises(ValueError, match='collinear'):
        similarity_transform([[0, 0], [1, 0], [2, 0]], [[0, 0], [1, 0], [0, 1]])
    with pytest.raises(ValueError, match='same shape'):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match='positive integer'):
        landmark_template(0)


def test_write_image_round_trips_and_refuses_unknown_extensions(tmp_path):
    img = np.random.default_rng(2).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    write_image(tmp_path / 'a.png', img)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'a.png')), img)
    with pytest.raises(ValueError, match=r"a\.xyz.*'\.xyz'"):
        write_image(tmp_path / 'a.xyz', img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.png']


def test_detect_writes_aligned_crops_of_photos(tmp_path):
    """detect.py --save_crops: <stem>_<k>.jpg for each face >= --vis_thres, below the inputs'
    common folder as --output's images are; the JSON names each crop and its matrix."""
    import detect
    from utils.cli import run_cli

    weights = str(need_shared('weights', 'mobilenet0.25_Final.pth'))
    photo = need_shared('images', 'kids_group.jpg')
    for sub in ('a', 'b'):
        (tmp_path / 'in' / sub).mkdir(parents=True)
        (tmp_path / 'in' / sub / 'kids.jpg').symlink_to(photo)
    crops_dir = tmp_path / 'crops'
    argv = ['-m', weights, '--image', str(tmp_path / 'in'), '--no-save_image', '--json', str(tmp_path / 'f.json'),
            '--save_crops', str(crops_dir)]
    assert run_cli(detect.main, detect.get_args_parser(), argv) == 0
    img = cv2.imread(str(photo))
    payload = json.loads((tmp_path / 'f.json').read_text())
    written = []
    for entry in payload['images']:
        sub = Path(entry['image']).parent.name
        dets = np.array([[*d['box'], d['score'], *np.ravel(d['landmarks'])] for d in entry['detections']],
                        dtype=np.float32)
        faces = dets[dets[:, 4] >= 0.6]
        assert len(faces) == 8  # kids_group's faces
        crops, matrices = align_faces(img, faces)
        for k, d in enumerate(entry['detections']):
            if k >= len(faces):
                assert 'crop' not in d
                continue
            assert d['crop'] == str(crops_dir / sub / f'kids_{k}.jpg')
            np.testing.assert_array_equal(np.array(d['crop_matrix']), matrices[k])
            encoded = cv2.imdecode(cv2.imencode('.jpg', crops[k])[1], cv2.IMREAD_COLOR)
            np.testing.assert_array_equal(cv2.imread(d['crop']), encoded)
            written.append(os.path.relpath(d['crop'], crops_dir))
    assert sorted(written) == sorted(f'{s}/kids_{k}.jpg' for s in 'ab' for k in range(8))
    assert sorted(str(p.relative_to(crops_dir)) for p in crops_dir.rglob('*.jpg')) == sorted(written)


def test_crops_inside_the_input_folder_are_not_read_back_as_photos(tmp_path):
    """A rerun with --save_crops inside the --image folder detects the photos again, not the
    first run's crops (as the --output folder's annotated copies are left out)."""
    import detect
    from utils.cli import run_cli

    weights = str(need_shared('weights', 'mobilenet0.25_Final.pth'))
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'kids.jpg').symlink_to(need_shared('images', 'kids_group.jpg'))
    argv = ['-m', weights, '--image', str(tmp_path / 'in'), '--no-save_image', '--json', str(tmp_path / 'f.json'),
            '--save_crops', str(tmp_path / 'in' / 'crops')]
    for _ in range(2):
        assert run_cli(detect.main, detect.get_args_parser(), argv) == 0
        images = [entry['image'] for entry in json.loads((tmp_path / 'f.json').read_text())['images']]
        assert images == [str(tmp_path / 'in' / 'kids.jpg')]
    assert len(list((tmp_path / 'in' / 'crops').glob('*.jpg'))) == 8


def test_crop_size_has_an_upper_bound(capsys):
    """R24: --crop_size 60000 made a 10.8 GB crop per face, then a cv2.error."""
    import detect
    from utils.image import MAX_CROP_SIZE

    parser = detect.get_args_parser()
    assert parser.parse_args(['--crop_size', str(MAX_CROP_SIZE)]).crop_size == MAX_CROP_SIZE == 1024
    for value in ('60000', str(MAX_CROP_SIZE + 1), '0'):
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args(['--crop_size', value])
        assert stopped.value.code == 2  # a usage error, before any work
        assert (f"error: argument --crop_size: expected an integer in [1, 1024], got '{value}'"
                in capsys.readouterr().err)
