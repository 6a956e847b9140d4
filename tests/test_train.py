"""train.py: short CPU runs on a slice of ../shared/minitrain, checkpoints, exact resume
(also across an LR step and from a signal), NaN handling, and 2-process torchrun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from data import cfg_mnet
from models.retinaface import RetinaFace
from layers.modules import MultiBoxLoss
from tests.conftest import ROOT, need_shared, signal_after
from utils.checkpoint import load_model

NAME = cfg_mnet['name']
# 8 images (5 of them without faces) at batch 4: 2 iterations per epoch.
N_IMAGES = 8
BATCH = 4
EPOCH_SIZE = 2


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Single-threaded torch: these tiny runs gain nothing from threads, and on a shared
    machine threads that wait for each other at every op make timings erratic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))


@pytest.fixture(scope='module')
def subset(tmp_path_factory):
    """label.txt with the first N_IMAGES minitrain entries, images/ linked to the shared ones."""
    src = need_shared('minitrain', 'train')
    root = tmp_path_factory.mktemp('minitrain_subset')
    (root / 'images').symlink_to(src / 'images', target_is_directory=True)
    lines, n = [], 0
    for line in (src / 'label.txt').read_text().splitlines():
        if line.startswith('#'):
            n += 1
            if n > N_IMAGES:
                break
        lines.append(line)
    (root / 'label.txt').write_text('\n'.join(lines) + '\n')
    return root / 'label.txt'


@pytest.fixture(scope='module')
def backbone():
    return need_shared('weights', 'mobilenetV1X0.25_pretrain.tar')


def _args(subset, save_folder, backbone, *extra):
    return train.get_args_parser().parse_args([
        '--training_dataset', str(subset), '--save_folder', str(save_folder), '--device', 'cpu',
        '--batch_size', str(BATCH), '--image_size', '160', '--num_workers', '0', '--seed', '0',
        '--pretrained', str(backbone), '--decay1', '1', '--decay2', '3', *extra])


def _expected_lr(iteration, decay1=1, decay2=3, lr=1e-3, gamma=0.1):
    return lr * gamma ** ((iteration >= decay1 * EPOCH_SIZE) + (iteration >= decay2 * EPOCH_SIZE))


def _weights(path):
    return load_model(RetinaFace(cfg_mnet, phase='test'), path).state_dict()


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope='module')
def full_run(subset, backbone, tmp_path_factory):
    """An uninterrupted 4-epoch run (8 iterations, LR steps at iterations 2 and 6)."""
    out = tmp_path_factory.mktemp('full')
    steps = []  # every step's models.training.StepResult
    result = train.main(_args(subset, out, backbone, '--max_epoch', '4'), on_step=steps.append)
    return out, result, steps


def test_run_writes_loadable_checkpoints(full_run):
    out, result, steps = full_run
    assert result.exit_code == 0 and result.iteration == result.max_iter == 8 and result.epoch_size == EPOCH_SIZE
    assert [s.iteration for s in steps] == list(range(8))
    assert [s.lr for s in steps] == pytest.approx([_expected_lr(i) for i in range(8)])
    assert all(s.data_time <= s.step_time for s in steps)
    assert not any(s.stop for s in steps)
    # The reference's names (and the hidden lock file that kept the folder this run's);
    # plain state_dicts without 'module.', loadable by our loader ...
    files = sorted(p.name for p in out.iterdir())
    assert files == ['.retinaface.lock', f'{NAME}_Final.pth', f'{NAME}_last_state.pth', f'{NAME}_metrics.jsonl',
                     f'{NAME}_metrics.png', f'{NAME}_run.json', f'{NAME}_train.log']
    final = torch.load(out / f'{NAME}_Final.pth', map_location='cpu', weights_only=True)
    assert not any(k.startswith('module.') for k in final)
    _weights(out / f'{NAME}_Final.pth')
    # ... and by the reference's own: net.load_state_dict(torch.load(path)) on a test-phase model.
    RetinaFace(cfg_mnet, phase='test').load_state_dict(final, strict=True)
    # The training state holds the same weights under 'model'.
    _assert_same_weights(_weights(out / f'{NAME}_last_state.pth'), _weights(out / f'{NAME}_Final.pth'))
    epochs = [json.loads(line) for line in (out / f'{NAME}_metrics.jsonl').read_text().splitlines()]
    assert [e['epoch'] for e in epochs] == [1, 2, 3, 4]
    assert all(k in epochs[0] for k in ('loc', 'cla', 'landm', 'loss', 'step_time', 'data_time'))


def test_schedule_counts_iterations_and_cadences_by_hand():
    """10 images per process at batch 4: ceil(10 / 4) = 3 iterations per epoch; 30 epochs
    make 90 iterations, the LR steps at epochs 15 and 25 are iterations 45 and 75."""
    args = train.get_args_parser().parse_args(['--batch_size', '4', '--max_epoch', '30', '--decay1', '15',
                                               '--decay2', '25', '--lr', '0.01', '--gamma', '0.5',
                                               '--log_interval', '4', '--eval_every', '7'])
    s = train.Schedule.for_run(train.build_config(args), args, images_per_process=10)
    assert (s.epochs, s.epoch_size, s.max_iter, s.stepvalues, s.lr, s.gamma) == (30, 3, 90, (45, 75), 0.01, 0.5)
    # Checkpoints after every 10th epoch, and every 5th once past decay1 (15, not at it).
    assert [e for e in range(31) if s.saves_checkpoint_after(e)] == [10, 20, 25, 30]
    # Progress lines every 4 iterations and at the very last one (89).
    assert [i for i in range(90) if s.logs_step(i)] == list(range(0, 90, 4)) + [89]
    # Validation every 7 epochs and after the last one (30).
    assert [e for e in range(1, 31) if s.validates_after(e)] == [7, 14, 21, 28, 30]


def test_epoch_checkpoint_cadence(subset, backbone, tmp_path):
    """Every 10 epochs, and every 5 after decay1: with decay1 = 1, epoch 5 is saved (at the
    start of epoch 6). AMP is ignored on CPU with a warning."""
    result = train.main(_args(subset, tmp_path, backbone, '--max_epoch', '6', '--amp', '--log_interval', '5'))
    assert result.exit_code == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert f'{NAME}_epoch_5.pth' in names and not any(n.startswith(f'{NAME}_epoch_') and n != f'{NAME}_epoch_5.pth'
                                                      for n in names)
    _weights(tmp_path / f'{NAME}_epoch_5.pth')


def test_resume_is_exact_across_an_lr_step(subset, backbone, full_run, tmp_path):
    """Stop after 2 epochs (past the first LR step), resume to 4: the same iterations, the
    same learning rates and, on CPU with in-process loading, the very same weights."""
    full_out, _, full = full_run
    first = train.main(_args(subset, tmp_path, backbone, '--max_epoch', '2'))
    assert first.iteration == 4
    state = torch.load(tmp_path / f'{NAME}_last_state.pth', map_location='cpu', weights_only=True)
    assert state['iteration'] == 4 and state['epoch'] == 2
    resumed = []
    train.main(_args(subset, tmp_path, backbone, '--max_epoch', '4',
                     '--resume', str(tmp_path / f'{NAME}_last_state.pth')), on_step=resumed.append)
    assert [s.iteration for s in resumed] == [4, 5, 6, 7]
    # The reference restarts its LR steps at zero here and would train at 1e-3.
    assert [s.lr for s in resumed] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5])
    assert [s.loc for s in resumed] == [s.loc for s in full[4:]]
    _assert_same_weights(_weights(tmp_path / f'{NAME}_Final.pth'), _weights(full_out / f'{NAME}_Final.pth'))


def test_signal_mid_epoch_saves_state_and_resumes_exactly(subset, backbone, full_run, tmp_path):
    """SIGTERM after iteration 2 (the last of epoch 1): iteration 3, the first of epoch 2,
    sees it, finishes, a state is saved, main returns 128 + SIGTERM; resuming continues
    mid-epoch, as if never stopped."""
    full_out, _, full = full_run
    steps = []

    def record_and_signal(step):
        steps.append(step)
        signal_after(1)(step)

    stopped = train.main(_args(subset, tmp_path, backbone, '--max_epoch', '4'), on_step=record_and_signal)
    assert [s.stop for s in steps] == [False, False, True]
    assert stopped.exit_code == 128 + signal.SIGTERM
    assert stopped.iteration == 3 and not (tmp_path / f'{NAME}_Final.pth').exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored

    steps = []
    resumed = train.main(_args(subset, tmp_path, backbone, '--max_epoch', '4',
                               '--resume', str(tmp_path / f'{NAME}_last_state.pth')), on_step=steps.append)
    assert resumed.exit_code == 0
    assert [s.iteration for s in steps] == list(range(3, 8))
    assert [s.lr for s in steps] == pytest.approx([_expected_lr(i) for i in range(3, 8)])
    assert [s.loc for s in steps] == [s.loc for s in full[3:]]
    _assert_same_weights(_weights(tmp_path / f'{NAME}_Final.pth'), _weights(full_out / f'{NAME}_Final.pth'))


def test_trains_when_the_caller_disabled_autograd(subset, backbone, tmp_path):
    with torch.no_grad():
        result = train.main(_args(subset, tmp_path, backbone, '--max_epoch', '1'))
    assert result.exit_code == 0 and result.iteration == EPOCH_SIZE


def test_resume_net_and_resume_epoch_use_that_epochs_lr(subset, backbone, full_run, tmp_path):
    """The reference's --resume_net/--resume_epoch: plain weights, a fresh optimizer, and
    (fixed) the learning rate of the epoch it resumes at."""
    full_out, _, _ = full_run
    steps = []
    train.main(_args(subset, tmp_path, backbone, '--max_epoch', '4', '--resume_net',
                     str(full_out / f'{NAME}_Final.pth'), '--resume_epoch', '3'), on_step=steps.append)
    assert [s.iteration for s in steps] == [6, 7]
    assert [s.lr for s in steps] == pytest.approx([1e-5, 1e-5])


def test_nonfinite_loss_stops_naming_iteration_and_checkpoint(subset, backbone, tmp_path, monkeypatch):
    real_forward = MultiBoxLoss.forward
    calls = []

    def nan_on_third_call(self, predictions, priors, targets):
        loss_l, loss_c, loss_landm = real_forward(self, predictions, priors, targets)
        calls.append(1)
        return (loss_l * float('nan') if len(calls) == 3 else loss_l), loss_c, loss_landm

    monkeypatch.setattr(MultiBoxLoss, 'forward', nan_on_third_call)
    with pytest.raises(train.NonFiniteLossError, match=r'iteration 3 .*last good checkpoint is .*_last_state\.pth'):
        train.main(_args(subset, tmp_path, backbone, '--max_epoch', '4'))


def test_missing_pretrained_backbone_is_named(subset, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'no_such_backbone\.tar.*--pretrained none'):
        train.main(_args(subset, tmp_path, tmp_path / 'no_such_backbone.tar', '--max_epoch', '1'))


def test_resume_rejects_plain_weights(subset, backbone, full_run, tmp_path):
    full_out, _, _ = full_run
    with pytest.raises(ValueError, match=r'not a training state .*--resume_net'):
        train.main(_args(subset, tmp_path, backbone, '--resume', str(full_out / f'{NAME}_Final.pth')))


def test_save_folder_over_the_resume_net_weights_is_refused_before_any_work(subset, backbone, tmp_path):
    """Fine-tuning <save_folder>/<name>_Final.pth into the same folder replaced the weights
    it started from with the new Final.pth (issue 25): refused, nothing made."""
    weights = tmp_path / f'{NAME}_Final.pth'
    weights.write_bytes(need_shared('weights', 'mobilenet0.25_Final.pth').read_bytes())
    with pytest.raises(ValueError) as e:
        train.main(_args(subset, tmp_path, backbone, '--max_epoch', '1', '--resume_net', str(weights)))
    assert str(e.value) == (f"--save_folder {tmp_path} would overwrite the weights {weights} (--resume_net) with the "
                            f"final weights: choose another --save_folder")
    assert os.listdir(tmp_path) == [weights.name]


def test_resume_net_inside_the_save_folder_is_refused_even_at_its_own_epoch(subset, backbone, tmp_path):
    """The reference's --resume_net <name>_epoch_5.pth --resume_epoch 5 into the folder that
    holds it would save a new epoch-5 checkpoint over the file it reads: refused before any
    work, as any other output over an input."""
    checkpoint = tmp_path / f'{NAME}_epoch_5.pth'
    checkpoint.write_bytes(need_shared('weights', 'mobilenet0.25_Final.pth').read_bytes())
    with pytest.raises(ValueError, match=rf"would overwrite the weights {checkpoint} \(--resume_net\) with the "
                                         rf"checkpoint of epoch 5"):
        train.main(_args(subset, tmp_path, backbone, '--max_epoch', '6', '--resume_net', str(checkpoint),
                         '--resume_epoch', '5'))
    assert os.listdir(tmp_path) == [checkpoint.name]


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_on_cpu(subset, backbone, tmp_path):
    """torchrun --nproc_per_node=2 (gloo): one step of global batch 2 x BATCH, rank 0
    saves, and both ranks end with identical parameters (train.main run by the
    tests/train_rank_digest.py wrapper, which writes each rank's digest)."""
    digests = tmp_path / 'digests'
    env = _subprocess_env()
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', str(ROOT / 'tests' / 'train_rank_digest.py'), str(digests),
           '--training_dataset', str(subset), '--save_folder', str(tmp_path / 'out'), '--device', 'cpu',
           '--batch_size', str(BATCH), '--image_size', '160', '--num_workers', '0', '--seed', '0',
           '--pretrained', str(backbone), '--max_epoch', '1']
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((digests / f'rank{r}.json').read_text()) for r in (0, 1)]
    assert [r['iteration'] for r in ranks] == [1, 1]  # 8 images / (2 x 4) = 1 step
    assert ranks[0]['params_sha256'] == ranks[1]['params_sha256']
    _weights(tmp_path / 'out' / f'{NAME}_Final.pth')
    # Progress lines come from rank 0 only (on stdout, as the reference printed them).
    assert proc.stdout.count('Iter: 1/1') == 1, proc.stdout[-3000:]


