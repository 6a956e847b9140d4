"""train.py's engine, after torchvision's references/detection/engine.py: train_one_epoch and
the objects it is handed, each holding what travels together:

- Trainer: the model, its loss and its optimizer, and the one SGD step they take;
- utils.train.schedule.Schedule: when the learning rate steps, what is logged and saved;
- RunBook: the run's bookkeeping from one epoch to the next, its stop signal, records
  (RunHistory), checkpoints (Checkpoints) and on_step, the public hook that sees every step.
"""
import argparse
import datetime
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.optim as optim
from torch.nn.parallel import DistributedDataParallel

from layers.functions.prior_box import PriorBox
from layers.modules import MultiBoxLoss
from models.validation import Validator
from utils.atomic import atomic_save
from utils.distributed import World
from utils.metric_logger import MetricLogger
from utils.run_history import RunHistory
from utils.train import LOGGER_NAME
from utils.train.run_folder import STATE_SUFFIX
from utils.train.schedule import Schedule
from utils.train_state import StopSignal, gather_rng_states, save_training_state

logger = logging.getLogger(LOGGER_NAME)

NUM_CLASSES = 2  # face, background
# MultiBoxLoss's settings, as the reference builds it: matching and negative-overlap
# threshold 0.35, 7 mined negatives per positive prior.
MATCH_THRESHOLD = 0.35
NEG_POS_RATIO = 7
METER_WINDOW = 20  # the last steps the meters' medians are taken over: the ETA, an epoch's median times


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops without saving."""


@dataclass(frozen=True)
class StepResult:
    """One training step: its iteration (0-based) and the learning rate it trained with, its
    losses averaged over the ranks, its time and the part of it spent loading the batch, and
    whether any rank was asked to stop (a signal: the run stops after this step)."""
    iteration: int
    lr: float
    loc: float
    cla: float
    landm: float
    step_time: float
    data_time: float
    stop: bool


@dataclass
class Trainer:
    """The model, its loss and its optimizer: what a training step computes with."""
    model: torch.nn.Module  # the plain model, whose state_dict is saved
    net: torch.nn.Module  # what the steps call: the model, or its DistributedDataParallel wrapper
    criterion: MultiBoxLoss
    optimizer: optim.Optimizer
    scaler: torch.amp.GradScaler  # on with --amp on CUDA only
    priors: torch.Tensor  # [P, 4] center-size, of the training input
    image_size: int  # the training input side (cfg['image_size'])
    loc_weight: float  # cfg['loc_weight']: the box loss's weight in the sum
    device: torch.device
    world: World

    @classmethod
    def build(cls, model: torch.nn.Module, cfg: dict, args: argparse.Namespace, device: torch.device, world: World,
              amp: bool) -> 'Trainer':
        """The reference's training of model (already on device): SGD with train.py's flags,
        MultiBoxLoss as the reference builds it, the priors of cfg's input size, and under
        torchrun the DistributedDataParallel wrapper."""
        net = model
        if world.distributed:
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
        optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
        scaler = torch.amp.GradScaler('cuda', enabled=amp)
        criterion = MultiBoxLoss(num_classes=NUM_CLASSES, overlap_thresh=MATCH_THRESHOLD, prior_for_matching=True,
                                 bkg_label=0, neg_mining=True, neg_pos=NEG_POS_RATIO, neg_overlap=MATCH_THRESHOLD,
                                 encode_target=False, faceless_negatives=args.faceless_negatives,
                                 variance=cfg['variance'])
        img_dim = cfg['image_size']
        priors = PriorBox(cfg, image_size=(img_dim, img_dim)).forward().to(device)  # [P, 4], computed once
        return cls(model=model, net=net, criterion=criterion, optimizer=optimizer, scaler=scaler, priors=priors,
                   image_size=img_dim, loc_weight=cfg['loc_weight'], device=device, world=world)

    def load_state_dict(self, state: dict) -> None:
        """The optimizer's and the AMP scaler's states from a training state (--resume)."""
        self.optimizer.load_state_dict(state['optimizer'])
        if self.scaler.is_enabled() and state.get('scaler'):  # on with --amp on CUDA only
            self.scaler.load_state_dict(state['scaler'])

    def step(self, batches: Iterator, *, iteration: int, epoch: int, stop_requested: bool,
             last_saved: str | None) -> StepResult:
        """One SGD step on the next batch (in autocast when the scaler is on: --amp on CUDA).
        stop_requested: this rank was asked to stop. Raises NonFiniteLossError, naming
        last_saved, before a NaN or infinite loss reaches the weights."""
        device = self.device
        load_t0 = time.perf_counter()
        images, targets = next(batches)
        images = images.to(device, non_blocking=True)  # [B, 3, img_dim, img_dim]
        targets = [anno.to(device, non_blocking=True) for anno in targets]  # B x [N_i, 15]
        data_time = time.perf_counter() - load_t0

        # forward
        with torch.autocast(device_type=device.type, enabled=self.scaler.is_enabled()):
            out = self.net(images)
        loss_l, loss_c, loss_landm = self.criterion(out, self.priors, targets)
        loss = self.loc_weight * loss_l + loss_c + loss_landm

        # One sync per step: the losses (averaged over ranks, for logging) and whether any
        # rank was asked to stop, so that every rank stops at the same iteration.
        stats = torch.stack([loss_l.detach(), loss_c.detach(), loss_landm.detach(),
                             torch.tensor(1.0 if stop_requested else 0.0, device=device)]).float()
        if self.world.distributed:
            dist.all_reduce(stats)
            stats[:3] /= self.world.world_size
        loc_v, cla_v, landm_v, stop_v = stats.tolist()
        if not all(math.isfinite(v) for v in (loc_v, cla_v, landm_v)):
            msg = (f"non-finite loss at iteration {iteration + 1} (epoch {epoch}): Loc {loc_v} Cla {cla_v} "
                   f"Landm {landm_v}; stopping. The last good checkpoint is "
                   f"{last_saved or 'none (nothing was saved yet)'}")
            logger.error(msg)
            raise NonFiniteLossError(msg)

        # backprop
        lr = self.optimizer.param_groups[0]['lr']
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepResult(iteration=iteration, lr=lr, loc=loc_v, cla=cla_v, landm=landm_v,
                          step_time=time.perf_counter() - load_t0, data_time=data_time, stop=stop_v > 0)


@dataclass
class Checkpoints:
    """The files a run saves in --save_folder, <prefix><suffix> (prefix: <save_folder>/<name>,
    as the reference names its checkpoints), and the last one saved, which the non-finite-loss
    message names."""
    prefix: str
    trainer: Trainer
    schedule: Schedule
    history: RunHistory  # saved with the training state
    seed: int
    cfg: dict
    args: argparse.Namespace
    last_saved: str | None = None

    def path(self, suffix: str) -> str:
        return self.prefix + suffix

    def save_weights(self, suffix: str) -> str:
        """Save the model's plain state_dict (the reference's checkpoint format) to
        <prefix><suffix>; rank 0 only. Returns the path."""
        path = self.path(suffix)
        atomic_save(self.trainer.model.state_dict(), path)
        logger.info("saved %s", path)
        self.last_saved = path
        return path

    def save_state(self, next_iteration: int, meters: MetricLogger | None = None) -> str:
        """All ranks call this together (it gathers their RNG states); rank 0 writes the training
        state to <prefix>_last_state.pth, with meters, the epoch in progress, when next_iteration
        is mid-epoch (a signal stopped it there). Returns the path."""
        path, trainer, schedule = self.path(STATE_SUFFIX), self.trainer, self.schedule
        world = trainer.world
        rng = gather_rng_states(trainer.device, world.world_size)
        if world.is_main:
            partial = meters if next_iteration % schedule.epoch_size else None
            save_training_state(path, model=trainer.model, optimizer=trainer.optimizer, scaler=trainer.scaler,
                                next_iteration=next_iteration, epoch_size=schedule.epoch_size,
                                max_iter=schedule.max_iter, seed=self.seed, world_size=world.world_size, rng=rng,
                                cfg=self.cfg, args=self.args, history=self.history.state_dict(partial, next_iteration))
        self.last_saved = path
        return path


@dataclass
class RunBook:
    """The run's bookkeeping from one epoch to the next: the stop signal (SIGINT / SIGTERM),
    the files saved (checkpoints, which keep the records and the best AP: checkpoints.history),
    the validator (--val_dataset), on_step, whether the no-face warning was given (once a
    run), and this run's epoch records."""
    stop: StopSignal
    checkpoints: Checkpoints
    validator: Validator | None = None
    # Called with every step's StepResult, on every rank, once the step has updated the
    # weights: the public hook through which tests watch steps, and interrupt one (a signal
    # sent from it stops the run after the next step, which sees it at its sync).
    on_step: Callable[[StepResult], None] | None = None
    warned_no_face: bool = False
    records: list[dict] = field(default_factory=list)

    @property
    def history(self) -> RunHistory:
        return self.checkpoints.history


