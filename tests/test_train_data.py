"""The training data: label.txt parsing (train and boxes-only formats), images without
faces, bad input, and the invariants of the augmentation."""
import random

import cv2
import numpy as np
import pytest
import torch

import data.data_augment as data_augment
from data import WiderFaceDetection, detection_collate, preproc
from data.wider_face import read_label_file
from tests.conftest import need_shared

RGB_MEAN = (104, 117, 123)


# --------------------------------------------------------------------------- parsing

@pytest.fixture(scope='module')
def minitrain():
    return WiderFaceDetection(str(need_shared('minitrain', 'train', 'label.txt')))


def test_minitrain_train_format(minitrain):
    assert len(minitrain) == 160
    assert sum(len(w) == 0 for w in minitrain.words) == 24
    assert all(w.shape[1] == 20 for w in minitrain.words if len(w))
    # 0_Parade_Parade_0_194: the first face has landmarks, the fourth has none.
    i = next(i for i, p in enumerate(minitrain.imgs_path) if p.endswith('0--Parade/0_Parade_Parade_0_194.jpg'))
    img, target = minitrain[i]
    assert img.dtype == torch.uint8 and img.shape == (416, 416, 3)
    assert target.shape == (5, 15)
    np.testing.assert_allclose(target[0], [146.479, 75.522, 146.479 + 37.517, 75.522 + 40.569,
                                           159.396, 88.643, 174.802, 86.736, 170.346, 91.508,
                                           164.374, 102.322, 176.771, 100.884, 1])
    assert target[3, 14] == -1 and (target[3, 4:14] == -1).all()
    np.testing.assert_allclose(target[3, :4], [226.081, 78.936, 226.081 + 34.649, 78.936 + 33.772])


def test_minitrain_image_without_faces(minitrain):
    i = next(i for i, w in enumerate(minitrain.words) if len(w) == 0)
    img, target = minitrain[i]
    assert target.shape == (0, 15)
    ds = WiderFaceDetection(minitrain.txt_path, preproc(160, RGB_MEAN))
    img, target = ds[i]
    assert img.shape == (3, 160, 160) and img.dtype == torch.float32
    assert target.shape == (0, 15)


def test_val_boxes_only_format_parses():
    entries = read_label_file(need_shared('widerface', 'val', 'label.txt'))
    assert len(entries) == 3226
    assert sum(len(faces) for _, faces in entries) == 39708
    assert all(faces.shape[1] == 4 for _, faces in entries)
    assert entries[0][0] == '0--Parade/0_Parade_marchingband_1_465.jpg'
    np.testing.assert_array_equal(entries[0][1][0], [345, 211, 4, 4])


def test_val_boxes_only_format_loads(tmp_path):
    """The val images are not available: give the first entries synthetic images."""
    src = need_shared('widerface', 'val', 'label.txt')
    entries = read_label_file(src)[:3]
    lines = []
    for rel, faces in entries:
        lines.append(f'# {rel}')
        lines += [' '.join(f'{v:g}' for v in face) for face in faces]
        path = tmp_path / 'images' / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((480, 640, 3), 127, np.uint8))
    (tmp_path / 'label.txt').write_text('\n'.join(lines) + '\n')

    ds = WiderFaceDetection(str(tmp_path / 'label.txt'))
    assert len(ds) == 3
    img, target = ds[0]
    assert target.shape == (len(entries[0][1]), 15)
    np.testing.assert_array_equal(target[0, :4], [345, 211, 349, 215])
    assert (target[:, 4:14] == -1).all() and (target[:, 14] == -1).all()

    random.seed(0)
    ds = WiderFaceDetection(str(tmp_path / 'label.txt'), preproc(320, RGB_MEAN))
    img, target = ds[1]
    assert img.shape == (3, 320, 320) and (target[:, 14] == -1).all()


def _write_dataset(tmp_path, label_text, images=('a.jpg',)):
    (tmp_path / 'images').mkdir(exist_ok=True)
    for name in images:
        cv2.imwrite(str(tmp_path / 'images' / name), np.zeros((64, 64, 3), np.uint8))
    path = tmp_path / 'label.txt'
    path.write_text(label_text)
    return str(path)


