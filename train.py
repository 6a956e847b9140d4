"""Train RetinaFace on WIDER FACE (label.txt format), on CPU, one GPU, or many with torchrun.

    python train.py --network mobile0.25 --save_folder weights/mnet   # one device (CUDA if there is one)
    python train.py --training_dataset ../shared/minitrain/train/label.txt --device cpu \\
        --batch_size 8 --max_epoch 20 --pretrained ../shared/weights/mobilenetV1X0.25_pretrain.tar \\
        --save_folder /tmp/minitrain_run
    torchrun --nproc_per_node=4 train.py --network resnet50 --batch_size 6 --save_folder weights/r50   # 4 GPUs

The reference's flags keep their meaning and defaults. The loop is the reference's: SGD,
an epoch of ceil(len(dataset) / global batch) iterations, the learning rate multiplied by
gamma at decay1 and decay2 epochs (counted in iterations), checkpoints
`<name>_epoch_<N>.pth` (after N epochs) every 10 epochs and every 5 after decay1, and
`<name>_Final.pth` at the end: plain state_dicts without a `module.` prefix.

Added: `<name>_last_state.pth` beside them, the full training state (model, optimizer,
AMP scaler, iteration, RNG states, config) written at every epoch boundary, at the end
and on SIGINT/SIGTERM; `--resume` continues from it at the same iteration, with the same
learning rate and the same data order. All files are written atomically. The log goes to
stdout and is appended to `<name>_train.log` there too.

Every input is checked before --save_folder is touched. `<name>_run.json` there records the
run and its files (utils.run_manifest.prepare_training_folder): a fresh run never writes
over another run's files (--resume continues that run, --no-resume replaces it), and no
run ever replaces a file that no run recorded, such as the published
weights/mobilenet0.25_Final.pth in the default --save_folder.

Exit status: 0 when training finished (a --resume of a finished run trains and writes
nothing, and says so); 128 + the signal number (130 for SIGINT, 143 for
SIGTERM) when stopped by a signal after saving a resumable state; 3 when the loss became
NaN or infinite (nothing is saved then; the message names the last good checkpoint).
"""
import argparse
import datetime
import functools
import logging
import logging.handlers
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.optim as optim
import torch.utils.data as data
from torch.nn.parallel import DistributedDataParallel

from curve.plot_metrics import plot_records
from data import BGR_MEAN, WiderFaceDetection, cfg_for_network, detection_collate, preproc
from data.label_file import WIDER_IMAGE_LIST
from data.wider_face import check_labels
from layers.functions.prior_box import PriorBox
from layers.modules import MultiBoxLoss
from models.retinaface import RetinaFace, load_pretrained_backbone
from utils.atomic import FolderLock, atomic_save, check_writable, remove_stale_temp_files
from utils.checkpoint import load_model
from utils.cli import (non_negative_float, non_negative_int, number_in, positive_float,
                       positive_int, run_cli, set_threads, thread_count)
from utils.device import resolve_device
from utils.distributed import World, on_rank0, process_group, quiet_other_ranks
from utils.errors import InputError, InputNotFoundError
from utils.metric_logger import MetricLogger
from utils.outputs import RunOutputs
from utils.run_history import RunHistory
from utils.run_manifest import prepare_training_folder, training_record_name
from utils.train_state import (ResumableDistributedSampler, StopSignal, gather_rng_states, load_training_state,
                               save_training_state, seed_everything, set_rng_state, warn_changed_settings)
from models.validation import Validator, validate_epoch, validator_from_args
from widerface_evaluate.evaluation import wider_gt_files

logger = logging.getLogger('train')

NUM_CLASSES = 2  # face, background
# MultiBoxLoss's settings, as the reference builds it: matching and negative-overlap
# threshold 0.35, 7 mined negatives per positive prior.
MATCH_THRESHOLD = 0.35
NEG_POS_RATIO = 7
# The ImageNet backbones `--pretrained auto` loads, as the reference's RetinaFace constructor did.
# torchvision's ImageNet ResNet50 is https://download.pytorch.org/models/resnet50-0676ba61.pth
DEFAULT_PRETRAINED = {
    'mobilenet0.25': './weights/mobilenetV1X0.25_pretrain.tar',
    'Resnet50': './weights/resnet50-0676ba61.pth',
}
EXIT_NONFINITE_LOSS = 3
LOG_FORMAT = '%(asctime)s %(message)s'
SCRIPT = 'train.py'
# The files of a run in --save_folder besides the epoch checkpoints: <name><suffix>.
FINAL_SUFFIX = '_Final.pth'
STATE_SUFFIX = '_last_state.pth'
RUN_FILE_SUFFIXES = (FINAL_SUFFIX, STATE_SUFFIX, '_best.pth', '_metrics.jsonl', '_metrics.png', '_train.log')

