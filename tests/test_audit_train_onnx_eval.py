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
    # The unique temporary file is private when made; the model gets a plain file's permissions.
    assert (tmp_path / 'model.onnx').stat().st_mode & 0o777 == 0o666 & ~atomic.current_umask()


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


# --------------------------------------------------------------------------- B16: the FDDB evaluator's command line

# A vertical ellipse inside the detection [40, 60] x [30, 70]: overlap pi / 4 (tests/test_fddb_eval.py).
FDDB_ANNOTATIONS = 'img_a\n1\n20 10 1.5707963267948966 50 50 1\n'
FDDB_DETS = 'img_a\n1.0\n40 30 20 40 0.9\n'


def _fddb_cli(*argv):
    """fddb_evaluate/evaluation.py as the README runs it."""
    return subprocess.run([sys.executable, str(ROOT / 'fddb_evaluate' / 'evaluation.py'), *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _one_error_line(proc):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    (line,) = _error_lines(proc.stderr)
    return line


@pytest.fixture
def fddb_files(tmp_path):
    ann = tmp_path / 'FDDB-fold-01-ellipseList.txt'
    ann.write_text(FDDB_ANNOTATIONS)
    dets = tmp_path / 'FDDB_dets.txt'
    dets.write_text(FDDB_DETS)
    return ann, dets


def test_fddb_evaluation_runs_as_the_readme_says(fddb_files, tmp_path):
    ann, dets = fddb_files
    proc = _fddb_cli('-d', dets, '-a', ann, '-o', tmp_path / 'out', '--plot', tmp_path / 'out' / 'roc.png')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'True positive rate at 1000 false positives: discrete 1.0000' in proc.stdout
    assert (tmp_path / 'out' / 'DiscROC.txt').read_text() == '1 0 0.9\n'
    assert (tmp_path / 'out' / 'roc.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'wrote ROC plot to' in proc.stderr  # logged like the other scripts: plain lines on stderr


def test_fddb_missing_detections_file_is_one_error_line(fddb_files, tmp_path):
    ann, _ = fddb_files
    line = _one_error_line(_fddb_cli('-d', tmp_path / 'nowhere.txt', '-a', ann, '-o', tmp_path / 'out'))
    assert line == f"error: FDDB detection file not found: {tmp_path / 'nowhere.txt'}"


def test_fddb_output_folder_that_is_a_file_fails_before_reading(fddb_files, tmp_path):
    ann, dets = fddb_files
    (tmp_path / 'out').write_text('a file\n')
    # The detections are missing too: the output is checked first, before any work.
    line = _one_error_line(_fddb_cli('-d', tmp_path / 'nowhere.txt', '-a', ann, '-o', tmp_path / 'out'))
    assert line == f"error: cannot write -o {tmp_path / 'out'}: it is a file, not a folder"


def test_fddb_unsupported_plot_format_fails_before_reading(fddb_files, tmp_path):
    ann, dets = fddb_files
    line = _one_error_line(_fddb_cli('-d', tmp_path / 'nowhere.txt', '-a', ann, '-o', tmp_path / 'out',
                                     '--plot', tmp_path / 'roc.xyz'))
    assert line.startswith(f"error: --plot {tmp_path / 'roc.xyz'}: matplotlib cannot write '.xyz' images (")


def test_fddb_duplicate_image_block_is_one_error_line(fddb_files, tmp_path):
    ann, dets = fddb_files
    dets.write_text(FDDB_DETS + FDDB_DETS)
    line = _one_error_line(_fddb_cli('-d', dets, '-a', ann, '-o', tmp_path / 'out'))
    assert line == f"error: {dets}:4: image 'img_a' appears a second time (first at line 1)"
    assert not (tmp_path / 'out').exists()


# --------------------------------------------------------------------------- B17: a .mat of the wrong kind

@pytest.fixture
def gt_folder(tmp_path):
    """A copy (links) of the val416 ground truth, to swap files in."""
    src = need_shared('widerface', 'val416', 'ground_truth')
    gt = tmp_path / 'gt'
    gt.mkdir()
    for f in ('wider_face_val.mat', 'wider_easy_val.mat', 'wider_medium_val.mat', 'wider_hard_val.mat'):
        (gt / f).symlink_to(src / f)
    return gt


def _wider_eval_cli(*argv):
    from widerface_evaluate import evaluation as ev

    return run_cli(ev.main, ev.get_args_parser(), list(map(str, argv)))


def _val416_predictions(tmp_path):
    """One prediction file for the first val416 image."""
    from widerface_evaluate import evaluation as ev

    gt = ev.load_wider_gt(need_shared('widerface', 'val416', 'ground_truth'))
    event, name = gt.names[0].split('/')
    pred = tmp_path / 'pred'
    (pred / event).mkdir(parents=True)
    (pred / event / f'{name}.txt').write_text(f'{name}\n1\n10 10 20 20 0.9\n')
    return pred


@pytest.mark.parametrize('copied, onto, holds', [
    ('wider_face_val.mat', 'wider_hard_val.mat', 'event_list, face_bbx_list, file_list'),
    ('wider_easy_val.mat', 'wider_face_val.mat', 'event_list, file_list, gt_list'),
])
def test_ground_truth_mat_of_the_wrong_kind_is_one_error_line(gt_folder, tmp_path, capsys, copied, onto, holds):
    """wider_face_val.mat copied in as wider_hard_val.mat gave KeyError: 'gt_list'."""
    (gt_folder / onto).unlink()
    (gt_folder / onto).symlink_to(gt_folder / copied)
    assert _wider_eval_cli('-p', _val416_predictions(tmp_path), '-g', gt_folder) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {gt_folder / onto}: not a WIDER FACE ")
    assert f"it holds {holds}" in line, line


def test_ground_truth_mat_of_another_image_set_is_one_error_line(gt_folder, tmp_path, capsys):
    """The full val set's hard list beside val416's annotations."""
    (gt_folder / 'wider_hard_val.mat').unlink()
    (gt_folder / 'wider_hard_val.mat').symlink_to(need_shared('widerface', 'ground_truth', 'wider_hard_val.mat'))
    assert _wider_eval_cli('-p', _val416_predictions(tmp_path), '-g', gt_folder) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {gt_folder / 'wider_hard_val.mat'} does not match "
                           f"{gt_folder / 'wider_face_val.mat'}: "), line


# --------------------------------------------------------------------------- the WIDER evaluator's inputs and outputs

@pytest.fixture
def label_set(tmp_path):
    """Ground truth of one image (two faces) as a label.txt, and its prediction folder."""
    label = tmp_path / 'label.txt'
    label.write_text('# ev/a.jpg\n0 0 10 10\n40 40 10 10\n')
    pred = tmp_path / 'pred'
    (pred / 'ev').mkdir(parents=True)
    (pred / 'ev' / 'a.txt').write_text('a\n2\n0 0 10 10 0.9\n100 100 10 10 0.3\n')
    return label, pred


def test_readme_and_hidden_files_in_the_prediction_folder_are_ignored(label_set, caplog):
    from widerface_evaluate import evaluation as ev

    label, pred = label_set
    before = ev.evaluate(ev.load_predictions(pred), ev.load_label_gt(label))['all']['ap']
    (pred / 'README.txt').write_text('Predictions of my model\nmade on 3 May with the default flags\n')
    (pred / 'ev' / '.a.txt.swp.txt').write_text('editor junk')
    (pred / '.cache').mkdir()
    (pred / '.cache' / 'a.txt').write_text('a\nnot a count\n')
    with caplog.at_level('WARNING'):
        preds = ev.load_predictions(pred)
    assert list(preds) == ['ev/a']
    assert ev.evaluate(preds, ev.load_label_gt(label))['all']['ap'] == before
    assert [r.getMessage() for r in caplog.records if r.levelname == 'WARNING'] == [
        f"skipped 1 file(s) in {pred} that are not prediction files (not parseable, and their first line is "
        f"not their image's name): README.txt"]


def test_a_bad_prediction_file_that_names_its_image_is_still_an_error(label_set):
    from widerface_evaluate import evaluation as ev

    label, pred = label_set
    (pred / 'ev' / 'a.txt').write_text('a\n2\n0 0 10 10 0.9\n')
    with pytest.raises(InputError, match='the count line says 2 boxes but 1 follow'):
        ev.load_predictions(pred)


def test_scores_outside_0_1_and_negative_sizes_warn_once_naming_files(label_set, caplog):
    from widerface_evaluate import evaluation as ev

    label, pred = label_set
    for i in range(5):
        (pred / 'ev' / f's{i}.txt').write_text(f's{i}\n1\n0 0 10 10 {1.5 + i}\n')
    (pred / 'ev' / 'w.txt').write_text('w\n2\n0 0 -10 10 0.5\n0 0 10 -3 0.5\n')
    with caplog.at_level('WARNING'):
        ev.load_predictions(pred)
    messages = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert messages == [
        f"5 prediction files have scores outside [0, 1] (the scores are min-max normalised over the whole set, "
        f"as the reference does), e.g. {pred}/ev/s0.txt, {pred}/ev/s1.txt, {pred}/ev/s2.txt, ...",
        f"1 prediction files have boxes with a negative width or height (they match no face), "
        f"e.g. {pred}/ev/w.txt"], messages


@pytest.mark.parametrize('flag, value, message', [
    ('--curve-data', 'file.txt/pr.json', "cannot write --curve-data {v}: {tmp}/file.txt is a file, not a folder"),
    ('--curve-plot', 'plots', "cannot write --curve-plot {v}: it is a folder, not a file"),
    ('--curve-plot', 'pr.xyz', "--curve-plot {v}: matplotlib cannot write '.xyz' images ("),
])
def test_unwritable_curve_outputs_fail_before_the_evaluation(label_set, tmp_path, capsys, monkeypatch, flag, value,
                                                             message):
    from widerface_evaluate import evaluation as ev

    label, pred = label_set
    (tmp_path / 'file.txt').write_text('x\n')
    (tmp_path / 'plots').mkdir()
    calls = []
    monkeypatch.setattr(ev, 'load_predictions', lambda *a: calls.append(a))
    value = tmp_path / value
    assert _wider_eval_cli('-p', pred, '--label', label, flag, value) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith('error: ' + message.format(v=value, tmp=tmp_path)), line
    assert calls == []


def test_curve_outputs_are_written_atomically(label_set, tmp_path):
    from widerface_evaluate import evaluation as ev

    label, pred = label_set
    out = tmp_path / 'out'
    assert _wider_eval_cli('-p', pred, '--label', label, '--curve-data', out / 'pr.csv',
                           '--curve-plot', out / 'pr.svg') == 0
    assert (out / 'pr.csv').read_text().splitlines()[0] == 'setting,threshold,precision,recall'
    assert (out / 'pr.svg').read_text().lstrip().startswith('<?xml')
    assert sorted(os.listdir(out)) == ['pr.csv', 'pr.svg']


# --------------------------------------------------------------------------- B18: a metrics record with a bad value

@pytest.mark.parametrize('record, key', [
    ({'epoch': 1, 'loss': 'abc'}, 'loss'),
    ({'epoch': 1, 'loss': 1.0, 'lr': [0.1]}, 'lr'),
    ({'epoch': 1, 'loss': 1.0, 'val': {'hard': 'high'}}, 'val'),
    ({'epoch': 1, 'loss': 1.0, 'val': [0.5]}, 'val'),
    ({'epoch': 1, 'loss': 1.0, 'val': {'hard': 0.5}, 'val_key': 'easy'}, 'val_key'),
])
def test_metrics_record_with_a_value_that_is_not_a_number_is_one_error_line(tmp_path, capsys, record, key):
    """"loss": "abc" gave a matplotlib traceback."""
    from curve import plot_metrics

    metrics = tmp_path / 'run_metrics.jsonl'
    metrics.write_text(json.dumps({'epoch': 0, 'loss': 2.0}) + '\n' + json.dumps(record) + '\n')
    assert run_cli(plot_metrics.main, plot_metrics.get_args_parser(), [str(metrics)]) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {metrics}:2: {key!r} ") and ' must be ' in line, line
    assert not (tmp_path / 'run_metrics.png').exists()
