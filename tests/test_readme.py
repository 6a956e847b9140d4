"""Every command in README.md runs as written.

Each ```bash and ```python block of the README runs, in README order, in a fresh copy of the
repository (the tracked files, with this checkout's .venv, built kernels and weights links,
as `bash .ci/setup` leaves them) that has the shared data folder beside it as `../shared`,
so the README's relative paths mean what they mean for a newcomer. Later blocks use earlier
blocks' outputs, as a reader's would.

The README's conventions, checked here:
- A full-line comment in a block is output the block prints, in order: each one must match
  a line of the block's output (stdout and stderr together, later lines after earlier
  ones). Timings (a number followed by `ms` or `s`) and `...` match anything, so that only
  the parts that hold on every machine are compared. Explanations go in inline comments
  or in the prose around the block.
- `<!-- readme-test: skip REASON -->` on the line before a block skips it, with the reason
  (data this project does not have, a GPU, or the command that runs this very test).
- `/tmp/` in a block (its commands and its output lines) is this test's own temporary
  folder, so that runs never meet.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from utils.datapaths import shared_root

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
SKIP = re.compile(r'<!--\s*readme-test:\s*skip\s+(.*?)\s*-->')
FENCE = re.compile(r'^```(bash|python)\s*$')
# A timing or an ellipsis in a documented output line: they match anything of their kind.
WILDCARDS = re.compile(r'(\d+(?:\.\d+)?(?:m\d+(?:\.\d+)?)? ?(?:ms|s)\b|\.\.\.)')
BLOCK_TIMEOUT = 600


def readme_blocks(text):
    """[(line number, language, code, skip reason or None)] of the README's bash and python blocks."""
    blocks, lines, i = [], text.split('\n'), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        skip = SKIP.search(lines[i - 1]) if i else None
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != '```':
            body.append(lines[i])
            i += 1
        blocks.append((start, m.group(1), '\n'.join(body) + '\n', skip.group(1) if skip else None))
        i += 1
    return blocks


def expected_lines(code):
    """The block's full-line comments (its documented output), as regular expressions."""
    patterns = []
    for line in code.split('\n'):
        s = line.strip()
        if s.startswith('# '):
            parts = WILDCARDS.split(s[2:].strip())  # odd positions: the wildcards themselves
            patterns.append(''.join(re.escape(part) if k % 2 == 0 else ('.*' if part == '...' else r'[0-9.m]+ ?m?s')
                                    for k, part in enumerate(parts)))
    return patterns


def match_in_order(patterns, output):
    """The first pattern that no output line matches, searching after the previous match; None if all do."""
    lines = [line.strip() for line in output.split('\n')]
    pos = 0
    for p in patterns:
        for k in range(pos, len(lines)):
            if re.fullmatch(p, lines[k]):
                pos = k + 1
                break
        else:
            return p
    return None


def _fresh_copy(dest):
    """dest/project: the tracked files of this checkout, with .venv, kernels and weights as
    .ci/setup leaves them; dest/shared: the shared data folder."""
    project = dest / 'project'
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split('\0')
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (project / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, project / f)
    os.symlink(ROOT / '.venv', project / '.venv')
    for built in list(ROOT.glob('**/*.so')):
        if '.venv' not in built.parts and 'build' not in built.parts:
            shutil.copy2(built, project / built.relative_to(ROOT))
    for w in (ROOT / 'weights').iterdir():
        if w.name != '.gitkeep':
            os.symlink(w.resolve(), project / 'weights' / w.name)
    os.symlink(shared_root().resolve(), dest / 'shared')
    return project


def _run(language, code, cwd, tmp):
    code = code.replace('/tmp/', f'{tmp}/')
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'RETINAFACE_DATA', 'VIRTUAL_ENV')}
    env['PATH'] = f"{cwd / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # as after `source .venv/bin/activate`
    cmd = ['bash', '-e', '-o', 'pipefail', '-c', code] if language == 'bash' else ['python', '-c', code]
    if language == 'python':
        cmd[0] = str(cwd / '.venv' / 'bin' / 'python')
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=BLOCK_TIMEOUT)


BLOCKS = readme_blocks(README.read_text())


@pytest.fixture(scope='module')
def readme_run(tmp_path_factory):
    """Run every block that is not skipped, in README order; {line: CompletedProcess}."""
    if not shared_root().exists():
        pytest.skip(f"reference data not found: {shared_root()} (the README's examples read ../shared)")
    base = tmp_path_factory.mktemp('readme')
    project = _fresh_copy(base)
    tmp = base / 'tmp'
    tmp.mkdir()
    results = {}
    for line, language, code, skip in BLOCKS:
        if skip is None:
            results[line] = (_run(language, code, project, tmp), tmp)
    return results


@pytest.mark.parametrize('line, language, code, skip', BLOCKS, ids=[f'README.md:{b[0]}' for b in BLOCKS])
def test_readme_block_runs_as_written(readme_run, line, language, code, skip):
    if skip is not None:
        pytest.skip(f"README.md:{line}: {skip}")
    proc, tmp = readme_run[line]
    assert proc.returncode == 0, f"README.md:{line} exited {proc.returncode}:\n{code}\n{proc.stdout[-3000:]}"
    missing = match_in_order(expected_lines(code.replace('/tmp/', f'{tmp}/')), proc.stdout)
    assert missing is None, f"README.md:{line}: no output line matches {missing!r}:\n{proc.stdout[-3000:]}"


# -- the conventions themselves ------------------------------------------------------------------

def test_blocks_skip_markers_and_outputs_are_parsed():
    text = ('x\n```bash\necho hi   # inline\n# hi\n```\n<!-- readme-test: skip needs a GPU -->\n```python\n'
            'print(1)\n```\n```text\nnot code\n```\n')
    assert readme_blocks(text) == [(2, 'bash', 'echo hi   # inline\n# hi\n', None),
                                   (7, 'python', 'print(1)\n', 'needs a GPU')]
    assert expected_lines('echo hi   # inline\n# hi\n') == ['hi']


def test_timings_and_ellipses_match_anything_and_the_rest_exactly():
    patterns = expected_lines('# a.jpg: 26 faces, 72.5 ms -> ./results/a.jpg\n# Easy AP: 0.907...\n')
    assert match_in_order(patterns, 'noise\na.jpg: 26 faces, 31.0 ms -> ./results/a.jpg\nEasy AP: 0.90712\n') is None
    assert match_in_order(patterns, 'a.jpg: 27 faces, 31.0 ms -> ./results/a.jpg\nEasy AP: 0.907\n') is not None
    assert match_in_order(patterns, 'Easy AP: 0.907\na.jpg: 26 faces, 1 ms -> ./results/a.jpg\n') is not None
