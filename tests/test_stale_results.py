"""Results that belong to another model or settings are never reused, and an ONNX model
file is never silently ignored or run under the wrong network's name.

test_widerface.py resumes into --save_folder; its retinaface_run.json (utils/run_manifest.py)
records the model's sha256 and the settings, and a folder holding another run's files is an
error unless --no-resume asks to recompute. --onnx_model selects onnxruntime, and the ONNX
file's network, not --network, names the run."""
import json
import logging
import os

import onnx
import pytest
import torch

import detect
import test_widerface as wider_script
from tests.conftest import golden_image_path, need_shared
from utils import folder_run
from utils.cli import run_cli
from utils.image import read_image
from models.detector import detector_from_args, load_detector
from models.onnx_export import NETWORK_KEY, export_onnx, onnx_network
from utils.run_manifest import MANIFEST_NAME

EVENT = '0--Parade'
NAMES = ['val416_0_Parade_Parade_0_102', 'val416_0_Parade_Parade_0_125']


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


@pytest.fixture(scope='module')
def other_weights(weights, tmp_path_factory):
    """The published weights with one bias changed: another model, same network."""
    state = torch.load(weights, map_location='cpu')
    key = 'ClassHead.0.conv1x1.bias'
    state[key] = state[key] + 0.5
    path = tmp_path_factory.mktemp('other') / 'mobilenet0.25_epoch_5.pth'
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope='module')
def onnx_file(weights, tmp_path_factory):
    pytest.importorskip('onnxruntime')
    path = tmp_path_factory.mktemp('onnx') / 'FaceDetector.onnx'
    export_onnx(load_detector('mobile0.25', weights).net, str(path))
    return str(path)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """val/images/0--Parade/<two minitrain photos> and val/wider_val.txt."""
    root = tmp_path_factory.mktemp('widerface') / 'val'
    for n in NAMES:
        dst = root / 'images' / EVENT / f'{n}.jpg'
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(golden_image_path(n), dst)
    (root / 'wider_val.txt').write_text("".join(f"{EVENT}/{n}.jpg\n" for n in NAMES))
    return root / 'images'


def _argv(model, dataset, out, *extra):
    return ['-m', model, '--network', 'mobile0.25', '--cpu', '--dataset_folder', str(dataset),
            '--save_folder', str(out), *extra]


def _run(*argv):
    return wider_script.main(wider_script.get_args_parser().parse_args(list(argv)))


def _results(out):
    return {p.relative_to(out).as_posix(): p.read_text() for p in sorted(out.rglob('*.txt'))}


@pytest.fixture(scope='module')
def first_run(weights, dataset, tmp_path_factory):
    """A folder made by the published weights at the default settings; tests copy it."""
    out = tmp_path_factory.mktemp('first')
    assert _run(*_argv(weights, dataset, out))['written'] == 2
    return out


