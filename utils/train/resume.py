"""Where a training run starts: the flags that say so (--resume, --resume_net, --resume_epoch,
--no-resume), the run's seed, its first iteration, and the RNG states it continues with.
The training state file itself is utils.train_state's."""
import argparse
import logging
import os

import torch
import torch.distributed as dist

from utils.distributed import World
from utils.errors import InputError
from utils.train import LOGGER_NAME
from utils.train.run_folder import finished_run_weights
from utils.train.schedule import Schedule
from utils.train_state import seed_everything, set_rng_state, warn_changed_settings

logger = logging.getLogger(LOGGER_NAME)

# A fresh seed for each process and iteration, where the saved RNG states cannot be used.
ITERATION_SEED_STRIDE = 7919


def check_resume_flags(args: argparse.Namespace, cfg: dict) -> None:
    """Refuse flags that contradict each other, or leave nothing to train."""
    if args.resume and args.resume_net:
        raise InputError("give either --resume (a training state) or --resume_net (plain weights), not both")
    if args.resume and args.no_resume:
        raise InputError("give either --resume (continue the run of a training state) or --no-resume (start afresh, "
                         "replacing an earlier run's files), not both")
    if not args.resume and args.resume_epoch >= cfg['epoch']:
        # It used to return at once, with status 0 and no word, having trained nothing.
        raise InputError(f"nothing to train: --resume_epoch {args.resume_epoch} starts after epoch "
                         f"{args.resume_epoch}, and the run ends at epoch {cfg['epoch']} (--max_epoch); pass a "
                         f"--max_epoch larger than {args.resume_epoch}")


def choose_seed(args: argparse.Namespace, cfg: dict, state: dict | None, world: World, device: torch.device) -> int:
    """The run's seed: the state's when resuming (which must be the same network's; changed
    settings are warned about), else --seed, else a random one (the same on every rank,
    which must shuffle alike)."""
    if state is not None:
        if state['cfg'].get('name') != cfg['name']:
            raise InputError(f"{args.resume} was trained with {state['cfg'].get('name')}, not {cfg['name']} "
                             f"(--network {args.network})")
        seed = int(state['seed'])
        if args.seed is not None and args.seed != seed:
            logger.warning("--seed %d ignored: resuming with the state's seed %d", args.seed, seed)
        warn_changed_settings(state, cfg, args, world.world_size, logger)
        return seed
    if args.seed is not None:
        return args.seed
    seed = int.from_bytes(os.urandom(4), 'little')
    if world.distributed:  # every rank must shuffle with the same seed
        t = torch.tensor([seed], dtype=torch.int64, device=device if device.type == 'cuda' else 'cpu')
        dist.broadcast(t, src=0)
        seed = int(t.item())
    return seed


def start_iteration(args: argparse.Namespace, state: dict | None, schedule: Schedule) -> int:
    """The iteration the run starts at. Without a state, the reference's --resume_epoch: the
    weights were saved after that many epochs (the LR steps are counted from the iteration,
    so the rate is that epoch's). With one, the saved iteration, or the start of the epoch it
    was in when the iterations per epoch changed (dataset, batch size or number of
    processes), which is said. At or past schedule.max_iter there is nothing to train:
    nothing_left_to_resume says so, or raises."""
    if state is None:
        return args.resume_epoch * schedule.epoch_size
    start_iter = int(state['iteration'])
    if int(state['epoch_size']) != schedule.epoch_size:
        completed = start_iter // int(state['epoch_size'])
        logger.warning("the state was saved with %d iterations per epoch, now %d (dataset, batch size or "
                       "number of processes changed): resuming at the start of epoch %d",
                       state['epoch_size'], schedule.epoch_size, completed + 1)
        start_iter = completed * schedule.epoch_size
    if start_iter >= schedule.max_iter:
        nothing_left_to_resume(state, args.resume, start_iter, schedule)
    return start_iter


def nothing_left_to_resume(state: dict, path: str, start_iter: int, schedule: Schedule) -> None:
    """A --resume with nothing left to train. Of a run that has finished, that is not an error
    (resuming until done is a loop a job scheduler runs): say so, and where its weights are.
    Of a run stopped before its end, at or past this run's last epoch, it is an InputError."""
    completed = start_iter // schedule.epoch_size
    if int(state['iteration']) < int(state.get('max_iter', 0)):
        raise InputError(f"nothing to train: {path} is at the end of epoch {completed}, and the run ends at epoch "
                         f"{schedule.epochs} (--max_epoch); pass a --max_epoch larger than {completed} (its run was "
                         f"to end at epoch {int(state['max_iter']) // int(state['epoch_size'])})")
    final = finished_run_weights(path)
    logger.warning("nothing to train: %s is the end of a finished run, after epoch %d%s; nothing was written. "
                   "To train longer, resume it with a --max_epoch larger than %d", path, completed,
                   f" (its weights: {final})" if final else '', completed)


def restore_rng(state: dict, start_iter: int, seed: int, world: World, device: torch.device) -> None:
    """Put back this rank's RNG states of the training state (--resume), or reseed when the
    number of processes changed."""
    rng = state['rng']
    if int(state.get('world_size', 1)) == world.world_size and world.rank < len(rng):
        set_rng_state(rng[world.rank], device)
    else:
        seed_everything(seed + world.rank + ITERATION_SEED_STRIDE * start_iter)
