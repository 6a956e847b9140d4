"""utils/atomic.py: files written atomically get the permissions a plain open(path, 'w') gives."""
import os
import stat

import pytest
import torch

from utils import atomic
from utils.atomic import atomic_save, atomic_write_text


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
