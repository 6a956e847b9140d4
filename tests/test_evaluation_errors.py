"""widerface_evaluate/evaluation.py on the wrong folder or bad files: one 'error:' line and exit
status 1, never an AP of 0 that looks like a result, never a traceback.

The command line runs as a subprocess, as users run it (python widerface_evaluate/evaluation.py)."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_evaluation import write_pred
from widerface_evaluate import evaluation as ev

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "widerface_evaluate" / "evaluation.py"


@pytest.fixture
def label(tmp_path):
    """Ground truth of two images, ev/a (two faces) and ev/b (one face)."""
    path = tmp_path / "label.txt"
    path.write_text("# ev/a.jpg\n0 0 10 10\n40 40 10 10\n# ev/b.jpg\n5 5 20 20\n")
    return path


def _cli(*argv):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def _error_line(proc):
    """The one 'error: ' line of a failed run; fails on a traceback."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    return line


def test_empty_prediction_folder_is_an_error(label, tmp_path):
    (tmp_path / "pred").mkdir()
    proc = _cli("-p", tmp_path / "pred", "--label", label)
    line = _error_line(proc)
    assert f"no prediction file in {tmp_path / 'pred'} matches the ground truth" in line
    assert f"<event>/<name>.txt files for its images, such as {tmp_path / 'pred' / 'ev' / 'a.txt'}" in line
    assert "holds no .txt files" in line
    assert "Val AP" not in proc.stdout


def test_folder_one_level_too_high_is_an_error_that_names_the_right_one(label, tmp_path):
    write_pred(tmp_path / "runs" / "widerface_txt" / "ev" / "a.txt", "a", [[0, 0, 10, 10, 0.9]])
    line = _error_line(_cli("-p", tmp_path / "runs", "--label", label))
    assert "found e.g. widerface_txt/ev/a.txt" in line
    assert f"try -p {tmp_path / 'runs' / 'widerface_txt'}" in line


def test_folder_one_level_too_low_is_an_error(label, tmp_path):
    write_pred(tmp_path / "pred" / "ev" / "a.txt", "a", [[0, 0, 10, 10, 0.9]])
    line = _error_line(_cli("-p", tmp_path / "pred" / "ev", "--label", label))
    assert "one level too low" in line and str(tmp_path / "pred") in line


def test_only_predicted_on_an_empty_folder_is_the_same_error(label, tmp_path):
    (tmp_path / "pred").mkdir()
    line = _error_line(_cli("-p", tmp_path / "pred", "--label", label, "--only-predicted"))
    assert "no prediction file in" in line


def test_some_missing_files_still_count_as_no_detections(label, tmp_path):
    """The reference's protocol: a warning with the count, and the AP over every image."""
    write_pred(tmp_path / "pred" / "ev" / "a.txt", "a", [[0, 0, 10, 10, 0.9], [100, 100, 10, 10, 0.3]])
    proc = _cli("-p", tmp_path / "pred", "--label", label)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 images have no prediction file" in proc.stderr
    assert "All    Val AP: 0.333" in proc.stdout


def test_bad_prediction_line_is_one_error_line(label, tmp_path):
    path = tmp_path / "pred" / "ev" / "a.txt"
    path.parent.mkdir(parents=True)
    path.write_text("a\n2\n1 2 3 4 0.9\n1 2 3 4 high\n")
    assert _error_line(_cli("-p", tmp_path / "pred", "--label", label)) == \
        f"error: {path}:4: expected 5 finite numbers 'x y w h score', got '1 2 3 4 high'"


def test_binary_prediction_file_is_one_error_line(label, tmp_path):
    path = tmp_path / "pred" / "ev" / "a.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 a jpeg renamed to .txt")
    line = _error_line(_cli("-p", tmp_path / "pred", "--label", label))
    assert line.startswith(f"error: {path}:1: not a UTF-8 text file")


def test_missing_ground_truth_is_one_error_line(tmp_path):
    write_pred(tmp_path / "pred" / "ev" / "a.txt", "a", [[0, 0, 10, 10, 0.9]])
    line = _error_line(_cli("-p", tmp_path / "pred", "-g", tmp_path / "nowhere"))
    assert line == f"error: WIDER FACE ground truth file not found: {tmp_path / 'nowhere' / 'wider_face_val.mat'}"


def test_corrupt_ground_truth_is_one_error_line(tmp_path):
    write_pred(tmp_path / "pred" / "ev" / "a.txt", "a", [[0, 0, 10, 10, 0.9]])
    gt = tmp_path / "gt"
    gt.mkdir()
    for name in ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat"):
        (gt / name).write_text("not a mat file")
    line = _error_line(_cli("-p", tmp_path / "pred", "-g", gt))
    assert line.startswith(f"error: {gt / 'wider_face_val.mat'}: not a readable .mat file")


def test_missing_prediction_folder_is_one_error_line(label, tmp_path):
    line = _error_line(_cli("-p", tmp_path / "nowhere", "--label", label))
    assert line == f"error: prediction folder not found: {tmp_path / 'nowhere'}"


def test_check_predictions_match_accepts_one_matching_file(label, tmp_path):
    write_pred(tmp_path / "pred" / "ev" / "b.txt", "b", [])
    ev.check_predictions_match(ev.load_predictions(tmp_path / "pred"), ev.load_label_gt(label), tmp_path / "pred")
