"""utils/atomic.py: files written atomically get the permissions a plain open(path, 'w') gives."""
import os
import stat
import threading

import pytest
import torch

from utils import atomic
from utils.atomic import atomic_save, atomic_write_text
from utils.errors import InputError


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize('mask, expected', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_text_file_mode_follows_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_text(tmp_path / 'result.txt', 'x\n')
    assert _mode(tmp_path / 'result.txt') == expected


@pytest.mark.parametrize('mask, expected', [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_save({'x': torch.ones(1)}, tmp_path / 'ck.pth')
    assert _mode(tmp_path / 'ck.pth') == expected


def test_mode_matches_a_plain_open(tmp_path, umask):
    umask(0o027)
    with open(tmp_path / 'plain.txt', 'w') as f:
        f.write('x')
    atomic_write_text(tmp_path / 'atomic.txt', 'x')
    assert _mode(tmp_path / 'atomic.txt') == _mode(tmp_path / 'plain.txt') == 0o640


def test_rewriting_a_file_keeps_its_mode(tmp_path, umask):
    """Like open(path, 'w') on an existing file: its permission bits stay as they were."""
    umask(0o022)
    path = tmp_path / 'result.txt'
    path.write_text('old\n')
    os.chmod(path, 0o664)
    atomic_write_text(path, 'new\n')
    assert path.read_text() == 'new\n' and _mode(path) == 0o664


def test_umask_is_restored_after_reading_it(umask):
    umask(0o027)
    assert atomic.current_umask() == 0o027
    assert os.umask(0o022) == 0o027


# -- locks, leftovers and failed writes -------------------------------------------------------

def test_a_second_lock_on_a_folder_fails_at_once_naming_the_first_pid(tmp_path):
    with atomic.lock_folder(tmp_path, '--save_folder'):
        # flock locks belong to an open file, so a second open in this process conflicts
        # exactly as another process's would.
        with pytest.raises(InputError, match=rf"--save_folder {tmp_path} is in use by another run "
                                             rf"\(PID {os.getpid()}\)"):
            atomic.lock_folder(tmp_path, '--save_folder').acquire()
    with atomic.lock_folder(tmp_path):  # released at the end of the block
        pass


def test_the_lock_creates_a_missing_folder(tmp_path):
    with atomic.lock_folder(tmp_path / 'new' / 'run'):
        assert (tmp_path / 'new' / 'run' / atomic.LOCK_NAME).is_file()


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    ours = [tmp_path / f'.a.txt.x1y2z3{atomic.TEMP_SUFFIX}', tmp_path / 'ev' / f'.b.pth.q9{atomic.TEMP_SUFFIX}']
    theirs = [tmp_path / 'notes.tmp', tmp_path / '.hidden.tmp', tmp_path / 'a.txt', tmp_path / 'ev' / 'x.tmp',
              tmp_path / f'visible{atomic.TEMP_SUFFIX}']
    for p in ours + theirs:
        p.parent.mkdir(exist_ok=True)
        p.write_text('x')
    assert sorted(atomic.remove_stale_temp_files(tmp_path)) == sorted(map(str, ours))
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


def test_atomic_write_uses_the_project_temp_suffix(tmp_path):
    seen = []

    def write(f):
        seen.extend(os.listdir(tmp_path))  # the temporary file, while it is written
        f.write(b'data')

    atomic.atomic_write(tmp_path / 'x.bin', write)
    assert len(seen) == 1 and seen[0].startswith('.x.bin.') and seen[0].endswith(atomic.TEMP_SUFFIX)
    assert os.listdir(tmp_path) == ['x.bin']


def test_a_failed_write_names_the_file_and_the_free_space_and_keeps_the_old_file(tmp_path):
    target = tmp_path / 'state.pth'
    target.write_bytes(b'previous state')

    def full_disk(f):
        raise OSError(28, 'No space left on device')

    with pytest.raises(InputError, match=rf"cannot write {target}: No space left on device "
                                         rf"\([0-9.]+ [kMG]?B(ytes)? free in {tmp_path}\)"):
        atomic.atomic_write(target, full_disk)
    assert target.read_bytes() == b'previous state'
    assert os.listdir(tmp_path) == ['state.pth']  # no temporary file left


def _stale_temp_folder(folder, name):
    """What a killed writer leaves: a TempFolder whose lock no process holds."""
    path = folder / f'.{name}.k1ll3d{atomic.TEMP_SUFFIX}'
    path.mkdir(parents=True)
    (path / atomic.TEMP_FOLDER_LOCK).write_text('')
    (path / name).write_bytes(b'half a file')
    return path


def test_stale_temp_folders_are_removed_and_live_ones_and_other_files_kept(tmp_path):
    stale = [_stale_temp_folder(tmp_path, 'a.mp4'), _stale_temp_folder(tmp_path, 'b.mp4')]
    unlocked = tmp_path / f'.c.mp4.0ld{atomic.TEMP_SUFFIX}'  # a folder made before folders were locked
    unlocked.mkdir()
    stale.append(unlocked)
    theirs = [tmp_path / f'visible{atomic.TEMP_SUFFIX}', tmp_path / '.hidden', tmp_path / 'a.mp4']
    for p in theirs:
        p.mkdir()
    file_of_ours = tmp_path / f'.d.txt.x1{atomic.TEMP_SUFFIX}'  # remove_stale_temp_files' business, under a lock
    file_of_ours.write_text('x')
    with atomic.TempFolder(tmp_path / 'e.mp4') as live:  # flock: another open file, so as another process
        assert sorted(atomic.remove_stale_temp_folders(tmp_path)) == sorted(map(str, stale))
        assert os.path.isdir(live.path) and os.listdir(live.path) == [atomic.TEMP_FOLDER_LOCK]
    assert not os.path.exists(live.path)  # closing removes it
    assert all(p.exists() for p in theirs + [file_of_ours]) and not any(p.exists() for p in stale)


def test_a_temp_folder_taken_before_it_was_locked_is_made_again(tmp_path, monkeypatch):
    """A sweep by another run between mkdtemp and the lock: the writer makes a new folder."""
    real = atomic.tempfile.mkdtemp
    swept = []

    def mkdtemp_then_swept(**kwargs):
        path = real(**kwargs)
        if not swept:
            swept.extend(atomic.remove_stale_temp_folders(kwargs['dir']))
        return path

    monkeypatch.setattr(atomic.tempfile, 'mkdtemp', mkdtemp_then_swept)
    with atomic.TempFolder(tmp_path / 'v.mp4') as folder:
        assert len(swept) == 1 and swept[0] != folder.path
        assert os.listdir(tmp_path) == [os.path.basename(folder.path)]


class _FullDisk:
    """A raw file that takes `room` bytes, then fails as a full disk does: a short write, then ENOSPC."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if self.room <= 0:
            raise OSError(28, 'No space left on device')
        n = self.f.write(bytes(data[:self.room]))
        self.room -= n
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_line_file_is_cut_back_to_its_last_whole_line_on_a_full_disk(tmp_path):
    path = tmp_path / 'f.jsonl'
    with atomic.LineFile(path) as lines:
        lines.write_line('{"frame": 0}')
        lines._f = _FullDisk(lines._f, room=5)
        with pytest.raises(InputError, match=rf"cannot write {path}: No space left on device \(.* free in "
                                             rf"{tmp_path}\); it holds the 1 whole lines written before"):
            lines.write_line('{"frame": 1}')
    assert path.read_text() == '{"frame": 0}\n'
    with atomic.LineFile(tmp_path / 'g.jsonl') as other, pytest.raises(ValueError, match='line break'):
        other.write_line('two\nlines')


def test_a_line_file_writes_into_a_fifo_in_place(tmp_path):
    """A FIFO (or /dev/stdout) has no position to count or cut back to: the lines still pass."""
    fifo = tmp_path / 'lines'
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    with atomic.LineFile(fifo) as lines:
        lines.write_line('{"frame": 0}')
        lines.write_line('{"frame": 1}')
    reader.join(timeout=10)
    assert received == [b'{"frame": 0}\n{"frame": 1}\n']


# -- writes go through links, and into streams in place ----------------------------------------------

def test_a_write_to_a_link_replaces_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / 'real' / 'result.txt'
    target.parent.mkdir()
    target.write_text('old\n')
    link = tmp_path / 'result.txt'
    link.symlink_to(target)
    atomic_write_text(link, 'new\n')
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == 'new\n'
    assert os.listdir(tmp_path / 'real') == ['result.txt']  # the temporary file was beside the target


def test_a_chain_of_links_and_a_dangling_link_are_written_through(tmp_path):
    target = tmp_path / 'ck.pth'
    (tmp_path / 'b').symlink_to(target)  # dangling: the write creates its target
    (tmp_path / 'a').symlink_to(tmp_path / 'b')
    atomic_save({'x': torch.ones(2)}, tmp_path / 'a')
    assert (tmp_path / 'a').is_symlink() and (tmp_path / 'b').is_symlink()
    assert torch.equal(torch.load(target)['x'], torch.ones(2))


def test_temp_path_and_move_into_place_write_through_a_link(tmp_path):
    """The ONNX export's way: a temporary file beside the link's target, renamed over the target."""
    (tmp_path / 'models').mkdir()
    target = tmp_path / 'models' / 'face.onnx'
    link = tmp_path / 'face.onnx'
    link.symlink_to(target)
    tmp = atomic.temp_path(link)
    assert os.path.dirname(tmp) == str(tmp_path / 'models')
    with open(tmp, 'wb') as f:
        f.write(b'onnx')
    atomic.move_into_place(tmp, link)
    assert link.is_symlink() and target.read_bytes() == b'onnx' and not os.path.exists(tmp)


def test_a_write_to_a_fifo_goes_into_the_fifo(tmp_path):

    fifo = tmp_path / 'pipe'
    os.mkfifo(fifo)
    received = []
    # A daemon: should the write miss the FIFO, the reader stays blocked without holding up the tests.
    reader = threading.Thread(target=lambda: received.append(open(fifo, 'rb').read()), daemon=True)
    reader.start()
    atomic_write_text(fifo, '{"images": []}\n')
    reader.join(timeout=10)
    assert received == [b'{"images": []}\n']
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, no file renamed over it
    assert os.listdir(tmp_path) == ['pipe']


@pytest.fixture
def null_device(tmp_path):
    """A character device to write to: a private copy of /dev/null's node where this process
    may make one (root), else /dev/null itself (which a process that cannot make device
    nodes cannot replace either)."""
    try:
        os.mknod(tmp_path / 'null', 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        return tmp_path / 'null'
    except PermissionError:
        return '/dev/null'


def test_a_device_stays_a_device(null_device):
    before = os.lstat(null_device)
    atomic_write_text(null_device, 'x' * 1000)
    atomic_save({'x': torch.ones(1)}, null_device)
    after = os.lstat(null_device)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_dash_is_stdout_written_in_place(capsys):
    atomic_write_text('-', 'to stdout\n')
    atomic.atomic_write('-', lambda f: f.write(b'bytes too\n'))
    assert capsys.readouterr().out == 'to stdout\nbytes too\n'


def test_a_line_file_gives_stdout_for_dash_and_leaves_it_open(capsys, tmp_path):
    with atomic.LineFile('-') as f:
        f.write_line('{"frame": 0}')
    print('still open')
    assert capsys.readouterr().out == '{"frame": 0}\nstill open\n'
    target = tmp_path / 'lines.jsonl'
    (tmp_path / 'link.jsonl').symlink_to(target)
    with atomic.LineFile(tmp_path / 'link.jsonl') as f:
        f.write_line('{"frame": 0}')
    assert (tmp_path / 'link.jsonl').is_symlink() and target.read_text() == '{"frame": 0}\n'


@pytest.mark.parametrize('name, kind', [('-', 'stdout'), ('/dev/stdout', 'stdout'), ('/dev/stderr', 'stderr'),
                                        ('/dev/null', 'a character device'), ('results.json', None)])
def test_stream_kind(name, kind):
    assert atomic.stream_kind(name) == kind
