"""FDDB evaluator: overlaps, matching, ROC files and parsers, with hand-computed results."""
import logging
import math

import numpy as np
import pytest

from fddb_evaluate import evaluation as fddb
from tests.conftest import need_shared

# Three images (hand-computed overlaps in the comments):
# img_rot: a vertical ellipse (radii 20 and 10 at 90 degrees) inside the detection
#   [40, 60] x [30, 70]: overlap 200*pi / 800 = pi/4; a second, far detection is a false positive.
# img_two: circles A (centre 10,10) and B (centre 30,10), radius 10. Detection [0, 24] x [0, 20]
#   overlaps both: A by 100*pi / 480, B by a circular segment only; [20, 40] x [0, 20] is B's box.
# img_none: no face, one detection: a false positive.
ANNOTATIONS = """img_rot
1
20 10 1.5707963267948966 50 50 1
img_two
2
10 10 0 10 10 1
10 10 0 30 10 1
img_none
0
"""
DETECTIONS = """img_rot
2.0
40 30 20 40 0.9
0 0 5 5 0.2
img_two
2.0
0 0 24 20 0.8
20 0 20 20 0.5
img_none
1.0
5 5 10 10 0.7
"""
OVERLAP_ROT = math.pi / 4
OVERLAP_A = 100 * math.pi / 480
OVERLAP_B_BOX = math.pi / 4


@pytest.fixture
def files(tmp_path):
    ann = tmp_path / "FDDB-fold-01-ellipseList.txt"
    ann.write_text(ANNOTATIONS)
    dets = tmp_path / "FDDB_dets.txt"
    dets.write_text(DETECTIONS)
    return ann, dets


def test_rotated_ellipse_overlap():
    rect = [[40, 30, 20, 40]]  # [40, 60] x [30, 70]
    vertical = fddb.ellipse_rect_overlap([[20, 10, math.pi / 2, 50, 50]], rect)[0, 0]
    assert vertical == pytest.approx(math.pi / 4, rel=1e-12)
    # Unrotated, the ellipse only keeps its |x - 50| <= 10 strip inside the rectangle:
    # 2 * integral of 10 * sqrt(1 - x^2/400) over [-10, 10] = 400 * (sqrt(3)/4 + pi/6).
    inter = 400 * (math.sqrt(3) / 4 + math.pi / 6)
    horizontal = fddb.ellipse_rect_overlap([[20, 10, 0, 50, 50]], rect)[0, 0]
    assert horizontal == pytest.approx(inter / (800 + 200 * math.pi - inter), rel=1e-12)


def test_45_degree_ellipse_in_its_bounding_box():
    # The bounding box of radii 20, 10 at 45 degrees has half-sides sqrt(20^2/2 + 10^2/2).
    half = math.sqrt(250)
    overlap = fddb.ellipse_rect_overlap([[20, 10, math.pi / 4, 0, 0]], [[-half, -half, 2 * half, 2 * half]])
    assert overlap[0, 0] == pytest.approx(200 * math.pi / 1000, rel=1e-12)


def test_overlap_matches_pixel_count():
    """Exact areas against a fine rasterisation (the official tool's method)."""
    ellipse = np.array([[30, 18, 0.7, 50, 45]])
    rect = np.array([[35, 20, 40, 30]])
    xs = (np.arange(2000) + 0.5) / 20  # 0.05 px grid over [0, 100]
    X, Y = np.meshgrid(xs, xs)
    c, s = math.cos(0.7), math.sin(0.7)
    inside_e = (((X - 50) * c + (Y - 45) * s) / 30) ** 2 + ((-(X - 50) * s + (Y - 45) * c) / 18) ** 2 <= 1
    inside_r = (X >= 35) & (X <= 75) & (Y >= 20) & (Y <= 50)
    pixels = (inside_e & inside_r).sum() / (inside_e | inside_r).sum()
    assert fddb.ellipse_rect_overlap(ellipse, rect)[0, 0] == pytest.approx(pixels, abs=1e-3)