@pytest.fixture
def folder(first_run, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    for p in first_run.rglob('*'):
        if p.is_file():
            (out / p.relative_to(first_run)).parent.mkdir(parents=True, exist_ok=True)
            (out / p.relative_to(first_run)).write_bytes(p.read_bytes())
    return out


# -- item 1: test_widerface.py resumes only the same run's files ---------------------------------

def test_manifest_records_the_model_and_settings(first_run, weights):
    manifest = json.loads((first_run / MANIFEST_NAME).read_text())
    from utils.input_files import file_sha256
    assert manifest['settings'] == {
        'model_sha256': file_sha256(weights), 'network': 'mobile0.25', 'backend': 'torch', 'device': 'cpu',
        'test_scale': 'original size', 'confidence_threshold': 0.02, 'nms_threshold': 0.4,
        'top_k': None, 'keep_top_k': None}


def test_same_model_and_settings_resume(folder, weights, dataset, tmp_path):
    # A renamed copy of the same weights is the same model.
    copy = tmp_path / 'renamed.pth'
    copy.write_bytes(open(weights, 'rb').read())
    before = _results(folder)
    result = _run(*_argv(str(copy), dataset, folder))
    assert (result['written'], result['resumed']) == (0, 2)
    assert _results(folder) == before


@pytest.mark.parametrize('extra, expected', [
    (['--confidence_threshold', '0.5'], 'confidence_threshold 0.02 -> 0.5'),
    (['--nms_threshold', '0.3'], 'nms_threshold 0.4 -> 0.3'),
    (['--origin_size', 'false'], 'test_scale "original size" -> "short side 1600, long side at most 2150"'),
    (['--keep_top_k', '750'], 'keep_top_k null -> 750'),
    (['--top_k', '5000'], 'top_k null -> 5000'),
    (['--max_size', '320'], 'test_scale "original size" -> "long side 320"'),
    (['--target_size', '320', '--max_size', '640'],
     'test_scale "original size" -> "short side 320, long side at most 640"'),
], ids=['confidence', 'nms', 'origin_size', 'keep_top_k', 'top_k', 'max_size', 'target_size'])
def test_other_settings_are_an_error_naming_the_difference(folder, weights, dataset, capsys, extra, expected):
    before = _results(folder)
    status = run_cli(wider_script.main, wider_script.get_args_parser(), _argv(weights, dataset, folder, *extra))
    err = capsys.readouterr().err
    assert status == 1
    (line,) = [line for line in err.splitlines() if line.startswith('error:')]
    assert expected in line and 'already holds 2 result files' in line
    assert 'Pass --no-resume' in line and 'another --save_folder' in line
    assert _results(folder) == before


def test_a_rerun_at_another_size_never_resumes(weights, dataset, tmp_path, capsys):
    """A folder made at --max_size 320 resumes at --max_size 320 only."""
    out = tmp_path / 'small'
    assert _run(*_argv(weights, dataset, out, '--max_size', '320'))['written'] == 2
    assert _run(*_argv(weights, dataset, out, '--max_size', '320'))['resumed'] == 2
    before = _results(out)
    for extra in (['--max_size', '640'], ['--target_size', '320'], []):
        status = run_cli(wider_script.main, wider_script.get_args_parser(), _argv(weights, dataset, out, *extra))
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
        assert status == 1 and 'test_scale "long side 320" -> ' in line, extra
    assert _results(out) == before


def test_other_weights_are_an_error_naming_both_files(folder, weights, other_weights, dataset, capsys):
    status = run_cli(wider_script.main, wider_script.get_args_parser(), _argv(other_weights, dataset, folder))
    err = capsys.readouterr().err
    assert status == 1
    assert 'model_sha256' in err and f'({weights} -> {other_weights})' in err


def test_other_backend_is_an_error(folder, weights, dataset):
    pytest.importorskip('onnxruntime')
    with pytest.raises(ValueError, match='backend "torch" -> "onnxruntime"'):
        _run(*_argv(weights, dataset, folder, '--backend', 'onnxruntime'))


def test_results_without_a_manifest_are_an_error(folder, weights, dataset):
    """Files of the reference, or of a version before the manifest: their model is unknown."""
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(ValueError, match=f'no {MANIFEST_NAME}.*--no-resume'):
        _run(*_argv(weights, dataset, folder))


def test_no_resume_replaces_another_runs_files(folder, other_weights, dataset, caplog):
    """--no-resume recomputes every image, and no file of the first run survives, not even one
    for an image outside this run's list (in an event folder the run wrote); files that are not
    results stay."""
    stray = folder / EVENT / 'not_in_the_list.txt'
    stray.write_text('not_in_the_list\n0\n')
    (folder / 'notes.txt').write_text('my notes\n')
    before = _results(folder)
    with caplog.at_level(logging.WARNING):
        result = _run(*_argv(other_weights, dataset, folder, '--no-resume'))
    assert result['written'] == 2
    assert 'removed 3 result files of another run' in caplog.text
    after = _results(folder)
    assert sorted(after) == sorted(f'{EVENT}/{n}.txt' for n in NAMES) + ['notes.txt']
    assert all(after[k] != before[k] for k in after if k != 'notes.txt')  # the other model's numbers
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest['model_file'] == other_weights
    # From now on the folder resumes the second run, and refuses the first.
    assert _run(*_argv(other_weights, dataset, folder))['resumed'] == 2


def test_manifest_is_written_before_the_first_image(weights, dataset, tmp_path, monkeypatch):
    """A run killed at its first image has already said which model the folder is for."""
    def interrupted(*_):
        raise KeyboardInterrupt
    monkeypatch.setattr(folder_run, 'read_image', interrupted)  # the scripts' reading loop
    with pytest.raises(KeyboardInterrupt):
        _run(*_argv(weights, dataset, tmp_path / 'out'))
    assert json.loads((tmp_path / 'out' / MANIFEST_NAME).read_text())['settings']['network'] == 'mobile0.25'


def test_an_empty_folder_takes_any_run(first_run, other_weights, dataset, tmp_path):
    """Only result files are protected: a manifest alone is replaced."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / MANIFEST_NAME).write_bytes((first_run / MANIFEST_NAME).read_bytes())
    assert _run(*_argv(other_weights, dataset, out))['written'] == 2
    assert json.loads((out / MANIFEST_NAME).read_text())['model_file'] == other_weights


# -- item 5: --onnx_model is never ignored, and the ONNX file names the network ----------------

def _detect(*argv):
    return detect.main(detect.get_args_parser().parse_args(list(argv)))


def test_onnx_model_selects_onnxruntime(onnx_file, tmp_path):
    """Without --backend, --onnx_model runs the ONNX file: the .pth is not even read."""
    _detect('-m', str(tmp_path / 'missing.pth'), '--onnx_model', onnx_file, '--cpu', '--no-save_image',
            '--image', str(golden_image_path('kids_group')), '--json', str(tmp_path / 'dets.json'))
    payload = json.loads((tmp_path / 'dets.json').read_text())
    assert payload['backend'] == 'onnxruntime'
    assert len(payload['images'][0]['detections']) == 11


def test_onnx_model_with_the_torch_backend_is_an_error(onnx_file, weights, capsys):
    argv = ['-m', weights, '--onnx_model', onnx_file, '--backend', 'torch', '--cpu', '--no-save_image',
            '--image', str(golden_image_path('kids_group'))]
    assert run_cli(detect.main, detect.get_args_parser(), argv) == 1
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith('error:')]
    assert line.startswith('error: ') and '--onnx_model' in line and '--backend onnxruntime' in line


def test_onnx_network_wins_over_network_flag(onnx_file, tmp_path, caplog):
    """A mobile0.25 export run with --network resnet50: the log and the JSON say mobile0.25."""
    with caplog.at_level(logging.INFO):
        _detect('--network', 'resnet50', '--onnx_model', onnx_file, '--backend', 'onnxruntime', '--cpu',
                '--no-save_image', '--image', str(golden_image_path('kids_group')),
                '--json', str(tmp_path / 'dets.json'))
    assert json.loads((tmp_path / 'dets.json').read_text())['network'] == 'mobile0.25'
    assert f'{onnx_file} holds a mobile0.25 network' in caplog.text
    assert f'mobile0.25 ({onnx_file}) on cpu with the onnxruntime backend' in caplog.text
    assert 'resnet50 (' not in caplog.text


def test_widerface_manifest_names_the_onnx_files_network(onnx_file, dataset, tmp_path):
    out = tmp_path / 'out'
    _run('-m', str(tmp_path / 'missing.pth'), '--network', 'resnet50', '--onnx_model', onnx_file, '--cpu',
         '--dataset_folder', str(dataset), '--save_folder', str(out))
    settings = json.loads((out / MANIFEST_NAME).read_text())['settings']
    from utils.input_files import file_sha256
    assert (settings['network'], settings['backend'], settings['model_sha256']) == \
        ('mobile0.25', 'onnxruntime', file_sha256(onnx_file))


def test_export_writes_the_network_into_the_metadata(onnx_file):
    props = {p.key: p.value for p in onnx.load(onnx_file).metadata_props}
    assert props[NETWORK_KEY] == 'mobile0.25'


def test_network_of_an_export_without_metadata_comes_from_the_graph(onnx_file, tmp_path):
    """Files of the reference's convert_to_onnx.py carry no metadata."""
    model = onnx.load(onnx_file)
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / 'bare.onnx'))
    assert onnx_network(str(tmp_path / 'bare.onnx')) == 'mobile0.25'
    # A ResNet50 head is 256 wide (a graph of just that weight stands in for the 105 MB export).
    weight = onnx.helper.make_tensor('LandmarkHead.0.conv1x1.weight', onnx.TensorProto.FLOAT, [20, 256, 1, 1],
                                     [0.0] * (20 * 256))
    graph = onnx.helper.make_graph([], 'g', [], [], initializer=[weight])
    assert onnx_network(onnx.helper.make_model(graph).SerializeToString()) == 'resnet50'
    assert onnx_network(b'not an onnx file') is None


