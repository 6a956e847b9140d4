"""bench.bench_openvino: OpenVINO runs the project's ONNX export inside the project's own pipeline
(a Detector on an OpenVinoSession, in the bench's child process), and its detections are the
reference's within the end-to-end matcher's tolerances (DETECTION_TOLERANCES) on the four shared
photos, with dynamic shapes and compiled per shape; the bench's verdict needs the gain everywhere."""
import numpy as np
import pytest

from bench.bench_openvino import OpenVinoSession
from bench.common import IMAGES, default_weights
from tests.conftest import need_shared
from tests.detection_match import DETECTION_TOLERANCES, assert_detections_match

pytest.importorskip('openvino')


@pytest.fixture(scope='module')
def onnx_file(tmp_path_factory):
    from models.detector import load_detector
    from models.onnx_export import export_onnx

    path = tmp_path_factory.mktemp('onnx') / 'FaceDetector.onnx'
    export_onnx(load_detector('mobile0.25', default_weights()).net, str(path))
    return str(path)


@pytest.fixture(scope='module', params=['openvino', 'openvino static'])
def child_run(request, onnx_file, tmp_path_factory):
    """(runtime, the child's JSON, its detections) of one bench child on the four photos, run as
    the bench runs it: in a process of its own (OpenVINO needs oneDNN's defaults, not the
    ONEDNN_MAX_CPU_ISA=SSE41 the tests may run under)."""
    import bench.bench_openvino as bo

    for name in IMAGES:
        need_shared('images', f'{name}.jpg')
    dets = tmp_path_factory.mktemp('dets') / 'dets.npz'
    args = bo.get_args_parser().parse_args(['--onnx_model', onnx_file, '--repeats', '1'])
    return request.param, bo.run_child(args, request.param, 1, str(dets)), np.load(dets)


@pytest.mark.parametrize('name', IMAGES)
def test_openvino_detections_are_the_references(child_run, name):
    _, _, dets = child_run
    golden = np.load(need_shared('golden', 'mnet', f'{name}_dets.npy'))
    assert_detections_match(dets[name], golden, **DETECTION_TOLERANCES)


def test_the_child_times_every_photo_and_static_compiles_each_shape(child_run):
    runtime, result, _ = child_run
    assert list(result) == list(IMAGES)
    assert all(v['forward'] > 0 and v['e2e'] > 0 for v in result.values())
    compiled = [v['compile_ms'] for v in result.values()]
    # The four photos have four sizes: a compile each when static, none timed when dynamic.
    assert all(ms > 0 for ms in compiled) if runtime == 'openvino static' else compiled == [None] * 4


def test_the_session_offers_what_the_detector_reads(onnx_file):
    session = OpenVinoSession(onnx_file, 1, static=True)  # compiles nothing until it runs
    meta = session.get_modelmeta().custom_metadata_map
    assert meta['network'] == 'mobile0.25' and str(session) == onnx_file
    assert session.compile_ms == {}


def test_the_verdict_needs_the_gain_on_every_photo_and_load(monkeypatch, capsys, tmp_path):
    import bench.bench_openvino as bo

    # onnxruntime takes 100 ms on every photo; OpenVINO 80 ms (1.25x faster), except on
    # largest_selfie next to busy processes (125 ms: 1.25x slower).
    def child(args, runtime, threads, dets_out):
        def ms(name, load):
            if runtime == 'onnxruntime':
                return 100.0
            return 125.0 if (name == 'largest_selfie' and load) else 80.0
        return {n: {'forward': ms(n, busy[0]), 'e2e': ms(n, busy[0]), 'compile_ms': None} for n in bo.IMAGES}

    busy = [0]

    class Busy:
        def __init__(self, n):
            busy[0] = n

        def __enter__(self):
            return []

        def __exit__(self, *exc):
            busy[0] = 0

    monkeypatch.setattr(bo, 'run_child', child)
    monkeypatch.setattr(bo, 'busy_processes', Busy)
    match = {'n_ref': 5, 'n_other': 5, 'strong': 3, 'unmatched': 0, 'max_box': 0.0, 'max_landmark': 0.0, 'max_score': 0.0}
    monkeypatch.setattr(bo, 'compare_with_golden', lambda _: {n: match for n in bo.IMAGES})
    args = bo.get_args_parser().parse_args(['--onnx_model', str(tmp_path / 'm.onnx'), '--runtimes', 'onnxruntime',
                                            'openvino', '--threads', '1', '--rounds', '1'])
    result = bo.main(args)
    out = capsys.readouterr().out
    assert result['ratios'][0, 1, 'openvino', 'test'] == pytest.approx(1.25)
    assert result['ratios'][2, 1, 'openvino', 'largest_selfie'] == pytest.approx(0.8)
    assert ('openvino: >= 1.2x faster end to end on every photo, load and thread count: '
            'no (slowest: largest_selfie, +2 busy, 1 thread(s): 0.80x)') in out
    assert 'openvino, idle, 1 thread(s): test fwd 1.25x faster than ort, e2e 1.25x faster than ort' in out
