"""Issue 17's second audit, training, ONNX export and evaluation: each case the audit found
(two runs in one --save_folder, a disk that fills during a save, a killed save's temporary
file, ONNX metadata that disagrees with its graph, unsupported opsets, a user's file named
like the exporter's temporary one, the evaluators' bad inputs and outputs), reproduced as
a hostile user would meet it, with the behaviour it must have now."""
import errno
import io
import json
import os
import subprocess
import sys
import tempfile

import pytest

import train
from tests.conftest import ROOT, need_shared
from tests.test_train import EPOCH_SIZE, _args, _free_port, _subprocess_env, backbone, one_thread, subset  # noqa: F401
from tests.test_train_safety import _count_forward_calls, restore_logging  # noqa: F401 (fixture)
from utils import atomic
from utils.atomic import TEMP_SUFFIX, atomic_save, lock_folder
from utils.cli import run_cli
from utils.errors import InputError
from utils.train_state import load_training_state

NAME = 'mobilenet0.25'


def _train_cli(argv):
    """train.py's main through run_cli, in this process: the exit status."""
    return run_cli(train.main, train.get_args_parser(), list(map(str, argv)))


def _train_argv(subset, save_folder, backbone, *extra):
    return ['--training_dataset', subset, '--save_folder', save_folder, '--device', 'cpu', '--batch_size', 4,
            '--image_size', 64, '--num_workers', 0, '--seed', 0, '--pretrained', backbone, *extra]


def _error_lines(err):
    return [line for line in err.splitlines() if line.startswith('error: ')]


# --------------------------------------------------------------------------- B10: one run per --save_folder

HOLD_LOCK = ('import sys, time\n'
             'from utils.atomic import lock_folder\n'
             'lock = lock_folder(sys.argv[1], "--save_folder").acquire()\n'
             'print("locked", flush=True)\n'
             'time.sleep(120)\n')


@pytest.fixture
def locked_folder(tmp_path):
    """A --save_folder that another process (a first training run) holds: (folder, its PID)."""
    folder = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(folder)], cwd=ROOT, env=_subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        yield folder, holder.pid
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_second_run_into_a_busy_save_folder_fails_at_once_naming_the_first(subset, backbone, locked_folder,
                                                                            capsys, monkeypatch, restore_logging):
    """Two runs into one --save_folder both exited 0, one's checkpoints replacing the other's."""
    folder, pid = locked_folder
    calls = _count_forward_calls(monkeypatch)
    assert _train_cli(_train_argv(subset, folder, backbone, '--max_epoch', 1)) == 1
    assert _error_lines(capsys.readouterr().err) == [
        f'error: --save_folder {folder} is in use by another run (PID {pid}); wait for it to finish, '
        f'or choose another folder']
    assert calls == []
    assert os.listdir(folder) == ['.retinaface.lock']  # not even the log was appended to


def test_the_save_folder_is_released_when_a_run_fails(subset, backbone, tmp_path, restore_logging):
    folder = tmp_path / 'run'
    assert _train_cli(_train_argv(tmp_path / 'no_such_label.txt', folder, backbone)) == 1
    with lock_folder(folder):  # free again: a later run in this process may use it
        pass


