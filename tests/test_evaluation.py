"""WIDER FACE evaluation: the kernel and its numpy fallback, the parser, and the reference's AP to 1e-12."""
import json
import logging
import re

import numpy as np
import pytest
from scipy.io import savemat

from bench import bench_evaluation
from tests.conftest import need_shared
from utils.cli import run_cli
from widerface_evaluate import evaluation as ev

REFERENCE_AP = {
    ("widerface", "predictions", "mobilenet0.25_official"):
        {"easy": 0.907076104848709, "medium": 0.8816501731241937, "hard": 0.7382726532319118},
    ("golden", "eval_perturbed_predictions"):
        {"easy": 0.7701224708178015, "medium": 0.7626427409846812, "hard": 0.4703584382534434},
}
# The reference matched each file's rows in file order. The official files are in score
# order, so the default (rows sorted by score) gives their numbers; the perturbed set's rows
# are shuffled (2724 of its 3036 files), so its numbers are the reference's file order's.
SORT_ROWS = {("widerface", "predictions", "mobilenet0.25_official"): True,
             ("golden", "eval_perturbed_predictions"): False}
AP_TOL = 1e-12


def write_pred(path, name, boxes):
    """A prediction file as test_widerface.py writes it: name, count, 'x y w h score ' lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [name, str(len(boxes))] + [" ".join(str(v) for v in b) + " " for b in boxes]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def wider_gt():
    return ev.load_wider_gt(need_shared("widerface", "ground_truth"))


@pytest.mark.parametrize("pred_parts", list(REFERENCE_AP), ids=["official", "perturbed"])
def test_reference_ap_reproduced(wider_gt, pred_parts):
    results = ev.evaluate(ev.load_predictions(need_shared(*pred_parts)), wider_gt, sort_rows=SORT_ROWS[pred_parts])
    for setting, expected in REFERENCE_AP[pred_parts].items():
        assert abs(results[setting]["ap"] - expected) <= AP_TOL, setting


def test_kernel_overlap_hand_computed():
    boxes = np.array([[0, 0, 9, 9]], dtype=np.float64)
    # +1 areas: both boxes are 10x10 = 100 px; the first shares 5x5 = 25 px, the second a
    # 1 px wide column of 10 px, the third nothing.
    query = np.array([[5, 5, 14, 14], [9, 0, 18, 9], [10, 0, 19, 9]], dtype=np.float64)
    np.testing.assert_array_equal(ev.bbox_overlaps(boxes, query), [[25 / 175, 10 / 190, 0.0]])


def test_segmented_max_matches_pairwise_kernel():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (40, 2))
    boxes = np.hstack([xy, xy + rng.uniform(1, 30, (40, 2))])
    gxy = rng.uniform(0, 50, (12, 2))
    query = np.hstack([gxy, gxy + rng.uniform(1, 30, (12, 2))])
    query[5] = query[4]  # a tie: the first maximum must win
    image = np.repeat([0, 1, 2], [15, 15, 10])
    start, count = np.array([0, 4, 9]), np.array([4, 5, 3])
    best, arg = ev.compiled.max_overlaps_segmented(boxes, query, image, start, count)
    for n in range(len(boxes)):
        i = image[n]
        o = ev.bbox_overlaps(boxes[n:n + 1], query[start[i]:start[i] + count[i]])[0]
        assert best[n] == o.max() and arg[n] == o.argmax()


@pytest.fixture
def unbuilt(monkeypatch, caplog):
    """The evaluation as in a checkout whose box-overlap kernel is not built; caplog
    records its warnings."""
    import utils.compiled
    monkeypatch.setattr(ev, "compiled", None)
    utils.compiled.warn_not_built.cache_clear()
    caplog.set_level(logging.WARNING, logger="utils.compiled")
    yield caplog
    utils.compiled.warn_not_built.cache_clear()


def _same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _xyxy(xywh):
    return np.hstack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]])


def _edge_case_boxes():
    """Boxes touching by a pixel (+1 width 0 or 1), nested, identical, inverted, with signed
    zeros and with NaN or infinite coordinates."""
    return np.array([[0, 0, 9, 9], [10, 0, 19, 9], [9, 0, 18, 9], [2, 2, 5, 5], [0, 0, 9, 9], [9, 9, 0, 0],
                     [-0.0, 0, 9, 9], [0.0, -0.0, 9, 9], [np.nan, 0, 9, 9], [0, 0, np.inf, 9],
                     [-np.inf, 0, np.inf, 9], [0.5, 0.25, 9.75, 9.125]], dtype=np.float64)


def test_fallback_overlaps_equal_the_kernel_bit_for_bit(wider_gt):
    """The WIDER ground truth against random boxes, real detections and edge cases."""
    rng = np.random.default_rng(0)
    gt = _xyxy(wider_gt.boxes)
    xy = rng.uniform(-20, 1000, (300, 2))
    random = np.hstack([xy, xy + rng.uniform(0, 300, (300, 2))])
    real = _xyxy(ev.load_predictions(need_shared(*list(REFERENCE_AP)[0]))[wider_gt.names[0]][:, :4])
    edge = _edge_case_boxes()
    with np.errstate(invalid="ignore"):
        for boxes, query in ((random, gt[::7]), (real, gt[wider_gt.box_start[0]:][:wider_gt.box_count[0]]),
                             (edge, edge), (edge, gt[:500]), (gt[:500], edge), (random[:0], gt[:3]),
                             (random[:3], gt[:0])):
            assert _same_bits(ev._bbox_overlaps_numpy(boxes, query), ev.compiled.bbox_overlaps(boxes, query))


def test_fallback_segmented_max_equals_the_kernel_bit_for_bit(wider_gt):
    """Every official detection against its image's faces, plus NaN, tied and empty cases."""
    preds = ev.load_predictions(need_shared(*list(REFERENCE_AP)[0]))
    have = [i for i, name in enumerate(wider_gt.names) if name in preds]
    det = np.concatenate([_xyxy(preds[wider_gt.names[i]][:, :4]) for i in have])
    det_image = np.repeat(have, [len(preds[wider_gt.names[i]]) for i in have])
    args = (det, _xyxy(wider_gt.boxes), det_image, wider_gt.box_start, wider_gt.box_count)
    compiled, fallback = ev.compiled.max_overlaps_segmented(*args), ev._max_overlaps_segmented_numpy(*args)
    assert len(det) > 100000 and all(_same_bits(c, f) for c, f in zip(compiled, fallback))
    edge = _edge_case_boxes()
    query = np.vstack([edge, edge[4:5], edge[::-1]])  # a repeated box: ties
    image = np.array([0, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2, 0, 3, 3])
    start, count = np.array([0, 12, 13, 25]), np.array([12, 1, 12, 0])  # image 3 has no query boxes
    boxes = np.vstack([edge, edge[:2]])
    with np.errstate(invalid="ignore"):
        compiled = ev.compiled.max_overlaps_segmented(boxes, query, image, start, count)
        fallback = ev._max_overlaps_segmented_numpy(boxes, query, image, start, count)
    assert all(_same_bits(c, f) for c, f in zip(compiled, fallback))
    assert list(fallback[1][-2:]) == [-1, -1]


