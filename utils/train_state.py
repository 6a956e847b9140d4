"""What train.py saves and restores to resume exactly: the RNG states, the training state file
(`<name>_last_state.pth`), the sampler that skips the part of an epoch already trained, and
the SIGINT/SIGTERM flag that asks the loop to save and stop.

The state file is loaded with weights_only=True, so it holds only tensors and plain Python
values: the NumPy RNG state is stored as a tensor and the arguments as plain types.
"""
import logging
import os
import random
import signal
import threading

import numpy as np
import torch
import torch.utils.data as data

from utils.atomic import atomic_save
from utils.checkpoint import check_finite
from utils.errors import InputError, InputNotFoundError

logger = logging.getLogger(__name__)

STATE_FORMAT = 1


# --------------------------------------------------------------------------- RNG state

def rng_state(device):
    """This process's RNG states, as tensors and plain Python values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                  'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])},
        'torch': torch.get_rng_state(),
    }
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    """Restore what rng_state() returned."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    n = state['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def gather_rng_states(device, world_size=1):
    """Every rank's rng_state(), in rank order (all ranks call this together under torchrun)."""
    if world_size == 1:
        return [rng_state(device)]
    import torch.distributed as dist
    states = [None] * world_size
    dist.all_gather_object(states, rng_state(device))
    return states


def _cpu_rng(state):
    return {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state.items()}


def _plain(value):
    """args values as plain Python types (the state file is loaded with weights_only=True)."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


# --------------------------------------------------------------------------- state file

def save_training_state(path, *, model, optimizer, scaler, next_iteration, epoch_size, max_iter, seed, world_size,
                        rng, cfg, args, history):
    """Write the training state atomically. next_iteration is the next iteration to run, rng
    every rank's rng_state(), args the argparse namespace, history RunHistory.state_dict()."""
    atomic_save({
        'format': STATE_FORMAT,
        'model': model.state_dict(),
        'optimizer': optimizer.state_dict(),
        'scaler': scaler.state_dict(),
        'epoch': next_iteration // epoch_size,  # completed epochs
        'iteration': next_iteration,
        'epoch_size': epoch_size,
        'max_iter': max_iter,
        'seed': seed,
        'world_size': world_size,
        'rng': [_cpu_rng(r) for r in rng],
        'cfg': cfg,
        'args': {k: _plain(v) for k, v in vars(args).items()},
        'history': history,
    }, path)


def load_training_state(path):
    """Read a <name>_last_state.pth; a ValueError naming the file if it is not one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputNotFoundError(f"training state not found: {path}")
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise InputError(f"{path} is not a readable training state: {type(e).__name__}: {e}") from e
    required = ('model', 'optimizer', 'iteration', 'epoch_size', 'cfg', 'seed', 'rng')
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise InputError(f"{path} is not a training state written by train.py (it lacks "
                         f"{[k for k in required if not isinstance(state, dict) or k not in state]}); "
                         f"to start from plain weights use --resume_net")
    # A diverged state would go on giving a NaN loss: refused, as weights are (utils.checkpoint).
    check_finite({'model': state['model'], 'optimizer': state['optimizer']}, path, 'training state')
    return state


# --------------------------------------------------------------------------- data order

class ResumableDistributedSampler(data.DistributedSampler):
    """DistributedSampler (shuffled per epoch from seed + epoch; one replica when not
    distributed) that can skip the samples already used in the epoch being resumed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_index = 0

    def set_start_index(self, start_index):
        """Skip the first start_index samples of this replica's next pass (once)."""
        self.start_index = start_index

    def __iter__(self):
        indices = list(super().__iter__())
        start, self.start_index = self.start_index, 0
        return iter(indices[start:])


# --------------------------------------------------------------------------- stopping

class StopSignal:
    """SIGINT / SIGTERM ask the training loop to save a state and stop after the current
    step: install() sets the handlers (in the main thread only, where Python allows it),
    `signum` is the signal received (None until then), restore() puts the old handlers back."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def install(self):
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        self.signum = signum
        # A second Ctrl-C / SIGTERM stops at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def warn_changed_settings(state, cfg, args, world_size, log=logger):
    """Resuming with different hyper-parameters is allowed, but say so (on log): the
    state's config and arguments against this run's cfg and args."""
    saved_cfg, saved_args = state['cfg'], state.get('args', {})
    changes = [f"{k} {saved_cfg.get(k)} -> {cfg[k]}" for k in ('batch_size', 'image_size', 'epoch', 'decay1', 'decay2')
               if saved_cfg.get(k) != cfg[k]]
    changes += [f"{k} {saved_args.get(k)} -> {getattr(args, k)}" for k in ('lr', 'gamma', 'momentum', 'weight_decay')
                if k in saved_args and saved_args.get(k) != getattr(args, k)]
    if int(state.get('world_size', 1)) != world_size:
        changes.append(f"processes {state.get('world_size', 1)} -> {world_size}")
    if changes:
        log.warning("resuming with changed settings: %s", '; '.join(changes))