def test_detection_overlapping_two_faces_matches_one(files):
    ann, dets = files
    faces = fddb.load_ellipse_list(ann)["img_two"]
    wide = fddb.load_detections(dets)["img_two"][:1]  # only the detection over both faces
    scores, disc, cont, ndet = fddb.image_steps(faces, wide)
    assert disc.tolist() == [1] and ndet.tolist() == [1]
    assert cont[0] == pytest.approx(OVERLAP_A, rel=1e-12)


def test_matching_is_one_to_one_and_maximises_total_overlap(monkeypatch):
    # The first detection overlaps A 0.6 and B 0.55, the second A 0.58 only. Greedy
    # matching by score would pair (d1, A) and leave B unmatched; the maximum matching pairs
    # (d1, B) and (d2, A): two true positives.
    overlaps = np.array([[0.6, 0.58], [0.55, 0.0]])
    monkeypatch.setattr(fddb, "ellipse_rect_overlap", lambda faces, rects: overlaps[:, :len(rects)])
    dets = np.array([[0, 0, 1, 1, 0.9], [0, 0, 1, 1, 0.8]])
    scores, disc, cont, ndet = fddb.image_steps(np.zeros((2, 5)), dets)
    assert scores.tolist() == [0.9, 0.8]
    assert disc.tolist() == [1, 2] and ndet.tolist() == [1, 2]
    assert cont == pytest.approx([0.6, 1.13])


def test_image_without_faces_counts_false_positives():
    dets = np.array([[5, 5, 10, 10, 0.7], [0, 0, 3, 3, 0.4]])
    scores, disc, cont, ndet = fddb.image_steps(np.zeros((0, 5)), dets)
    assert disc.tolist() == [0, 0] and cont.tolist() == [0, 0] and ndet.tolist() == [1, 2]


def test_roc_hand_computed(files):
    ann, dets = files
    roc = fddb.evaluate(fddb.load_ellipse_list(ann), fddb.load_detections(dets))
    assert roc.num_faces == 3
    assert roc.thresholds.tolist() == [0.9, 0.8, 0.7, 0.5, 0.2]
    assert roc.true_positives_discrete.tolist() == [1, 2, 2, 3, 3]
    assert roc.false_positives.tolist() == [0, 0, 1, 1, 2]
    cont = [OVERLAP_ROT, OVERLAP_ROT + OVERLAP_A, OVERLAP_ROT + OVERLAP_A,
            OVERLAP_ROT + OVERLAP_A + OVERLAP_B_BOX, OVERLAP_ROT + OVERLAP_A + OVERLAP_B_BOX]
    np.testing.assert_allclose(roc.true_positives_continuous, cont, rtol=1e-12)
    assert roc.tpr_at(0) == pytest.approx(2 / 3) and roc.tpr_at(1000) == 1.0


def test_roc_files_in_official_format(files, tmp_path):
    ann, dets = files
    roc = fddb.evaluate(fddb.load_ellipse_list(ann), fddb.load_detections(dets))
    disc, cont = fddb.write_roc(roc, tmp_path / "out")
    assert disc.name == "DiscROC.txt" and cont.name == "ContROC.txt"
    assert disc.read_text().splitlines() == [
        "0.333333 0 0.9", "0.666667 0 0.8", "0.666667 1 0.7", "1 1 0.5", "1 2 0.2"]
    first = cont.read_text().splitlines()[0].split()
    assert float(first[0]) == pytest.approx(OVERLAP_ROT / 3, abs=1e-6) and first[1:] == ["0", "0.9"]


def test_cli_writes_roc_plot_and_headline(files, tmp_path, capsys):
    ann, dets = files
    out = tmp_path / "out"
    args = fddb.get_args_parser().parse_args(
        ["-d", str(dets), "-a", str(ann.parent), "-o", str(out), "--plot", str(out / "FDDB.png")])
    fddb.main(args)
    assert "discrete 1.0000 (100.00%)" in capsys.readouterr().out
    assert (out / "DiscROC.txt").exists() and (out / "ContROC.txt").exists()
    assert (out / "FDDB.png").stat().st_size > 0