def _value_error(fn, *args):
    with pytest.raises(ValueError) as e:
        fn(*args)
    return str(e.value)


def test_fallback_rejects_what_the_kernel_rejects():
    boxes = np.zeros((2, 4))
    # An image index out of range, a query range past the end, one image index for two boxes.
    for args in ((boxes, boxes, [0, 2], [0], [2]), (boxes, boxes, [0, 0], [1], [2]), (boxes, boxes, [0], [0], [2])):
        assert _value_error(ev._max_overlaps_segmented_numpy, *args) == \
            _value_error(ev.compiled.max_overlaps_segmented, *args)
    assert _value_error(ev._bbox_overlaps_numpy, boxes, np.zeros((2, 5))) == \
        _value_error(ev.compiled.bbox_overlaps, boxes, np.zeros((2, 5))) == "boxes must have 4 columns, got 4 and 5"


@pytest.mark.parametrize("pred_parts", list(REFERENCE_AP), ids=["official", "perturbed"])
def test_unbuilt_kernel_gives_the_same_results_with_one_warning(wider_gt, pred_parts, unbuilt):
    preds = ev.load_predictions(need_shared(*pred_parts))
    unbuilt.clear()
    results = ev.evaluate(preds, wider_gt, sort_rows=SORT_ROWS[pred_parts])
    for setting, expected in REFERENCE_AP[pred_parts].items():
        assert abs(results[setting]["ap"] - expected) <= AP_TOL, setting
    ev.bbox_overlaps(np.zeros((1, 4)), np.zeros((1, 4)))
    warnings = [r.getMessage() for r in unbuilt.records if "not built" in r.getMessage()]
    assert len(warnings) == 1 and "box_overlaps.pyx" in warnings[0]
    assert "`python setup.py build_ext --inplace` at the repository root" in warnings[0]


