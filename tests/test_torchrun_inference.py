"""Folder runs under torchrun: `torchrun --nproc_per_node=2` of test_widerface.py,
test_fddb.py and detect.py on the CPU (gloo) gives the bytes of a 1-process run, on the
160 minitrain photos plus one unreadable file.

Both runs use one thread per process (OMP_NUM_THREADS=1, as torchrun sets it): the thread
count changes the network's rounding, the number of processes must not change anything.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need_shared
from utils.atomic import LOCK_NAME

ROOT = Path(__file__).resolve().parent.parent
BAD_NAME = '9--Broken/not_a_photo.jpg'
BAD_INDEX = 5  # odd: rank 1's share in a 2-process run
TIMEOUT = 600


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run(script, args, nproc):
    """Run script (1 process, or torchrun with nproc) in the project root; returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    if nproc == 1:
        cmd = [sys.executable, str(ROOT / script)]
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}',
               '--master_addr=127.0.0.1', f'--master_port={_free_port()}', str(ROOT / script)]
    return subprocess.run(cmd + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _files(folder):
    """{relative path: bytes} of every file below folder (but the lock file a run leaves there,
    which holds its PID)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*'))
            if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture(scope='module')
def weights():
    return need_shared('weights', 'mobilenet0.25_Final.pth')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """images/<event>/<name>.jpg: links to the 160 minitrain photos, and one unreadable .jpg;
    names: the list (event/name.jpg) in sorted order with the unreadable file at BAD_INDEX."""
    source = need_shared('minitrain', 'train', 'images')
    root = tmp_path_factory.mktemp('torchrun_data')
    images = root / 'images'
    names = sorted(str(p.relative_to(source)) for p in source.rglob('*.jpg'))
    assert len(names) == 160
    for name in names:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source / name, images / name)
    (images / BAD_NAME).parent.mkdir(parents=True)
    (images / BAD_NAME).write_bytes(b'this is not an image\n')
    names.insert(BAD_INDEX, BAD_NAME)
    return images, names


def _model_args(weights):
    return ['-m', weights, '--network', 'mobile0.25', '--cpu']


# ------------------------------------------------------------------------------ WIDER FACE

@pytest.fixture(scope='module')
def wider_runs(dataset, weights, tmp_path_factory):
    """test_widerface.py over the list with 1 and with 2 processes: {nproc: (save_folder, process)}.
    The 2-process run takes batches of 3 of its share (the unreadable file inside one): on the
    CPU its files must still be the bytes of the 1-process run one image at a time."""
    images, names = dataset
    root = tmp_path_factory.mktemp('torchrun_wider')
    (root / 'wider_val.txt').write_text("\n".join(names) + "\n")
    runs = {}
    for nproc in (1, 2):
        out = root / f'out{nproc}'
        args = _model_args(weights) + ['--dataset_folder', images, '--image_list', root / 'wider_val.txt',
                                       '--save_folder', out] + (['--batch_size', '3'] if nproc == 2 else [])
        runs[nproc] = (out, _ok(_run('test_widerface.py', args, nproc)), args)
    return runs


def test_wider_two_processes_write_the_same_files(wider_runs):
    one, two = _files(wider_runs[1][0]), _files(wider_runs[2][0])
    assert len(one) == 160 + 1  # a file per readable photo, and the run's manifest
    assert two == one


def test_wider_two_processes_report_once(wider_runs, dataset):
    """Each rank takes its own share: the totals and the unreadable file are reported once,
    by rank 0, for the whole run (the other rank only warns as it skips its file)."""
    log = wider_runs[2][1].stderr
    assert log.count('wrote 160 prediction files') == 1, log[-3000:]
    assert log.count('skipped 1 unreadable images') == 1, log[-3000:]
    assert log.count(f'skipping {dataset[0] / BAD_NAME}') == 1, log[-3000:]


def test_wider_resume_under_torchrun(wider_runs, tmp_path):
    """A 2-process rerun recomputes only the missing and incomplete files, of both ranks'
    shares, and leaves the others as they are."""
    reference = _files(wider_runs[1][0])
    out = tmp_path / 'out'
    shutil.copytree(wider_runs[2][0], out)
    txt = sorted(p for p in out.rglob('*.txt'))
    removed, truncated, kept = txt[0], txt[1], txt[2]  # indexes 0 and 1 of the list: ranks 0 and 1
    removed.unlink()
    truncated.write_text(truncated.read_text()[:-5])
    kept_inode = kept.stat().st_ino
    args = list(wider_runs[2][2])
    args[args.index('--save_folder') + 1] = out
    proc = _ok(_run('test_widerface.py', args, 2))
    assert proc.stderr.count('resuming: 158 of 161 images') == 1, proc.stderr[-3000:]
    assert proc.stderr.count('wrote 2 prediction files') == 1, proc.stderr[-3000:]
    assert kept.stat().st_ino == kept_inode
    assert _files(out) == reference


def test_wider_stale_folder_under_torchrun(wider_runs, tmp_path):
    """Another run's folder is refused by rank 0 before any rank writes; the error is printed once."""
    out = tmp_path / 'out'
    shutil.copytree(wider_runs[2][0], out)
    before = _files(out)
    args = list(wider_runs[2][2])
    args[args.index('--save_folder') + 1] = out
    proc = _run('test_widerface.py', args + ['--confidence_threshold', '0.5'], 2)
    assert proc.returncode != 0
    assert proc.stderr.count('error: ') == 1, proc.stderr[-3000:]
    assert 'confidence_threshold 0.02 -> 0.5' in proc.stderr and '--no-resume' in proc.stderr
    assert _files(out) == before


# ------------------------------------------------------------------------------ FDDB

def test_fddb_two_processes_write_the_same_file(dataset, weights, tmp_path):
    """FDDB_dets.txt (onnxruntime backend): rank 0 merges the ranks' blocks in list order."""
    images, names = dataset
    (tmp_path / 'img_list.txt').write_text("\n".join(n[:-len('.jpg')] for n in names) + "\n")
    procs = {}
    for nproc in (1, 2):
        args = _model_args(weights) + ['--backend', 'onnxruntime', '--image_list', tmp_path / 'img_list.txt',
                                       '--images_folder', images, '--save_folder', tmp_path / f'out{nproc}']
        procs[nproc] = _ok(_run('test_fddb.py', args, nproc))
    one = (tmp_path / 'out1' / 'FDDB_dets.txt').read_bytes()
    assert one.startswith(b'0--Parade/')
    assert (tmp_path / 'out2' / 'FDDB_dets.txt').read_bytes() == one
    log = procs[2].stderr
    assert log.count('wrote detections for 160 images') == 1, log[-3000:]
    assert log.count('skipped 1 unreadable images') == 1, log[-3000:]


# ------------------------------------------------------------------------------ detect.py

def test_detect_two_processes_write_the_same_json_and_images(dataset, weights, tmp_path):
    """detect.py on a folder: the same JSON (rank 0 merges it in list order) and the same
    annotated images (each rank writes its own); every image is detected once."""
    images, _ = dataset
    procs = {}
    for nproc in (1, 2):
        args = _model_args(weights) + ['--image', images, '--output', tmp_path / f'annotated{nproc}',
                                       '--json', tmp_path / f'faces{nproc}.json']
        procs[nproc] = _ok(_run('detect.py', args, nproc))
    one = (tmp_path / 'faces1.json').read_bytes()
    payload = json.loads(one)
    assert (len(payload['images']), len(payload['skipped'])) == (160, 1)
    assert (tmp_path / 'faces2.json').read_bytes() == one
    annotated = _files(tmp_path / 'annotated1')
    assert len(annotated) == 160
    assert _files(tmp_path / 'annotated2') == annotated
    out = procs[2].stdout
    assert out.count(' faces >= ') == 160, out[-3000:]
    assert procs[2].stderr.count('skipped 1 unreadable images') == 1, procs[2].stderr[-3000:]


def test_fddb_resume_under_torchrun(dataset, weights, tmp_path):
    """A 2-process rerun of an interrupted run (the blocks of two images kept in the parts
    folder) detects only the other images, and writes the bytes of an uninterrupted run."""
    import test_fddb

    images, names = dataset
    listing = tmp_path / 'img_list.txt'
    listing.write_text("\n".join(n[:-len('.jpg')] for n in names[:8]) + "\n")
    args = _model_args(weights) + ['--image_list', listing, '--images_folder', images]
    _ok(_run('test_fddb.py', args + ['--save_folder', tmp_path / 'whole'], 1))
    whole = (tmp_path / 'whole' / 'FDDB_dets.txt').read_text()
    out = tmp_path / 'interrupted'
    shutil.copytree(tmp_path / 'whole', out)
    (out / 'FDDB_dets.txt').unlink()
    blocks = test_fddb.split_blocks(whole)
    for name in [n[:-len('.jpg')] for n in names[:2]]:  # list indexes 0 and 1: ranks 0 and 1
        part = Path(test_fddb.parts_folder(str(out / 'FDDB_dets.txt'))) / f'{name}.txt'
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(blocks[name])
    proc = _ok(_run('test_fddb.py', args + ['--save_folder', out], 2))
    assert proc.stderr.count('resuming: 2 of 8 images') == 1, proc.stderr[-3000:]
    assert (out / 'FDDB_dets.txt').read_text() == whole
    assert sorted(p.name for p in out.iterdir()) == ['.retinaface.lock', 'FDDB_dets.txt', 'retinaface_run.json']


@pytest.mark.parametrize('script', ['test_widerface.py', 'test_fddb.py'])
def test_locked_folder_stops_every_rank_with_one_error(dataset, weights, tmp_path, script):
    """Rank 0 alone takes the results folder's lock; held by another run, every rank stops
    at once and the error is printed once, naming the holder's PID."""
    from utils.atomic import lock_folder

    images, names = dataset
    listing = tmp_path / 'list.txt'
    listing.write_text(names[0] + "\n" if script == 'test_widerface.py' else names[0][:-len('.jpg')] + "\n")
    args = _model_args(weights) + ['--image_list', listing, '--save_folder', tmp_path / 'out']
    args += ['--dataset_folder', images] if script == 'test_widerface.py' else ['--images_folder', images]
    with lock_folder(tmp_path / 'out'):
        proc = _run(script, args, 2)
    assert proc.returncode != 0
    assert proc.stderr.count('error: ') == 1, proc.stderr[-3000:]
    assert f'is in use by another run (PID {os.getpid()})' in proc.stderr
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['.retinaface.lock']


# ------------------------------------------------------------------------------ shutdown

@pytest.fixture(scope='module')
def two_photos(tmp_path_factory):
    """images/<event>/<name>.jpg: links to two minitrain photos (one per rank); names: their list."""
    source = need_shared('minitrain', 'train', 'images')
    names = sorted(str(p.relative_to(source)) for p in source.rglob('*.jpg'))[:2]
    images = tmp_path_factory.mktemp('shutdown_data') / 'images'
    for name in names:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source / name, images / name)
    return images, names