def test_a_detector_on_an_export_without_metadata_runs_the_graph_s_network(onnx_file, tmp_path, caplog):
    model = onnx.load(onnx_file)
    del model.metadata_props[:]
    bare = str(tmp_path / 'bare.onnx')
    onnx.save(model, bare)
    with caplog.at_level(logging.WARNING):
        det = load_detector('resnet50', tmp_path / 'missing.pth', onnx_model=bare, device='cpu')
    assert f'{bare} holds a mobile0.25 network: running it as mobile0.25, not as --network resnet50' in caplog.text
    assert (det.network, det.cfg['name']) == ('mobile0.25', 'mobilenet0.25')
    assert len(det.detect(read_image(golden_image_path('kids_group')))) == 11


def test_an_onnx_file_runs_with_the_scripts_thread_settings(onnx_file, tmp_path):
    """--onnx_model's session, like the in-memory export's, has --threads threads that sleep
    when idle (they once spun: the session was made before the scripts' settings reached it)."""
    args = detect.get_args_parser().parse_args(['-m', str(tmp_path / 'missing.pth'), '--onnx_model', onnx_file,
                                                '--cpu', '--threads', '1'])
    options = detector_from_args(args).session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry('session.intra_op.allow_spinning') == '0'


@pytest.mark.parametrize('flags, resolved', [(['--cpu'], [('cpu', 'torch')]),
                                             ([], [('auto', 'torch')]),
                                             (['--backend', 'onnxruntime', '--cpu'], [('cpu', 'onnxruntime')]),
                                             (['--onnx_model', None], [('auto', 'onnxruntime')])])
def test_the_scripts_resolve_the_device_once(flags, resolved, weights, onnx_file, monkeypatch):
    import models.detector
    calls = []
    real = models.detector.resolve_device
    monkeypatch.setattr(models.detector, 'resolve_device', lambda *a: calls.append(a) or real(*a))
    argv = ['-m', weights] + [onnx_file if f is None else f for f in flags]
    detector = detector_from_args(detect.get_args_parser().parse_args(argv))
    assert [(str(d), b) for d, b in calls] == resolved
    assert detector.device.type == 'cpu'
