"""detect.py: which files are inputs, where outputs may go, and how names are shown (issue 25);
--anonymize on photos (issue 27).

Photos are small copies of a shared 416x416 photo; the runs that must fail do so before the
detector is built (detector_from_args is made to fail the test), so they cost nothing.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import detect
import models.detector
from tests.conftest import golden_image_path, need_shared
from utils.anonymize import (DEFAULT_ANONYMIZE_THRES, DEFAULT_MASK_SCALE, DEFAULT_MASK_SHAPE, anonymize,
                             mask_rectangles, scale_boxes)
from utils.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
PHOTO = 'val416_0_Parade_Parade_0_102'


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the detector is built: the run must stop at the output check."""
    monkeypatch.setattr(detect, 'detector_from_args',
                        lambda *a, **k: pytest.fail('the detector was built before the outputs were checked'))


def _photo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(golden_image_path(PHOTO), path)
    return path


def _run(weights, *argv):
    return run_cli(detect.main, detect.get_args_parser(), ['-m', str(weights), '--threads', '1', *map(str, argv)])


def _error(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, lines
    return lines[0]


# -- outputs over inputs, refused before any work --------------------------------------------------

def test_crops_into_the_image_folder_never_replace_a_photo_named_like_a_crop(weights, tmp_path, capsys, no_work):
    """R18: dir holds a.jpg and a_0.jpg; a_0.jpg is where a.jpg's first crop would go."""
    folder = tmp_path / 'dir'
    _photo(folder / 'a.jpg')
    shutil.copyfile(golden_image_path('val416_0_Parade_Parade_0_125'), folder / 'a_0.jpg')
    before = (folder / 'a_0.jpg').read_bytes()
    assert _run(weights, '--image', folder, '--save_crops', folder, '--no-save_image') == 1
    assert _error(capsys) == (
        f"error: --save_crops {folder} would overwrite the input image {folder / 'a_0.jpg'} (--image) with a crop "
        f"of {folder / 'a.jpg'} ({folder / 'a'}_<k>.jpg): choose another --save_crops")
    assert (folder / 'a_0.jpg').read_bytes() == before and sorted(os.listdir(folder)) == ['a.jpg', 'a_0.jpg']


def test_json_over_the_weights_is_refused(weights, tmp_path, capsys, no_work):
    model = tmp_path / 'model.pth'
    shutil.copyfile(weights, model)
    assert _run(model, '--image', _photo(tmp_path / 'a.jpg'), '--no-save_image', '--json', model) == 1
    assert _error(capsys) == (f"error: --json {model} would overwrite the weights {model} (-m) with the detections: "
                              f"choose another --json")


def test_json_through_a_link_to_a_photo_is_refused(weights, tmp_path, capsys, no_work):
    photo = _photo(tmp_path / 'a.jpg')
    (tmp_path / 'dets.json').symlink_to(photo)
    assert _run(weights, '--image', photo, '--no-save_image', '--json', tmp_path / 'dets.json') == 1
    assert f"would overwrite the input image {photo} (--image) with the detections " \
           f"({tmp_path / 'dets.json'} leads to it)" in _error(capsys)


# -- video outputs ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    """A 4-frame 160x120 MJPG clip of a shared photo."""
    path = tmp_path_factory.mktemp('clip') / 'x.avi'
    frame = cv2.resize(cv2.imread(str(golden_image_path(PHOTO))), (160, 120))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (160, 120))
    for _ in range(4):
        writer.write(frame)
    writer.release()
    return path


def test_video_json_lines_where_the_video_goes_are_refused(weights, clip, tmp_path, capsys, no_work):
    """V10: the video would have been renamed over the JSON Lines at the end."""
    out = tmp_path / 'out'
    assert _run(weights, '--video', clip, '--output', out, '--json', out / 'x.mp4') == 1
    assert _error(capsys) == (f"error: --json {out / 'x.mp4'} and --output {out} would both write {out / 'x.mp4'} "
                              f"(the annotated copy of {clip}): only one would survive; choose another --json")
    assert not out.exists()


