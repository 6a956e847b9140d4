"""data/label_file.py, the one label.txt parser: an image listed twice, and landmarks that
belong to no face, are errors naming the file and line; the real labels all pass."""
import pytest

from data.label_file import LANDMARK_BOX_MARGIN, LANDMARK_INDICES, check_landmarks, read_label_file
from tests.conftest import need_shared

# A face of minitrain's first photo, 416 x 416: its box, landmarks and score.
BOX = '30 40 20 24'
LANDMARKS = '35.0 48.0 0.0 45.0 48.0 0.0 40.0 54.0 0.0 36.0 58.0 0.0 44.0 58.0 0.0'
FACE = f'{BOX} {LANDMARKS} 0.9'
NO_LANDMARKS = f"{BOX} {' '.join(['-1'] * 15)} -1"


def _label(tmp_path, text):
    path = tmp_path / 'label.txt'
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- T1: an image listed twice

@pytest.mark.parametrize('second', ['0--Parade/a.jpg', './0--Parade/a.jpg', '0--Parade//a.jpg'],
                         ids=['same', 'dot_slash', 'double_slash'])
def test_image_listed_twice_is_an_error_naming_both_lines(tmp_path, second):
    """It trained twice per epoch without a word (and spelled differently, it is the same file)."""
    path = _label(tmp_path, f'# 0--Parade/a.jpg\n{FACE}\n# 0--Parade/b.jpg\n# {second}\n{FACE}\n')
    with pytest.raises(ValueError, match=rf"^{path}:1 and {path}:4: duplicate entry '{second}' \(each image is "
                                         r"listed once; keep one '# image' line, with all the image's faces"):
        read_label_file(path)


def test_images_of_one_name_in_two_folders_are_two_images(tmp_path):
    path = _label(tmp_path, f'# 0--Parade/a.jpg\n{FACE}\n# 1--Handshaking/a.jpg\n{FACE}\n')
    assert [rel for rel, _ in read_label_file(path)] == ['0--Parade/a.jpg', '1--Handshaking/a.jpg']


# --------------------------------------------------------------------------- T3: landmarks of no face

def _with_landmark(k, x, y):
    """FACE with landmark k (0-4) at (x, y)."""
    values = FACE.split()
    values[LANDMARK_INDICES[2 * k]], values[LANDMARK_INDICES[2 * k + 1]] = str(x), str(y)
    return ' '.join(values)


def test_landmark_far_outside_the_photo_is_an_error_naming_file_line_and_value(tmp_path):
    """(5000, -5000) on a 416-pixel photo was accepted; its landmark loss was 263 against about 20."""
    path = _label(tmp_path, f'# 0--Parade/a.jpg\n{FACE}\n{_with_landmark(2, 5000, -5000)}\n')
    with pytest.raises(ValueError, match=rf"^{path}:3: landmark 3 \(5000, -5000\) is far outside its face's box "
                                         r"\(x y w h 30 40 20 24\)"):
        read_label_file(path)


@pytest.mark.parametrize('x, y, ok', [
    # Half a box (10 px wide, 12 px high) on each side is allowed, and no more.
    (30 - 10, 40 - 12, True), (50 + 10, 64 + 12, True),
    (30 - 10.5, 50, False), (40, 64 + 12.5, False),
    # A value in another unit: inside the photo, but no point of this face.
    (0.4, 0.5, False),
])
def test_landmark_margin_is_half_the_box_on_each_side(x, y, ok):
    assert LANDMARK_BOX_MARGIN == 0.5
    values = [float(v) for v in _with_landmark(0, x, y).split()]
    if ok:
        check_landmarks(values, 'label.txt:2')
    else:
        with pytest.raises(ValueError, match=r'^label\.txt:2: landmark 1 '):
            check_landmarks(values, 'label.txt:2')


def test_faces_without_landmarks_boxes_only_and_degenerate_boxes_are_not_checked(tmp_path):
    """-1 in every landmark field is 'no landmarks'; a boxes-only line has none; a box without
    area is dropped by training (and reported there)."""
    degenerate = _with_landmark(0, 5000, 5000).replace(BOX, '30 40 0 24', 1)
    path = _label(tmp_path, f'# 0--Parade/a.jpg\n{NO_LANDMARKS}\n{BOX}\n{degenerate}\n')
    ((_, faces),) = read_label_file(path)
    assert faces.shape == (3, 20)


def test_one_missing_landmark_among_others_is_an_error(tmp_path):
    """-1 -1 for one point while the others are given: training would take (-1, -1) for it."""
    path = _label(tmp_path, f'# 0--Parade/a.jpg\n{_with_landmark(4, -1, -1)}\n')
    with pytest.raises(ValueError, match=rf'^{path}:2: landmark 5 \(-1, -1\)'):
        read_label_file(path)


def test_every_real_label_passes():
    """The minitrain labels (border faces included) all pass, and with room: every landmark
    lies within a fifth of the margin of its box (the real ones are inside it or just beside)."""
    entries = read_label_file(need_shared('minitrain', 'train', 'label.txt'))
    assert len(entries) == 160
    worst = 0.0
    for _, faces in entries:
        for x, y, w, h, *rest in faces:
            points = [rest[i - 4] for i in LANDMARK_INDICES]
            if points[0] < 0:
                continue
            xs, ys = points[0::2], points[1::2]
            worst = max(worst, (x - min(xs)) / w, (max(xs) - x - w) / w, (y - min(ys)) / h, (max(ys) - y - h) / h)
    assert 0 < worst < LANDMARK_BOX_MARGIN / 5
    # The boxes-only val labels too (3226 images, none listed twice).
    assert len(read_label_file(need_shared('widerface', 'val', 'label.txt'))) == 3226