def test_unbuilt_kernel_gives_the_compiled_curves_bit_for_bit(wider_gt, monkeypatch):
    preds = ev.load_predictions(need_shared("golden", "eval_perturbed_predictions"))
    compiled = ev.evaluate(preds, wider_gt)
    monkeypatch.setattr(ev, "compiled", None)
    monkeypatch.setattr(ev, "_warn_not_built", lambda: None)
    fallback = ev.evaluate(preds, wider_gt)
    for setting, r in compiled.items():
        assert fallback[setting]["ap"] == r["ap"]
        assert _same_bits(fallback[setting]["precision"], r["precision"])
        assert _same_bits(fallback[setting]["recall"], r["recall"])


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "img.txt"
    path.write_text("img\n3\n1 2 3 4 0.9 \n1 2 3 0.8\n1 2 3 4 0.7\n")
    with pytest.raises(ValueError, match=rf"{path}:4:"):
        ev.read_pred_file(path)


def test_non_numeric_value_names_file_and_line(tmp_path):
    path = tmp_path / "img.txt"
    path.write_text("img\n2\n1 2 3 4 0.9\n1 2 3 4 high\n")
    with pytest.raises(ValueError, match=rf"{path}:4:"):
        ev.read_pred_file(path)


def test_wrong_count_line_names_line_2(tmp_path):
    path = tmp_path / "img.txt"
    path.write_text("img\n3\n1 2 3 4 0.9\n")
    with pytest.raises(ValueError, match=rf"{path}:2:"):
        ev.read_pred_file(path)


@pytest.mark.parametrize("name", ["party_jpg", "dog_p", "walking_g", "s.j"])
def test_names_ending_in_j_p_g_are_kept(tmp_path, name):
    write_pred(tmp_path / "ev" / f"{name}.txt", name, [[1, 2, 3, 4, 0.5]])
    assert list(ev.load_predictions(tmp_path)) == [f"ev/{name}"]


def test_name_line_with_jpg_extension_is_stripped(tmp_path):
    write_pred(tmp_path / "ev" / "a.txt", "ev/party_1.jpg", [])
    assert list(ev.load_predictions(tmp_path)) == ["ev/party_1"]


def test_label_names_lose_every_image_extension_the_scripts_read(tmp_path):
    # test_widerface.py names a prediction file after the image without its extension,
    # whatever it is; the label names must match for .tif and .webp images too.
    label = tmp_path / "label.txt"
    label.write_text("# ev/a.TIF\n0 0 10 10\n# ev/b.webp\n0 0 10 10\n# ev/c.tiff\n# ev/d.gif\n")
    assert ev.load_label_gt(label).names == ["ev/a", "ev/b", "ev/c", "ev/d.gif"]


def test_label_mode_reads_label_txt_as_training_does(tmp_path):
    # One parser for label.txt: the training line's first four values are the box, and a
    # line training would refuse (here a non-finite width) is refused here too, by line.
    from data.label_file import read_label_file
    label = tmp_path / "label.txt"
    label.write_text("# ev/a.jpg\n" + " ".join(["1"] * 4 + ["-1"] * 15 + ["0.5"]) + "\n")
    assert ev.load_label_gt(label).boxes.tolist() == [[1, 1, 1, 1]]
    label.write_text("# ev/a.jpg\n0 0 inf 10\n")
    for parse in (read_label_file, ev.load_label_gt):
        with pytest.raises(ValueError, match=re.escape(f"{label}:2: non-finite")):
            parse(label)


