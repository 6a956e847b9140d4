"""bench/bench_sizes.py measures what the scripts give: its AP is the AP of test_widerface.py's
files scored by widerface_evaluate's evaluation, and a rerun takes its entries from the cache
instead of detecting again (a quick run: three val416 photos, a long side of 240, torch only)."""
import os

import numpy as np
import pytest

import test_widerface as wider_script
from bench import bench_sizes as bs
from bench.common import default_weights, val416_photos
from tests.conftest import golden_image_path, need_shared
from widerface_evaluate.evaluation import evaluate, load_predictions, load_wider_gt

PHOTOS = 3  # the first three val416 photos: faces of every setting among them
SETTING = '240'  # max_size 240: quick, and its AP here moves when a box is not truncated as in the files


@pytest.fixture(scope='module', autouse=True)
def torch_threads():
    """The bench and test_widerface.py --threads 1 set torch's threads for the whole process:
    the tests after these get their count back."""
    import torch

    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


@pytest.fixture(scope='module')
def gt():
    return load_wider_gt(need_shared('widerface', 'val416', 'ground_truth'))


def _args(tmp, *extra):
    return bs.get_args_parser().parse_args(
        ['--photos', str(PHOTOS), '--settings', SETTING, '--backends', 'torch', '--images',
         str(golden_image_path('test')), '--image_rounds', '1', '--cache', str(tmp / 'cache'),
         '--plot', str(tmp / 'curve.png'), *extra])


@pytest.fixture(scope='module')
def run(gt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bench_sizes')
    return tmp, bs.main(_args(tmp))


def test_ap_is_what_test_widerface_and_evaluation_give(run, gt, tmp_path):
    _, rows = run
    photos = dict(list(val416_photos(gt).items())[:PHOTOS])
    images = tmp_path / 'images'
    for name, path in photos.items():
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, images / f"{name}.jpg")
    (tmp_path / 'list.txt').write_text("".join(f"{name}.jpg\n" for name in photos))
    wider_script.main(wider_script.get_args_parser().parse_args(
        ['-m', default_weights(), '--network', 'mobile0.25', '--cpu', '--max_size', SETTING, '--threads', '1',
         '--dataset_folder', str(images) + os.sep, '--image_list', str(tmp_path / 'list.txt'),
         '--save_folder', str(tmp_path / 'out') + os.sep]))
    results = evaluate(load_predictions(tmp_path / 'out'), gt, only_predicted=True)
    assert [row['setting'] for row in rows] == [SETTING]
    assert rows[0]['ap'] == {s: r['ap'] for s, r in results.items()}
    assert 0 < rows[0]['ap']['hard'] < 1


def test_a_rerun_reads_the_cache_and_detects_nothing(run, monkeypatch):
    tmp, rows = run

    def refuse(*_):
        raise AssertionError("a cached setting was detected again")

    monkeypatch.setattr(bs, 'build_detector', refuse)
    again = bs.main(_args(tmp))
    assert again == rows


def test_the_picture_is_written(run):
    tmp, _ = run
    assert (tmp / 'curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_cache_entry_made_otherwise_is_not_read(tmp_path):
    names = ['a/x', 'b/y']
    dets = {'a/x': np.arange(30, dtype=np.float32).reshape(2, 15), 'b/y': np.zeros((0, 15), np.float32)}
    times = {'a/x': [1.5, 2.5], 'b/y': [3.0, 4.0]}
    key = {'setting': {'max_size': 160}, 'threads': 1}
    path = tmp_path / 'entry.npz'
    bs.save_entry(path, key, names, dets, times, {'date': 'd', 'load': 1.0, 'end_load': 2.0})
    got_dets, got_times, run = bs.load_entry(path, dict(key), names)
    assert all(np.array_equal(got_dets[n], dets[n]) for n in names) and got_times == times and run['load'] == 1.0
    assert bs.load_entry(path, {**key, 'threads': 2}, names) is None
    assert bs.load_entry(tmp_path / 'missing.npz', key, names) is None


def test_input_sizes_follow_the_reference_rule():
    # 1920x1080 at --max_size 640: 640x360. test.jpg (1024x624) at the test scale: 1600 / 624 would
    # make the long side 2626 > 2150, so the long side is 2150 and the short 624 * 2150 / 1024 = 1310.2.
    assert bs.input_text('640', 1080, 1920) == '640x360'
    assert bs.input_text('test_scale', 624, 1024) == '2150x1310'
    assert bs.input_text('original', 624, 1024) == '1024x624'
    assert bs.input_text('pyramid', 624, 1024) == '5 scales x2'