@pytest.mark.parametrize('bad_line, what', [
    ('1 2 3', 'got 3'),
    ('1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 x', 'non-numeric'),
    ('1 2 3 nan', 'non-finite'),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, what):
    path = _write_dataset(tmp_path, f'# a.jpg\n1 2 3 4\n{bad_line}\n')
    with pytest.raises(ValueError, match=rf'label\.txt:3: .*{what}'):
        WiderFaceDetection(path)


def test_face_line_before_image_line(tmp_path):
    path = _write_dataset(tmp_path, '1 2 3 4\n# a.jpg\n')
    with pytest.raises(ValueError, match=r'label\.txt:1: face line before'):
        WiderFaceDetection(path)


def test_missing_image_named_at_construction(tmp_path):
    path = _write_dataset(tmp_path, '# a.jpg\n1 2 3 4\n# sub/missing.jpg\n')
    with pytest.raises(FileNotFoundError, match=r'sub/missing\.jpg'):
        WiderFaceDetection(path)


def test_image_deleted_or_corrupt_after_construction(tmp_path):
    path = _write_dataset(tmp_path, '# a.jpg\n# b.jpg\n', images=('a.jpg', 'b.jpg'))
    ds = WiderFaceDetection(path)
    (tmp_path / 'images' / 'a.jpg').unlink()
    with pytest.raises(FileNotFoundError, match=r'images/a\.jpg'):
        ds[0]
    (tmp_path / 'images' / 'b.jpg').write_bytes(b'not a jpeg')
    with pytest.raises(ValueError, match=r'cannot decode image .*b\.jpg'):
        ds[1]


def test_missing_label_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        WiderFaceDetection(str(tmp_path / 'nope.txt'))


def test_detection_collate():
    batch = [(torch.zeros(3, 8, 8), np.ones((2, 15))), (torch.ones(3, 8, 8), np.zeros((0, 15)))]
    images, targets = detection_collate(batch)
    assert images.shape == (2, 3, 8, 8)
    assert [t.shape for t in targets] == [(2, 15), (0, 15)] and all(t.dtype == torch.float32 for t in targets)


# --------------------------------------------------------------------------- augmentation

def _random_sample(rng, height, width, n_faces):
    """A noise image and n_faces random faces (pixels), some cut by the image border,
    some without landmarks, one with zero width."""
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    targets = np.zeros((n_faces, 15))
    for i in range(n_faces):
        w = rng.uniform(2, max(3, min(width, height) / 2))
        h = w * rng.uniform(0.8, 1.4)
        x, y = rng.uniform(-w / 3, width - w / 2), rng.uniform(-h / 3, height - h / 2)
        targets[i, :4] = [x, y, x + w, y + h]
        if rng.random() < 0.7:
            targets[i, 4:14:2] = x + w * np.array([0.3, 0.7, 0.5, 0.35, 0.65])
            targets[i, 5:14:2] = y + h * np.array([0.35, 0.35, 0.55, 0.75, 0.75])
            targets[i, 14] = 1
        else:
            targets[i, 4:14] = -1
            targets[i, 14] = -1
    if n_faces:
        targets[0, 2] = targets[0, 0]  # zero width: must be dropped
    return img, targets


@pytest.mark.parametrize('size', [(300, 400), (480, 270), (416, 416), (40, 900)])
def test_preproc_invariants(size):
    rng = np.random.default_rng(size[0])
    aug = preproc(160, RGB_MEAN)
    for seed in range(15):
        random.seed(seed)
        img, targets = _random_sample(rng, *size, n_faces=seed % 6)
        out, t = aug(img, targets)
        assert out.shape == (3, 160, 160) and out.dtype == np.float32
        assert t.dtype == np.float32 and t.shape[1] == 15 and t.shape[0] <= targets.shape[0]
        assert np.isfinite(t).all()
        boxes = t[:, :4]
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all(), 'zero-area box kept'
        assert set(np.unique(t[:, 14])) <= {-1.0, 1.0}
        lm = t[t[:, 14] == 1, 4:14]
        assert ((lm >= 0) & (lm <= 1)).all()
        # The pixels are BGR minus the mean.
        assert out.min() >= -max(RGB_MEAN) - 1e-3 and out.max() <= 255 - min(RGB_MEAN) + 1e-3


def test_preproc_image_without_faces():
    random.seed(0)
    img = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    out, t = preproc(128, RGB_MEAN)(img, np.zeros((0, 15)))
    assert out.shape == (3, 128, 128) and t.shape == (0, 15)
    # Padded to a square at the bottom with the mean, i.e. zeros after subtraction.
    np.testing.assert_allclose(out[:, -10:, :], 0, atol=1e-4)


def test_crop_keeps_whole_face_and_clips_landmarks():
    img = np.zeros((400, 400, 3), np.uint8)
    boxes = np.array([[100., 100., 160., 170.]])
    landm = np.array([[110., 120., 150., 120., 130., 140., 115., 160., 145., 160.]])
    for seed in range(10):
        random.seed(seed)
        crop, b, lab, lm, pad = data_augment._crop(img, boxes, np.array([1.]), landm, 640)
        assert not pad and crop.shape[0] == crop.shape[1] >= 60
        # the face is whole: same size, shifted by the crop origin
        np.testing.assert_allclose(b[0, 2:] - b[0, :2], [60, 70])
        np.testing.assert_allclose(lm[0] - landm[0], np.tile(b[0, :2] - boxes[0, :2], 5))


def test_crop_gives_up_on_a_face_larger_than_any_crop():
    img = np.zeros((100, 300, 3), np.uint8)
    boxes = np.array([[10., 0., 250., 100.]])  # wider than the 100-pixel crops
    random.seed(0)
    crop, b, _, _, pad = data_augment._crop(img, boxes, np.array([1.]), np.full((1, 10), -1.), 640)
    assert pad and crop is img and b is boxes


def test_uncropped_fallback_clips_boxes_and_landmarks_to_the_image():
    """A face no crop can hold whole, sticking out of the image on the right: the
    fallback keeps the whole (padded) image and clips the face to it."""
    img = np.zeros((100, 300, 3), np.uint8)
    targets = np.array([[200., 10., 340., 90., 250., 40., 310., 40., 290., 60., 260., 75., 320., 75., 1.]])
    for seed in range(6):
        random.seed(seed)
        out, t = preproc(150, RGB_MEAN)(img, targets)
        assert t.shape == (1, 15)
        assert ((t[:, :14] >= 0) & (t[:, :14] <= 1)).all()
        x1, x2 = sorted([t[0, 0], t[0, 2]])
        np.testing.assert_allclose(x2 - x1, 100 / 300, rtol=1e-6)  # 200..300 of the 300-wide square


def test_mirror_moves_and_swaps_landmarks(monkeypatch):
    width = 100
    boxes = np.array([[20., 10., 60., 50.]])
    landm = np.array([[30., 20., 50., 21., 40., 30., 32., 40., 48., 41.]])
    img = np.zeros((60, width, 3), np.uint8)
    monkeypatch.setattr(data_augment.random, 'randrange', lambda n: 1)  # always flip
    out, b, lm = data_augment._mirror(img, boxes, landm)
    np.testing.assert_allclose(b, [[40., 10., 80., 50.]])
    # x -> width - x, then left/right eyes and mouth corners swap; the nose stays.
    np.testing.assert_allclose(lm, [[50., 21., 70., 20., 60., 30., 52., 41., 68., 40.]])
    monkeypatch.setattr(data_augment.random, 'randrange', lambda n: 0)  # never flip
    out, b, lm = data_augment._mirror(img, boxes, landm)
    np.testing.assert_array_equal(lm, landm)


# Five coloured markers (BGR) drawn at the five landmarks of one face.
MARKER_COLOURS = np.array([[0, 0, 255], [255, 0, 0], [0, 255, 0], [0, 255, 255], [255, 0, 255]], np.float32)


def test_mirrored_marker_moves_with_its_landmark(monkeypatch):
    """Through the whole pipeline (colour distortion disabled), the pixel under each
    output landmark is the marker drawn under it; when mirrored, the left and right
    markers trade slots and slot 0 is still the leftmost eye."""
    monkeypatch.setattr(data_augment, '_distort', lambda image: image.copy())
    img = np.full((200, 300, 3), 128, np.uint8)
    landm = np.array([[130., 80., 170., 80., 150., 100., 135., 125., 165., 125.]])
    for (x, y), colour in zip(landm.reshape(5, 2).astype(int), MARKER_COLOURS):
        img[y - 3:y + 4, x - 3:x + 4] = colour
    targets = np.hstack([[[100., 50., 200., 150.]], landm, [[1.]]])
    aug = preproc(300, RGB_MEAN)
    mirrored = plain = 0
    for seed in range(16):
        random.seed(seed)
        out, t = aug(img, targets)
        assert t.shape == (1, 15)
        points = t[0, 4:14].reshape(5, 2) * 300  # output pixels
        seen = np.stack([out[:, int(py), int(px)] + np.array(RGB_MEAN, np.float32) for px, py in points])
        swapped = MARKER_COLOURS[[1, 0, 2, 4, 3]]
        if np.abs(seen - MARKER_COLOURS).max() < 40:
            plain += 1
        else:
            np.testing.assert_allclose(seen, swapped, atol=40)
            mirrored += 1
        assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]
    assert mirrored and plain


def test_distort_keeps_shape_and_dtype():
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    for seed in range(8):
        random.seed(seed)
        out = data_augment._distort(img)
        assert out.shape == img.shape and out.dtype == np.uint8 and out is not img


def test_pad_to_square_fills_with_mean():
    img = np.zeros((20, 50, 3), np.uint8)
    out = data_augment._pad_to_square(img, RGB_MEAN, True)
    assert out.shape == (50, 50, 3)
    assert (out[:20] == 0).all() and (out[20:] == RGB_MEAN).all()
    assert data_augment._pad_to_square(img, RGB_MEAN, False) is img