@pytest.fixture
def label_set(tmp_path):
    """One image with two 10x10 faces: a perfect detection (0.9) and a false one (0.3);
    a second image with one face and no prediction file."""
    label = tmp_path / "label.txt"
    label.write_text("# ev/a.jpg\n0 0 10 10\n40 40 10 10\n# ev/b.jpg\n5 5 20 20\n")
    write_pred(tmp_path / "pred" / "ev" / "a.txt", "a", [[0, 0, 10, 10, 0.9], [100, 100, 10, 10, 0.3]])
    return label, tmp_path / "pred"


def test_label_mode_hand_computed(label_set):
    label, pred = label_set
    # Normalised scores 1 and 0: every threshold above 0 keeps only the true positive
    # (precision 1), the last (0) keeps both (precision 1/2); recall is 1 of 3 faces
    # throughout, so AP = 1/3 * 1.
    results = ev.evaluate(ev.load_predictions(pred), ev.load_label_gt(label))
    assert list(results) == [ev.LABEL_SETTING]
    assert results["all"]["ap"] == pytest.approx(1 / 3, abs=AP_TOL)


def test_rows_out_of_score_order_are_matched_in_score_order(label_set, tmp_path):
    """The false detection (0.3) first, as NMS-order files hold it: sorted, the AP is the
    sorted file's 1/3; the reference's file order gave 1/6 (each threshold then takes every
    row up to the last one that passes, the false one included: precision 1/2)."""
    label, _ = label_set
    unsorted = tmp_path / "unsorted"
    write_pred(unsorted / "ev" / "a.txt", "a", [[100, 100, 10, 10, 0.3], [0, 0, 10, 10, 0.9]])
    gt = ev.load_label_gt(label)
    assert ev.evaluate(ev.load_predictions(unsorted), gt)["all"]["ap"] == pytest.approx(1 / 3, abs=AP_TOL)
    assert ev.evaluate(ev.load_predictions(unsorted), gt, sort_rows=False)["all"]["ap"] == \
        pytest.approx(1 / 6, abs=AP_TOL)


def test_by_score_is_a_stable_descending_sort():
    rows = np.array([[0, 0, 1, 1, 0.5], [1, 0, 1, 1, 0.9], [2, 0, 1, 1, 0.5], [3, 0, 1, 1, 0.7]])
    assert ev.by_score(rows)[:, 0].tolist() == [1, 3, 0, 2]  # the two 0.5 rows keep their order
    ordered = rows[[1, 3, 0, 2]]
    assert ev.by_score(ordered) is ordered  # already in order: not copied


def test_shuffled_rows_give_the_sorted_files_ap_exactly(wider_gt):
    """Every file of the official predictions with its rows shuffled: the APs and curves are
    those of the same files sorted, to the bit; in file order (the reference's) they are not."""
    preds = ev.load_predictions(need_shared(*list(REFERENCE_AP)[0]))
    rng = np.random.default_rng(0)
    shuffled = {key: boxes[rng.permutation(len(boxes))] for key, boxes in preds.items()}
    assert sum(not np.array_equal(ev.by_score(b), b) for b in shuffled.values()) > 3000
    # The sorted file of each shuffled one (rows of equal score in the shuffled order).
    sorted_files = {key: ev.by_score(boxes) for key, boxes in shuffled.items()}
    expected = ev.evaluate(sorted_files, wider_gt, sort_rows=False)
    got = ev.evaluate(shuffled, wider_gt)
    for setting, r in expected.items():
        assert got[setting]["ap"] == r["ap"]
        assert _same_bits(got[setting]["precision"], r["precision"])
        assert _same_bits(got[setting]["recall"], r["recall"])
        assert abs(r["ap"] - REFERENCE_AP[list(REFERENCE_AP)[0]][setting]) <= AP_TOL  # ties aside, the official ones
    in_file_order = ev.evaluate(shuffled, wider_gt, sort_rows=False)
    assert all(in_file_order[s]["ap"] < expected[s]["ap"] - 0.1 for s in ev.SETTINGS)