def test_a_folder_where_the_video_goes_is_refused_before_the_first_frame(weights, clip, tmp_path, capsys, no_work):
    """V16: an IsADirectoryError traceback after every frame, before."""
    (tmp_path / 'd' / 'x.mp4').mkdir(parents=True)
    assert _run(weights, '--video', clip, '--output', tmp_path / 'd') == 1
    assert _error(capsys) == (f"error: cannot write --output {tmp_path / 'd'}: {tmp_path / 'd' / 'x.mp4'} is a "
                              f"folder, not a file (the annotated copy of {clip} goes there)")
    assert os.listdir(tmp_path / 'd') == ['x.mp4']  # no temporary folder left either


def test_video_crops_named_like_an_input_are_refused(weights, clip, tmp_path, capsys, no_work):
    crops = tmp_path / 'crops'
    crops.mkdir()
    (crops / 'x_0_0.jpg').symlink_to(clip)  # a crop name leading to the input
    assert _run(weights, '--video', clip, '--no-save_image', '--save_crops', crops) == 1
    assert _error(capsys).startswith(f"error: --save_crops {crops} would overwrite the input video {clip} (--video) "
                                     f"with a crop of {clip} ({crops / 'x'}_<frame>_<k>.jpg)")


# -- streams ---------------------------------------------------------------------------------------

def test_json_dash_is_stdout_and_the_summary_goes_to_stderr(weights, tmp_path, capsys):
    photo = _photo(tmp_path / 'a.jpg')
    assert _run(weights, '--image', photo, '--no-save_image', '--json', '-') == 0
    out, err = capsys.readouterr()
    payload = json.loads(out)  # stdout holds the JSON alone
    assert [image['image'] for image in payload['images']] == [str(photo)]
    assert f"{photo}: " in err and not (tmp_path / '-').exists()


@pytest.fixture
def dev_stdout_kept():
    """/dev/stdout as it was after the test, whatever the code under test did to it (as root,
    a rename over it would replace the link with a regular file for every process here)."""
    before = os.readlink('/dev/stdout') if os.path.islink('/dev/stdout') else None
    yield
    if before is not None and not os.path.islink('/dev/stdout'):
        os.unlink('/dev/stdout')
        os.symlink(before, '/dev/stdout')
        pytest.fail('/dev/stdout was replaced (restored)')


