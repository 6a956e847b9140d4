"""When things happen in a training run: the learning rate at each iteration, the epoch
checkpoints, the progress lines and the validations (the reference's schedule, counted in
iterations so that a resumed run continues it exactly)."""
import argparse
import math
from dataclasses import dataclass

import torch.optim as optim


def step_index_at(iteration: int, stepvalues: tuple[int, ...]) -> int:
    """How many LR steps have happened by this iteration (the reference counts them as it
    passes each stepvalue; computing it from the iteration makes resuming exact)."""
    return sum(iteration >= s for s in stepvalues)


def adjust_learning_rate(optimizer: optim.Optimizer, initial_lr: float, gamma: float, iteration: int,
                         stepvalues: tuple[int, ...]) -> float:
    """Set and return lr = initial_lr * gamma ** step_index (the reference's schedule;
    its warmup is disabled, warmup_epoch = -1)."""
    lr = initial_lr * (gamma ** step_index_at(iteration, stepvalues))
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr
    return lr


def saves_checkpoint_after(epoch: int, decay1: int) -> bool:
    """Whether <name>_epoch_<epoch>.pth is saved: the reference's cadence, after every 10th
    epoch, and every 5th once past decay1."""
    return (epoch % 10 == 0 and epoch > 0) or (epoch % 5 == 0 and epoch > decay1)


@dataclass(frozen=True)
class Schedule:
    """When things happen in a run: fixed once the dataset, the batch and the number of
    processes are known. The reference counts in iterations: an epoch is ceil(images per
    process / batch) of them, and the learning rate is multiplied by gamma at the decay1
    and decay2 epochs."""
    epochs: int  # cfg['epoch']
    epoch_size: int  # iterations per epoch
    max_iter: int  # epochs * epoch_size
    lr: float  # the initial learning rate (--lr)
    gamma: float  # what each LR step multiplies it by (--gamma)
    stepvalues: tuple[int, int]  # the iterations of the two LR steps
    decay1: int  # the epoch of the first LR step: checkpoints come every 5 epochs after it
    log_interval: int  # a progress line every N iterations (--log_interval)
    eval_every: int  # validate every N epochs (--eval_every)

    @classmethod
    def for_run(cls, cfg: dict, args: argparse.Namespace, images_per_process: int) -> 'Schedule':
        """The schedule of cfg (train.build_config's) and the flags, for this many images per process."""
        epoch_size = math.ceil(images_per_process / cfg['batch_size'])
        return cls(epochs=cfg['epoch'], epoch_size=epoch_size, max_iter=cfg['epoch'] * epoch_size, lr=args.lr,
                   gamma=args.gamma, stepvalues=(cfg['decay1'] * epoch_size, cfg['decay2'] * epoch_size),
                   decay1=cfg['decay1'], log_interval=args.log_interval, eval_every=args.eval_every)

    def set_learning_rate(self, optimizer: optim.Optimizer, iteration: int) -> float:
        """Set the optimizer to this iteration's learning rate (adjust_learning_rate); returns it."""
        return adjust_learning_rate(optimizer, self.lr, self.gamma, iteration, self.stepvalues)

    def logs_step(self, iteration: int) -> bool:
        """Whether this iteration logs a progress line (the last one always does)."""
        return iteration % self.log_interval == 0 or iteration + 1 == self.max_iter

    def saves_checkpoint_after(self, epoch: int) -> bool:
        """The reference's cadence: after every 10th epoch, and every 5th once past decay1."""
        return saves_checkpoint_after(epoch, self.decay1)

    def validates_after(self, epoch: int) -> bool:
        """With --val_dataset: every eval_every epochs, and after the last one."""
        return epoch % self.eval_every == 0 or epoch == self.epochs
