"""Validation during training (train.py --val_dataset): the AP is the scripts' AP, training
is unchanged by it, the best checkpoint, the metrics records across a resume, and the
plotting entry point (python -m curve.plot_metrics)."""
import json
import math
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from curve import plot_metrics
from data import cfg_mnet
from data.label_file import read_wider_list
from models.retinaface import RetinaFace
from models.validation import Validator
from tests.conftest import ROOT, need_shared, signal_after
from tests.test_train import _assert_same_weights, _weights, backbone  # noqa: F401 (fixture)
from utils.checkpoint import load_model
from utils.run_history import RunHistory
from widerface_evaluate.validation import load_validation_set, score_detections, wider_boxes

NAME = cfg_mnet['name']
# Training: the first 8 minitrain images (5 without faces) at batch 4, 2 iterations per epoch.
# Validation: the next 4 (one without faces), held out.
N_TRAIN = 8
N_VAL = 4
BATCH = 4
EPOCH_SIZE = 2
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_part(root, blocks):
    root.mkdir()
    (root / 'images').symlink_to(need_shared('minitrain', 'train', 'images'), target_is_directory=True)
    (root / 'label.txt').write_text(''.join(line + '\n' for block in blocks for line in block))
    return root / 'label.txt'


@pytest.fixture(scope='module')
def split(tmp_path_factory):
    """(train label.txt, held-out label.txt), images linked to the shared minitrain ones."""
    blocks = []
    for line in need_shared('minitrain', 'train', 'label.txt').read_text().splitlines():
        if line.startswith('#'):
            blocks.append([])
        blocks[-1].append(line)
    root = tmp_path_factory.mktemp('split')
    return (_write_part(root / 'train', blocks[:N_TRAIN]),
            _write_part(root / 'val', blocks[N_TRAIN:N_TRAIN + N_VAL]))


def _args(split, save_folder, backbone, *extra, val=True):
    train_label, val_label = split
    return train.get_args_parser().parse_args([
        '--training_dataset', str(train_label), '--save_folder', str(save_folder), '--device', 'cpu',
        '--batch_size', str(BATCH), '--image_size', '160', '--num_workers', '0', '--seed', '0',
        '--pretrained', str(backbone), '--decay1', '1', '--decay2', '3',
        *(['--val_dataset', str(val_label)] if val else []), *extra])


