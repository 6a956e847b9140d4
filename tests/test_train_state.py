"""utils/train_state.py: the RNG round trip, the state file's checks, the resumable sampler
and the stop signal (train.py's resume tests cover them end to end)."""
import os
import random
import signal

import numpy as np
import pytest
import torch

from utils.train_state import (ResumableDistributedSampler, StopSignal, load_training_state, rng_state,
                               seed_everything, set_rng_state)


def _draws():
    return random.random(), float(np.random.rand()), np.random.randn(), float(torch.rand(1))


def test_rng_state_round_trip_repeats_the_draws():
    seed_everything(123)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    saved = rng_state(torch.device('cpu'))
    first = _draws()
    _draws()
    set_rng_state(saved, torch.device('cpu'))
    assert _draws() == first


def test_load_training_state_rejects_plain_weights(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.save({'conv.weight': torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"weights\.pth is not a training state .*'iteration'.*--resume_net"):
        load_training_state(path)
    with pytest.raises(FileNotFoundError, match='no_such_state'):
        load_training_state(tmp_path / 'no_such_state.pth')


def test_load_training_state_refuses_a_diverged_state(tmp_path):
    """As the weights loader does (W7): a state with a NaN momentum would give a NaN loss again."""
    path = tmp_path / 'x_last_state.pth'
    torch.save({'model': {'conv.weight': torch.zeros(2)}, 'iteration': 4, 'epoch_size': 2, 'cfg': {}, 'seed': 0,
                'rng': [], 'optimizer': {'state': {0: {'momentum_buffer': torch.tensor([0.0, float('nan')])}},
                                         'param_groups': []}}, path)
    with pytest.raises(ValueError, match=r"x_last_state\.pth holds NaN or infinite values in 1 training state "
                                         r"tensors \(e\.g\. \['optimizer\.state\.0\.momentum_buffer'\]\)"):
        load_training_state(path)


def test_sampler_skips_the_start_of_one_pass_only():
    sampler = ResumableDistributedSampler(range(10), num_replicas=1, rank=0, shuffle=True, seed=5)
    full = list(sampler)
    sampler.set_start_index(4)
    assert list(sampler) == full[4:]
    assert list(sampler) == full


def test_stop_signal_records_the_signal_and_restores_the_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    stop = StopSignal().install()
    try:
        assert stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        # A second SIGTERM would end the process at once.
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == previous