# The <name>_train.log handler rank 0 adds to the root logger, and the buffer that keeps the
# records of the checks made before it exists; main() removes both.
_log_file_handler = None
_log_buffer = None


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops without saving."""


@dataclass
class TrainResult:
    """What main() returns: exit_code (see the module docstring), the next iteration to
    run, the per-epoch records, and the files written."""
    exit_code: int = 0
    iteration: int = 0
    max_iter: int = 0
    epoch_size: int = 0
    epochs: list = field(default_factory=list)  # {'epoch', 'loc', 'cla', 'landm', 'loss', 'step_time', 'data_time'}
    final_checkpoint: str = None
    state_path: str = None
    history: RunHistory = None  # the per-epoch records and the best validation AP


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Retinaface Training')
    # The reference's flags, defaults unchanged.
    parser.add_argument('--training_dataset', default='./data/widerface/train/label.txt',
                        help='Training dataset label.txt (images are read from images/ beside it)')
    parser.add_argument('--network', default='mobile0.25', help='Backbone network mobile0.25 or resnet50')
    parser.add_argument('--num_workers', default=4, type=non_negative_int, help='Number of workers used in dataloading')
    parser.add_argument('--lr', '--learning-rate', default=1e-3, type=positive_float,
                        help='initial learning rate')
    parser.add_argument('--momentum', default=0.9, type=number_in(float, 0, 1, exclusive_maximum=True), help='momentum')
    parser.add_argument('--resume_net', default=None,
                        help='plain weights (state_dict) to start from; see --resume_epoch')
    parser.add_argument('--resume_epoch', default=0, type=non_negative_int,
                        help='epoch --resume_net was saved after: training continues from there, with the '
                             'learning rate of that epoch (a fresh optimizer: use --resume for an exact resume)')
    parser.add_argument('--weight_decay', default=5e-4, type=non_negative_float, help='Weight decay for SGD')
    parser.add_argument('--gamma', default=0.1, type=number_in(float, 0, 1, exclusive_minimum=True),
                        help='Gamma update for SGD')
    parser.add_argument('--save_folder', default='./weights/',
                        help='Location to save checkpoint models (created if needed; a copy of the log goes there too)')
    # Additions.
    parser.add_argument('--device', default='auto',
                        help="'auto' (CUDA when available and cfg gpu_train, else CPU), 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--batch_size', type=positive_int, default=None,
                        help="images per step per process (default cfg['batch_size']); "
                             "with torchrun the global batch is nproc x batch_size")
    parser.add_argument('--max_epoch', type=positive_int, default=None, help="epochs (default cfg['epoch'])")
    parser.add_argument('--image_size', type=positive_int, default=None,
                        help="training input side, larger than the largest stride in cfg['steps'] "
                             "(default cfg['image_size'])")
    parser.add_argument('--decay1', type=non_negative_int, default=None,
                        help="epoch of the first LR step (default cfg['decay1'])")
    parser.add_argument('--decay2', type=non_negative_int, default=None,
                        help="epoch of the second LR step (default cfg['decay2'])")
    parser.add_argument('--pretrained', default='auto',
                        help="ImageNet backbone weights: 'auto' (%s), a path, or 'none' to start from scratch"
                             % ', '.join(f'{k}: {v}' for k, v in DEFAULT_PRETRAINED.items()))
    parser.add_argument('--amp', action='store_true', help='mixed precision (CUDA only; ignored on CPU)')
    parser.add_argument('--seed', type=int, default=None, help='random seed (default: a random one, logged)')
    parser.add_argument('--resume', default=None,
                        help='a <name>_last_state.pth written by this script: continue exactly where it stopped')
    parser.add_argument('--no-resume', dest='no_resume', action='store_true',
                        help="start afresh in a --save_folder that holds an earlier run's files: removes exactly "
                             "the files <name>_run.json records (never a file no run recorded, such as the "
                             "published weights)")
    parser.add_argument('--log_interval', type=positive_int, default=1, help='log a progress line every N iterations')
    parser.add_argument('--faceless_negatives', type=non_negative_int, default=0,
                        help='hard negatives mined in each image without faces (default 0, the reference: '
                             'such images add nothing to the loss, whose negatives are 7 per positive prior)')
    parser.add_argument('--threads', type=thread_count, default=None,
                        help="CPU threads for torch (torch.set_num_threads; default: torch's own default), "
                             "at most utils.cli.max_threads()")
    parser.add_argument('--val_dataset', default=None,
                        help='validate during training on a WIDER val folder (images/ and wider_val.txt; with '
                             '--val_gt) or on a label.txt with boxes (one AP); keeps <name>_best.pth')
    parser.add_argument('--val_gt', default=None,
                        help='with a WIDER --val_dataset folder: the ground-truth folder (wider_face_val.mat ...)')
    parser.add_argument('--eval_every', type=positive_int, default=1,
                        help='validate every N epochs (and after the last one); the starting weights are '
                             'validated too, as epoch 0')
    return parser


# --------------------------------------------------------------------------- setup helpers


def train_device(args: argparse.Namespace) -> torch.device:
    """--device as a torch.device (utils.device.resolve_device): 'auto' is CUDA when there is
    one and the network's config trains on GPUs (cfg['gpu_train'], as in the reference)."""
    device = args.device
    if device == 'auto' and not cfg_for_network(args.network).get('gpu_train', True):
        device = 'cpu'
    return resolve_device(device)


def resolve_pretrained(arg: str | None, cfg: dict) -> str | None:
    """Path of the ImageNet backbone to load, or None to start from scratch."""
    if arg is None or str(arg).lower() == 'none':
        return None
    if arg == 'auto':
        if not cfg.get('pretrain', True):
            return None
        path = DEFAULT_PRETRAINED[cfg['name']]
    else:
        path = arg
    if not os.path.isfile(path):
        raise InputNotFoundError(
            f"pretrained backbone not found: {path} (pass --pretrained PATH to the ImageNet {cfg['name']} "
            f"weights, or --pretrained none to train from scratch)")
    return path