def _records(folder):
    return [json.loads(line) for line in (folder / f'{NAME}_metrics.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def val_run(split, backbone, tmp_path_factory):
    """An uninterrupted 3-epoch run validating after every epoch."""
    out = tmp_path_factory.mktemp('val_run')
    steps = []  # every step's models.training.StepResult
    result = train.main(_args(split, out, backbone, '--max_epoch', '3'), on_step=steps.append)
    return out, result, steps


# --------------------------------------------------------------------------- the AP itself

def _published_model():
    net = RetinaFace(cfg_mnet, phase='train')
    load_model(net, need_shared('weights', 'mobilenet0.25_Final.pth'))
    return net.train()


@pytest.mark.parametrize('mode', ['label', 'wider'])
def test_validation_ap_equals_test_widerface_then_evaluation(split, tmp_path, mode):
    """The AP of the training-time validation is the one the two scripts give on the same
    weights: test_widerface.py's files read by evaluation.py (the images listed, alone)."""
    import test_widerface
    from widerface_evaluate import evaluation

    _, val_label = split
    names = [line[1:].strip() for line in val_label.read_text().splitlines() if line.startswith('#')]
    if mode == 'label':
        vset = load_validation_set(val_label)
        gt = evaluation.load_label_gt(val_label)
    else:
        # A WIDER val folder of these photos (the .mat boxes are for the unsquashed photos, so
        # the AP is low, but it is computed the same way).
        gt_dir = need_shared('widerface', 'ground_truth')
        folder = tmp_path / 'val'
        folder.mkdir()
        (folder / 'images').symlink_to(val_label.parent / 'images', target_is_directory=True)
        (folder / 'wider_val.txt').write_text(''.join('/' + n + '\n' for n in names))
        vset = load_validation_set(folder, gt_dir)
        gt = evaluation.load_wider_gt(gt_dir)
    model = _published_model()
    result = Validator(vset, cfg_mnet, 'cpu')(model)
    assert model.training and model.phase == 'train'  # given back as it came

    list_path = tmp_path / 'list.txt'
    list_path.write_text(''.join(n + '\n' for n in names))
    pred_dir = tmp_path / 'pred'
    test_widerface.main(test_widerface.get_args_parser().parse_args([
        '--trained_model', str(need_shared('weights', 'mobilenet0.25_Final.pth')), '--network', 'mobile0.25', '--cpu',
        '--dataset_folder', str(val_label.parent / 'images'), '--image_list', str(list_path),
        '--save_folder', str(pred_dir)]))
    expected = evaluation.evaluate(evaluation.load_predictions(pred_dir), gt, only_predicted=True)
    assert result['images'] == N_VAL
    assert result['key'] == ('all' if mode == 'label' else 'hard')
    assert result['ap'] == {s: r['ap'] for s, r in expected.items()}
    if mode == 'label':
        assert result['ap']['all'] > 0.9  # the labels are this model's own confident faces


def test_validator_restores_rng_and_training_mode(split, monkeypatch):
    """Even a pipeline that drew random numbers would leave every RNG stream as it was."""
    from models.detector import Detector
    real_detect = Detector.detect

    def detect_drawing(self, img):
        random.random(), np.random.rand(), torch.rand(1)
        return real_detect(self, img)

    monkeypatch.setattr(Detector, 'detect', detect_drawing)
    model = _published_model()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    Validator(load_validation_set(split[1]), cfg_mnet, 'cpu')(model)
    after = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert after == (random.random(), np.random.rand(), torch.rand(1).item())
    assert model.training and model.phase == 'train'


# --------------------------------------------------------------------------- training is unchanged

def test_validation_does_not_change_training(split, backbone, val_run, tmp_path):
    """The same run with and without validation: the same losses and bit-identical weights."""
    out, _, with_val = val_run
    without = []
    train.main(_args(split, tmp_path, backbone, '--max_epoch', '3', val=False), on_step=without.append)
    assert len(without) == 3 * EPOCH_SIZE
    assert [s.loc for s in with_val] == [s.loc for s in without]
    _assert_same_weights(_weights(out / f'{NAME}_Final.pth'), _weights(tmp_path / f'{NAME}_Final.pth'))
    assert not (tmp_path / f'{NAME}_best.pth').exists()


def test_validation_records_ap_and_time_apart_from_steps(val_run):
    out, result, _ = val_run
    records = _records(out)
    assert [r['epoch'] for r in records] == [0, 1, 2, 3]  # epoch 0: the starting weights
    assert len({r['run_id'] for r in records}) == 1
    for r in records:
        assert r['val_key'] == 'all' and 0 <= r['val']['all'] <= 1
        assert r['val_images'] == N_VAL and r['val_time'] > 0
    for r in records[1:]:
        assert r['iterations'] == EPOCH_SIZE and 'step_time' in r and 'data_time' in r
    # The per-epoch PNG beside it.
    assert (out / f'{NAME}_metrics.png').read_bytes()[:8] == PNG_SIGNATURE


def test_eval_every_validates_every_nth_epoch_and_the_last(split, backbone, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Validator, '__call__', lambda self, model: calls.append(1) or
                        {'ap': {'all': 0.5}, 'key': 'all', 'images': N_VAL, 'time': 0.0})
    train.main(_args(split, tmp_path, backbone, '--max_epoch', '3', '--eval_every', '2'))
    assert [r['epoch'] for r in _records(tmp_path) if 'val' in r] == [0, 2, 3]
    assert len(calls) == 3


# --------------------------------------------------------------------------- the scorer


def test_scorer_scores_detections_held_in_memory(tmp_path):
    (tmp_path / 'label.txt').write_text('#  ev/a.jpg \n0 0 10 10\n# ev/b.jpg\n20 20 10 10\n')
    (tmp_path / 'images' / 'ev').mkdir(parents=True)
    for name in ('a.jpg', 'b.jpg'):
        (tmp_path / 'images' / 'ev' / name).write_bytes(b'')  # only their existence is checked
    vset = load_validation_set(tmp_path / 'label.txt')
    assert vset.keys == ['ev/a', 'ev/b'] and vset.best_setting == 'all'
    assert vset.paths == [str(tmp_path / 'images' / 'ev' / n) for n in ('a.jpg', 'b.jpg')]
    # a's face found exactly, b's missed: half the faces at precision 1, AP 0.5.
    found = wider_boxes(np.array([[0, 0, 10, 10, 0.9] + [0] * 10], dtype=np.float32))
    assert found.tolist() == [[0, 0, 10, 10, float(str(np.float32(0.9)))]]
    result = score_detections({'ev/a': found, 'ev/b': np.zeros((0, 5))}, vset)
    assert result == {'ap': {'all': pytest.approx(0.5)}, 'key': 'all', 'images': 2}


def test_wider_list_entries_keep_their_line_numbers(tmp_path):
    (tmp_path / 'wider_val.txt').write_text('/0--Parade/a.jpg b.jpg\n\n  1--Handshaking/c.jpg\n')
    assert read_wider_list(str(tmp_path / 'wider_val.txt')) == [
        (1, '/0--Parade/a.jpg', '0--Parade/a.jpg'), (1, 'b.jpg', 'b.jpg'),
        (3, '1--Handshaking/c.jpg', '1--Handshaking/c.jpg')]


# --------------------------------------------------------------------------- the best checkpoint

def test_best_is_the_first_maximum():
    history = RunHistory('unused.jsonl')
    aps = [0.2, 0.5, 0.5, 0.4, float('nan'), 0.6, 0.1]
    news = [history.add_validation(e, {'ap': {'hard': ap, 'easy': 1.0}, 'key': 'hard'}) for e, ap in enumerate(aps)]
    assert news == [True, True, False, False, False, True, False]
    assert history.best == {'epoch': 5, 'setting': 'hard', 'ap': 0.6}


def test_best_checkpoint_holds_the_weights_of_the_best_epoch(split, backbone, tmp_path, monkeypatch):
    """APs made up per epoch (0.1, 0.7, 0.3, 0.7): <name>_best.pth holds epoch 1's weights."""
    aps = iter([0.1, 0.7, 0.3, 0.7])
    seen = []

    def fake_validate(self, model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {'ap': {'easy': 0.9, 'medium': 0.8, 'hard': next(aps)}, 'key': 'hard', 'images': N_VAL, 'time': 0.0}

    monkeypatch.setattr(Validator, '__call__', fake_validate)
    result = train.main(_args(split, tmp_path, backbone, '--max_epoch', '3'))
    assert result.history.best == {'epoch': 1, 'setting': 'hard', 'ap': 0.7}
    _assert_same_weights(_weights(tmp_path / f'{NAME}_best.pth'), seen[1])
    state = torch.load(tmp_path / f'{NAME}_last_state.pth', map_location='cpu', weights_only=True)
    assert state['history']['best'] == {'epoch': 1, 'setting': 'hard', 'ap': 0.7}


# --------------------------------------------------------------------------- resume

def test_resume_continues_the_validation_history(split, backbone, val_run, tmp_path):
    """Stop after epoch 2, resume to 3: the same records as the uninterrupted run (epochs 0-3
    once each, one run id), even with a stray record in the file (written after the state)."""
    out, full_result, _ = val_run
    train.main(_args(split, tmp_path, backbone, '--max_epoch', '2'))
    metrics = tmp_path / f'{NAME}_metrics.jsonl'
    with open(metrics, 'a') as f:
        f.write(json.dumps({'run_id': 'other', 'epoch': 3, 'loss': 1.0}) + '\n')
    resumed = train.main(_args(split, tmp_path, backbone, '--max_epoch', '3',
                               '--resume', str(tmp_path / f'{NAME}_last_state.pth')))
    records, full = _records(tmp_path), _records(out)
    assert [r['epoch'] for r in records] == [0, 1, 2, 3]
    assert len({r['run_id'] for r in records}) == 1
    assert [r['val'] for r in records] == [r['val'] for r in full]
    assert resumed.history.best == full_result.history.best


def test_resumed_epoch_record_covers_the_whole_epoch(split, backbone, val_run, tmp_path):
    """SIGTERM after epoch 1, seen in the first step of epoch 2, then --resume: epoch 2's
    record has both steps, and its means are the uninterrupted run's to the bit."""
    out, _, _ = val_run
    stopped = train.main(_args(split, tmp_path, backbone, '--max_epoch', '3'), on_step=signal_after(EPOCH_SIZE - 1))
    assert stopped.exit_code == 128 + signal.SIGTERM and stopped.iteration == EPOCH_SIZE + 1
    train.main(_args(split, tmp_path, backbone, '--max_epoch', '3',
                     '--resume', str(tmp_path / f'{NAME}_last_state.pth')))
    records, full = _records(tmp_path), _records(out)
    assert [r['epoch'] for r in records] == [0, 1, 2, 3]
    keys = ('epoch', 'loc', 'cla', 'landm', 'loss', 'lr', 'iterations', 'val')
    for r, f in zip(records, full):
        assert {k: r.get(k) for k in keys} == {k: f.get(k) for k in keys}
    assert records[2]['iterations'] == EPOCH_SIZE and 'partial' not in records[2]


def test_resume_of_a_finished_run_says_so_and_writes_nothing(split, backbone, tmp_path, caplog):
    """Resuming a run that has finished trains nothing, which is not an error (a job
    scheduler may resume until done): it says so, names the run's weights, and touches no
    file, not even the log copy or the lock (it stops before --save_folder is claimed)."""
    train.main(_args(split, tmp_path, backbone, '--max_epoch', '1', val=False))

    def files():
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()}
    before = files()
    result = train.main(_args(split, tmp_path, backbone, '--max_epoch', '1',
                              '--resume', str(tmp_path / f'{NAME}_last_state.pth'), val=False))
    assert result.exit_code == 0 and result.final_checkpoint is None
    assert (f'nothing to train: {tmp_path}/{NAME}_last_state.pth is the end of a finished run, after epoch 1 '
            f'(its weights: {tmp_path}/{NAME}_Final.pth); nothing was written. To train longer, resume it with a '
            f'--max_epoch larger than 1') in caplog.text
    assert files() == before


# --------------------------------------------------------------------------- errors

def test_bad_validation_flags_are_named(split, backbone, tmp_path):
    train_label, val_label = split
    with pytest.raises(ValueError, match='--val_gt'):  # a WIDER folder needs its ground truth
        train.main(_args(split, tmp_path, backbone, '--val_dataset', str(train_label.parent)))
    with pytest.raises(ValueError, match='--val_gt is for a WIDER val folder'):
        train.main(_args(split, tmp_path, backbone, '--val_gt', str(tmp_path)))
    with pytest.raises(FileNotFoundError, match='no_such_label'):
        train.main(_args(split, tmp_path, backbone, '--val_dataset', str(tmp_path / 'no_such_label.txt')))
    with pytest.raises(SystemExit):  # argparse: a usage error naming the flag
        _args(split, tmp_path, backbone, '--eval_every', '0')
    # Refused before --save_folder is touched: no log, no lock, no record.
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the plot

def _handmade_metrics(path):
    records = [{'epoch': 0, 'val': {'easy': 0.1, 'medium': 0.1, 'hard': 0.05}, 'val_key': 'hard'}]
    for e, hard in zip(range(1, 7), [None, 0.30, None, 0.45, None, 0.45]):
        r = {'run_id': 'x', 'epoch': e, 'loc': 3.0 / e, 'cla': 4.0 / e, 'landm': 15.0 / e, 'loss': 25.0 / e,
             'lr': 1e-3 if e < 5 else 1e-4, 'iterations': 16, 'step_time': 0.5, 'data_time': 0.01}
        if hard is not None:
            r.update(val={'easy': hard + 0.3, 'medium': hard + 0.2, 'hard': hard}, val_key='hard', val_time=1.0)
        records.append(r)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    return path


def test_plot_entry_point_on_a_handmade_metrics_file(tmp_path):
    """Run as the README says (a script, from the repository root), then in-process for the
    best epoch: hard AP 0.45 at epochs 4 and 6, the first one counts."""
    metrics = _handmade_metrics(tmp_path / 'run_metrics.jsonl')
    png = tmp_path / 'out' / 'run.png'
    proc = subprocess.run([sys.executable, '-m', 'curve.plot_metrics', str(metrics), '-o', str(png)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'best epoch 4' in proc.stdout
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    result = plot_metrics.main(plot_metrics.get_args_parser().parse_args([str(metrics), '-o', str(png)]))
    assert result['best'] == (4, 'hard', 0.45)
    assert result['epochs'] == [1, 2, 3, 4, 5, 6] and result['val_epochs'] == [0, 2, 4, 6]


def test_plot_of_a_first_epoch_warns_nothing(tmp_path):
    """After the first epoch there is one learning rate: still a valid log axis, no warning."""
    import warnings
    metrics = tmp_path / 'one.jsonl'
    metrics.write_text(json.dumps({'epoch': 1, 'loc': 1.0, 'cla': 2.0, 'landm': 3.0, 'loss': 7.0,
                                   'lr': 1e-3 * 0.1 ** 2}) + '\n')  # 1.0000000000000003e-05 made matplotlib warn
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        result = plot_metrics.plot_records(plot_metrics.read_records(metrics), tmp_path / 'one.png')
    assert result['best'] is None and (tmp_path / 'one.png').read_bytes()[:8] == PNG_SIGNATURE


def test_plot_entry_point_names_a_bad_line(tmp_path):
    metrics = tmp_path / 'bad.jsonl'
    metrics.write_text('{"epoch": 1, "loss": 2.0}\nnot json\n')
    proc = subprocess.run([sys.executable, '-m', 'curve.plot_metrics', str(metrics)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith('error:') and 'bad.jsonl:2' in proc.stderr


# --------------------------------------------------------------------------- torchrun

def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_validation_is_sharded_and_gathered(split, backbone, tmp_path):
    """Two gloo processes: each detects half of the images, rank 0 scores all of them, and the
    AP is the one a single process gets on the final weights."""
    train_label, val_label = split
    out = tmp_path / 'out'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', str(ROOT / 'train.py'),
           '--training_dataset', str(train_label), '--val_dataset', str(val_label), '--save_folder', str(out),
           '--device', 'cpu', '--batch_size', str(BATCH), '--image_size', '160', '--num_workers', '0',
           '--seed', '0', '--pretrained', str(backbone), '--max_epoch', '1']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(out)
    assert [r['epoch'] for r in records] == [0, 1] and all(r['val_images'] == N_VAL for r in records)
    net = RetinaFace(cfg_mnet, phase='train')
    load_model(net, out / f'{NAME}_Final.pth')
    single = Validator(load_validation_set(val_label), cfg_mnet, 'cpu')(net)
    assert math.isclose(records[1]['val']['all'], single['ap']['all'], rel_tol=1e-9)


# --------------------------------------------------------------------------- the split

def test_split_labels_holds_out_every_nth_image_and_links_the_images(tmp_path):
    from data.split_labels import get_args_parser, main
    from data.wider_face import WiderFaceDetection
    label = need_shared('minitrain', 'train', 'label.txt')
    counts = main(get_args_parser().parse_args([str(label), '--out', str(tmp_path), '--every', '5']))
    # 160 photos, 24 without faces: 32 held out (every 5th), both parts keep faceless ones.
    assert counts['train'][0] == 128 and counts['val'][0] == 32
    assert counts['train'][1] > 0 and counts['val'][1] > 0 and counts['train'][1] + counts['val'][1] == 24
    assert (tmp_path / 'val' / 'images').resolve() == label.parent.resolve() / 'images'
    train_set, val_set = (WiderFaceDetection(tmp_path / p / 'label.txt') for p in ('train', 'val'))
    assert not set(train_set.imgs_path) & set(val_set.imgs_path)
    assert val_set.imgs_path[0].endswith('0_Parade_Parade_0_102.jpg')  # image 0, 5, 10, ...