def test_files_in_score_order_score_the_same_bits_sorted_or_not(wider_gt):
    """The reference's own files (and this project's) are in score order: sorting them is a no-op."""
    preds = ev.load_predictions(need_shared(*list(REFERENCE_AP)[0]))
    default, file_order = ev.evaluate(preds, wider_gt), ev.evaluate(preds, wider_gt, sort_rows=False)
    for setting, r in file_order.items():
        assert default[setting]["ap"] == r["ap"]
        assert _same_bits(default[setting]["precision"], r["precision"])
        assert _same_bits(default[setting]["recall"], r["recall"])


def test_only_predicted_restricts_images(label_set, capsys):
    label, pred = label_set
    args = ev.get_args_parser().parse_args(["-p", str(pred), "--label", str(label), "--only-predicted"])
    results = ev.main(args)
    # Image b is left out: recall is 1 of 2 faces.
    assert results["all"]["ap"] == pytest.approx(1 / 2, abs=AP_TOL)
    assert "Evaluated 1 of 2 images" in capsys.readouterr().out


def test_scores_outside_unit_range(tmp_path, label_set):
    label, pred = label_set
    shifted = tmp_path / "shifted"
    # Any score range: the two scores still normalise to exactly 1 and 0.
    write_pred(shifted / "ev" / "a.txt", "a", [[0, 0, 10, 10, 4 * 0.9 - 7], [100, 100, 10, 10, 4 * 0.3 - 7]])
    gt = ev.load_label_gt(label)
    assert ev.evaluate(ev.load_predictions(shifted), gt)["all"]["ap"] == \
        ev.evaluate(ev.load_predictions(pred), gt)["all"]["ap"]