def test_json_to_dev_stdout_reaches_a_pipe_and_leaves_the_device(weights, tmp_path, dev_stdout_kept):
    """R20: as root the JSON went nowhere and /dev/stdout became a regular file."""
    photo = _photo(tmp_path / 'a.jpg')
    result = subprocess.run([sys.executable, str(ROOT / 'detect.py'), '-m', weights, '--threads', '1', '--image',
                             str(photo), '--no-save_image', '--json', '/dev/stdout'],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload['images_done'] == 1 and payload['images'][0]['image'] == str(photo)
    assert os.path.islink('/dev/stdout')


# -- which files are inputs ------------------------------------------------------------------------

def test_a_glob_does_not_take_the_previous_runs_annotated_copies(weights, tmp_path, capsys):
    """R23: --image 'p/*/*.jpg' --output p/out, run twice."""
    _photo(tmp_path / 'p' / 'a' / 'x.jpg')
    argv = ['--image', tmp_path / 'p' / '*' / '*.jpg', '--output', tmp_path / 'p' / 'out', '--json',
            tmp_path / 'd.json']
    for _ in range(2):
        assert _run(weights, *argv) == 0
        images = [i['image'] for i in json.loads((tmp_path / 'd.json').read_text())['images']]
        assert images == [str(tmp_path / 'p' / 'a' / 'x.jpg')]
    assert (tmp_path / 'p' / 'out' / 'x.jpg').is_file()
    capsys.readouterr()


def test_a_glob_of_nothing_but_outputs_says_so(tmp_path):
    _photo(tmp_path / 'out' / 'x.jpg')
    with pytest.raises(FileNotFoundError, match=f"no files match .* outside {tmp_path / 'out'}"):
        detect.list_images(str(tmp_path / '*' / '*.jpg'), exclude=[str(tmp_path / 'out')])


def test_a_link_to_a_folder_is_followed_and_a_cycle_is_not(tmp_path):
    """R13: dir/linked -> a folder of photos elsewhere was skipped without a word."""
    _photo(tmp_path / 'elsewhere' / 'b.jpg')
    _photo(tmp_path / 'dir' / 'a.jpg')
    (tmp_path / 'dir' / 'linked').symlink_to(tmp_path / 'elsewhere', target_is_directory=True)
    (tmp_path / 'elsewhere' / 'up').symlink_to(tmp_path / 'dir', target_is_directory=True)  # a cycle
    (tmp_path / 'dir' / 'again').symlink_to(tmp_path / 'elsewhere', target_is_directory=True)  # a second name
    assert detect.list_images(str(tmp_path / 'dir')) == [str(tmp_path / 'dir' / 'a.jpg'),
                                                         str(tmp_path / 'dir' / 'again' / 'b.jpg')]


def test_the_output_folder_is_not_walked_even_through_a_link(tmp_path):
    _photo(tmp_path / 'dir' / 'a.jpg')
    _photo(tmp_path / 'out' / 'a.jpg')
    (tmp_path / 'dir' / 'results').symlink_to(tmp_path / 'out', target_is_directory=True)
    assert detect.list_images(str(tmp_path / 'dir'), exclude=[str(tmp_path / 'out')]) == [str(tmp_path / 'dir' / 'a.jpg')]


# -- names -----------------------------------------------------------------------------------------

def test_a_name_with_a_newline_stays_on_one_line(weights, tmp_path, capsys):
    """R10: the one-line-per-image summary and the log split at the newline; the JSON holds
    the exact name (JSON escapes it itself)."""
    folder = tmp_path / 'in'
    photo = _photo(folder / 'two\nlines.jpg')
    (folder / 'bad\rname.jpg').write_bytes(b'not an image')
    assert _run(weights, '--image', folder, '--no-save_image', '--json', tmp_path / 'd.json') == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [line for line in out.splitlines() if line.startswith(f"{folder}/two\\nlines.jpg: ")]
    assert len(out.splitlines()) == 1
    skipping = [line for line in err.splitlines() if 'bad' in line]
    assert skipping and all('bad\\rname.jpg' in line for line in skipping)
    assert not any(line.startswith('name.jpg') or line.startswith('lines.jpg') for line in err.splitlines())
    payload = json.loads((tmp_path / 'd.json').read_text())
    assert [i['image'] for i in payload['images']] == [str(photo)] and 'image_path_hex' not in payload['images'][0]
    assert payload['skipped'][0]['image'] == str(folder / 'bad\rname.jpg')


# -- --anonymize (issue 27) ------------------------------------------------------------------------
# Photos are copied as PNG (lossless), so that the anonymised copy can be compared bit for bit
# with utils.anonymize.anonymize run on the photo and the detections the JSON holds.

SECOND_PHOTO = 'val416_0_Parade_Parade_0_125'


def _png(path, name=PHOTO):
    """path (a .png): the shared photo name, decoded and written losslessly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.imread(str(golden_image_path(name))))
    return path


def _json_dets(image):
    """The detections of one image of the JSON, read back as the float32 array[N, 15] they were."""
    rows = [[*d['box'], d['score'], *np.ravel(d['landmarks'])] for d in image['detections']]
    return np.array(rows, dtype=np.float32).reshape(-1, 15)


def _check_anonymised(image, photo, copy, method, mask_scale=DEFAULT_MASK_SCALE, mask_shape=DEFAULT_MASK_SHAPE,
                      thres=DEFAULT_ANONYMIZE_THRES):
    """The JSON marks exactly the detections >= thres, and the copy is anonymize() of the photo
    with them, bit for bit: changed inside each mask, untouched outside every mask, nothing
    drawn. Returns how many were masked."""
    dets = _json_dets(image)
    masked = np.array([d['masked'] for d in image['detections']], dtype=bool)
    assert np.array_equal(masked, dets[:, 4] >= thres)
    img, out = cv2.imread(str(photo)), cv2.imread(str(copy))
    expected = img.copy()
    assert np.array_equal(anonymize(expected, dets, method, mask_scale, mask_shape, thres), masked)
    assert np.array_equal(out, expected)
    rects = mask_rectangles(scale_boxes(dets[masked], mask_scale), img.shape)  # [M, 4] x0 y0 x1 y1
    outside = np.ones(img.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in rects:
        outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], img[outside])
    for x1, y1, x2, y2 in dets[masked, :4]:  # the middle of each masked face is changed
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max(1, (x2 - x1) / 4), max(1, (y2 - y1) / 4)
        middle = np.s_[int(cy - ry):int(np.ceil(cy + ry)), int(cx - rx):int(np.ceil(cx + rx))]
        assert (out[middle] != img[middle]).any()
    return int(masked.sum())


@pytest.mark.parametrize('method, flags, settings', [
    ('blur', [], {}),
    ('pixelate', ['--mask_shape', 'box', '--anonymize_thres', '0.04'], {'mask_shape': 'box', 'thres': 0.04}),
    ('solid', ['--mask_shape', 'box', '--mask_scale', '1.6'], {'mask_shape': 'box', 'mask_scale': 1.6}),
])
def test_anonymize_hides_the_faces_of_a_photo_and_marks_them(weights, tmp_path, capsys, method, flags, settings):
    photo = _png(tmp_path / 'in' / 'kids.png', 'kids_group')
    assert _run(weights, '--image', photo, '--anonymize', method, *flags, '--output', tmp_path / 'out',
                '--json', tmp_path / 'd.json') == 0
    payload = json.loads((tmp_path / 'd.json').read_text())
    assert payload['anonymize'] == {'method': method, 'mask_scale': settings.get('mask_scale', DEFAULT_MASK_SCALE),
                                    'mask_shape': settings.get('mask_shape', DEFAULT_MASK_SHAPE),
                                    'anonymize_thres': settings.get('thres', DEFAULT_ANONYMIZE_THRES)}
    hidden = _check_anonymised(payload['images'][0], photo, tmp_path / 'out' / 'kids.png', method, **settings)
    # kids_group: 8 faces, then detections of 0.042, 0.037 and 0.021 (../shared/golden/mnet)
    assert hidden == (9 if 'thres' in settings else 8)
    out, err = capsys.readouterr()
    assert f", {hidden} faces hidden (>= {settings.get('thres', DEFAULT_ANONYMIZE_THRES)}) -> " in out
    assert 'keep_top_k' not in err  # 11 detections: far from the limit


@pytest.fixture
def built(monkeypatch):
    """The detectors the runs build, recorded (each detect_preprocessed call's image count too)."""
    detectors, calls = [], []

    def build(args, **overrides):
        detector = models.detector.detector_from_args(args, **overrides)
        run = detector.detect_preprocessed

        def counted(batch, sizes, resizes):
            calls.append(len(sizes))
            return run(batch, sizes, resizes)
        detector.detect_preprocessed = counted
        detectors.append(detector)
        return detector
    monkeypatch.setattr(detect, 'detector_from_args', build)
    return detectors, calls


@pytest.mark.parametrize('flags, mode', [(['--max_size', '320'], ('max_size', 320)),
                                         (['--tile', '256'], ('tile', 256)),
                                         (['--pyramid'], ('pyramid', True))])
def test_anonymize_hides_what_each_size_and_mode_detects(weights, tmp_path, capsys, built, flags, mode):
    photo = _png(tmp_path / 'in' / 'a.png')
    assert _run(weights, '--image', photo, '--anonymize', 'blur', *flags, '--output', tmp_path / 'out',
                '--json', tmp_path / 'd.json') == 0
    assert getattr(built[0][0], mode[0]) == mode[1]
    image = json.loads((tmp_path / 'd.json').read_text())['images'][0]
    assert _check_anonymised(image, photo, tmp_path / 'out' / 'a.png', 'blur') > 0
    capsys.readouterr()


def test_anonymize_with_batches_hides_each_photo_s_own_faces(weights, tmp_path, capsys, built):
    _png(tmp_path / 'in' / 'a.png')
    _png(tmp_path / 'in' / 'b.png', SECOND_PHOTO)
    assert _run(weights, '--image', tmp_path / 'in', '--anonymize', 'pixelate', '--batch_size', '2', '--output',
                tmp_path / 'out', '--json', tmp_path / 'd.json') == 0
    assert built[1] == [2]  # one forward pass of both photos
    images = json.loads((tmp_path / 'd.json').read_text())['images']
    assert [_check_anonymised(image, tmp_path / 'in' / name, tmp_path / 'out' / name, 'pixelate') > 0
            for image, name in zip(images, ['a.png', 'b.png'])] == [True, True]
    capsys.readouterr()


def test_anonymize_warns_when_the_detection_limit_may_leave_faces_unhidden(weights, tmp_path, capsys):
    photo = _photo(tmp_path / 'a.jpg')  # 17 detections >= 0.2
    assert _run(weights, '--image', photo, '--anonymize', 'solid', '--keep_top_k', '3', '--output',
                tmp_path / 'out') == 0
    out, err = capsys.readouterr()
    assert ", 3 faces hidden (>= 0.2) -> " in out
    assert (f"{photo}: all 3 detections kept (--keep_top_k) score >= --anonymize_thres 0.2: more faces may be left "
            f"unhidden; rerun with --keep_top_k none") in err.splitlines()


@pytest.mark.parametrize('argv, message', [
    (['--anonymize', 'smudge'], "argument --anonymize: invalid choice: 'smudge'"),
    (['--anonymize', 'blur', '--mask_scale', '0'], "argument --mask_scale: expected a number in (0, 4], got '0'"),
    (['--anonymize', 'blur', '--mask_scale', '4.5'], "argument --mask_scale: expected a number in (0, 4], got '4.5'"),
    (['--anonymize', 'blur', '--mask_scale', 'nan'], "argument --mask_scale: expected a finite number, got 'nan'"),
    (['--anonymize', 'blur', '--mask_shape', 'circle'], "argument --mask_shape: invalid choice: 'circle'"),
    (['--anonymize', 'blur', '--anonymize_thres', '1.5'],
     "argument --anonymize_thres: expected a number in [0, 1], got '1.5'"),
    (['--anonymize', 'blur', '--anonymize_thres', '-0.1'],
     "argument --anonymize_thres: expected a number in [0, 1], got '-0.1'"),
])
def test_bad_anonymize_values_are_one_usage_error_before_any_work(weights, tmp_path, capsys, no_work, argv, message):
    with pytest.raises(SystemExit) as e:
        _run(weights, '--image', _photo(tmp_path / 'a.jpg'), '--output', tmp_path / 'out', *argv)
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert len(errors) == 1 and f"error: {message}" in errors[0], errors
    assert not (tmp_path / 'out').exists()


def test_anonymize_settings_without_anonymize_are_refused(weights, tmp_path, capsys, no_work):
    assert _run(weights, '--image', _photo(tmp_path / 'a.jpg'), '--output', tmp_path / 'out', '--mask_shape',
                'box') == 1
    assert _error(capsys) == "error: --mask_shape applies with --anonymize only"
    assert not (tmp_path / 'out').exists()


def test_anonymize_refuses_crops_of_the_unmasked_faces(weights, tmp_path, capsys, no_work):
    assert _run(weights, '--image', _photo(tmp_path / 'a.jpg'), '--anonymize', 'blur', '--output', tmp_path / 'out',
                '--save_crops', tmp_path / 'crops') == 1
    assert _error(capsys) == (f"error: --save_crops writes the faces unmasked: it cannot be combined with "
                              f"--anonymize (--save_crops {tmp_path / 'crops'})")
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'crops').exists()


def test_anonymize_without_copies_is_refused(weights, tmp_path, capsys, no_work):
    assert _run(weights, '--image', _photo(tmp_path / 'a.jpg'), '--anonymize', 'blur', '--no-save_image',
                '--json', tmp_path / 'd.json') == 1
    assert _error(capsys) == ("error: --anonymize writes the anonymised copies to --output: --no-save_image would "
                              "write none")
    assert not (tmp_path / 'd.json').exists()


def test_anonymised_copies_never_replace_the_photos(weights, tmp_path, capsys, no_work):
    photo = _photo(tmp_path / 'a.jpg')
    before = photo.read_bytes()
    assert _run(weights, '--image', photo, '--anonymize', 'blur', '--output', tmp_path) == 1
    assert _error(capsys).startswith(f"error: --output {tmp_path} would overwrite the input image {photo} (--image) "
                                     f"with the anonymised copy of {photo}")
    assert photo.read_bytes() == before


def test_anonymize_with_video_is_refused_for_now(weights, clip, tmp_path, capsys, no_work):
    assert _run(weights, '--video', clip, '--anonymize', 'blur', '--output', tmp_path / 'out') == 1
    assert _error(capsys) == (f"error: --anonymize applies to --image runs for now: it cannot hide the faces of "
                              f"--video {clip} yet")
    assert not (tmp_path / 'out').exists()
