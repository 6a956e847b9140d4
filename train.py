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
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.utils.data as data

from curve.plot_metrics import plot_records
from data import BGR_MEAN, WiderFaceDetection, cfg_for_network, detection_collate, preproc
from data.label_file import WIDER_IMAGE_LIST
from data.wider_face import check_labels
from models.retinaface import RetinaFace, load_pretrained_backbone
from models.training import (METER_WINDOW, Checkpoints, NonFiniteLossError, RunBook, StepResult, Trainer,
                             train_one_epoch)
from models.validation import validate_epoch, validator_from_args
from utils.atomic import FolderLock
from utils.checkpoint import load_model
from utils.cli import (non_negative_float, non_negative_int, number_in, positive_float,
                       positive_int, run_cli, set_threads, thread_count)
from utils.device import resolve_device
from utils.distributed import World, on_rank0, process_group, quiet_other_ranks
from utils.errors import InputError, InputNotFoundError
from utils.metric_logger import MetricLogger
from utils.outputs import RunOutputs
from utils.run_history import RunHistory
from utils.train import LOGGER_NAME
from utils.train.log_file import LOG_FORMAT, RunLogFile
from utils.train.resume import check_resume_flags, choose_seed, restore_rng, start_iteration
from utils.train.run_folder import (BEST_SUFFIX, FINAL_SUFFIX, LOG_SUFFIX, METRICS_SUFFIX, STATE_SUFFIX, RunRecord,
                                    claim_save_folder)
from utils.train.schedule import Schedule
from utils.train_state import ResumableDistributedSampler, StopSignal, load_training_state, seed_everything
from widerface_evaluate.evaluation import wider_gt_files

logger = logging.getLogger(LOGGER_NAME)

# The ImageNet backbones `--pretrained auto` loads, as the reference's RetinaFace constructor did.
# torchvision's ImageNet ResNet50 is https://download.pytorch.org/models/resnet50-0676ba61.pth
DEFAULT_PRETRAINED = {
    'mobilenet0.25': './weights/mobilenetV1X0.25_pretrain.tar',
    'Resnet50': './weights/resnet50-0676ba61.pth',
}
EXIT_NONFINITE_LOSS = 3


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

# --------------------------------------------------------------------------- what a run is built from


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


def start_weights(args: argparse.Namespace, cfg: dict, state: dict | None) -> str | None:
    """The file the model starts from: the training state (--resume), --resume_net, or the
    pretrained backbone (resolve_pretrained's; None to start from scratch)."""
    if state is not None:
        return args.resume
    return args.resume_net or resolve_pretrained(args.pretrained, cfg)


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
    for suffix, what, may_replace in ((FINAL_SUFFIX, 'the final weights', ()),
                                      (BEST_SUFFIX, 'the best validation weights', ()),
                                      (STATE_SUFFIX, 'the training state', ('--resume',)),
                                      (METRICS_SUFFIX, 'the metrics', ()), ('_metrics.png', 'the metrics plot', ()),
                                      (LOG_SUFFIX, 'the log', ())):
        outputs.file('--save_folder', prefix + suffix, given=args.save_folder, what=what, may_replace=may_replace)
    outputs.check()


def load_dataset(args: argparse.Namespace, cfg: dict) -> WiderFaceDetection:
    """--training_dataset with the reference's augmentation at cfg's image size; InputError
    when it lists no images or its labels cannot train (data.wider_face.check_labels)."""
    logger.info('Loading Dataset...')
    dataset = WiderFaceDetection(args.training_dataset, preproc(cfg['image_size'], BGR_MEAN))
    if len(dataset) == 0:
        raise InputError(f"{args.training_dataset} lists no images")
    check_labels(dataset, args.training_dataset, args.faceless_negatives, log=logger)
    return dataset


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


