"""torchrun support shared by train.py and the folder-run scripts.

torchrun (python -m torch.distributed.run) starts one process per rank and tells each
where it stands through the environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT (its rendezvous flags set them across machines too). A run without torchrun,
or with a world of one, is a plain single process: nothing is initialised and every
helper below does what one process needs (gather returns [obj], barrier does nothing).

torch.distributed is imported only inside the functions that a torchrun world of two or
more runs, so that importing this module costs nothing on the single-process path (and
the onnxruntime path of the scripts does not need torch for it).

    with process_group() as world:              # World(rank, world_size, local_rank)
        mine = shard(names, world)              # names[rank::world_size]
        parts = gather_to_rank0(results, world) # [results of rank 0, 1, ...] on rank 0, None elsewhere
        ...
    # here the group is gone, and its threads with it, however the block ended

Shutdown order. gloo runs each collective in worker threads, and a worker lets go of a
finished collective's tensors only after the caller has its result; freeing a tensor that
Python made needs the GIL. A worker that gets there once the interpreter is shutting down
is stopped inside a C++ destructor, and the process aborts ("terminate called without an
active exception", SIGABRT) after its results are written, so torchrun reports a failed
run. destroy_process_group() joins the workers while Python is alive, but only if nothing
else still holds the group (see init_from_torchrun). So the scripts' own threads (read-ahead,
writer) finish inside the block, then the group is destroyed, then the process exits.
"""
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """Where this process stands in a torchrun run (0, 1, 0 without torchrun)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str | None = None  # 'cuda:<LOCAL_RANK>' when the ranks work on GPUs

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def torchrun_world():
    """The World torchrun's environment describes, without initialising anything."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return World()
    return World(int(os.environ['RANK']), world_size, int(os.environ.get('LOCAL_RANK', '0')))


def init_from_torchrun(use_cuda=False, backend=None):
    """Join torchrun's process group (env:// rendezvous) and return this process's World.

    Args:
        use_cuda (bool | str): the process works on a GPU: it takes the GPU of its LOCAL_RANK
            (torch.cuda.set_device; World.device names it), and the group uses NCCL unless
            backend says otherwise. 'auto': a GPU when CUDA is available.
        backend (str | None): 'gloo' or 'nccl'; default: 'nccl' with use_cuda, else 'gloo'.
            Gathering Python objects works over gloo whatever the device.
    Returns:
        World: World() (nothing initialised) without torchrun or with a world of one.
    """
    world = torchrun_world()
    if not world.distributed:
        return world
    import torch
    import torch.distributed as dist
    # torch.distributed.nn.functional takes group.WORLD as the default argument of its
    # functions, read when it is first imported. torch._dynamo imports it (torchvision imports
    # torch._dynamo, and the detector imports torchvision when it builds the network): imported
    # once the group exists, it would hold the group past destroy_process_group, and gloo's
    # threads would live on into the interpreter's shutdown. Imported now, its defaults are None.
    import torch.distributed.nn.functional  # noqa: F401

    if use_cuda == 'auto':
        use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
        world = World(world.rank, world.world_size, world.local_rank, f'cuda:{world.local_rank}')
    if (backend or ('nccl' if use_cuda else 'gloo')) == 'nccl':
        dist.init_process_group('nccl', device_id=torch.device('cuda', world.local_rank))
    else:
        dist.init_process_group('gloo')
    return world


def destroy(world):
    """Leave the process group, if this process joined one: destroy_process_group() frees
    the group and joins gloo's threads (when nothing else still refers to the group).

    No barrier first: every collective here waits for its result, so a rank gets here only
    once its part of each one is done; and a rank that failed part-way must not wait for
    ranks that will never reach a barrier."""
    if world.distributed:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def process_group(use_cuda=False, backend=None):
    """init_from_torchrun(use_cuda, backend) for the block; yields the World.

    The group is destroyed when the block ends, however it ends (a return, an error, the
    SystemExit of on_rank0, Ctrl-C), and only then: threads the block started and joined
    (a BackgroundWriter, detect_images' read-ahead) are gone before the group is. Scripts
    return from inside the block and run nothing after it that needs the group.
    """
    world = init_from_torchrun(use_cuda, backend)
    try:
        yield world
    finally:
        destroy(world)


def quiet_other_ranks(world, *loggers):
    """Only rank 0 logs progress: the other ranks show warnings and errors only."""
    if world.distributed and not world.is_main:
        for lg in (logging.getLogger(),) + loggers:
            lg.setLevel(logging.WARNING)


def shard(items, world):
    """This rank's share of items: every world_size-th one from index rank (a list)."""
    return list(items)[world.rank::world.world_size]


def barrier(world):
    """Wait until every rank gets here."""
    if world.distributed:
        import torch.distributed as dist
        dist.barrier()


def gather_to_rank0(obj, world):
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None on the others (obj picklable)."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist
    parts = [None] * world.world_size if world.is_main else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def all_gather(obj, world):
    """[obj of rank 0, obj of rank 1, ...] on every rank (obj picklable)."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist
    parts = [None] * world.world_size
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_from_rank0(obj, world):
    """Rank 0's obj, on every rank."""
    if not world.distributed:
        return obj
    import torch.distributed as dist
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def merge_in_order(parts):
    """Join per-rank lists of (index, value) pairs into one list of values in index order."""
    return [value for _, value in sorted((pair for part in parts for pair in part), key=lambda p: p[0])]


def on_rank0(fn, world):
    """Run fn() on rank 0 while the other ranks wait (e.g. preparing an output folder that
    every rank then writes into); returns its result on rank 0, None elsewhere.

    If fn fails on rank 0, its exception propagates there (the script prints it) and the
    other ranks exit with status 1 without repeating the message, instead of waiting for
    rank 0 until a timeout.
    """
    if not world.distributed:
        return fn()
    if world.is_main:
        try:
            result = fn()
        except BaseException:
            broadcast_from_rank0(False, world)
            raise
        broadcast_from_rank0(True, world)
        return result
    if not broadcast_from_rank0(None, world):
        raise SystemExit(1)
    return None