def test_ctrl_c_with_workers_saves_state(subset, backbone, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, workers included) during a run with
    DataLoader workers: the state is saved and the exit status is 130."""
    cmd = [sys.executable, str(ROOT / 'train.py'),
           '--training_dataset', str(subset), '--save_folder', str(tmp_path), '--device', 'cpu',
           '--batch_size', str(BATCH), '--image_size', '160', '--num_workers', '2', '--seed', '0',
           '--pretrained', str(backbone), '--max_epoch', '1000']
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if 'Iter: 3/' in line or time.time() > deadline:
                break
        os.killpg(proc.pid, signal.SIGINT)
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, rest[-3000:]
    state = torch.load(tmp_path / f'{NAME}_last_state.pth', map_location='cpu', weights_only=True)
    assert state['iteration'] >= 3
    assert 'continue with --resume' in rest


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_amp_run_and_exact_resume(subset, backbone, tmp_path):
    """On a GPU: --device auto picks CUDA, AMP trains with finite losses, the checkpoints
    open on the CPU, and --resume restores the scaler and continues at the right LR."""
    first = train.main(_args(subset, tmp_path, backbone, '--max_epoch', '2', '--device', 'auto', '--amp'))
    assert first.exit_code == 0 and first.iteration == 4
    state = torch.load(tmp_path / f'{NAME}_last_state.pth', map_location='cpu', weights_only=True)
    assert state['scaler'] and 'cuda' in state['rng'][0]
    resumed = []
    train.main(_args(subset, tmp_path, backbone, '--max_epoch', '4', '--device', 'cuda', '--amp',
                     '--resume', str(tmp_path / f'{NAME}_last_state.pth')), on_step=resumed.append)
    assert [s.iteration for s in resumed] == [4, 5, 6, 7]
    assert [s.lr for s in resumed] == pytest.approx([_expected_lr(i) for i in range(4, 8)])
    assert all(all(map(torch.isfinite, map(torch.tensor, (s.loc, s.cla, s.landm)))) for s in resumed)
    _weights(tmp_path / f'{NAME}_Final.pth')
