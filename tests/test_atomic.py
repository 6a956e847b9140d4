"""utils/atomic.py: files written atomically get the permissions a plain open(path, 'w') gives."""
import os
import stat

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
