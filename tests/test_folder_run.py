"""utils/folder_run.py (read-ahead and write-behind threads, the shared detection loop) and
the list helpers of utils/distributed.py that need no process group."""
import os
import threading

import cv2
import numpy as np
import pytest

from utils.distributed import World, all_gather, gather_to_rank0, merge_in_order, on_rank0, shard
from utils.errors import InputError, InputNotFoundError, InputTooLargeError
from utils.folder_run import BackgroundWriter, detect_images, prefetch


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


# -- detect_images: batches, and images that do not fit in memory --------------------------------

class _FakeDetector:
    """A Detector's preprocess / detect_preprocessed / detect_batch on images whose pixel (0, 0)
    holds their number: each image's one detection is that number; the numbers in too_large
    do not fit in memory, those in too_thin cannot be resized."""

    def __init__(self, too_large=(), too_thin=()):
        self.too_large, self.too_thin = set(too_large), set(too_thin)
        self.batches = []

    def preprocess(self, images):
        ids = [int(img[0, 0, 0]) for img in images]
        thin = [i for i in ids if i in self.too_thin]
        if thin:
            raise InputError(f"image {thin[0]} would be 0 pixels wide")
        return ids, None, None

    def detect_preprocessed(self, batch, sizes, resizes):
        self.batches.append(list(batch))
        if self.too_large & set(batch):
            raise InputTooLargeError(f"out of memory: a batch with image {sorted(self.too_large & set(batch))}")
        return [np.full((1, 15), i, np.float32) for i in batch]

    def detect_batch(self, images):
        return self.detect_preprocessed(*self.preprocess(images))


@pytest.fixture
def numbered_jobs(tmp_path):
    """Seven (index, path) jobs of 4x4 PNGs numbered 0..6; image 2 is missing."""
    jobs = []
    for i in range(7):
        path = tmp_path / f'{i}.png'
        if i != 2:
            cv2.imwrite(str(path), np.full((4, 4, 3), i, np.uint8))
        jobs.append((i, str(path)))
    return jobs


def _run(detector, jobs, batch_size):
    skipped = []
    out = [(job[0], int(dets[0, 0]), ms) for job, _, dets, ms in detect_images(detector, jobs, skipped,
                                                                               batch_size=batch_size)]
    return out, [(i, reason) for i, (_, reason) in skipped]


@pytest.mark.parametrize('batch_size, batches', [(1, [[0], [1], [3], [4], [5], [6]]),
                                                 (3, [[0, 1], [3, 4, 5], [6]]),
                                                 (8, [[0, 1, 3, 4, 5, 6]])])
def test_detect_images_in_batches_keeps_the_job_order(numbered_jobs, batch_size, batches):
    detector = _FakeDetector()
    out, skipped = _run(detector, numbered_jobs, batch_size)
    assert [(i, n) for i, n, _ in out] == [(0, 0), (1, 1), (3, 3), (4, 4), (5, 5), (6, 6)]
    assert all(ms >= 0 for _, _, ms in out)
    assert detector.batches == batches  # the unreadable image leaves its batch, the others stay in theirs
    assert [i for i, _ in skipped] == [2] and 'image not found' in skipped[0][1]


@pytest.mark.parametrize('batch_size, batches', [(1, [[0], [1], [3], [4], [5], [6]]),
                                                 (3, [[0, 1], [3, 4, 5], [3], [4], [5], [6]])])
def test_a_batch_that_does_not_fit_is_retried_image_by_image(numbered_jobs, batch_size, batches):
    detector = _FakeDetector(too_large={4})
    out, skipped = _run(detector, numbered_jobs, batch_size)
    assert [i for i, _, _ in out] == [0, 1, 3, 5, 6]
    assert detector.batches == batches
    assert skipped[1] == (4, 'out of memory: a batch with image [4]')


def test_a_batch_that_cannot_be_preprocessed_is_retried_image_by_image(numbered_jobs):
    detector = _FakeDetector(too_thin={5})
    out, skipped = _run(detector, numbered_jobs, 3)
    assert [i for i, _, _ in out] == [0, 1, 3, 4, 6]
    assert detector.batches == [[0, 1], [3], [4], [6]]
    assert skipped[1] == (5, 'image 5 would be 0 pixels wide')


# What detection may add to the child's address space: plenty for a 416x416 photo, far too
# little for a 5000x5000 one at its original size (its network input alone is 300 MB).
MEMORY_LIMIT_MB = 700
_MEMORY_CHILD = '''
import resource, sys
import torch  # loaded before the limit: the limit bounds what detection may add
import detect
from utils.cli import run_cli
limit_mb, json_prefix, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
vm = int(dict(line.split(':', 1) for line in open('/proc/self/status'))['VmSize'].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + limit_mb * 2 ** 20, resource.RLIM_INFINITY))
for batch_size in ('1', '3'):
    json_path = json_prefix + '.' + batch_size + '.json'
    status = run_cli(detect.main, detect.get_args_parser(), argv + ['--batch_size', batch_size, '--json', json_path])
    print('exit', status, flush=True)
'''


def test_a_photo_too_large_for_memory_is_skipped_and_the_rest_run(tmp_path):
    """issue 25, R22: a folder with a.jpg, a huge PNG and c.jpg under a memory limit. The PNG is
    skipped with its reason (its size, and --tile / --max_size as the way out), a.jpg and c.jpg
    are detected and the JSON is written; with --batch_size 3 the batch of all three is
    retried image by image, so that again only the PNG is skipped."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT, golden_image_path, need_shared

    weights = need_shared('weights', 'mobilenet0.25_Final.pth')
    folder = tmp_path / 'photos'
    folder.mkdir()
    small = cv2.imread(str(golden_image_path('val416_0_Parade_Parade_0_102')))
    cv2.imwrite(str(folder / 'a.jpg'), small)
    cv2.imwrite(str(folder / 'c.jpg'), small[:, ::-1])
    big = np.full((5000, 5000, 3), 96, np.uint8)
    big[:416, :416] = small
    cv2.imwrite(str(folder / 'b.png'), big, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', _MEMORY_CHILD, str(MEMORY_LIMIT_MB), str(tmp_path / 'faces'),
                           '-m', str(weights), '--cpu', '--image', str(folder), '--no-save_image', '--threads', '1'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith('exit')] == ['exit 0', 'exit 0']
    for batch_size in ('1', '3'):
        result = json.loads((tmp_path / f'faces.{batch_size}.json').read_text())
        assert [os.path.basename(r['image']) for r in result['images']] == ['a.jpg', 'c.jpg']
        assert all(r['detections'] for r in result['images'])
        (skip,) = result['skipped']
        assert os.path.basename(skip['image']) == 'b.png'
        assert skip['error'].startswith('out of memory: the 5000x5000 image at its original size (25.0 megapixels) '
                                        'does not fit (')
        assert '--max_size 2048 detects at a smaller size' in skip['error'] and '--tile 2048' in skip['error']
    assert proc.stderr.count('skipping ') == 2