def _worker_init_fn(worker_id):
    """DataLoader workers: PyTorch has already seeded random / numpy / torch per worker.
    Leave Ctrl-C to the main process (it saves and shuts the workers down), restore the
    default SIGTERM, and keep OpenCV single-threaded (the workers are the parallelism)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import cv2
    cv2.setNumThreads(1)


# --------------------------------------------------------------------------- training


def main(args: argparse.Namespace, on_step: Callable[[StepResult], None] | None = None) -> TrainResult:
    """Train as args say; returns a TrainResult. Raises NonFiniteLossError on a NaN/inf loss.

    on_step, when given, is called with every step's models.training.StepResult (see
    RunBook.on_step): the public hook through which tests watch the steps, or interrupt one."""
    device = train_device(args)  # checked before any process group exists
    # torchrun's process group, when there is one, left however the run ends. Under torchrun
    # with CUDA each process takes the GPU of its LOCAL_RANK (world.device).
    with process_group(use_cuda=device.type == 'cuda') as world:
        return _main(args, device, world, on_step)


def _main(args: argparse.Namespace, device: torch.device, world: World,
          on_step: Callable[[StepResult], None] | None) -> TrainResult:
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
    log_file = RunLogFile()  # <name>_train.log, rank 0's
    try:
        # Training needs autograd whatever the caller's global mode (a script that called
        # torch.set_grad_enabled(False) before, as inference scripts do).
        with torch.enable_grad():
            return _train(args, torch.device(world.device) if world.device else device, world, stop, on_step,
                          folder_lock, log_file)
    finally:
        stop.restore()
        set_threads(threads)
        log_file.close()
        folder_lock.release()


def _train(args: argparse.Namespace, device: torch.device, world: World, stop: StopSignal,
           on_step: Callable[[StepResult], None] | None, folder_lock: FolderLock, log_file: RunLogFile) -> TrainResult:
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
    if world.is_main:
        log_file.buffer()  # for <name>_train.log, which is opened once the inputs are checked
        logger.info("train.py %s", ' '.join(f"--{k} {v}" for k, v in vars(args).items() if v is not None))

    # ---- inputs: all checked before anything is written
    state = load_training_state(args.resume) if args.resume else None
    seed = choose_seed(args, cfg, state, world, device)
    record = RunRecord.of(args, cfg, state, seed, start_weights(args, cfg, state))
    # Only rank 0 writes into --save_folder, so only it checks and claims it; if that fails,
    # every rank stops (the others with status 1 and no message of their own).
    check_outputs(args, cfg, prefix)  # nothing written over an input, or over another of the run's outputs
    on_rank0(lambda: record.prepare(args.save_folder, check_only=True), world)
    dataset = load_dataset(args, cfg)
    # None without --val_dataset; its files are checked now, before training.
    validator = validator_from_args(args, cfg, device, world, log=logger)
    model = build_model(args, cfg, state, seed, world.rank).to(device)  # the plain model, whose state_dict is saved
    sampler = ResumableDistributedSampler(dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True,
                                          seed=seed)
    schedule = Schedule.for_run(cfg, args, len(sampler))
    start_iter = start_iteration(args, state, schedule)
    if start_iter >= schedule.max_iter:  # the end of a finished run, resumed: nothing to train (said)
        return TrainResult(iteration=start_iter, max_iter=schedule.max_iter, epoch_size=schedule.epoch_size,
                           state_path=args.resume)

    # ---- outputs
    on_rank0(lambda: claim_save_folder(args.save_folder, folder_lock, record), world)
    if world.is_main:
        log_file.open(prefix + LOG_SUFFIX)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    trainer = Trainer.build(model, cfg, args, device, world, amp)
    if state is not None:
        trainer.load_state_dict(state)
        restore_rng(state, start_iter, seed, world, device)
    # Worker seeds come from the loader's generator: different per rank, and fresh after a resume.
    loader = _make_loader(dataset, sampler, cfg['batch_size'], args.num_workers, pin_memory=device.type == 'cuda',
                          seed=(seed + 1000003 * world.rank + 7919 * start_iter) % 2 ** 63)
    logger.info("%s: %d images, batch %d x %d process(es) = %d, %d iterations per epoch, %d epochs, "
                "LR %g stepped x%g at epochs %d and %d, image %d, device %s%s, seed %d",
                cfg['name'], len(dataset), cfg['batch_size'], world.world_size, cfg['batch_size'] * world.world_size,
                schedule.epoch_size, cfg['epoch'], args.lr, args.gamma, cfg['decay1'], cfg['decay2'],
                cfg['image_size'], device, ', AMP' if amp else '', seed)
    # A fresh run starts a new metrics file; a resumed one continues the state's records.
    history = (RunHistory.resume(prefix + METRICS_SUFFIX, state, start_iter // schedule.epoch_size)
               if state is not None else RunHistory(prefix + METRICS_SUFFIX))
    history.run_id = record.run_id  # the one <name>_run.json knows this run by
    # The files the run saves; the non-finite-loss message names the last one.
    checkpoints = Checkpoints(prefix, trainer, schedule, history, seed, cfg, args,
                              last_saved=args.resume if state is not None else None)
    book = RunBook(stop, checkpoints, validator, on_step)
    if world.is_main:
        history.write(plot_records)
    if validator is not None and state is None:  # the starting weights, as epoch 0 (or --resume_epoch's)
        _add_record(book, {'epoch': start_iter // schedule.epoch_size}, validate=True)
    return train_epochs(trainer, loader, schedule, book, start_iter)


def train_epochs(trainer: Trainer, loader: data.DataLoader, schedule: Schedule, book: RunBook,
                 start_iter: int) -> TrainResult:
    """torchvision's epoch loop: train_one_epoch from start_iter to the schedule's end, each
    epoch's record kept (after its validation, when due); the reference's checkpoints and the
    training state at the epoch boundaries, <name>_Final.pth and the state at the end. A signal
    (book.stop) ends the run after the step every rank stops at, with a resumable state."""
    world, checkpoints, sampler = trainer.world, book.checkpoints, loader.sampler
    trainer.net.train()
    iteration = start_iter
    while iteration < schedule.max_iter:
        completed = iteration // schedule.epoch_size
        if iteration % schedule.epoch_size == 0:
            # The reference's checkpoint, then (after this run's first step) the training state.
            if world.is_main and schedule.saves_checkpoint_after(completed):
                checkpoints.save_weights('_epoch_' + str(completed) + '.pth')
            if iteration > start_iter:
                checkpoints.save_state(iteration)
        # One DataLoader for the whole run: reshuffle (seed + epoch) and skip what a resumed
        # epoch already used.
        sampler.set_epoch(completed)
        sampler.set_start_index((iteration % schedule.epoch_size) * loader.batch_size)
        batches = iter(loader)
        meters = MetricLogger(window_size=METER_WINDOW)
        if iteration == start_iter and book.history.restore_partial(meters, iteration) and world.is_main:
            logger.info("the record of epoch %d continues the sums saved in the state", completed + 1)

        iteration, stopped, record = train_one_epoch(trainer, batches, iteration, schedule, book, meters)
        if record is not None:  # the epoch ended: validate when due, then keep its record
            book.records.append(record)
            _add_record(book, record, validate=schedule.validates_after(record['epoch']))
        if stopped:
            signum = int(book.stop.signum or signal.SIGTERM)  # a rank that got no signal itself says SIGTERM
            state_path = checkpoints.save_state(iteration, meters=meters)
            if world.is_main:
                logger.warning("stopped by signal %d after iteration %d: resumable state saved in %s "
                               "(continue with --resume %s)", signum, iteration, state_path, state_path)
            return _result(book, schedule, iteration, exit_code=128 + signum, state_path=state_path)
    final = checkpoints.save_weights(FINAL_SUFFIX) if world.is_main else None
    state_path = checkpoints.save_state(schedule.max_iter)
    return _result(book, schedule, schedule.max_iter, final_checkpoint=final, state_path=state_path)


def _result(book: RunBook, schedule: Schedule, iteration: int, *, state_path: str, exit_code: int = 0,
            final_checkpoint: str | None = None) -> TrainResult:
    """The TrainResult of a run that trained: the state_path is rank 0's only."""
    is_main = book.checkpoints.trainer.world.is_main
    return TrainResult(exit_code=exit_code, iteration=iteration, max_iter=schedule.max_iter,
                       epoch_size=schedule.epoch_size, epochs=book.records, final_checkpoint=final_checkpoint,
                       state_path=state_path if is_main else None, history=book.history)


def _add_record(book: RunBook, record: dict, *, validate: bool) -> None:
    """Add an epoch's record to the history, when validate (and with --val_dataset) with its
    validation first (every rank together; the best weights go to <name>_best.pth), and rank
    0 rewrites the metrics file and its plot."""
    checkpoints, history = book.checkpoints, book.history
    model, is_main = checkpoints.trainer.model, checkpoints.trainer.world.is_main
    if validate and book.validator is not None:
        record.update(validate_epoch(book.validator, model, history, record['epoch'], checkpoints.path(BEST_SUFFIX),
                                     is_main, logger))
    history.add_record(record)
    if is_main:
        history.write(plot_records)


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