def _probed(script, args, report_dir):
    """script under torchrun with 2 processes, through tests/torchrun_shutdown_probe.py:
    (the process, [rank 0's report, rank 1's report])."""
    proc = _run('tests/torchrun_shutdown_probe.py', [report_dir, script] + args, 2)
    reports = []
    for rank in (0, 1):
        path = Path(report_dir) / f'rank{rank}.json'
        assert path.exists(), proc.stdout[-2000:] + proc.stderr[-4000:]
        reports.append(json.loads(path.read_text()))
    return proc, reports


def _gloo_threads(names):
    return [name for name in names if 'gloo' in name]


def _assert_shut_down_in_order(report):
    """The group was destroyed once, after the script's own threads were joined, and gloo's
    threads went with it: none is left to run into the interpreter's shutdown, where it
    aborted the process when it freed the last collective's tensors."""
    assert report['destroyed'] == 1, report
    # Only daemon threads (tqdm's monitor) may outlive the scripts' blocks: the read-ahead
    # and writer threads are not daemons, so none of them is alive here.
    assert [t for t in report['python_threads'] if not t[1]] == [], report['python_threads']
    assert _gloo_threads(report['native_before']), report  # the check sees gloo's threads
    assert _gloo_threads(report['native_after']) == [], report


@pytest.fixture(scope='module')
def probed_wider(two_photos, weights, tmp_path_factory):
    """test_widerface.py on two photos under torchrun, watched: (save_folder, args, process, reports)."""
    images, names = two_photos
    root = tmp_path_factory.mktemp('shutdown_wider')
    (root / 'wider_val.txt').write_text("\n".join(names) + "\n")
    args = _model_args(weights) + ['--dataset_folder', images, '--image_list', root / 'wider_val.txt',
                                   '--save_folder', root / 'out']
    proc, reports = _probed('test_widerface.py', args, root / 'reports')
    return root / 'out', args, proc, reports


