"""bench.bench_hold: the gaps it counts (hand-made sequences) and one small run end to end."""
import numpy as np

from bench.bench_hold import gap_runs, get_args_parser, main
from bench.common import default_weights
from tests.conftest import need_shared


def test_a_gap_is_a_run_between_two_frames_where_the_face_is_found():
    assert gap_runs([True, False, True]) == [(1, 1)]
    assert gap_runs([True, False, False, True, False, True]) == [(1, 2), (4, 1)]


def test_misses_before_the_first_find_or_after_the_last_are_no_gaps():
    assert gap_runs([False, False, True, True, False]) == []
    assert gap_runs([False] * 4) == [] and gap_runs([True] * 4) == [] and gap_runs([]) == []


def test_a_small_run_prints_the_gaps_and_the_hold_table(tmp_path, capsys):
    need_shared('images', 'largest_selfie.jpg')
    args = get_args_parser().parse_args(['-m', default_weights(), '--clips', 'pan', '--sizes', 'original size',
                                         '--size', '320x180', '--frames', '6', '--max_hold', '2',
                                         '--cache_dir', str(tmp_path)])
    gaps = main(args)
    out = capsys.readouterr().out
    assert 'pan: largest_selfie.jpg, 320x180, 6 frames at 30 fps; original size' in out
    assert '(detected the reference image and 6 frames' in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 9]
    assert [r[0] for r in rows] == ['0', '1', '2']
    assert rows[0][3] == rows[0][7] and float(rows[0][4]) == 0  # hold 0 holds nothing
    assert list(gaps) == [('original size', 'pan')]
    # A rerun reads the cached detections instead of detecting again, and finds the same gaps.
    assert main(args) == gaps
    assert '(detected the reference image' not in capsys.readouterr().out
    assert len(list(tmp_path.glob('*.npz'))) == 1 and np.load(next(tmp_path.glob('*.npz')))['frame5'].shape[1] == 15
