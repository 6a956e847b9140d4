"""utils.compiled: a kernel that is not built is None, and each says so once."""
import logging
import sys

import utils.compiled
from utils.compiled import BUILD_COMMAND, load_kernel, warn_not_built


def test_load_kernel_gives_the_module_or_none(monkeypatch):
    assert load_kernel('utils.nms.cpu_nms') is sys.modules['utils.nms.cpu_nms']
    monkeypatch.setitem(sys.modules, 'utils.nms.cpu_nms', None)  # what an unbuilt kernel's import does: fail
    assert load_kernel('utils.nms.cpu_nms') is None


def test_each_kernel_warns_once_naming_the_root_build_command(caplog):
    utils.compiled.warn_not_built.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger='utils.compiled'):
            for _ in range(3):
                warn_not_built('A (a.pyx)', 'numpy')
                warn_not_built('B (b.pyx)', 'plain Python')
    finally:
        utils.compiled.warn_not_built.cache_clear()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert 'compiled A (a.pyx) is not built' in messages[0] and 'using numpy' in messages[0]
    assert 'compiled B (b.pyx) is not built' in messages[1] and 'using plain Python' in messages[1]
    assert all(f'`{BUILD_COMMAND}` at the repository root' in m for m in messages)
    assert BUILD_COMMAND == 'python setup.py build_ext --inplace'
