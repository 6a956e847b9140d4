"""bench/bench_kernels.py switches one compiled kernel off at a time, and every configuration
gives the detections and APs of the all-compiled one."""
import re

import torch

import layers.functions.detection as detection
import utils.kernels
import utils.nms
from tests.conftest import golden_image_path, need_shared
from widerface_evaluate import evaluation


def test_kernels_benchmark_runs_every_configuration_with_identical_results(capsys):
    from bench import bench_kernels
    need_shared('weights', 'mobilenet0.25_Final.pth')
    args = bench_kernels.get_args_parser().parse_args(
        ['--images', str(golden_image_path('val416_0_Parade_Parade_0_102')), '--repeats', '1', '--warmup', '0',
         '--stage_repeats', '2', '--predictions', str(need_shared('golden', 'eval_perturbed_predictions')),
         '--eval_repeats', '1'])
    compiled = utils.kernels.compiled, utils.nms.compiled, evaluation.compiled, detection.to_input_kernel
    assert bench_kernels.main(args) == 0
    assert (utils.kernels.compiled, utils.nms.compiled, evaluation.compiled, detection.to_input_kernel) == compiled
    assert torch.is_grad_enabled()  # no process-wide setting left behind for the tests that follow
    out = capsys.readouterr().out
    stages = [m.group(1) for m in re.finditer(r'^(\w+)\s+0_Parade_Parade_0_102\s', out, re.MULTILINE)]
    assert stages == [s for s in bench_kernels.PIPELINE_STAGES if hasattr(compiled[0], s)] + ['cpu_nms']
    assert 'identical (bit for bit) in every configuration' in out
    assert re.search(r'^box_overlaps\s+eval_perturbed_predictions\s', out, re.MULTILINE)
    assert 'APs: equal with and without the kernel' in out


def test_checkouts_benchmark_times_two_checkouts_photo_by_photo(capsys):
    """bench/bench_checkouts.py, this checkout against itself: one line per shared photo,
    with both medians and their ratio."""
    from bench import bench_checkouts
    from bench.common import IMAGES
    from tests.conftest import ROOT
    need_shared('weights', 'mobilenet0.25_Final.pth')
    args = bench_checkouts.get_args_parser().parse_args([str(ROOT), str(ROOT), '--rounds', '2', '--repeats', '1',
                                                         '--threads', '1'])
    assert bench_checkouts.main(args) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines()[2:]:
        photo, old, new, ratio = line.split()
        rows[photo] = (float(old), float(new), float(ratio))
    assert list(rows) == list(IMAGES)
    for old, new, ratio in rows.values():
        assert old > 0 and new > 0 and abs(ratio - new / old) < 0.01


def test_checkouts_benchmark_reports_medians_and_new_over_old():
    from bench import bench_checkouts
    from bench.common import IMAGES
    times = {(name, photo): [] for name in ('old', 'new') for photo in IMAGES}
    times['old', 'test'] = [10.0, 30.0, 20.0]
    times['new', 'test'] = [5.0, 25.0, 15.0, 99.0]
    for photo in IMAGES[1:]:
        times['old', photo], times['new', photo] = [8.0], [12.0]
    rows = bench_checkouts.medians(times)
    assert rows[0] == ('test', 20.0, 20.0, 1.0)
    assert rows[1:] == [(photo, 8.0, 12.0, 1.5) for photo in IMAGES[1:]]