def build_config(args: argparse.Namespace) -> dict:
    """cfg_for_network(args.network) with the command-line overrides applied (a copy).

    The flags' ranges are checked by get_args_parser() (utils.cli.number_in types); only
    what depends on the network is checked here."""
    cfg = dict(cfg_for_network(args.network))
    for flag, key in (('batch_size', 'batch_size'), ('max_epoch', 'epoch'), ('image_size', 'image_size'),
                      ('decay1', 'decay1'), ('decay2', 'decay2')):
        value = getattr(args, flag)
        if value is not None:
            cfg[key] = value
    if cfg['image_size'] <= max(cfg['steps']):
        # Smaller, the priors (16 px and up) dwarf every face, so no face matches one and
        # the loss is 0; at the largest stride itself the coarsest feature map is a single
        # cell, and batch norm fails on an image alone in its batch.
        raise InputError(f"--image_size {cfg['image_size']} is too small for {cfg['name']}: it must be larger than "
                         f"its largest stride, {max(cfg['steps'])} (the reference trains at "
                         f"{cfg_for_network(args.network)['image_size']})")
    return cfg


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


def _worker_init_fn(worker_id):
    """DataLoader workers: PyTorch has already seeded random / numpy / torch per worker.
    Leave Ctrl-C to the main process (it saves and shuts the workers down), restore the
    default SIGTERM, and keep OpenCV single-threaded (the workers are the parallelism)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import cv2
    cv2.setNumThreads(1)


# --------------------------------------------------------------------------- what a run is built from

def saves_checkpoint_after(epoch: int, decay1: int) -> bool:
    """Whether <name>_epoch_<epoch>.pth is saved: the reference's cadence, after every 10th
    epoch, and every 5th once past decay1."""
    return (epoch % 10 == 0 and epoch > 0) or (epoch % 5 == 0 and epoch > decay1)


def run_files(cfg: dict) -> list[str]:
    """The names of the files a run of cfg (build_config's) may write in --save_folder: the
    epoch checkpoints before the last epoch (whose weights are <name>_Final.pth) and the rest."""
    name = cfg['name']
    return [name + suffix for suffix in RUN_FILE_SUFFIXES] + [
        f"{name}_epoch_{epoch}.pth" for epoch in range(1, cfg['epoch']) if saves_checkpoint_after(epoch, cfg['decay1'])]


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
        """The schedule of cfg (build_config's) and the flags, for this many images per process."""
        epoch_size = math.ceil(images_per_process / cfg['batch_size'])
        return cls(epochs=cfg['epoch'], epoch_size=epoch_size, max_iter=cfg['epoch'] * epoch_size, lr=args.lr,
                   gamma=args.gamma, stepvalues=(cfg['decay1'] * epoch_size, cfg['decay2'] * epoch_size),
                   decay1=cfg['decay1'], log_interval=args.log_interval, eval_every=args.eval_every)

    def logs_step(self, iteration: int) -> bool:
        """Whether this iteration logs a progress line (the last one always does)."""
        return iteration % self.log_interval == 0 or iteration + 1 == self.max_iter

    def saves_checkpoint_after(self, epoch: int) -> bool:
        """The reference's cadence: after every 10th epoch, and every 5th once past decay1."""
        return saves_checkpoint_after(epoch, self.decay1)

    def validates_after(self, epoch: int) -> bool:
        """With --val_dataset: every eval_every epochs, and after the last one."""
        return epoch % self.eval_every == 0 or epoch == self.epochs


@dataclass
class RunNotes:
    """What a run keeps track of from one epoch to the next, besides its records (which
    RunHistory keeps): the last file saved, which the non-finite-loss message names, and
    whether the no-face warning was given (once a run)."""
    last_saved: str | None = None
    warned_no_face: bool = False


# --------------------------------------------------------------------------- training

def main(args: argparse.Namespace) -> TrainResult:
    """Train as args say; returns a TrainResult. Raises NonFiniteLossError on a NaN/inf loss."""
    device = train_device(args)  # checked before any process group exists
    # torchrun's process group, when there is one, left however the run ends. Under torchrun
    # with CUDA each process takes the GPU of its LOCAL_RANK (world.device).
    with process_group(use_cuda=device.type == 'cuda') as world:
        return _main(args, device, world)


def _main(args: argparse.Namespace, device: torch.device, world: World) -> TrainResult:
    """main() inside the process group: the process-wide settings a run changes (the log level,
    the signal handlers, torch's thread count, the --save_folder lock and log file), put back
    however it ends; only rank 0 logs progress."""
    quiet_other_ranks(world, logger)
    if world.is_main and logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)

    stop = StopSignal().install()
    threads = torch.get_num_threads()
    set_threads(args.threads)
    # Held by rank 0 for the whole run (see claim_save_folder); released however it ends.
    folder_lock = FolderLock(args.save_folder, '--save_folder')
    try:
        # Training needs autograd whatever the caller's global mode (a script that called
        # torch.set_grad_enabled(False) before, as inference scripts do).
        with torch.enable_grad():
            return _train(args, torch.device(world.device) if world.device else device, world, stop, folder_lock)
    finally:
        stop.restore()
        set_threads(threads)
        _close_log_file()
        folder_lock.release()


def _train(args: argparse.Namespace, device: torch.device, world: World, stop: StopSignal,
           folder_lock: FolderLock) -> TrainResult:
    """The run, as torchvision's reference main() reads: check the settings and every input,
    and build what the run needs, in the order the RNG draws depend on (the model's seed,
    the samplers, the DataLoader's generator); only then claim --save_folder (rank 0 takes
    folder_lock, which the caller releases), so that a refused run leaves nothing behind;
    then train epoch by epoch from the start iteration."""
    cfg = build_config(args)
    amp = bool(args.amp)
    if amp and device.type != 'cuda':
        logger.warning("--amp needs CUDA; training in float32 on %s", device)
        amp = False
    check_resume_flags(args, cfg)
    # Every file the run writes is <save_folder>/<name><suffix>, as the reference names its checkpoints.
    prefix = os.path.join(args.save_folder, cfg['name'])
    best_path = prefix + '_best.pth'  # with --val_dataset: the weights of the best validation AP
    if world.is_main:
        _buffer_log_records()  # for <name>_train.log, which is opened once the inputs are checked
        logger.info("train.py %s", ' '.join(f"--{k} {v}" for k, v in vars(args).items() if v is not None))

    # ---- inputs: all checked before anything is written
    state = load_training_state(args.resume) if args.resume else None
    seed = _choose_seed(args, cfg, state, world, device)
    record = RunRecord.of(args, cfg, state, seed)
    # Only rank 0 writes into --save_folder, so only it checks and claims it; if that fails,
    # every rank stops (the others with status 1 and no message of their own).
    check_outputs(args, cfg, prefix)  # nothing written over an input, or over another of the run's outputs
    on_rank0(lambda: record.prepare(args.save_folder, check_only=True), world)
    img_dim = cfg['image_size']
    logger.info('Loading Dataset...')
    dataset = WiderFaceDetection(args.training_dataset, preproc(img_dim, BGR_MEAN))
    if len(dataset) == 0:
        raise InputError(f"{args.training_dataset} lists no images")
    check_labels(dataset, args.training_dataset, args.faceless_negatives, log=logger)
    # None without --val_dataset; its files are checked now, before training.
    validator = validator_from_args(args, cfg, device, world, log=logger)
    model = build_model(args, cfg, state, seed, world.rank).to(device)  # the plain model, whose state_dict is saved
    sampler = ResumableDistributedSampler(dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True,
                                          seed=seed)
    schedule = Schedule.for_run(cfg, args, len(sampler))
    if state is None:
        # The reference's --resume_epoch: the weights were saved after that many epochs.
        # The LR steps are counted from the iteration, so the rate is that epoch's.
        start_iter, last_saved = args.resume_epoch * schedule.epoch_size, None
    else:
        start_iter, last_saved = resume_iteration(state, schedule), args.resume
        if start_iter >= schedule.max_iter:
            _nothing_left_to_resume(state, args.resume, start_iter, schedule)
            return TrainResult(iteration=start_iter, max_iter=schedule.max_iter, epoch_size=schedule.epoch_size,
                               state_path=args.resume)

    # ---- outputs
    on_rank0(lambda: claim_save_folder(args.save_folder, folder_lock, record), world)
    if world.is_main:
        _open_log_file(prefix + '_train.log')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    net = model  # what the steps call: the model, or its DistributedDataParallel wrapper
    if world.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    criterion = MultiBoxLoss(num_classes=NUM_CLASSES, overlap_thresh=MATCH_THRESHOLD, prior_for_matching=True,
                             bkg_label=0, neg_mining=True, neg_pos=NEG_POS_RATIO, neg_overlap=MATCH_THRESHOLD,
                             encode_target=False, faceless_negatives=args.faceless_negatives,
                             variance=cfg['variance'])
    priors = PriorBox(cfg, image_size=(img_dim, img_dim)).forward().to(device)  # [P, 4], computed once
    if state is not None:
        _resume_from_state(state, start_iter, optimizer, scaler, world=world, device=device, seed=seed)
    # Worker seeds come from the loader's generator: different per rank, and fresh after a resume.
    loader = _make_loader(dataset, sampler, cfg['batch_size'], args.num_workers, pin_memory=device.type == 'cuda',
                          seed=(seed + 1000003 * world.rank + 7919 * start_iter) % 2 ** 63)
    logger.info("%s: %d images, batch %d x %d process(es) = %d, %d iterations per epoch, %d epochs, "
                "LR %g stepped x%g at epochs %d and %d, image %d, device %s%s, seed %d",
                cfg['name'], len(dataset), cfg['batch_size'], world.world_size, cfg['batch_size'] * world.world_size,
                schedule.epoch_size, cfg['epoch'], args.lr, args.gamma, cfg['decay1'], cfg['decay2'], img_dim, device,
                ', AMP' if amp else '', seed)
    # A fresh run starts a new metrics file; a resumed one continues the state's records.
    history = (RunHistory.resume(prefix + '_metrics.jsonl', state, start_iter // schedule.epoch_size)
               if state is not None else RunHistory(prefix + '_metrics.jsonl'))
    history.run_id = record.run_id  # the one <name>_run.json knows this run by
    # The training state, written at epoch boundaries, when a signal stops the run, and at the end.
    save_state = functools.partial(_save_state, prefix + '_last_state.pth', model=model, optimizer=optimizer,
                                   scaler=scaler, schedule=schedule, seed=seed, world=world, device=device, cfg=cfg,
                                   args=args, history=history)

    if world.is_main:
        history.write(plot_records)
    if validator is not None and state is None:  # the starting weights, as epoch 0 (or --resume_epoch's)
        _add_record(history, {'epoch': start_iter // schedule.epoch_size}, validator=validator, model=model,
                    best_path=best_path, is_main=world.is_main)
    net.train()
    notes = RunNotes(last_saved=last_saved)
    records = []  # the epochs' records, for the TrainResult
    iteration = start_iter
    while iteration < schedule.max_iter:
        completed = iteration // schedule.epoch_size
        if iteration % schedule.epoch_size == 0:
            # The reference's checkpoint, then (after this run's first step) the training state.
            if world.is_main and schedule.saves_checkpoint_after(completed):
                notes.last_saved = _save_weights(model, prefix + '_epoch_' + str(completed) + '.pth')
            if iteration > start_iter:
                notes.last_saved = save_state(iteration)
        # One DataLoader for the whole run: reshuffle (seed + epoch) and skip what a resumed
        # epoch already used.
        sampler.set_epoch(completed)
        sampler.set_start_index((iteration % schedule.epoch_size) * cfg['batch_size'])
        batches = iter(loader)
        meters = MetricLogger(window_size=20)
        if iteration == start_iter and history.restore_partial(meters, iteration) and world.is_main:
            logger.info("the record of epoch %d continues the sums saved in the state", completed + 1)

        iteration, stopped, record = train_one_epoch(
            net, criterion, optimizer, scaler, batches, device, iteration, priors=priors,
            loc_weight=cfg['loc_weight'], image_size=img_dim, world=world, stop=stop, schedule=schedule,
            meters=meters, notes=notes)
        if record is not None:  # the epoch ended: validate when due, then keep its record
            records.append(record)
            _add_record(history, record, validator=validator if schedule.validates_after(record['epoch']) else None,
                        model=model, best_path=best_path, is_main=world.is_main)
        if stopped:
            signum = int(stop.signum or signal.SIGTERM)  # a rank that got no signal itself says SIGTERM
            state_path = save_state(iteration, meters=meters)
            if world.is_main:
                logger.warning("stopped by signal %d after iteration %d: resumable state saved in %s "
                               "(continue with --resume %s)", signum, iteration, state_path, state_path)
            return TrainResult(exit_code=128 + signum, iteration=iteration, max_iter=schedule.max_iter,
                               epoch_size=schedule.epoch_size, epochs=records,
                               state_path=state_path if world.is_main else None, history=history)
    final = _save_weights(model, prefix + '_Final.pth') if world.is_main else None
    state_path = save_state(schedule.max_iter)
    return TrainResult(iteration=schedule.max_iter, max_iter=schedule.max_iter, epoch_size=schedule.epoch_size,
                       epochs=records, final_checkpoint=final, state_path=state_path if world.is_main else None,
                       history=history)


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


def check_outputs(args: argparse.Namespace, cfg: dict, prefix: str) -> None:
    """Every file the run may write in --save_folder (checkpoints, state, metrics, plot, log),
    checked against the files it reads (utils.outputs) before any work. A resumed run
    replaces its own --resume state; any other clash is refused, --resume_net inside
    --save_folder included (even the checkpoint of --resume_epoch, which the reference saves
    again: the folder's record would refuse replacing it anyway)."""
    outputs = RunOutputs()
    outputs.reads('--training_dataset', args.training_dataset, 'the label file')
    outputs.reads('--resume', args.resume, 'the training state')
    outputs.reads('--resume_net', args.resume_net, 'the weights')
    if args.resume is None and args.resume_net is None and str(args.pretrained).lower() not in ('none', 'auto'):
        outputs.reads('--pretrained', args.pretrained, 'the backbone')
    if args.val_dataset is not None:
        val_files = [os.path.join(args.val_dataset, WIDER_IMAGE_LIST)] if os.path.isdir(args.val_dataset) \
            else [args.val_dataset]
        outputs.reads('--val_dataset', val_files, 'the validation list')
    if args.val_gt is not None:
        outputs.reads('--val_gt', wider_gt_files(args.val_gt).values(), 'the ground-truth file')
    outputs.folder('--save_folder', args.save_folder)
    cadence = Schedule.for_run(cfg, args, images_per_process=1)  # only its checkpoint cadence is used
    for epoch in range(1, cfg['epoch'] + 1):
        if cadence.saves_checkpoint_after(epoch):
            outputs.file('--save_folder', f"{prefix}_epoch_{epoch}.pth", given=args.save_folder,
                         what=f"the checkpoint of epoch {epoch}")
    for suffix, what, may_replace in (('_Final.pth', 'the final weights', ()),
                                      ('_best.pth', 'the best validation weights', ()),
                                      ('_last_state.pth', 'the training state', ('--resume',)),
                                      ('_metrics.jsonl', 'the metrics', ()), ('_metrics.png', 'the metrics plot', ()),
                                      ('_train.log', 'the log', ())):
        outputs.file('--save_folder', prefix + suffix, given=args.save_folder, what=what, may_replace=may_replace)
    outputs.check()


def resume_iteration(state: dict, schedule: Schedule) -> int:
    """The iteration a --resume of state starts at: the saved one, or the start of the epoch
    it was in when the iterations per epoch changed (dataset, batch size or number of
    processes), which is said."""
    start_iter = int(state['iteration'])
    if int(state['epoch_size']) != schedule.epoch_size:
        completed = start_iter // int(state['epoch_size'])
        logger.warning("the state was saved with %d iterations per epoch, now %d (dataset, batch size or "
                       "number of processes changed): resuming at the start of epoch %d",
                       state['epoch_size'], schedule.epoch_size, completed + 1)
        start_iter = completed * schedule.epoch_size
    return start_iter


def _nothing_left_to_resume(state: dict, path: str, start_iter: int, schedule: Schedule) -> None:
    """A --resume with nothing left to train. Of a run that has finished, that is not an error
    (resuming until done is a loop a job scheduler runs): say so, and where its weights are.
    Of a run stopped before its end, at or past this run's last epoch, it is an InputError."""
    completed = start_iter // schedule.epoch_size
    if int(state['iteration']) < int(state.get('max_iter', 0)):
        raise InputError(f"nothing to train: {path} is at the end of epoch {completed}, and the run ends at epoch "
                         f"{schedule.epochs} (--max_epoch); pass a --max_epoch larger than {completed} (its run was "
                         f"to end at epoch {int(state['max_iter']) // int(state['epoch_size'])})")
    final = path[:-len(STATE_SUFFIX)] + FINAL_SUFFIX if path.endswith(STATE_SUFFIX) else None
    logger.warning("nothing to train: %s is the end of a finished run, after epoch %d%s; nothing was written. "
                   "To train longer, resume it with a --max_epoch larger than %d", path, completed,
                   f" (its weights: {final})" if final and os.path.isfile(final) else '', completed)


@dataclass(frozen=True)
class RunRecord:
    """What <name>_run.json in --save_folder says of a run (utils.run_manifest's
    prepare_training_folder): its network, its run_id (RunHistory's, kept in the training
    state, so that a --resume is known for the same run) and seed, the files it may write,
    and the weights it started from."""
    cfg: dict
    run_id: str
    seed: int
    start_weights: str | None
    resume: str | None
    replace: bool
    inputs: tuple[str, ...]  # the files the run reads, which --no-resume must never remove

    @classmethod
    def of(cls, args: argparse.Namespace, cfg: dict, state: dict | None, seed: int) -> 'RunRecord':
        if state is None:
            start = args.resume_net or resolve_pretrained(args.pretrained, cfg)
        else:
            start = args.resume
        inputs = tuple(p for p in (start, args.training_dataset, args.val_dataset) if p)
        return cls(cfg=cfg, run_id=state_run_id(state) if state is not None else uuid.uuid4().hex[:12], seed=seed,
                   start_weights=start, resume=args.resume, replace=args.no_resume, inputs=inputs)

    @property
    def settings(self) -> dict:
        return {'network': self.cfg['name'], 'run_id': self.run_id, 'seed': self.seed}

    def prepare(self, folder: str, check_only: bool = False) -> None:
        """Check (check_only) or prepare folder for this run's files; InputError if it holds
        files this run must not write over."""
        name = self.cfg['name']
        if check_only:
            check_writable(folder, '--save_folder', folder=True)
        prepare_training_folder(
            folder, training_record_name(name), self.settings, run_files(self.cfg), script=SCRIPT,
            resume=self.resume, replace=self.replace, state_name=name + STATE_SUFFIX,
            model_path=self.start_weights, inputs=self.inputs, check_only=check_only,
            unrecorded_run=functools.partial(_older_run_record, folder, name))


def state_run_id(state: dict) -> str:
    """The run_id of the run a training state belongs to: its history's, or for a state saved
    before histories had one, one made from its seed (the same at every resume)."""
    run_id = (state.get('history') or {}).get('run_id')
    return str(run_id) if run_id else f"seed-{state['seed']}"


def _older_run_record(folder: str, name: str, files: list[str]) -> dict | None:
    """For a --save_folder without <name>_run.json: the record an older train.py (which kept
    none) would have written for the run whose <name>_last_state.pth is there, or None when
    there is no such state. Its <name>_Final.pth is that run's only once the state says it
    finished (the published weights in ./weights/ sit beside no state, or beside an
    unfinished one)."""
    state_path = os.path.join(folder, name + STATE_SUFFIX)
    try:
        state = load_training_state(state_path)
    except InputError:
        return None
    if state['cfg'].get('name') != name:
        return None
    finished = 'max_iter' in state and int(state['iteration']) >= int(state['max_iter'])
    return {'script': SCRIPT, 'settings': {'network': name, 'run_id': state_run_id(state), 'seed': state['seed']},
            'files': [f for f in files if f != name + FINAL_SUFFIX or finished]}


def claim_save_folder(folder: str, lock: FolderLock, record: RunRecord) -> None:
    """Make --save_folder this run's: create it, take its lock (a second run into it fails at
    once, naming the first one's PID, instead of silently replacing its checkpoints, state
    and metrics), prepare it for the run's files (record.prepare: the check made before the
    inputs, made again now that no other run can change the folder), then remove the
    temporary files a killed save left there. Only files directly in it: a sub-folder may be
    another run's --save_folder, busy now."""
    lock.acquire()
    record.prepare(folder)
    removed = remove_stale_temp_files(folder, recursive=False)
    if removed:
        logger.info("removed %d temporary file(s) that an interrupted save left in %s: %s", len(removed), folder,
                    ', '.join(os.path.basename(p) for p in removed))


def _buffer_log_records():
    """Keep the log records from now until _open_log_file, which copies them to the file: the
    checks of the inputs log before --save_folder may be written to."""
    global _log_buffer
    _close_log_file()
    # Without a target a MemoryHandler keeps every record, whatever its capacity, until one is set.
    _log_buffer = logging.handlers.MemoryHandler(capacity=1, flushLevel=logging.CRITICAL + 1, target=None)
    _log_buffer.setLevel(logging.INFO)
    logging.getLogger().addHandler(_log_buffer)


def _open_log_file(path):
    """Copy every log record to path (appended: a resumed run continues the same file), the
    ones _buffer_log_records kept first."""
    global _log_file_handler, _log_buffer
    handler = logging.FileHandler(path, mode='a', encoding='utf-8')
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt='%Y-%m-%d %H:%M:%S'))
    handler.setLevel(logging.INFO)
    if _log_buffer is not None:
        logging.getLogger().removeHandler(_log_buffer)
        _log_buffer.setTarget(handler)
        _log_buffer.close()  # flushes the kept records to the file
        _log_buffer = None
    logging.getLogger().addHandler(handler)
    _log_file_handler = handler


def _close_log_file():
    global _log_file_handler, _log_buffer
    if _log_buffer is not None:
        logging.getLogger().removeHandler(_log_buffer)
        _log_buffer.close()  # no target: the records are dropped
        _log_buffer = None
    if _log_file_handler is not None:
        logging.getLogger().removeHandler(_log_file_handler)
        _log_file_handler.close()
        _log_file_handler = None


def _choose_seed(args: argparse.Namespace, cfg: dict, state: dict | None, world: World,
                 device: torch.device) -> int:
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


def build_model(args: argparse.Namespace, cfg: dict, state: dict | None, seed: int, rank: int) -> RetinaFace:
    """The RetinaFace to train, on the CPU: initialised from seed (identically on every rank;
    DDP also broadcasts rank 0's), with the weights of the training state, --resume_net or
    the pretrained backbone. Then each rank seeds its own augmentation (seed + rank)."""
    seed_everything(seed)
    net = RetinaFace(cfg=cfg, phase='train')
    logger.debug("net: %s", net)
    if state is not None:
        load_model(net, args.resume)  # the state's 'model' entry
        logger.info("resuming from %s", args.resume)
    elif args.resume_net is not None:
        logger.info("Loading resume network %s", args.resume_net)
        load_model(net, args.resume_net)
    else:
        pretrained = resolve_pretrained(args.pretrained, cfg)
        if pretrained is not None:
            load_pretrained_backbone(net, cfg, pretrained)
        else:
            logger.info("no pretrained backbone: training from scratch")
    seed_everything(seed + rank)
    return net


def _resume_from_state(state: dict, start_iter: int, optimizer: optim.Optimizer, scaler: torch.amp.GradScaler, *,
                       world: World, device: torch.device, seed: int) -> None:
    """Continue the training state (--resume) at start_iter (resume_iteration's): load the
    optimizer and the AMP scaler, and put back this rank's RNG states, or reseed when the
    number of processes changed."""
    optimizer.load_state_dict(state['optimizer'])
    if scaler.is_enabled() and state.get('scaler'):  # on with --amp on CUDA only
        scaler.load_state_dict(state['scaler'])
    rng = state['rng']
    if int(state.get('world_size', 1)) == world.world_size and world.rank < len(rng):
        set_rng_state(rng[world.rank], device)
    else:
        seed_everything(seed + world.rank + 7919 * start_iter)


def _make_loader(dataset: data.Dataset, sampler: ResumableDistributedSampler, batch_size: int, num_workers: int, *,
                 pin_memory: bool, seed: int) -> data.DataLoader:
    """One DataLoader for the whole run (the sampler reshuffles it each epoch); seed seeds
    the generator its workers' seeds come from."""
    loader_generator = torch.Generator()
    loader_generator.manual_seed(seed)
    return data.DataLoader(
        dataset, batch_size, sampler=sampler, num_workers=num_workers, collate_fn=detection_collate,
        pin_memory=pin_memory, persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init_fn if num_workers > 0 else None, generator=loader_generator)


def train_one_epoch(net: torch.nn.Module, criterion: MultiBoxLoss, optimizer: optim.Optimizer,
                    scaler: torch.amp.GradScaler, batches: Iterator, device: torch.device, first_iteration: int, *,
                    priors: torch.Tensor, loc_weight: float, image_size: int, world: World, stop: StopSignal,
                    schedule: Schedule, meters: MetricLogger, notes: RunNotes) -> tuple[int, bool, dict | None]:
    """Train net (the model, or its DistributedDataParallel wrapper) from first_iteration to
    the end of its epoch, one _train_step per batch at the schedule's learning rate, logging
    progress every schedule.log_interval steps; then build and log the epoch's record from
    meters (the epoch's running sums, a resumed epoch's restored ones included). Validation
    and the history are the caller's, as in torchvision's references. Returns (the next
    iteration, True when a signal asked every rank to stop after it, the record or None when
    stopped before the epoch's end)."""
    epoch = first_iteration // schedule.epoch_size + 1
    end = epoch * schedule.epoch_size
    had_face = False
    record = None
    for iteration in range(first_iteration, end):
        lr = adjust_learning_rate(optimizer, schedule.lr, schedule.gamma, iteration, schedule.stepvalues)
        (loc_v, cla_v, landm_v), stop_now, batch_time, data_time = _train_step(
            net, criterion, optimizer, scaler, batches, device, priors=priors, loc_weight=loc_weight, world=world,
            stop=stop, iteration=iteration, epoch=epoch, last_saved=notes.last_saved)
        meters.update(loc=loc_v, cla=cla_v, landm=landm_v, loss=loc_weight * loc_v + cla_v + landm_v,
                      step_time=batch_time, data_time=data_time)
        if world.is_main and schedule.logs_step(iteration):
            eta = int(meters['step_time'].median * (schedule.max_iter - iteration))
            logger.info('Epoch:{}/{} || Epochiter: {}/{} || Iter: {}/{} || Loc: {:.4f} Cla: {:.4f} Landm: {:.4f} '
                        '|| LR: {:.8f} || Batchtime: {:.4f} s || ETA: {}'
                        .format(epoch, schedule.epochs, (iteration % schedule.epoch_size) + 1, schedule.epoch_size,
                                iteration + 1, schedule.max_iter, loc_v, cla_v, landm_v, lr, batch_time,
                                str(datetime.timedelta(seconds=eta))))
        # No positive prior in a step gives a box loss of exactly 0.
        had_face = had_face or loc_v != 0
        if iteration + 1 == end:
            if not had_face and not notes.warned_no_face and world.is_main:
                notes.warned_no_face = True
                logger.warning("epoch %d: no face matched a prior in any step, so nothing was learnt (loss 0); the "
                               "faces may be too small for the priors at --image_size %d", epoch, image_size)
            record = _epoch_record(meters, epoch, lr, schedule, world.is_main)
        if stop_now:
            return iteration + 1, True, record
    return end, False, record


def _train_step(net: torch.nn.Module, criterion: MultiBoxLoss, optimizer: optim.Optimizer,
                scaler: torch.amp.GradScaler, batches: Iterator, device: torch.device, *, priors: torch.Tensor,
                loc_weight: float, world: World, stop: StopSignal, iteration: int, epoch: int,
                last_saved: str | None) -> tuple[tuple[float, float, float], bool, float, float]:
    """One SGD step on the next batch (in autocast when the scaler is on: --amp on CUDA).
    Returns ((loc, cla, landm) averaged over the ranks, whether any rank was asked to stop,
    the step's time, its data-loading time). Raises NonFiniteLossError, naming last_saved,
    before a NaN or infinite loss reaches the weights."""
    load_t0 = time.perf_counter()
    images, targets = next(batches)
    images = images.to(device, non_blocking=True)  # [B, 3, img_dim, img_dim]
    targets = [anno.to(device, non_blocking=True) for anno in targets]  # B x [N_i, 15]
    data_time = time.perf_counter() - load_t0

    # forward
    with torch.autocast(device_type=device.type, enabled=scaler.is_enabled()):
        out = net(images)
    loss_l, loss_c, loss_landm = criterion(out, priors, targets)
    loss = loc_weight * loss_l + loss_c + loss_landm

    # One sync per step: the losses (averaged over ranks, for logging) and whether any
    # rank was asked to stop, so that every rank stops at the same iteration.
    stats = torch.stack([loss_l.detach(), loss_c.detach(), loss_landm.detach(),
                         torch.tensor(1.0 if stop.signum else 0.0, device=device)]).float()
    if world.distributed:
        dist.all_reduce(stats)
        stats[:3] /= world.world_size
    loc_v, cla_v, landm_v, stop_v = stats.tolist()
    if not all(math.isfinite(v) for v in (loc_v, cla_v, landm_v)):
        msg = (f"non-finite loss at iteration {iteration + 1} (epoch {epoch}): Loc {loc_v} Cla {cla_v} "
               f"Landm {landm_v}; stopping. The last good checkpoint is "
               f"{last_saved or 'none (nothing was saved yet)'}")
        logger.error(msg)
        raise NonFiniteLossError(msg)

    # backprop
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return (loc_v, cla_v, landm_v), stop_v > 0, time.perf_counter() - load_t0, data_time


def _epoch_record(meters: MetricLogger, epoch: int, lr: float, schedule: Schedule, is_main: bool) -> dict:
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


def _add_record(history: RunHistory, record: dict, *, validator: Validator | None, model: torch.nn.Module,
                best_path: str, is_main: bool) -> None:
    """Add an epoch's record to the history, with a validator first its validation (every
    rank together; the best weights go to best_path), and rank 0 rewrites the metrics file
    and its plot."""
    if validator is not None:
        record.update(validate_epoch(validator, model, history, record['epoch'], best_path, is_main, logger))
    history.add_record(record)
    if is_main:
        history.write(plot_records)


def _save_weights(model: torch.nn.Module, path: str) -> str:
    """Save the model's plain state_dict (the reference's checkpoint format) to path; returns path."""
    atomic_save(model.state_dict(), path)
    logger.info("saved %s", path)
    return path


def _save_state(path: str, next_iteration: int, *, model: torch.nn.Module, optimizer: optim.Optimizer,
                scaler: torch.amp.GradScaler, schedule: Schedule, seed: int, world: World, device: torch.device,
                cfg: dict, args: argparse.Namespace, history: RunHistory, meters: MetricLogger | None = None) -> str:
    """All ranks call this together (it gathers their RNG states); rank 0 writes the training
    state to path, with meters, the epoch in progress, when next_iteration is mid-epoch (a
    signal stopped it there). Returns path."""
    rng = gather_rng_states(device, world.world_size)
    if world.is_main:
        partial = meters if next_iteration % schedule.epoch_size else None
        save_training_state(path, model=model, optimizer=optimizer, scaler=scaler, next_iteration=next_iteration,
                            epoch_size=schedule.epoch_size, max_iter=schedule.max_iter, seed=seed,
                            world_size=world.world_size, rng=rng, cfg=cfg, args=args,
                            history=history.state_dict(partial, next_iteration))
    return path


def _log_to_stdout() -> None:
    """train.py's logging, set up once by run_cli: progress goes to stdout, where the reference
    printed it, so that `python train.py ... > train.log` keeps the log (the other scripts
    log on stderr)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt='%H:%M:%S', stream=sys.stdout, force=True)


def _command_line(args):
    """train.py run as a script, under utils.cli.run_cli: expected errors (a bad label
    line, a missing file, bad weights or settings) print one 'error: ...' line and exit 1."""
    try:
        result = main(args)
    except NonFiniteLossError:
        raise SystemExit(EXIT_NONFINITE_LOSS) from None
    if result.exit_code:
        raise SystemExit(result.exit_code)


if __name__ == '__main__':
    raise SystemExit(run_cli(_command_line, get_args_parser(), configure_logging=_log_to_stdout))