def test_cli_prints_result_block_and_writes_curves(label_set, tmp_path, capsys):
    label, pred = label_set
    out = tmp_path / "out"
    ev.main(ev.get_args_parser().parse_args([
        "-p", str(pred), "--label", str(label), "--curve-data", str(out / "pr.json"),
        "--curve-plot", str(out / "pr.png")]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "==================== Results ===================="
    assert lines[1].startswith("All    Val AP: 0.333")
    assert lines[2] == "================================================="
    data = json.loads((out / "pr.json").read_text())
    assert len(data["all"]["precision"]) == ev.THRESH_NUM
    assert (out / "pr.png").stat().st_size > 0


def test_curve_data_over_a_prediction_file_is_refused_before_the_evaluation(label_set, capsys):
    """E7: exit 0, and an input prediction file overwritten with the CSV."""
    label, pred = label_set
    victim = pred / "ev" / "a.txt"
    before = victim.read_bytes()
    argv = ["-p", str(pred), "--label", str(label), "--curve-data", str(victim)]
    assert run_cli(ev.main, ev.get_args_parser(), argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines()[-1] == (
        f"error: --curve-data {victim} would overwrite the prediction file {victim} (-p) with the PR curves: "
        f"choose another --curve-data")
    assert victim.read_bytes() == before


@pytest.mark.parametrize("flag, name, message", [
    ("--curve-data", "wider_hard_val.mat", "would overwrite the ground-truth file {gt}/wider_hard_val.mat (-g)"),
    ("--curve-plot", "pr.png", "--curve-plot {tmp}/pr.png and --curve-data {tmp}/pr.png would both write"),
])
def test_curves_over_the_ground_truth_or_each_other_are_refused(tmp_path, capsys, flag, name, message):
    gt = tmp_path / "gt"
    gt.mkdir()
    for f in ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat"):
        (gt / f).write_bytes(b"not read: the check comes first")
    target = gt / name if name.endswith(".mat") else tmp_path / name
    argv = ["-p", str(tmp_path), "-g", str(gt), flag, str(target)]
    if flag == "--curve-plot":
        argv += ["--curve-data", str(target)]
    assert run_cli(ev.main, ev.get_args_parser(), argv) == 1
    assert message.format(gt=gt, tmp=tmp_path) in capsys.readouterr().err
    assert (gt / "wider_hard_val.mat").read_bytes() == b"not read: the check comes first"


def test_curve_csv(label_set, tmp_path):
    label, pred = label_set
    results = ev.evaluate(ev.load_predictions(pred), ev.load_label_gt(label))
    ev.save_curves(results, tmp_path / "pr.csv")
    rows = (tmp_path / "pr.csv").read_text().splitlines()
    assert rows[0] == "setting,threshold,precision,recall" and len(rows) == 1 + ev.THRESH_NUM


def test_missing_prediction_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ev.load_predictions(tmp_path / "nowhere")


def _cell(items):
    """An (n, 1) object array: a MATLAB cell column for savemat."""
    cell = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        cell[i, 0] = item
    return cell


def test_matches_reference_style_implementation_on_synthetic_set(tmp_path):
    """The vectorised evaluator against the reference's loops, on data made to hit the
    corner cases: unsorted and tied scores, scores outside [0, 1], faces matched twice,
    images without faces, without detections or without a prediction file."""
    rng = np.random.default_rng(1)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    events, files, faces, keeps = [], [], [], {s: [] for s in ev.SETTINGS}
    for e in range(3):
        event = f"{e}--Event"
        names, boxes, kept = [], [], {s: [] for s in ev.SETTINGS}
        for j in range(6):
            name = f"{e}_Event_{j}"
            n_face = int(rng.integers(0, 6)) if j else 0
            xy = rng.integers(0, 200, (n_face, 2))
            gt = np.hstack([xy, rng.integers(4, 60, (n_face, 2))]).astype(np.int32)
            names.append(np.array([name]))
            boxes.append(gt)
            hard = np.flatnonzero(rng.random(n_face) < 0.8) + 1
            kept["hard"].append(hard.reshape(-1, 1).astype(np.uint8))
            kept["medium"].append(hard[: len(hard) * 2 // 3].reshape(-1, 1).astype(np.uint8))
            kept["easy"].append(hard[: len(hard) // 3].reshape(-1, 1).astype(np.uint8))
            if j == 5:
                continue  # no prediction file
            dets = []
            for x, y, w, h in gt:
                for _ in range(int(rng.integers(0, 3))):
                    dets.append([x + rng.integers(-3, 4), y + rng.integers(-3, 4), w + rng.integers(-3, 4),
                                 h + rng.integers(-3, 4)])
            dets += rng.integers(0, 200, (int(rng.integers(0, 4)), 4)).tolist()
            scores = np.round(rng.uniform(-2, 3, len(dets)), 1)  # ties and values beyond [0, 1]
            write_pred(pred_dir / event / f"{name}.txt", name,
                       [list(d) + [s] for d, s in zip(dets, scores)])
        events.append(np.array([event]))
        files.append(_cell(names))
        faces.append(_cell(boxes))
        for s in ev.SETTINGS:
            keeps[s].append(_cell(kept[s]))
    savemat(gt_dir / "wider_face_val.mat",
            {"event_list": _cell(events), "file_list": _cell(files), "face_bbx_list": _cell(faces)})
    for s in ev.SETTINGS:
        savemat(gt_dir / f"wider_{s}_val.mat", {"gt_list": _cell(keeps[s])})

    preds, gt = ev.load_predictions(pred_dir), ev.load_wider_gt(gt_dir)
    # The reference's loops on the same rows sorted by score (as the evaluation sorts them),
    # and in file order (as the reference reads them).
    for sort_rows in (True, False):
        fast = ev.evaluate(preds, gt, sort_rows=sort_rows)
        reference = bench_evaluation.reference_evaluation(str(pred_dir), str(gt_dir), sort_rows=sort_rows)
        assert [fast[s]["ap"] for s in ev.SETTINGS] == reference, sort_rows
    assert ev.evaluate(preds, gt)["hard"]["ap"] != ev.evaluate(preds, gt, sort_rows=False)["hard"]["ap"]