def train_one_epoch(trainer: Trainer, batches: Iterator, first_iteration: int, schedule: Schedule, book: RunBook,
                    meters: MetricLogger) -> tuple[int, bool, dict | None]:
    """Train from first_iteration to the end of its epoch, one Trainer.step per batch at the
    schedule's learning rate, logging progress every schedule.log_interval steps; then build
    and log the epoch's record from meters (the epoch's running sums, a resumed epoch's
    restored ones included). Validation and the history are the caller's, as in
    torchvision's references. Returns (the next iteration, True when a signal asked every
    rank to stop after it, the record or None when stopped before the epoch's end)."""
    epoch = first_iteration // schedule.epoch_size + 1
    end = epoch * schedule.epoch_size
    is_main = trainer.world.is_main
    had_face = False
    record = None
    for iteration in range(first_iteration, end):
        schedule.set_learning_rate(trainer.optimizer, iteration)
        step = trainer.step(batches, iteration=iteration, epoch=epoch, stop_requested=bool(book.stop.signum),
                            last_saved=book.checkpoints.last_saved)
        if book.on_step is not None:
            book.on_step(step)
        meters.update(loc=step.loc, cla=step.cla, landm=step.landm,
                      loss=trainer.loc_weight * step.loc + step.cla + step.landm,
                      step_time=step.step_time, data_time=step.data_time)
        if is_main and schedule.logs_step(iteration):
            _log_progress(step, epoch, schedule, meters)
        # No positive prior in a step gives a box loss of exactly 0.
        had_face = had_face or step.loc != 0
        if iteration + 1 == end:
            if not had_face and not book.warned_no_face and is_main:
                book.warned_no_face = True
                logger.warning("epoch %d: no face matched a prior in any step, so nothing was learnt (loss 0); the "
                               "faces may be too small for the priors at --image_size %d", epoch, trainer.image_size)
            record = epoch_record(meters, epoch, step.lr, schedule, is_main)
        if step.stop:
            return iteration + 1, True, record
    return end, False, record


