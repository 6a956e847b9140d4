"""detect.py --video: detections per frame equal Detector.detect on the decoded frame, the
annotated copy keeps the input's frames, rate and size, --every, aligned crops, Ctrl-C,
damaged frames and the one-line errors; utils.video's reader on its own.

The clips are written by the tests from a shared photo (a pan across kids_group.jpg) as
MJPG in .avi: OpenCV decodes them the same way every time, so the test can decode the
frames itself and compare. A camera cannot be tested here; it runs the same code with
only the cv2.VideoCapture source differing.
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest

import detect
from models.detector import load_detector
from tests.conftest import need_shared
from utils.cli import run_cli
from utils.errors import InputError
from utils.image import align_faces, draw_detections
from utils.video import MAX_CAMERA_INDEX, open_video, parse_source, read_frames

ROOT = Path(__file__).resolve().parent.parent
FPS = 12.0
SIZE = (320, 240)
FRAMES = 20


def _pan(count, size, step=6):
    """count frames of size (w, h) panning across kids_group.jpg shrunk to half size."""
    img = cv2.imread(str(need_shared('images', 'kids_group.jpg')))
    img = cv2.resize(img, (512, 384), interpolation=cv2.INTER_AREA)
    w, h = size
    return [img[40:40 + h, (i * step) % (512 - w):(i * step) % (512 - w) + w] for i in range(count)]


def _write_clip(path, frames, fps=FPS):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def _decode(path):
    """Every frame of a video as OpenCV decodes it, and its (fps, width, height, frame count)."""
    cap = cv2.VideoCapture(str(path))
    props = (cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
             int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, props


def _read_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _as_array(detections):
    """JSON detections -> ndarray[N, 15] float32 (each number is its float32's shortest repr)."""
    return np.array([[*d['box'], d['score'], *np.ravel(d['landmarks'])] for d in detections],
                    dtype=np.float32).reshape(-1, 15)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """The runs use --threads 1 (steady on a busy shared machine); the test's own detector
    then runs with the same thread count, and the default comes back afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


@pytest.fixture(scope='module')
def detector(weights):
    # detect.py's defaults
    return load_detector('mobile0.25', weights, top_k=5000, keep_top_k=750)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    return _write_clip(tmp_path_factory.mktemp('clip') / 'pan.avi', _pan(FRAMES, SIZE))


@pytest.fixture(scope='module')
def long_clip(tmp_path_factory):
    """300 frames: a run that a signal stops long before its end."""
    return _write_clip(tmp_path_factory.mktemp('long') / 'long.avi', _pan(300, SIZE, step=1))


def _args(weights, video, *extra):
    return detect.get_args_parser().parse_args(['-m', weights, '--video', str(video), '--threads', '1', *extra])


def test_every_frame_matches_detector_and_the_copy_keeps_frames_rate_and_size(weights, detector, clip, tmp_path):
    result = detect.main(_args(weights, clip, '--output', str(tmp_path / 'out'), '--json', str(tmp_path / 'f.jsonl')))
    frames, (fps, width, height, count) = _decode(clip)
    assert (fps, width, height, count, len(frames)) == (FPS, *SIZE, FRAMES, FRAMES)

    lines = _read_lines(tmp_path / 'f.jsonl')
    assert [line['frame'] for line in lines] == list(range(FRAMES))
    assert [line['time'] for line in lines] == [round(i / FPS, 6) for i in range(FRAMES)]
    faces = 0
    for line, frame in zip(lines, frames):
        expected = detector.detect(frame)
        np.testing.assert_array_equal(_as_array(line['detections']), expected)  # bit for bit
        faces += int((expected[:, 4] >= 0.6).sum())
    assert faces > 3 * FRAMES  # the pan keeps several faces in view
    assert result == {'frames': FRAMES, 'processed': FRAMES, 'faces': faces,
                      'output': str(tmp_path / 'out' / 'pan.mp4'), 'json': str(tmp_path / 'f.jsonl')}

    written, (out_fps, out_w, out_h, out_count) = _decode(tmp_path / 'out' / 'pan.mp4')
    assert (out_fps, out_w, out_h, out_count, len(written)) == (FPS, *SIZE, FRAMES, FRAMES)
    assert os.listdir(tmp_path / 'out') == ['pan.mp4']  # no temporary folder left
    # mp4v is lossy: the written frame is nearer the annotated frame than the plain one.
    drawn = draw_detections(frames[5].copy(), detector.detect(frames[5]), 0.6)
    assert np.abs(written[5].astype(int) - drawn).mean() < np.abs(written[5].astype(int) - frames[5]).mean()


def test_video_at_max_size_matches_its_detector(weights, detector, clip, tmp_path):
    """--max_size with --video: every frame goes into the network at that long side, the JSON in
    the frame's pixels."""
    detect.main(_args(weights, clip, '--no-save_image', '--max_size', '160', '--max_frames', '4',
                      '--json', str(tmp_path / 'f.jsonl')))
    small = load_detector('mobile0.25', weights, top_k=5000, keep_top_k=750, max_size=160)
    assert small.input_size(SIZE[1], SIZE[0]) == (120, 160)
    lines = _read_lines(tmp_path / 'f.jsonl')
    frames, _ = _decode(clip)
    assert len(lines) == 4
    for line, frame in zip(lines, frames):
        np.testing.assert_array_equal(_as_array(line['detections']), small.detect(frame))


def test_every_nth_frame_and_aligned_crops(weights, detector, clip, tmp_path):
    crops_dir = tmp_path / 'crops'
    detect.main(_args(weights, clip, '--every', '3', '--output', str(tmp_path / 'out'), '--json',
                      str(tmp_path / 'f.jsonl'), '--save_crops', str(crops_dir), '--crop_size', '96'))
    lines = _read_lines(tmp_path / 'f.jsonl')
    assert [line['frame'] for line in lines] == list(range(0, FRAMES, 3))
    frames, _ = _decode(clip)
    # Skipped frames still go into the copy, as they are.
    written, (_, _, _, out_count) = _decode(tmp_path / 'out' / 'pan.mp4')
    assert out_count == len(written) == FRAMES

    names = []
    for line in lines:
        frame = frames[line['frame']]
        dets = detector.detect(frame)
        np.testing.assert_array_equal(_as_array(line['detections']), dets)
        crops, matrices = align_faces(frame, dets[dets[:, 4] >= 0.6], size=96)
        for k, d in enumerate(line['detections']):
            if d['score'] < 0.6:
                assert 'crop' not in d and 'crop_matrix' not in d
                continue
            expected_path = crops_dir / f"pan_{line['frame']}_{k}.jpg"
            assert d['crop'] == str(expected_path)
            np.testing.assert_array_equal(np.array(d['crop_matrix']), matrices[k])
            encoded = cv2.imdecode(cv2.imencode('.jpg', crops[k])[1], cv2.IMREAD_COLOR)
            np.testing.assert_array_equal(cv2.imread(str(expected_path)), encoded)
            names.append(expected_path.name)
    assert len(names) > len(lines) * 3
    assert sorted(os.listdir(crops_dir)) == sorted(names)


def test_onnxruntime_backend_matches_its_detector(weights, clip, tmp_path):
    detect.main(_args(weights, clip, '--backend', 'onnxruntime', '--max_frames', '4', '--no-save_image',
                      '--json', str(tmp_path / 'f.jsonl')))
    detector = load_detector('mobile0.25', weights, backend='onnxruntime', num_threads=1, top_k=5000, keep_top_k=750)
    frames, _ = _decode(clip)
    lines = _read_lines(tmp_path / 'f.jsonl')
    assert [line['frame'] for line in lines] == [0, 1, 2, 3]
    for line in lines:
        np.testing.assert_array_equal(_as_array(line['detections']), detector.detect(frames[line['frame']]))


def test_max_frames_and_no_video_output(weights, clip, tmp_path):
    result = detect.main(_args(weights, clip, '--max_frames', '4', '--no-save_image', '--output',
                               str(tmp_path / 'out'), '--json', str(tmp_path / 'f.jsonl')))
    assert [line['frame'] for line in _read_lines(tmp_path / 'f.jsonl')] == [0, 1, 2, 3]
    assert result['frames'] == 4 and result['output'] is None
    assert not (tmp_path / 'out').exists()


def _jpeg_starts(data):
    """Offsets of each MJPG frame's JPEG data in an AVI file (its '00dc' chunks)."""
    starts, at = [], data.find(b'00dc')
    while at != -1:
        if data[at + 8:at + 10] == b'\xff\xd8':
            starts.append(at + 8)
        at = data.find(b'00dc', at + 4)
    return starts


def test_a_damaged_frame_is_reported_once_and_the_run_continues(weights, clip, tmp_path, caplog):
    data = bytearray(clip.read_bytes())
    starts = _jpeg_starts(data)
    assert len(starts) == FRAMES
    data[starts[6]:starts[6] + 400] = bytes(400)  # frame 6 loses its JPEG header
    damaged = tmp_path / 'damaged.avi'
    damaged.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        detect.main(_args(weights, damaged, '--every', '3', '--output', str(tmp_path / 'out'), '--json',
                          str(tmp_path / 'f.jsonl')))
    warnings = [r.getMessage() for r in caplog.records if 'could not be decoded' in r.getMessage()]
    assert warnings == [f"{damaged}: frame 6 could not be decoded: skipped"]
    assert [line['frame'] for line in _read_lines(tmp_path / 'f.jsonl')] == [i for i in range(0, FRAMES, 3) if i != 6]
    # The copy keeps the input's length (frame 5 stands in for frame 6).
    written, _ = _decode(tmp_path / 'out' / 'damaged.mp4')
    assert len(written) == FRAMES


@pytest.mark.parametrize('signum, status, message', [(signal.SIGINT, 130, 'interrupted'),
                                                     (signal.SIGTERM, 143, 'terminated (SIGTERM)')])
def test_ctrl_c_or_sigterm_leaves_a_playable_video_and_whole_json_lines(weights, long_clip, tmp_path, signum, status,
                                                                      message):
    """Ctrl-C, and SIGTERM (K6: what `timeout`, `docker stop` and systemd send), take the same path."""
    out, jsonl = tmp_path / 'out', tmp_path / 'f.jsonl'
    proc = subprocess.Popen([sys.executable, 'detect.py', '-m', weights, '--video', str(long_clip), '--output',
                             str(out), '--json', str(jsonl), '--threads', '1'],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if jsonl.exists() and jsonl.read_text().count('\n') >= 5:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, stderr
    assert stderr.rstrip().endswith(message) and 'Traceback' not in stderr
    text = jsonl.read_text()
    assert text.endswith('\n')
    lines = [json.loads(line) for line in text.splitlines()]
    assert 5 <= len(lines) < 300
    assert [line['frame'] for line in lines] == list(range(len(lines)))
    written, (fps, width, height, count) = _decode(out / 'long.mp4')
    assert (fps, width, height) == (FPS, *SIZE)
    assert len(written) == count == len(lines)  # every frame done, and only those
    assert os.listdir(out) == ['long.mp4']


def _error_lines(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith('error:')]


def test_bad_inputs_are_one_line_errors_before_any_work(clip, tmp_path, capsys):
    # The weights do not exist: each check below must come before the detector is built.
    missing_weights = str(tmp_path / 'none.pth')
    text = tmp_path / 'text.mp4'
    text.write_text('not a video')
    empty = tmp_path / 'empty.avi'
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*'MJPG'), FPS, SIZE).release()
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    cases = [
        (['--video', str(tmp_path / 'nope.mp4')], 'video not found'),
        (['--video', str(text)], 'text.mp4'),
        (['--video', str(empty)], 'has no frame'),
        (['--video', str(tmp_path)], 'is a directory'),
        (['--video', str(clip), '--output', str(tmp_path / 'o'), '--video_codec', 'ZZZZ'], "cannot encode 'ZZZZ'"),
        (['--video', str(clip), '--output', str(a_file)], 'it is a file, not a folder'),
        (['--video', str(clip), '--no-save_image', '--json', str(tmp_path)], 'it is a folder, not a file'),
        (['--video', str(clip), '--output', str(tmp_path / 'o'), '--save_crops', str(a_file)], '--save_crops'),
        (['--video', str(clip), '--no-save_image', '--json', str(clip)], 'would overwrite the input video'),
        (['--video', str(clip), '--image', str(clip)], 'not both'),
        (['--image', str(clip), '--every', '2'], '--every applies to --video only'),
    ]
    for argv, expected in cases:
        assert run_cli(detect.main, detect.get_args_parser(), ['-m', missing_weights, *argv]) == 1, argv
        lines = _error_lines(capsys)
        assert len(lines) == 1 and expected in lines[0], (argv, lines)
    assert not (tmp_path / 'o').exists() or os.listdir(tmp_path / 'o') == []
    assert clip.stat().st_size > 1000  # the input was not touched
    # The same run with the weights missing gets as far as the detector.
    assert run_cli(detect.main, detect.get_args_parser(), ['-m', missing_weights, '--video', str(clip), '--output',
                                                           str(tmp_path / 'o3')]) == 1
    assert 'weights not found' in _error_lines(capsys)[0]
    assert os.listdir(tmp_path / 'o3') == []  # the unused video was dropped