def test_wider_shuts_down_in_order(probed_wider):
    out, _, proc, reports = probed_wider
    _ok(proc)
    assert [r['status'] for r in reports] == [0, 0]
    assert len(list(out.rglob('*.txt'))) == 2
    for report in reports:
        _assert_shut_down_in_order(report)


def test_wider_error_shuts_down_in_order(probed_wider, tmp_path):
    """A run refused by rank 0 (another run's folder): rank 0 fails with the error, rank 1
    leaves through on_rank0's SystemExit; both destroy the group on the way out."""
    out, args, _, _ = probed_wider
    stale = tmp_path / 'out'
    shutil.copytree(out, stale)
    args = list(args)
    args[args.index('--save_folder') + 1] = stale
    proc, reports = _probed('test_widerface.py', args + ['--confidence_threshold', '0.5'], tmp_path / 'reports')
    assert proc.returncode != 0
    assert proc.stderr.count('error: ') == 1, proc.stderr[-3000:]
    assert [r['status'] for r in reports] == [1, 1]
    for report in reports:
        _assert_shut_down_in_order(report)


def test_detect_shuts_down_in_order(two_photos, weights, tmp_path):
    """detect.py on a folder (rank 0 gathers the other rank's results at the end)."""
    images, _ = two_photos
    args = _model_args(weights) + ['--image', images, '--output', tmp_path / 'annotated', '--json',
                                   tmp_path / 'faces.json']
    proc, reports = _probed('detect.py', args, tmp_path / 'reports')
    _ok(proc)
    assert len(json.loads((tmp_path / 'faces.json').read_text())['images']) == 2
    assert [r['status'] for r in reports] == [0, 0]
    for report in reports:
        _assert_shut_down_in_order(report)