def test_malformed_detection_line_names_file_and_line(tmp_path):
    path = tmp_path / "FDDB_dets.txt"
    path.write_text("img_a\n2.0\n1 2 3 4 0.9\n1 2 3 0.8\n")
    with pytest.raises(ValueError, match=rf"{path}:4:"):
        fddb.load_detections(path)


def test_truncated_block_names_file_and_line(tmp_path):
    path = tmp_path / "FDDB-fold-01-ellipseList.txt"
    path.write_text("img_a\n2\n20 10 1.5 50 50 1\n")
    with pytest.raises(ValueError, match=rf"{path}:4:.*announces 2"):
        fddb.load_ellipse_list(path)


def test_repeated_image_is_an_error(tmp_path):
    path = tmp_path / "FDDB_dets.txt"
    path.write_text("img_a\n1.0\n1 2 3 4 0.9\nimg_a\n0.0\n")
    with pytest.raises(ValueError, match=rf"{path}:4:.*first at line 1"):
        fddb.load_detections(path)


def test_shared_fold_sample_parses_and_reports_repeated_list_entries(caplog):
    folds = need_shared("fddb", "FDDB-folds-sample")
    with caplog.at_level(logging.WARNING):
        annotations = fddb.load_annotations([folds])
    # The list has 290 lines for 288 annotated images: two names are listed twice.
    assert len(annotations) == 288
    assert sum(len(f) for f in annotations.values()) == 512
    assert annotations["2002/07/31/big/img_228"].shape == (2, 5)
    assert "2 images are listed more than once" in caplog.text
    assert "2002/07/31/big/img_228 at lines 1, 6" in caplog.text


def test_fold_list_naming_an_unannotated_image_is_an_error(tmp_path):
    (tmp_path / "FDDB-fold-01-ellipseList.txt").write_text(ANNOTATIONS)
    (tmp_path / "FDDB-fold-01.txt").write_text("img_rot\nimg_two\nimg_none\nimg_other\n")
    with pytest.raises(ValueError, match="img_other"):
        fddb.load_annotations([tmp_path])


@pytest.mark.parametrize("case", ["-o holds the detections", "-o holds an annotation file", "--plot is the detections"])
def test_outputs_over_the_inputs_are_refused_before_any_work(files, tmp_path, case):
    """-o's DiscROC.txt / ContROC.txt and --plot, against -d and -a (issue 25)."""
    from utils.errors import InputError

    ann, dets = files
    argv = ["-d", str(dets), "-a", str(ann)]
    if case == "-o holds the detections":
        dets = dets.rename(tmp_path / "DiscROC.txt")
        argv = ["-d", str(dets), "-a", str(ann), "-o", str(tmp_path)]
        expected = (f"-o {tmp_path} would overwrite the detections {dets} (-d) with the ROC file DiscROC.txt: "
                    f"choose another -o")
    elif case == "-o holds an annotation file":
        ann = ann.rename(tmp_path / "ContROC.txt")
        argv = ["-d", str(dets), "-a", str(ann), "-o", str(tmp_path)]
        expected = (f"-o {tmp_path} would overwrite the annotation file {ann} (-a) with the ROC file ContROC.txt: "
                    f"choose another -o")
    else:
        dets = dets.rename(tmp_path / "dets.png")
        argv = ["-d", str(dets), "-a", str(ann.parent), "-o", str(tmp_path / "out"), "--plot", str(dets)]
        expected = f"--plot {dets} would overwrite the detections {dets} (-d) with the ROC plot: choose another --plot"
    before = dets.read_bytes(), ann.read_bytes()
    with pytest.raises(InputError) as e:
        fddb.main(fddb.get_args_parser().parse_args(argv))
    assert str(e.value) == expected
    assert (dets.read_bytes(), ann.read_bytes()) == before
