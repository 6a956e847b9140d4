"""The deployment path without torch: onnxruntime with an exported file.

The scripts run in subprocesses whose `import torch` (and torchvision) fails, and their
files are compared byte for byte with the same run where torch can be imported (same
backend, same thread count, same machine). The export's metadata carries what the
pipeline needs, and the priors and exp of that path are checked against their specs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data import cfg_mnet, cfg_re50
from layers.functions import prior_box
from tests.conftest import golden_image_path, need_shared
from utils import kernels
from utils.atomic import LOCK_NAME

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ['kids_group', 'test', 'street_crowd']
MINITRAIN = ['0_Parade_Parade_0_102', '0_Parade_Parade_0_125']

# Run before a script: make `import torch` / `import torchvision` fail when BLOCK_TORCH is
# set, and say at exit whether torch got loaded (it could be imported under a try).
PRELUDE = r'''
import atexit, importlib.abc, os, runpy, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ImportError(f"torch is blocked in this test: import {name}")
        return None

if os.environ.get('BLOCK_TORCH') == '1':
    sys.meta_path.insert(0, _NoTorch())
atexit.register(lambda: sys.stderr.write(f"\ntorch loaded: {'torch' in sys.modules}\n"))
script, sys.argv = sys.argv[1], sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name='__main__')
'''


def _run_script(script, args, block):
    env = dict(os.environ, BLOCK_TORCH='1' if block else '0', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', PRELUDE, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith('torch loaded: False'), proc.stderr[-3000:]
    return proc


def _files(folder):
    """{relative path: bytes} of every file below folder (but the lock file a run leaves there,
    which holds its PID)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob('*'))
            if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture(scope='module')
def onnx_file(tmp_path_factory):
    """FaceDetector.onnx made by convert_to_onnx.py (in this process, torch available)."""
    pytest.importorskip('onnxruntime')
    import convert_to_onnx
    from utils.cli import run_cli

    weights = need_shared('weights', 'mobilenet0.25_Final.pth')
    path = tmp_path_factory.mktemp('onnx') / 'FaceDetector.onnx'
    argv = ['-m', str(weights), '--output', str(path), '--no-verify']
    assert run_cli(convert_to_onnx.main, convert_to_onnx.get_args_parser(), argv) == 0
    return path


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp('photos')
    for name in PHOTOS:
        os.symlink(golden_image_path(name), folder / f'{name}.jpg')
    return folder


@pytest.fixture(scope='module')
def wider(tmp_path_factory):
    """A WIDER-style folder of two minitrain photos and its image list."""
    root = tmp_path_factory.mktemp('wider')
    for name in MINITRAIN:
        dst = root / 'images' / '0--Parade' / f'{name}.jpg'
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(golden_image_path('val416_' + name), dst)
    (root / 'list.txt').write_text(''.join(f'0--Parade/{n}.jpg\n' for n in MINITRAIN))
    return root