def test_torchrun_busy_save_folder_stops_every_rank_with_one_message(subset, backbone, locked_folder):
    """Under torchrun only rank 0 takes the lock; its refusal stops the other rank too, and
    only rank 0 prints it."""
    folder, pid = locked_folder
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', str(ROOT / 'train.py'),
           *map(str, _train_argv(subset, folder, backbone, '--max_epoch', 1))]
    proc = subprocess.run(cmd, cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert proc.stderr.count(f'error: --save_folder {folder} is in use by another run (PID {pid})') == 1, \
        proc.stderr[-3000:]
    assert 'InputError' not in proc.stderr and 'Iter: ' not in proc.stdout
    assert os.listdir(folder) == ['.retinaface.lock']


# --------------------------------------------------------------------------- B11: a disk that fills during a save

class _FullDisk(io.RawIOBase):
    """A file descriptor on a disk with `room` bytes left: a write beyond it fails with
    ENOSPC, as os.write does on a full disk."""

    def __init__(self, fd, room):
        self.fd, self.room = fd, room

    def writable(self):
        return True

    def fileno(self):
        return self.fd

    def write(self, b):
        n = min(len(b), self.room)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(self.fd, bytes(b[:n]))
        self.room -= written
        return written

    def close(self):
        if not self.closed:
            os.close(self.fd)
        super().close()


def _fill_disk_at(monkeypatch, target_name, nth=1, room=1000):
    """Make the nth atomic write of target_name (a file name) meet a full disk after room bytes."""
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    seen, doomed = [], set()

    def mkstemp(*a, prefix=None, **k):
        fd, path = real_mkstemp(*a, prefix=prefix, **k)
        if prefix == f'.{target_name}.':
            seen.append(path)
            if len(seen) == nth:
                doomed.add(fd)
        return fd, path

    def fdopen(fd, mode='r', *a, **k):
        if fd in doomed:
            doomed.discard(fd)
            return io.BufferedWriter(_FullDisk(fd, room))
        return real_fdopen(fd, mode, *a, **k)

    monkeypatch.setattr(tempfile, 'mkstemp', mkstemp)
    monkeypatch.setattr(os, 'fdopen', fdopen)
    return seen


def test_full_disk_during_torch_save_is_one_error_naming_file_and_free_space(tmp_path, monkeypatch):
    """torch.save's own writer turned the ENOSPC into 'RuntimeError: ... unexpected pos'."""
    import torch

    target = tmp_path / 'state.pth'
    atomic_save({'x': torch.zeros(4)}, target)
    _fill_disk_at(monkeypatch, 'state.pth')
    with pytest.raises(InputError, match=rf'^cannot write {target}: No space left on device '
                                         rf'\([0-9.]+ [kMG]?B(ytes)? free in {tmp_path}\)$'):
        atomic_save({'x': torch.ones(100000)}, target)
    assert torch.load(target)['x'].tolist() == [0, 0, 0, 0]  # the previous file
    assert os.listdir(tmp_path) == ['state.pth']


def test_a_bug_inside_torch_save_keeps_its_traceback(tmp_path):
    """Only the file system's failures become an input error: an object torch cannot
    save is the caller's bug."""
    with pytest.raises(Exception) as e:
        atomic_save({'f': lambda: 0}, tmp_path / 'x.pth')
    assert not isinstance(e.value, InputError)
    assert os.listdir(tmp_path) == []


def test_full_disk_at_a_state_save_stops_training_with_the_previous_state_intact(subset, backbone, tmp_path,
                                                                                 monkeypatch, capsys,
                                                                                 restore_logging):
    folder = tmp_path / 'run'
    state_path = folder / f'{NAME}_last_state.pth'
    # The state after epoch 1 is written; the one at the end of epoch 2 meets a full disk.
    saves = _fill_disk_at(monkeypatch, state_path.name, nth=2)
    assert _train_cli(_train_argv(subset, folder, backbone, '--max_epoch', 2)) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f'error: cannot write {state_path}: No space left on device (') and \
        line.endswith(f' free in {folder})'), line
    assert len(saves) == 2
    assert load_training_state(state_path)['iteration'] == EPOCH_SIZE
    assert not [f for f in os.listdir(folder) if f.endswith(TEMP_SUFFIX)]


# --------------------------------------------------------------------------- a killed save's temporary file

def test_start_up_removes_only_this_projects_stale_temporary_files(subset, backbone, tmp_path, restore_logging):
    folder = tmp_path / 'run'
    (folder / 'sub').mkdir(parents=True)
    ours = folder / f'.{NAME}_last_state.pth.k3j9x0ab{TEMP_SUFFIX}'
    theirs = [folder / 'notes.tmp', folder / f'{NAME}_Final.pth.tmp', folder / f'.{NAME}_epoch_5.pth.tmp',
              # a sub-folder may be another run's --save_folder, busy now: not this run's to clean
              folder / 'sub' / f'.{NAME}_Final.pth.a1b2c3{TEMP_SUFFIX}']
    for p in [ours, *theirs]:
        p.write_bytes(b'half a checkpoint')
    assert _train_cli(_train_argv(subset, folder, backbone, '--max_epoch', 1)) == 0
    assert not ours.exists()
    assert all(p.read_bytes() == b'half a checkpoint' for p in theirs)


# --------------------------------------------------------------------------- B12: ONNX metadata vs. its graph

@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    """{network: an ONNX export with its metadata}: the published MobileNet0.25 weights, and a
    Resnet50 with untrained weights (only its graph matters here), traced at a small size."""
    from data import cfg_re50
    from models.detector import load_detector
    from models.onnx_export import export_onnx
    from models.retinaface import RetinaFace

    folder = tmp_path_factory.mktemp('exports')
    nets = {'mobile0.25': load_detector('mobile0.25', need_shared('weights', 'mobilenet0.25_Final.pth')).net,
            'resnet50': RetinaFace(cfg_re50, phase='test')}
    return {name: export_onnx(net, str(folder / f'{name}.onnx'), long_side=64) for name, net in nets.items()}


def _with_metadata(source, path, **changes):
    """A copy of the ONNX file source at path with metadata_props keys changed."""
    import onnx

    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _detect_cli(onnx_model, photo):
    import detect

    return run_cli(detect.main, detect.get_args_parser(),
                   ['--onnx_model', str(onnx_model), '--cpu', '--no-save_image', '--image', str(photo)])


