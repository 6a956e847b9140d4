"""detect.py: which files are inputs, where outputs may go, and how names are shown (issue 25).

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
import pytest

import detect
from tests.conftest import golden_image_path, need_shared
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