def test_the_prelude_blocks_torch():
    """The block works: a script importing torch fails under it (so the tests below can fail)."""
    env = dict(os.environ, BLOCK_TORCH='1')
    proc = subprocess.run([sys.executable, '-c', PRELUDE, str(ROOT / 'train.py'), '--help'], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and 'torch is blocked in this test' in proc.stderr


def test_detect_without_torch_writes_the_same_files(onnx_file, photos, tmp_path):
    outputs = {}
    for block in (True, False):
        out = tmp_path / f'block{int(block)}'
        proc = _run_script('detect.py', ['--onnx_model', onnx_file, '--cpu', '--image', photos,
                                         '--output', out / 'images', '--json', out / 'dets.json'], block)
        outputs[block] = (_files(out), proc.stdout.count('faces >='))
    files, lines = outputs[True]
    assert lines == len(PHOTOS) and sorted(files) == ['dets.json'] + [f'images/{n}.jpg' for n in sorted(PHOTOS)]
    payload = json.loads(files['dets.json'])
    assert (payload['network'], payload['backend']) == ('mobile0.25', 'onnxruntime')
    assert len(payload['images'][0]['detections']) == 11  # kids_group: 11 detections > 0.02
    assert files == outputs[False][0]


def test_widerface_without_torch_writes_the_same_files(onnx_file, wider, tmp_path):
    outputs = []
    for block in (True, False):
        out = tmp_path / f'block{int(block)}'
        _run_script('test_widerface.py', ['--onnx_model', onnx_file, '--network', 'mobile0.25', '--cpu',
                                          '--dataset_folder', wider / 'images', '--image_list',
                                          wider / 'list.txt', '--save_folder', out], block)
        outputs.append(_files(out))
    assert sorted(outputs[0]) == ['0--Parade/' + n + '.txt' for n in MINITRAIN] + ['retinaface_run.json']
    assert outputs[0] == outputs[1]


def test_fddb_without_torch_writes_the_same_file(onnx_file, tmp_path):
    (tmp_path / 'list.txt').write_text('kids_group\ntest\n')
    outputs = []
    for block in (True, False):
        out = tmp_path / f'block{int(block)}'
        _run_script('test_fddb.py', ['--onnx_model', onnx_file, '--network', 'mobile0.25', '--cpu',
                                     '--image_list', tmp_path / 'list.txt',
                                     '--images_folder', need_shared('images'), '--save_folder', out], block)
        outputs.append(_files(out))
    assert list(outputs[0]) == ['FDDB_dets.txt', 'retinaface_run.json']  # the blocks' folder is gone
    assert outputs[0]['FDDB_dets.txt'].startswith(b'kids_group\n11.0\n')  # the reference writes the count as a float
    assert outputs[0] == outputs[1]


# -- the export's metadata -----------------------------------------------------------------------

def test_export_carries_the_pipeline_config_and_mean(onnx_file):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert props == {'network': 'mobile0.25', 'steps': '[8, 16, 32]', 'min_sizes': '[[16, 32], [64, 128], [256, 512]]',
                     'clip': 'false', 'variance': '[0.1, 0.2]', 'bgr_mean': '[104, 117, 123]'}


def _with_props(onnx_file, path, **changes):
    """A copy of onnx_file with metadata keys changed (value None: removed)."""
    import onnx

    model = onnx.load(str(onnx_file))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    del model.metadata_props[:]
    for key, value in props.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_the_files_config_and_mean_run_it(onnx_file, tmp_path):
    """The file's values win over the network's config dict (here: edited ones)."""
    from models.detector import load_detector
    from utils.image import read_image

    path = _with_props(onnx_file, tmp_path / 'edited.onnx', variance='[0.1, 0.4]', bgr_mean='[0, 0, 0]')
    det = load_detector('resnet50', 'missing.pth', onnx_model=path)
    assert det.network == 'mobile0.25'
    assert det.cfg['variance'] == [0.1, 0.4] and det.mean == (0, 0, 0)
    assert cfg_mnet['variance'] == [0.1, 0.2]  # the config dict is not modified
    img = read_image(golden_image_path('kids_group'))
    batch, _, _ = det.preprocess([img])
    np.testing.assert_array_equal(batch[0], img.transpose(2, 0, 1).astype(np.float32))


def test_a_file_without_the_config_runs_with_the_networks_config(onnx_file, tmp_path):
    """Older exports (network only, or nothing at all) give the detections of a full one."""
    from models.detector import load_detector
    from utils.image import read_image

    img = read_image(golden_image_path('kids_group'))
    full = load_detector('mobile0.25', 'missing.pth', onnx_model=onnx_file).detect(img)
    no_config = {k: None for k in ('steps', 'min_sizes', 'clip', 'variance', 'bgr_mean')}
    for name, changes in [('network_only', no_config), ('bare', dict(no_config, network=None))]:
        det = load_detector('resnet50', 'missing.pth', onnx_model=_with_props(onnx_file, tmp_path / name, **changes))
        assert det.network == 'mobile0.25' and det.cfg == cfg_mnet, name
        np.testing.assert_array_equal(det.detect(img), full)


def test_malformed_metadata_is_a_clear_error(onnx_file, tmp_path, capsys):
    import detect
    from utils.cli import run_cli

    path = _with_props(onnx_file, tmp_path / 'bad.onnx', steps='[8, 16]')
    argv = ['--onnx_model', str(path), '--cpu', '--no-save_image', '--image', str(golden_image_path('kids_group'))]
    assert run_cli(detect.main, detect.get_args_parser(), argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith('error: ') and str(path) in line and 'steps=[8, 16]' in line


def test_in_memory_export_and_file_give_the_same_detections(onnx_file):
    """Both run onnxruntime with the same torch-free host stages (exp included)."""
    from models.detector import load_detector
    from utils.image import read_image

    weights = need_shared('weights', 'mobilenet0.25_Final.pth')
    img = read_image(golden_image_path('street_crowd'))
    in_memory = load_detector('mobile0.25', weights, backend='onnxruntime', num_threads=1)
    from_file = load_detector('mobile0.25', weights, onnx_model=onnx_file, num_threads=1)
    np.testing.assert_array_equal(in_memory.detect(img), from_file.detect(img))


# -- the torch-free priors and exp -----------------------------------------------------------------

@pytest.mark.parametrize('size', ['640x640', '624x1024', '417x301', '32x32', '840x840', '1x1'])
def test_numpy_priors_equal_the_golden_priors_bit_for_bit(size):
    golden = np.load(need_shared('golden', 'priors.npz'))[size]
    priors = prior_box.prior_boxes(cfg_mnet, tuple(map(int, size.split('x'))))
    assert priors.dtype == np.float32 and priors.tobytes() == golden.tobytes()


def test_priorbox_hands_out_the_numpy_priors_as_a_fresh_tensor():
    cfg = dict(cfg_re50, clip=True)
    for size in [(1, 1), (7, 1333), (417, 301), (2150, 1600)]:
        p = prior_box.PriorBox(cfg, image_size=size).forward()
        assert p.numpy().tobytes() == prior_box.prior_boxes(cfg, size).tobytes()
        assert p.min() >= 0 and p.max() <= 1
        p.zero_()  # does not touch the cache
        assert prior_box.prior_boxes(cfg, size).any()
    assert not prior_box.prior_boxes(cfg_mnet, (32, 32)).flags.writeable


def test_float_exp_is_exp_in_float64_rounded_once():
    x = np.linspace(-20, 20, 10000, dtype=np.float32).reshape(-1, 2)
    expected = np.exp(x.astype(np.float64)).astype(np.float32)
    assert kernels.float_exp_(x) is x and x.tobytes() == expected.tobytes()
    assert kernels.float_exp_(np.array([[-np.inf, np.inf]], dtype=np.float32)).tolist() == [[0.0, np.inf]]
    with pytest.raises(ValueError, match='C-contiguous'):
        kernels.float_exp_(np.zeros((4, 4), np.float32)[:, ::2])


@pytest.mark.parametrize('stage', ['__call__', 'candidates'])
def test_decode_uses_the_exp_it_is_given(stage):
    from layers.functions.detection import Detect

    rng = np.random.default_rng(0)
    p = 500
    loc = rng.normal(0, 2, (p, 4)).astype(np.float32)
    face = rng.random(p).astype(np.float32)
    conf = np.stack([1 - face, face], axis=1)  # [P, 2]
    landms = rng.normal(0, 2, (p, 10)).astype(np.float32)
    priors = prior_box.prior_boxes(cfg_mnet, (160, 160))[:p]
    calls = []
    detect = Detect([0.1, 0.2], confidence_threshold=0.5, nms_threshold=1.0,
                    exp_=lambda a: calls.append(a.shape) or kernels.float_exp_(a))
    dets = getattr(detect, stage)(loc, conf, landms, priors, (64, 80), 1.5)
    assert calls == [(int((face > 0.5).sum()), 2)] and len(dets) == calls[0][0]  # NMS at IoU 1 keeps them all


def test_an_onnxruntime_detectors_device_works_as_a_torch_device(onnx_file):
    """Without torch the device is a HostDevice string; code written for torch.device still works."""
    import torch

    from models.detector import load_detector

    det = load_detector('mobile0.25', 'missing.pth', onnx_model=onnx_file, device='cpu')
    assert (det.device, det.device.type, det.device.index) == ('cpu', 'cpu', None)
    assert torch.device(det.device) == torch.device('cpu')


def test_a_build_from_an_older_pyx_counts_as_not_built():
    """A cpu_pipeline built before decode_dets took exp_ would fail on the torch-free path."""
    from types import SimpleNamespace

    def old_decode_dets():
        """decode_dets(loc, priors, inds, scores, order, variance, size, resize)"""

    assert not kernels.up_to_date(SimpleNamespace(decode_dets=old_decode_dets))
    if kernels.compiled is not None:
        assert kernels.up_to_date(kernels.compiled)