def test_video_refuses_torchrun(clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    assert run_cli(detect.main, detect.get_args_parser(), ['-m', str(tmp_path / 'none.pth'), '--video', str(clip)]) == 1
    assert _error_lines(capsys) == ["error: --video runs in one process: start it without torchrun"]


class _FakeCamera:
    """cv2.VideoCapture for camera 0 played from a file, as a camera reports itself: no
    frame count, and (like some webcams) no frame rate."""

    def __init__(self, clip):
        self._cap = cv2.VideoCapture(str(clip))

    def get(self, prop):
        return -1.0 if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0 if prop == cv2.CAP_PROP_FPS else self._cap.get(prop)

    def __getattr__(self, name):
        return getattr(self._cap, name)


def test_a_camera_runs_the_file_code_until_max_frames(weights, clip, tmp_path, monkeypatch, caplog):
    import utils.video

    real = cv2.VideoCapture
    monkeypatch.setattr(utils.video.cv2, 'VideoCapture',
                        lambda source: _FakeCamera(clip) if source == 0 else real(source))
    with caplog.at_level(logging.WARNING):
        result = detect.main(_args(weights, '0', '--max_frames', '7', '--output', str(tmp_path / 'out'), '--json',
                                   str(tmp_path / 'f.jsonl')))
    assert "camera 0 does not give its frame rate: taking it as 25 fps" in caplog.text
    lines = _read_lines(tmp_path / 'f.jsonl')
    assert [line['frame'] for line in lines] == list(range(7))
    assert [line['time'] for line in lines] == [i / 25 for i in range(7)]
    written, (fps, width, height, count) = _decode(tmp_path / 'out' / 'camera0.mp4')
    assert (fps, width, height, count, len(written)) == (25.0, *SIZE, 7, 7)
    assert result['frames'] == 7 and result['output'] == str(tmp_path / 'out' / 'camera0.mp4')


def test_camera_sources_parse_as_indices():
    assert parse_source('0') == 0 and parse_source(' 2 ') == 2 and parse_source(1) == 1
    assert parse_source('clip.mp4') == 'clip.mp4' and parse_source(Path('0.mp4')) == '0.mp4'


def test_only_a_plain_ascii_number_is_a_camera_index():
    """V13: '²'.isdigit() is true, and int() refuses it; V12: OpenCV takes a C int only."""
    for name in ('²', '٣', '1.5', '-1', '+1', '0x1', '1e3', '0.mp4'):
        assert parse_source(name) == name  # file names
    assert parse_source(str(MAX_CAMERA_INDEX)) == MAX_CAMERA_INDEX
    for number in (str(MAX_CAMERA_INDEX + 1), '99999999999999999999'):
        with pytest.raises(InputError, match=f"camera index {number} is out of range: OpenCV takes 0 to "
                                             f"{MAX_CAMERA_INDEX} .*read as ./{number}"):
            parse_source(number)
    # The bound is OpenCV's own: it takes the largest index (there is no such camera) and
    # refuses the next with an error of its argument parsing.
    assert not cv2.VideoCapture(MAX_CAMERA_INDEX).isOpened()
    with pytest.raises(cv2.error):
        cv2.VideoCapture(MAX_CAMERA_INDEX + 1)


def test_a_huge_camera_index_or_a_missing_digit_like_name_is_one_error_line(tmp_path, capsys):
    for source, expected in [('99999999999999999999', 'error: camera index 99999999999999999999 is out of range'),
                             ('²', 'error: video not found: ²')]:
        assert run_cli(detect.main, detect.get_args_parser(), ['-m', str(tmp_path / 'none.pth'), '--video',
                                                               source]) == 1
        lines = _error_lines(capsys)
        assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_a_video_named_like_a_digit_is_read_as_a_file(weights, clip, tmp_path, monkeypatch):
    shutil.copyfile(clip, tmp_path / '²')
    monkeypatch.chdir(tmp_path)
    result = detect.main(_args(weights, '²', '--max_frames', '2', '--no-save_image', '--json', 'f.jsonl'))
    assert result['frames'] == 2 and len(_read_lines(tmp_path / 'f.jsonl')) == 2


def _odd_clip(path, frames):
    """An MJPG .avi of odd size, by OpenCV's own MJPEG writer (its FFmpeg writer drops an odd
    last column and row)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*'MJPG'), FPS, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_an_odd_sized_video_keeps_every_pixel_and_gets_one_black_column_and_row(weights, detector, tmp_path, caplog):
    """V5: OpenCV writes 160x120 for 161x121 frames, the last column and row dropped; the copy
    is 162x122 instead, the input at the same pixels, and the JSON in those pixels."""
    size = (161, 121)
    frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in _pan(4, SIZE)]
    for f in frames:
        f[:, -1] = f[-1, :] = 255  # a white last column and row, to find in the copy
    clip = _odd_clip(tmp_path / 'odd.avi', frames)
    decoded, (_, width, height, count) = _decode(clip)
    assert (width, height, count) == (*size, 4)
    with caplog.at_level(logging.WARNING):
        detect.main(_args(weights, clip, '--output', str(tmp_path / 'out'), '--json', str(tmp_path / 'f.jsonl')))
    out = tmp_path / 'out' / 'odd.mp4'
    assert (f"the video is 161x121 and OpenCV writes even sizes only: {out} is 162x122, every frame with a black "
            f"column at the right and a black row at the bottom") in caplog.text
    written, (_, out_w, out_h, out_count) = _decode(out)
    assert (out_w, out_h, out_count, len(written)) == (162, 122, 4, 4)
    for frame, line, copy in zip(decoded, _read_lines(tmp_path / 'f.jsonl'), written):
        np.testing.assert_array_equal(_as_array(line['detections']), detector.detect(frame))
        luma = cv2.cvtColor(copy, cv2.COLOR_BGR2GRAY).astype(int)
        assert luma[:121, 160].mean() > 200 and luma[120, :161].mean() > 200  # the input's last column and row
        assert luma[:, 161].mean() < 40 and luma[121, :].mean() < 40  # the black ones added
        # mp4v is lossy: the copy is near the annotated input frame.
        drawn = draw_detections(frame.copy(), detector.detect(frame), 0.6)
        assert np.abs(copy[:121, :161].astype(int) - drawn).mean() < 12


_HOLD_TEMP_FOLDER = ("import sys, time; from utils.atomic import TempFolder; folder = TempFolder(sys.argv[1]); "
                     "print(folder.path, flush=True); time.sleep(120)")


def _temp_folder_in_another_process(path):
    """(process, folder): a process holding a video writer's temporary folder for path."""
    proc = subprocess.Popen([sys.executable, '-c', _HOLD_TEMP_FOLDER, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_runs_temp_folder_goes_with_the_next_run_and_a_running_ones_stays(weights, clip, tmp_path):
    """K5: SIGKILL leaves a hidden folder holding an unplayable MP4."""
    out = tmp_path / 'out'
    killed, stale = _temp_folder_in_another_process(out / 'pan.mp4')
    (stale / 'pan.mp4').write_bytes(b'an MP4 cut short: no index')
    killed.kill()
    killed.wait()
    running, live = _temp_folder_in_another_process(out / 'other.mp4')
    try:
        assert stale.is_dir() and live.is_dir() and live.name.startswith('.other.mp4.')
        detect.main(_args(weights, clip, '--max_frames', '2', '--output', str(out)))
        assert sorted(os.listdir(out)) == sorted([live.name, 'pan.mp4'])
    finally:
        running.kill()
        running.wait()


# Runs a command with a file size limit: a write beyond it fails with EFBIG, as on a full
# disk (Python ignores SIGXFSZ, which would otherwise kill it; set here too, to be sure).
# It works as any user, root included, and needs no mount.
_WITH_FILE_SIZE_LIMIT = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                         "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
                         "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


def _detect_on_a_full_disk(limit, weights, *argv):
    return subprocess.run([sys.executable, '-c', _WITH_FILE_SIZE_LIMIT, str(limit), 'detect.py', '-m', weights,
                           '--threads', '1', *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_video_the_encoder_failed_to_write_is_an_error_and_the_earlier_copy_stays(weights, clip, tmp_path):
    """V14: on a full disk OpenCV only logs warnings, and the MP4 has no index: it was
    reported as written, and replaced a good earlier copy."""
    out = tmp_path / 'out'
    detect.main(_args(weights, clip, '--output', str(out)))
    earlier = (out / 'pan.mp4').read_bytes()
    run = _detect_on_a_full_disk(len(earlier) // 2, weights, '--video', clip, '--output', out)
    assert run.returncode == 1, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {out / 'pan.mp4'}: the video encoder's "
                                                     f"writes failed"), run.stderr
    assert f"free in {out}" in errors[0] and errors[0].endswith(f"the earlier {out / 'pan.mp4'} is kept")
    assert 'wrote 20 frames' not in run.stderr and 'Traceback' not in run.stderr
    assert (out / 'pan.mp4').read_bytes() == earlier
    assert os.listdir(out) == ['pan.mp4']  # no temporary folder left


def test_a_full_disk_under_the_json_lines_is_one_error_and_never_half_a_line(weights, clip, tmp_path):
    """V15: it was an OSError traceback, and the file ended in half a line."""
    detect.main(_args(weights, clip, '--max_frames', '3', '--no-save_image', '--json', str(tmp_path / 'all.jsonl')))
    lines = (tmp_path / 'all.jsonl').read_bytes().splitlines(keepends=True)
    jsonl = tmp_path / 'f.jsonl'
    # Room for two lines and half the third.
    run = _detect_on_a_full_disk(len(lines[0]) + len(lines[1]) + len(lines[2]) // 2, weights, '--video', clip,
                                 '--no-save_image', '--json', jsonl)
    assert run.returncode == 1, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith('error:')]
    assert errors == [f"error: cannot write {jsonl}: File too large ({errors[0].split('(', 1)[1].split(')')[0]}); "
                      f"it holds the 2 whole lines written before"], run.stderr
    assert f"free in {tmp_path})" in errors[0] and 'Traceback' not in run.stderr
    assert jsonl.read_bytes() == lines[0] + lines[1]


def test_reader_every_and_early_close(clip):
    frames, _ = _decode(clip)
    with open_video(clip) as video:
        assert (video.width, video.height, video.fps, video.frame_count) == (*SIZE, FPS, FRAMES)
        seen = list(read_frames(video, every=4, keep_skipped=False, prepare=lambda f: f.sum()))
    assert [i for i, *_ in seen] == list(range(FRAMES))
    for index, status, frame, prepared in seen:
        if index % 4 == 0:
            assert status == 'ok' and prepared == frames[index].sum()
            np.testing.assert_array_equal(frame, frames[index])
        else:
            assert (status, frame, prepared) == ('skipped', None, None)
    # Closing early stops the reading thread.
    with open_video(clip) as video, closing(read_frames(video, depth=2)) as reader:
        assert next(reader)[0] == 0
    assert not [t for t in threading.enumerate() if t.name == 'video-reader']


def test_video_benchmark_runs(weights, capsys):
    from bench import bench_video

    args = bench_video.get_args_parser().parse_args(['-m', weights, '--frames', '3', '--rounds', '1',
                                                     '--sizes', '160x90'])
    assert bench_video.main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith('160x90')]
    assert [r[1] for r in rows] == ['torch', 'onnxruntime']
    assert all(len(r) == 8 and r[4].endswith('x') for r in rows)