@pytest.mark.parametrize('steps, min_sizes', [
    ('[16, 32, 64]', None),  # fewer priors than outputs: IndexError in decode
    ('[4, 8, 16]', None),  # more priors than outputs: silently wrong boxes
    (None, '[[16, 32, 48], [64, 128, 192], [256, 512, 768]]'),  # 3 anchors per cell, the graph has 2
])
def test_metadata_priors_that_disagree_with_the_graphs_outputs_are_an_error(exports, tmp_path, capsys, steps,
                                                                           min_sizes):
    from models.detector import load_detector

    changes = {k: v for k, v in (('steps', steps), ('min_sizes', min_sizes)) if v is not None}
    path = _with_metadata(exports['mobile0.25'], tmp_path / 'edited.onnx', **changes)
    with pytest.raises(InputError, match=rf'^{path}: its metadata \(steps .*, min_sizes .*\) gives \d+ priors '
                                         rf'for a 65x97 input, but the graph outputs \d+'):
        load_detector('mobile0.25', 'unused.pth', onnx_model=path)
    photo = need_shared('images', 'test.jpg')
    assert _detect_cli(path, photo) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f'error: {path}: its metadata')


@pytest.mark.parametrize('graph, claimed', [('mobile0.25', 'resnet50'), ('resnet50', 'mobile0.25')])
def test_metadata_naming_another_network_than_the_graph_is_an_error(exports, tmp_path, graph, claimed):
    """The file ran, labelled (in the log and every results manifest) as the other network."""
    from models.detector import load_detector

    path = _with_metadata(exports[graph], tmp_path / 'edited.onnx', network=claimed)
    with pytest.raises(InputError, match=rf"^{path}: its metadata says network '{claimed}', but its graph is a "
                                         rf"{graph} network"):
        load_detector(claimed, 'unused.pth', onnx_model=path)


def test_consistent_exports_load_as_their_network(exports):
    from models.detector import load_detector

    for network, path in exports.items():
        assert load_detector('mobile0.25', 'unused.pth', onnx_model=path).network == network


# --------------------------------------------------------------------------- B13, B14: convert_to_onnx.py

def _convert(*argv):
    import convert_to_onnx

    return run_cli(convert_to_onnx.main, convert_to_onnx.get_args_parser(), list(map(str, argv)))


@pytest.mark.parametrize('opset', ['99', '7', '8', '21'])
def test_unsupported_opset_is_a_usage_error_naming_the_flag(opset, tmp_path, capsys):
    """--opset 99 printed a 579-line graph dump and a traceback; --opset 7 another traceback."""
    with pytest.raises(SystemExit) as e:
        _convert('-m', need_shared('weights', 'mobilenet0.25_Final.pth'), '--output', tmp_path / 'x.onnx',
                 '--opset', opset)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith(f"error: argument --opset: expected an integer in [9, 20], got '{opset}'")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('opset', [9, 20])
def test_the_accepted_opsets_export_and_verify(opset, tmp_path, one_thread):  # noqa: F811
    result = _convert('-m', need_shared('weights', 'mobilenet0.25_Final.pth'), '--output', tmp_path / 'x.onnx',
                      '--opset', opset, '--long_side', 160)
    assert result == 0
    import onnx

    assert [(o.domain, o.version) for o in onnx.load(str(tmp_path / 'x.onnx')).opset_import] == [('', opset)]


def test_a_users_file_named_like_the_old_temporary_file_is_left_alone(tmp_path, one_thread):  # noqa: F811
    """The exporter wrote to <output>.tmp, then deleted it: the user's file of that name."""
    theirs = tmp_path / 'model.onnx.tmp'
    theirs.write_text('my notes\n')
    assert _convert('-m', need_shared('weights', 'mobilenet0.25_Final.pth'), '--output', tmp_path / 'model.onnx',
                    '--long_side', 160) == 0
    assert theirs.read_text() == 'my notes\n'
    assert sorted(os.listdir(tmp_path)) == ['model.onnx', 'model.onnx.tmp']


def test_a_failed_export_check_leaves_no_file_behind(tmp_path, monkeypatch, capsys, one_thread):  # noqa: F811
    import convert_to_onnx

    def mismatch(*a, **k):
        raise InputError("ONNX export does not match PyTorch")

    monkeypatch.setattr(convert_to_onnx, 'verify_onnx', mismatch)
    (tmp_path / 'model.onnx.tmp').write_text('my notes\n')
    assert _convert('-m', need_shared('weights', 'mobilenet0.25_Final.pth'), '--output', tmp_path / 'model.onnx',
                    '--long_side', 160) == 1
    assert _error_lines(capsys.readouterr().err) == ['error: ONNX export does not match PyTorch']
    assert os.listdir(tmp_path) == ['model.onnx.tmp']
