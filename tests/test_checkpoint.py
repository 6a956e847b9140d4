"""The checkpoint loader: wrappers, prefixes, legacy files and clear errors."""
import hashlib
import logging
import os

import pytest
import torch

from data import cfg_mnet, cfg_re50
from models.retinaface import RetinaFace
from tests.conftest import need_shared
from utils.atomic import atomic_save
from utils.checkpoint import OFFICIAL_WEIGHTS, load_model, load_state_dict_file, non_finite_keys
from utils.errors import InputError
from utils.input_files import file_sha256


@pytest.fixture(scope='module')
def mnet_state():
    torch.manual_seed(0)
    return RetinaFace(cfg_mnet, phase='test').state_dict()


def _assert_loaded(path, state):
    net = load_model(RetinaFace(cfg_mnet, phase='test'), path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_raw_state_dict(tmp_path, mnet_state):
    torch.save(mnet_state, tmp_path / 'a.pth')
    _assert_loaded(tmp_path / 'a.pth', mnet_state)


def test_state_dict_wrapper_with_module_prefix(tmp_path, mnet_state):
    torch.save({'epoch': 3, 'state_dict': {'module.' + k: v for k, v in mnet_state.items()}}, tmp_path / 'b.tar')
    _assert_loaded(tmp_path / 'b.tar', mnet_state)


def test_legacy_non_zip_format(tmp_path, mnet_state):
    torch.save(mnet_state, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
    _assert_loaded(tmp_path / 'legacy.pth', mnet_state)


def test_published_legacy_weights():
    sd = load_state_dict_file(need_shared('weights', 'mobilenet0.25_Final.pth'))
    assert len(sd) == 300 and all(t.device.type == 'cpu' for t in sd.values())


def test_wrong_network_names_file_keys_and_network(tmp_path, mnet_state):
    path = tmp_path / 'mnet.pth'
    torch.save(mnet_state, path)
    with pytest.raises(ValueError) as e:
        load_model(RetinaFace(cfg_re50, phase='test'), path)
    msg = str(e.value)
    assert str(path) in msg and 'missing keys' in msg and 'body.conv1.weight' in msg
    assert 'mobile0.25' in msg


def test_truncated_file(tmp_path, mnet_state):
    path = tmp_path / 'cut.pth'
    torch.save(mnet_state, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match='cut.pth is not a readable PyTorch checkpoint'):
        load_model(RetinaFace(cfg_mnet), path)


def test_truncated_legacy_file(tmp_path, mnet_state):
    path = tmp_path / 'cut_legacy.pth'
    torch.save(mnet_state, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ValueError, match='cut_legacy.pth is not a readable PyTorch checkpoint'):
        load_model(RetinaFace(cfg_mnet), path)


def test_text_file(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('these are not weights\n')
    with pytest.raises(ValueError, match='notes.txt is not a readable PyTorch checkpoint'):
        load_model(RetinaFace(cfg_mnet), path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        load_model(RetinaFace(cfg_mnet), tmp_path / 'absent.pth')


def test_not_a_state_dict(tmp_path):
    torch.save({'epoch': 3, 'lr': 0.1}, tmp_path / 'meta.pth')
    with pytest.raises(ValueError, match='does not hold a state_dict'):
        load_model(RetinaFace(cfg_mnet), tmp_path / 'meta.pth')


def test_atomic_save_leaves_no_partial_file_on_error(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('boom')

    atomic_save({'x': torch.ones(1)}, tmp_path / 'ck.pth')
    with pytest.raises(RuntimeError):
        atomic_save({'x': Unpicklable()}, tmp_path / 'ck.pth')
    assert [p.name for p in tmp_path.iterdir()] == ['ck.pth']
    assert torch.equal(torch.load(tmp_path / 'ck.pth')['x'], torch.ones(1))


# -- which weights a result came from ------------------------------------------------------------

def test_the_official_checksums_are_the_shared_ones():
    sums = need_shared('weights', 'SHA256SUMS').read_text().split('\n')
    listed = dict(reversed(line.split()) for line in sums if line.strip())
    assert {sha: name.split(',')[0] for sha, name in OFFICIAL_WEIGHTS.items()} == {v: k for k, v in listed.items()}


def test_file_sha256_is_hashlib_of_the_bytes(tmp_path):
    (tmp_path / 'f').write_bytes(b'retinaface' * 100000)
    assert file_sha256(tmp_path / 'f', chunk=4096) == hashlib.sha256(b'retinaface' * 100000).hexdigest()


def test_official_weights_are_logged_by_name(caplog, monkeypatch):
    from utils import checkpoint
    monkeypatch.setattr(checkpoint, '_identified', {})  # an earlier test may have logged it already
    path = need_shared('weights', 'mobilenet0.25_Final.pth')
    with caplog.at_level(logging.INFO, logger='utils.checkpoint'):
        load_state_dict_file(path)
    assert [r.message for r in caplog.records if 'sha256' in r.message] == [
        f"{path} is mobilenet0.25_Final.pth, the published RetinaFace MobileNet0.25 weights (sha256 "
        f"2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220)"]


def test_unknown_weights_log_their_sha256_once(tmp_path, mnet_state, caplog):
    path = tmp_path / 'mine.pth'
    torch.save(mnet_state, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with caplog.at_level(logging.INFO, logger='utils.checkpoint'):
        load_state_dict_file(path)
        load_state_dict_file(path)
    lines = [r.message for r in caplog.records if sha in r.message]
    assert lines == [f"{path} is not one of the published weight files: sha256 {sha}"]


def test_weights_that_are_all_nan_are_refused_naming_the_file_and_keys(tmp_path, mnet_state):
    """W7: a network of NaN weights gives NaN scores, which no threshold keeps: '0 detections'."""
    path = tmp_path / 'nan.pth'
    torch.save({k: torch.full_like(v, float('nan')) if v.is_floating_point() else v for k, v in mnet_state.items()},
               path)
    floating = sum(v.is_floating_point() for v in mnet_state.values())
    with pytest.raises(InputError, match=rf"{path} holds NaN or infinite values in {floating} weight tensors "
                                         r"\(e\.g\. \['body\.stage1\.0\.0\.weight', 'body\.stage1\.0\.1\.weight', "
                                         r"'body\.stage1\.0\.1\.bias'\]\): it was saved by a training run that "
                                         r"diverged"):
        load_model(RetinaFace(cfg_mnet, phase='test'), path)


def test_one_infinite_value_is_refused_and_named(tmp_path, mnet_state):
    state = {k: v.clone() for k, v in mnet_state.items()}
    state['ClassHead.1.conv1x1.bias'][1] = float('inf')
    torch.save(state, tmp_path / 'inf.pth')
    with pytest.raises(InputError, match=r"in 1 weight tensors \(e\.g\. \['ClassHead\.1\.conv1x1\.bias'\]\)"):
        load_state_dict_file(tmp_path / 'inf.pth')


def test_non_finite_keys_searches_nested_optimizer_state():
    state = {'model': {'w': torch.zeros(2), 'n': torch.tensor(3)},
             'optimizer': {'state': {0: {'momentum_buffer': torch.tensor([1.0, float('nan')])}}, 'param_groups': []}}
    assert non_finite_keys(state) == ['optimizer.state.0.momentum_buffer']


def test_detect_with_nan_weights_is_one_error_line(tmp_path, mnet_state, capsys):
    import detect
    from utils.cli import run_cli

    path = tmp_path / 'nan.pth'
    torch.save({k: torch.full_like(v, float('nan')) if v.is_floating_point() else v for k, v in mnet_state.items()},
               path)
    status = run_cli(detect.main, detect.get_args_parser(),
                     ['-m', str(path), '--image', str(need_shared('images', 'test.jpg')), '--output',
                      str(tmp_path / 'out'), '--threads', '1'])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert status == 1 and len(errors) == 1 and errors[0].startswith(f"error: {path} holds NaN or infinite values")
    assert not (tmp_path / 'out').exists() or os.listdir(tmp_path / 'out') == []
