"""utils/folder_run.py (read-ahead and write-behind threads) and the list helpers of
utils/distributed.py that need no process group."""
import threading

import pytest

from utils.distributed import World, all_gather, gather_to_rank0, merge_in_order, on_rank0, shard
from utils.errors import InputError, InputNotFoundError
from utils.folder_run import BackgroundWriter, prefetch


def test_prefetch_yields_in_order_when_loads_finish_out_of_order():
    """Item 0's load finishes last (it waits for item 3's); the order is still the list's."""
    last_done = threading.Event()

    def load(i):
        if i == 0:
            assert last_done.wait(timeout=30)
        if i == 3:
            last_done.set()
        return i * 10

    assert list(prefetch(range(6), load, depth=4, workers=4)) == [(i, i * 10, None) for i in range(6)]


def test_prefetch_reports_unreadable_items_and_goes_on():
    def load(i):
        if i == 1:
            raise InputError('bad image')
        if i == 2:
            raise InputNotFoundError('no such image')
        return i

    out = list(prefetch(range(4), load))
    assert [(item, value) for item, value, _ in out] == [(0, 0), (1, None), (2, None), (3, 3)]
    assert [type(e).__name__ if e else None for _, _, e in out] == [None, 'InputError', 'InputNotFoundError', None]


@pytest.mark.parametrize('bug', [ValueError('from inside numpy'), FileNotFoundError('a file the code made')])
def test_prefetch_raises_a_plain_value_or_os_error_as_a_bug(bug):
    """Only InputError means "this input is unusable": a ValueError from a bug in the load
    function must not turn into a skipped image."""
    def load(i):
        if i == 1:
            raise bug
        return i

    with pytest.raises(type(bug), match=str(bug)):
        list(prefetch(range(3), load))


def test_prefetch_raises_other_errors_at_their_item():
    def load(i):
        if i == 2:
            raise RuntimeError('a bug')
        return i

    seen = []
    with pytest.raises(RuntimeError, match='a bug'):
        for item, _, _ in prefetch(range(5), load):
            seen.append(item)
    assert seen == [0, 1]


def test_prefetch_reads_at_most_depth_ahead():
    started = []
    lock = threading.Lock()

    def load(i):
        with lock:
            started.append(i)
        return i

    gen = prefetch(range(100), load, depth=3, workers=2)
    next(gen)  # item 0 is with the caller; items 1 to 3 may be read
    gen.close()  # cancels the reads not started yet
    assert 0 in started and max(started) <= 3


def test_writer_runs_jobs_in_order_and_all_before_close_returns():
    done = []
    with BackgroundWriter(max_pending=2) as writer:
        for i in range(20):
            writer.submit(done.append, i)
    assert done == list(range(20))


def test_writer_raises_a_failed_job_at_close():
    def fail():
        raise OSError('disk full')

    writer = BackgroundWriter()
    writer.submit(fail)
    with pytest.raises(OSError, match='disk full'):
        writer.close()


def test_writer_raises_a_failed_job_at_the_next_submit():
    failed = threading.Event()

    def fail():
        failed.set()
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        with BackgroundWriter() as writer:
            writer.submit(fail)
            assert failed.wait(timeout=30)
            for _ in range(100):  # the failure is seen at a submit once the job is done
                writer.submit(lambda: None)


def test_writer_finishes_submitted_jobs_when_the_block_is_interrupted():
    """Ctrl-C in the loop: what was submitted is still written; the interruption propagates."""
    gate, done = threading.Event(), []

    def slow(i):
        assert gate.wait(timeout=30)
        done.append(i)

    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter() as writer:
            for i in range(3):
                writer.submit(slow, i)
            gate.set()
            raise KeyboardInterrupt
    assert done == [0, 1, 2]


def test_shard_and_merge_give_back_the_list_order():
    items = list(enumerate('abcdefg'))
    worlds = [World(rank, 3) for rank in range(3)]
    shares = [shard(items, w) for w in worlds]
    assert shares[1] == [(1, 'b'), (4, 'e')]
    assert merge_in_order(reversed(shares)) == list('abcdefg')


def test_single_process_helpers_need_no_process_group():
    world = World()
    assert (world.distributed, world.is_main) == (False, True)
    assert gather_to_rank0('x', world) == ['x'] and all_gather('x', world) == ['x']
    assert on_rank0(lambda: 42, world) == 42