def _log_progress(step: StepResult, epoch: int, schedule: Schedule, meters: MetricLogger) -> None:
    """The reference's progress line, with the ETA from the median step time."""
    iteration = step.iteration
    eta = int(meters['step_time'].median * (schedule.max_iter - iteration))
    logger.info('Epoch:{}/{} || Epochiter: {}/{} || Iter: {}/{} || Loc: {:.4f} Cla: {:.4f} Landm: {:.4f} '
                '|| LR: {:.8f} || Batchtime: {:.4f} s || ETA: {}'
                .format(epoch, schedule.epochs, (iteration % schedule.epoch_size) + 1, schedule.epoch_size,
                        iteration + 1, schedule.max_iter, step.loc, step.cla, step.landm, step.lr, step.step_time,
                        str(datetime.timedelta(seconds=eta))))


def epoch_record(meters: MetricLogger, epoch: int, lr: float, schedule: Schedule, is_main: bool) -> dict:
    """The epoch's record from its meters: mean losses, median times, the learning rate and
    the number of steps; logged by rank 0."""
    record = {'epoch': epoch, **{k: v for k, v in meters.global_avgs().items()
                                 if k in ('loc', 'cla', 'landm', 'loss')},
              'step_time': meters['step_time'].median, 'data_time': meters['data_time'].median,
              'lr': lr, 'iterations': meters['loss'].count}
    if record['iterations'] < schedule.epoch_size:  # resumed from a state without the epoch's sums
        record['partial'] = True
    if is_main:
        logger.info("epoch %d/%d: mean Loc %.4f Cla %.4f Landm %.4f loss %.4f | median step %.4f s, "
                    "data %.4f s", epoch, schedule.epochs, record['loc'], record['cla'], record['landm'],
                    record['loss'], record['step_time'], record['data_time'])
    return record
