"""The results folders of test_widerface.py and test_fddb.py under a hostile user (issue 17,
second audit): list entries that write outside --save_folder or onto each other, two runs in
one folder at once, --no-resume and the user's own files, a full disk, another run's
FDDB_dets.txt, an interrupted FDDB run, and annotated copies written over the input photos."""
import errno
import json
import logging
import os
import shutil

import pytest

import test_fddb as fddb_script
import test_widerface as wider_script
from tests.conftest import golden_image_path
from tests.test_stale_results import other_weights, weights  # noqa: F401 - fixtures shared with these tests
from utils import atomic, folder_run
from utils.atomic import TEMP_SUFFIX, lock_folder
from utils.cli import run_cli
from utils.errors import InputError
from utils.run_manifest import MANIFEST_NAME

EVENT = '0--Parade'
STEMS = ['0_Parade_Parade_0_102', '0_Parade_Parade_0_125', '0_Parade_Parade_0_137']




@pytest.fixture
def images(tmp_path):
    """images/0--Parade/<stem>.jpg: links to three minitrain photos."""
    folder = tmp_path / 'images'
    (folder / EVENT).mkdir(parents=True)
    for stem in STEMS:
        os.symlink(golden_image_path('val416_' + stem), folder / EVENT / f'{stem}.jpg')
    return folder


def _no_detector(monkeypatch, script):
    """Fail the test if the script gets as far as building its detector (the work)."""
    monkeypatch.setattr(script, 'detector_from_args',
                        lambda *a, **k: pytest.fail('the detector was built: the input was not refused first'))


def _error_line(capsys):
    """The single 'error:' line the script printed."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, lines
    return lines[0]


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


# -- test_widerface.py -----------------------------------------------------------------------------

def _wider_argv(weights, images, listing, out, *extra):
    return ['-m', weights, '--network', 'mobile0.25', '--cpu', '--dataset_folder', str(images),
            '--image_list', str(listing), '--save_folder', str(out), *map(str, extra)]


def _wider(weights, images, listing, out, *extra):
    return wider_script.main(wider_script.get_args_parser().parse_args(
        _wider_argv(weights, images, listing, out, *extra)))


def _wider_cli(weights, images, listing, out, *extra):
    return run_cli(wider_script.main, wider_script.get_args_parser(),
                   _wider_argv(weights, images, listing, out, *extra))


def _write_list(path, entries):
    path.write_text(''.join(e + '\n' for e in entries))
    return path


@pytest.mark.parametrize('entry', ['../../victim/a.jpg', f'{EVENT}/../../../victim/a.jpg', '../a.jpg'])
def test_wider_entry_outside_save_folder_is_refused(weights, images, tmp_path, capsys, monkeypatch, entry):
    """B7: an entry climbing out of the images folder would write its .txt out of --save_folder,
    over the user's file."""
    out = tmp_path / 'results' / 'out'
    victim = tmp_path / 'victim' / 'a.txt'
    victim.parent.mkdir()
    victim.write_text('the user\'s own file\n')
    listing = _write_list(tmp_path / 'list.txt', [f'{EVENT}/{STEMS[0]}.jpg', entry])
    _no_detector(monkeypatch, wider_script)
    assert _wider_cli(weights, images, listing, out) == 1
    line = _error_line(capsys)
    assert f'{listing}:2' in line and repr(entry) in line and 'outside' in line, line
    assert victim.read_text() == 'the user\'s own file\n'
    assert not (tmp_path / 'results' / 'a.txt').exists()


def test_wider_two_entries_with_one_output_file_are_refused(weights, images, tmp_path, capsys, monkeypatch):
    """B8: ev/a.jpg and ev/a.png both write ev/a.txt; only one would survive."""
    shutil.copyfile(images / EVENT / f'{STEMS[0]}.jpg', images / EVENT / f'{STEMS[0]}.png')
    listing = _write_list(tmp_path / 'list.txt', [f'{EVENT}/{STEMS[0]}.jpg', f'{EVENT}/{STEMS[1]}.jpg',
                                                  f'{EVENT}/{STEMS[0]}.png'])
    _no_detector(monkeypatch, wider_script)
    assert _wider_cli(weights, images, listing, tmp_path / 'out') == 1
    line = _error_line(capsys)
    assert f'{listing}:1' in line and f'{listing}:3' in line and f'{EVENT}/{STEMS[0]}.txt' in line, line


@pytest.mark.parametrize('second', [f'{EVENT}/{STEMS[0]}.jpg', f'/{EVENT}/{STEMS[0]}.jpg',
                                    f'./{EVENT}//{STEMS[0]}.jpg'], ids=['same', 'leading_slash', 'dot_slash'])
def test_wider_duplicate_entry_is_refused(weights, images, tmp_path, capsys, monkeypatch, second):
    """A duplicate would be detected twice and counted twice: the list is not what the user thinks."""
    listing = _write_list(tmp_path / 'list.txt', [f'{EVENT}/{STEMS[0]}.jpg', f'{EVENT}/{STEMS[1]}.jpg', second])
    _no_detector(monkeypatch, wider_script)
    assert _wider_cli(weights, images, listing, tmp_path / 'out') == 1
    line = _error_line(capsys)
    assert 'duplicate' in line and f'{listing}:1' in line and f'{listing}:3' in line, line


def test_wider_second_run_into_a_locked_folder_fails_at_once(weights, images, tmp_path, capsys, monkeypatch):
    """B9: two runs in one folder would mix their settings' files; the second stops before its model."""
    listing = _write_list(tmp_path / 'list.txt', [f'{EVENT}/{STEMS[0]}.jpg'])
    out = tmp_path / 'out'
    _no_detector(monkeypatch, wider_script)
    with lock_folder(out, '--save_folder'):  # the first run
        assert _wider_cli(weights, images, listing, out, '--confidence_threshold', '0.5') == 1
    line = _error_line(capsys)
    assert f'--save_folder {out} is in use by another run (PID {os.getpid()})' in line, line
    assert not list(out.rglob('*.txt')) and not (out / MANIFEST_NAME).exists()


def test_wider_holds_the_lock_while_it_runs_and_removes_stale_temp_files(weights, images, tmp_path, monkeypatch):
    listing = _write_list(tmp_path / 'list.txt', [f'{EVENT}/{STEMS[0]}.jpg'])
    out = tmp_path / 'out'
    (out / EVENT).mkdir(parents=True)
    stale = out / EVENT / f'.{STEMS[0]}.txt.k2j4h{TEMP_SUFFIX}'  # left by a killed run
    stale.write_text(STEMS[0] + '\n')
    users = out / EVENT / '.backup.tmp'
    users.write_text('mine\n')
    seen = []

    def check_locked(*args):
        with pytest.raises(InputError, match='in use by another run'):
            lock_folder(out).acquire()
        seen.append(stale.exists())
        return real_write(*args)
    real_write = wider_script.atomic_write_text
    monkeypatch.setattr(wider_script, 'atomic_write_text', check_locked)
    assert _wider(weights, images, listing, out)['written'] == 1
    assert seen == [False]
    assert users.read_text() == 'mine\n'
    with lock_folder(out):  # released at the end
        pass


@pytest.fixture
def wider_first_run(weights, images, tmp_path):
    """A folder of the published weights' results for two photos, and the list that made it."""
    listing = _write_list(tmp_path / 'list2.txt', [f'{EVENT}/{s}.jpg' for s in STEMS[:2]])
    out = tmp_path / 'out'
    assert _wider(weights, images, listing, out)['written'] == 2
    return out


def test_wider_no_resume_keeps_the_users_files(weights, images, wider_first_run, tmp_path, caplog):
    """--no-resume removes the results of the run the manifest names, never a user's notes.txt
    whose first line happens to be its own name, wherever it is."""
    out = wider_first_run
    (out / 'notes.txt').write_text('notes\nbuy milk\n')
    (out / 'mine').mkdir()
    (out / 'mine' / 'todo.txt').write_text('todo\n')
    listing = _write_list(tmp_path / 'list1.txt', [f'{EVENT}/{STEMS[2]}.jpg'])
    with caplog.at_level(logging.WARNING):
        result = _wider(weights, images, listing, out, '--confidence_threshold', '0.5', '--no-resume')
    assert result['written'] == 1
    assert 'removed 2 result files of another run' in caplog.text
    assert (out / 'notes.txt').read_text() == 'notes\nbuy milk\n'
    assert (out / 'mine' / 'todo.txt').read_text() == 'todo\n'
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*.txt')) == \
        [f'{EVENT}/{STEMS[2]}.txt', 'mine/todo.txt', 'notes.txt']


def test_wider_no_resume_removes_every_file_the_manifest_lists(weights, images, wider_first_run, tmp_path):
    """The files of the first run are removed even for images outside the new list, and so is a
    result-like file in an event folder the first run wrote; the manifest then lists the new run's."""
    out = wider_first_run
    (out / EVENT / 'from_an_older_version.txt').write_text('from_an_older_version\n0\n')
    listing = _write_list(tmp_path / 'list1.txt', [f'{EVENT}/{STEMS[0]}.jpg'])
    _wider(weights, images, listing, out, '--confidence_threshold', '0.5', '--no-resume')
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*.txt')) == [f'{EVENT}/{STEMS[0]}.txt']
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest['files'] == [f'{EVENT}/{STEMS[0]}.txt']
    assert manifest['settings']['confidence_threshold'] == 0.5


def test_wider_resume_with_a_longer_list_records_every_file(weights, images, wider_first_run, tmp_path):
    """A resumed run of the same settings adds its new files to the manifest, so that a later
    --no-resume of another run removes them too."""
    out = wider_first_run
    listing = _write_list(tmp_path / 'list3.txt', [f'{EVENT}/{s}.jpg' for s in STEMS])
    result = _wider(weights, images, listing, out)
    assert (result['written'], result['resumed']) == (1, 2)
    assert json.loads((out / MANIFEST_NAME).read_text())['files'] == [f'{EVENT}/{s}.txt' for s in STEMS]


def test_wider_manifest_listing_a_file_outside_the_folder_is_ignored(weights, images, wider_first_run, tmp_path):
    """A hand-edited manifest cannot make --no-resume remove a file outside --save_folder."""
    out = wider_first_run
    victim = tmp_path / 'victim.txt'
    victim.write_text('victim\n')
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest['files'] += ['../victim.txt', str(victim)]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    listing = _write_list(tmp_path / 'list1.txt', [f'{EVENT}/{STEMS[0]}.jpg'])
    _wider(weights, images, listing, out, '--confidence_threshold', '0.5', '--no-resume')
    assert victim.read_text() == 'victim\n'


def test_wider_manifest_of_an_older_version_is_resumed_and_completed(weights, images, wider_first_run, tmp_path):
    """A format-1 manifest (no 'files') of the same run still resumes; it then lists the files."""
    out = wider_first_run
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest['files']
    manifest['format'] = 1
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = _wider(weights, images, tmp_path / 'list2.txt', out)
    assert (result['written'], result['resumed']) == (0, 2)
    assert json.loads((out / MANIFEST_NAME).read_text())['files'] == [f'{EVENT}/{s}.txt' for s in STEMS[:2]]


def test_wider_vis_folder_over_an_input_is_refused(weights, tmp_path, capsys, monkeypatch):
    """--save_image names its copies <index>.jpg (as the reference): never over a listed photo."""
    images = tmp_path / 'images'
    images.mkdir()
    shutil.copyfile(golden_image_path('val416_' + STEMS[0]), images / '1.jpg')
    shutil.copyfile(golden_image_path('val416_' + STEMS[1]), images / '0.jpg')
    before = _files(images)
    listing = _write_list(tmp_path / 'list.txt', ['0.jpg', '1.jpg'])
    _no_detector(monkeypatch, wider_script)
    assert _wider_cli(weights, images, listing, tmp_path / 'out', '--save_image', '--vis_folder', images) == 1
    assert f'--vis_folder {images} would overwrite the input image {images / "0.jpg"}' in _error_line(capsys)
    assert _files(images) == before


def test_wider_disk_full_is_one_error_line_naming_the_file(weights, images, tmp_path, capsys, monkeypatch):
    """A result write failing with ENOSPC (in the background writer) ends the run with one
    'error:' line naming the file, and leaves no temporary file."""
    listing = _write_list(tmp_path / 'list.txt', [f'{EVENT}/{s}.jpg' for s in STEMS])
    out = tmp_path / 'out'
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith('.txt'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)
    monkeypatch.setattr(atomic.os, 'replace', full)
    assert _wider_cli(weights, images, listing, out) == 1
    line = _error_line(capsys)
    assert line.startswith(f"error: cannot write {out / EVENT / STEMS[0]}.txt: {os.strerror(errno.ENOSPC)} ("), line
    assert 'free in' in line
    assert not [p for p in out.rglob('*') if p.name.endswith(TEMP_SUFFIX)]


# -- test_fddb.py ----------------------------------------------------------------------------------

FDDB_NAMES = [f'{EVENT}/{s}' for s in STEMS]


def _fddb_argv(weights, images, listing, out, *extra):
    return ['-m', weights, '--network', 'mobile0.25', '--cpu', '--image_list', str(listing),
            '--images_folder', str(images), '--save_folder', str(out), *map(str, extra)]


def _fddb(weights, images, listing, out, *extra):
    return fddb_script.main(fddb_script.get_args_parser().parse_args(
        _fddb_argv(weights, images, listing, out, *extra)))


def _fddb_cli(weights, images, listing, out, *extra):
    return run_cli(fddb_script.main, fddb_script.get_args_parser(),
                   _fddb_argv(weights, images, listing, out, *extra))


@pytest.fixture
def fddb_list(tmp_path):
    return _write_list(tmp_path / 'img_list.txt', FDDB_NAMES)


@pytest.fixture
def fddb_first_run(weights, images, fddb_list, tmp_path):
    """FDDB_dets.txt of the published weights for three photos, in one uninterrupted run."""
    out = tmp_path / 'eval'
    result = _fddb(weights, images, fddb_list, out)
    assert result['written'] == 3
    return out


def test_fddb_rerun_with_other_weights_is_an_error(weights, other_weights, images, fddb_list, fddb_first_run,
                                                   capsys):
    out = fddb_first_run
    before = (out / 'FDDB_dets.txt').read_bytes()
    assert _fddb_cli(other_weights, images, fddb_list, out) == 1
    line = _error_line(capsys)
    assert 'model_sha256' in line and f'({weights} -> {other_weights})' in line and '--no-resume' in line, line
    assert (out / 'FDDB_dets.txt').read_bytes() == before


def test_fddb_no_resume_replaces_another_runs_file(weights, other_weights, images, fddb_list, fddb_first_run):
    out = fddb_first_run
    before = (out / 'FDDB_dets.txt').read_bytes()
    assert _fddb(other_weights, images, fddb_list, out, '--no-resume')['written'] == 3
    assert (out / 'FDDB_dets.txt').read_bytes() != before
    assert json.loads((out / MANIFEST_NAME).read_text())['model_file'] == other_weights


def test_fddb_file_without_a_manifest_is_an_error(weights, images, fddb_list, tmp_path, capsys):
    """An FDDB_dets.txt of an older version or of the reference: its model is unknown."""
    out = tmp_path / 'eval'
    out.mkdir()
    (out / 'FDDB_dets.txt').write_text('img\n0.0\n')
    assert _fddb_cli(weights, images, fddb_list, out) == 1
    assert f'no {MANIFEST_NAME}' in _error_line(capsys)
    assert (out / 'FDDB_dets.txt').read_text() == 'img\n0.0\n'


def test_fddb_interrupted_run_keeps_its_work_and_resumes(weights, images, fddb_list, fddb_first_run, tmp_path,
                                                         monkeypatch, caplog):
    """Ctrl-C at the third image keeps the first two; the rerun detects only the third, and the
    file is byte for byte the one of an uninterrupted run."""
    out = tmp_path / 'interrupted'
    real_read = folder_run.read_image

    def interrupted(path):
        if STEMS[2] in str(path):
            raise KeyboardInterrupt
        return real_read(path)
    monkeypatch.setattr(folder_run, 'read_image', interrupted)
    with pytest.raises(KeyboardInterrupt):
        _fddb(weights, images, fddb_list, out)
    assert not (out / 'FDDB_dets.txt').exists()
    monkeypatch.setattr(folder_run, 'read_image', real_read)
    with caplog.at_level(logging.INFO):
        result = _fddb(weights, images, fddb_list, out)
    assert (result['written'], result['resumed']) == (1, 2)
    assert 'resuming: 2 of 3 images' in caplog.text
    assert (out / 'FDDB_dets.txt').read_bytes() == (fddb_first_run / 'FDDB_dets.txt').read_bytes()
    # Nothing is left beside the file but the manifest and the lock.
    assert sorted(_files(out)) == ['.retinaface.lock', 'FDDB_dets.txt', MANIFEST_NAME]


def test_fddb_complete_rerun_resumes_every_image(weights, images, fddb_list, fddb_first_run):
    out = fddb_first_run
    before = (out / 'FDDB_dets.txt').read_bytes()
    result = _fddb(weights, images, fddb_list, out)
    assert (result['written'], result['resumed']) == (0, 3)
    assert (out / 'FDDB_dets.txt').read_bytes() == before


def test_fddb_shorter_list_rerun_keeps_list_order(weights, images, fddb_first_run, tmp_path):
    """Resumed blocks come back in the new list's order, and only its images are in the file."""
    out = fddb_first_run
    blocks = (out / 'FDDB_dets.txt').read_text().split(f'{EVENT}/')[1:]
    listing = _write_list(tmp_path / 'two.txt', [FDDB_NAMES[2], FDDB_NAMES[0]])
    result = _fddb(weights, images, listing, out)
    assert (result['written'], result['resumed']) == (0, 2)
    assert (out / 'FDDB_dets.txt').read_text() == f'{EVENT}/' + blocks[2] + f'{EVENT}/' + blocks[0]


def test_fddb_second_run_into_a_locked_folder_fails_at_once(weights, images, fddb_list, tmp_path, capsys,
                                                            monkeypatch):
    out = tmp_path / 'eval'
    _no_detector(monkeypatch, fddb_script)
    with lock_folder(out):
        assert _fddb_cli(weights, images, fddb_list, out) == 1
    assert f'--save_folder {out} is in use by another run (PID {os.getpid()})' in _error_line(capsys)


@pytest.mark.parametrize('bad', ['/etc/passwd', '../secret', f'{EVENT}/../../secret'])
def test_fddb_name_outside_the_folders_is_refused(weights, images, tmp_path, capsys, monkeypatch, bad):
    listing = _write_list(tmp_path / 'img_list.txt', [FDDB_NAMES[0], bad])
    _no_detector(monkeypatch, fddb_script)
    assert _fddb_cli(weights, images, listing, tmp_path / 'eval') == 1
    line = _error_line(capsys)
    assert f'{listing}:2' in line and repr(bad) in line, line


def test_fddb_duplicate_name_is_refused(weights, images, tmp_path, capsys, monkeypatch):
    """A duplicated name would give the image two blocks: its detections counted twice."""
    listing = _write_list(tmp_path / 'img_list.txt', FDDB_NAMES + [FDDB_NAMES[1]])
    _no_detector(monkeypatch, fddb_script)
    assert _fddb_cli(weights, images, listing, tmp_path / 'eval') == 1
    line = _error_line(capsys)
    assert 'duplicate' in line and f'{listing}:2' in line and f'{listing}:4' in line, line


def test_fddb_vis_folder_over_the_images_is_refused(weights, tmp_path, capsys, monkeypatch):
    """B15: annotated copies named by image would land on the photos themselves."""
    images = tmp_path / 'images'
    (images / EVENT).mkdir(parents=True)
    for stem in STEMS:
        shutil.copyfile(golden_image_path('val416_' + stem), images / EVENT / f'{stem}.jpg')  # copies, not links
    before = _files(images)
    listing = _write_list(tmp_path / 'img_list.txt', FDDB_NAMES)
    _no_detector(monkeypatch, fddb_script)
    assert _fddb_cli(weights, images, listing, tmp_path / 'eval', '--save_image', '--vis_folder', images) == 1
    line = _error_line(capsys)
    assert f'--vis_folder {images} would overwrite the input image {images / FDDB_NAMES[0]}.jpg' in line, line
    assert _files(images) == before


def test_fddb_annotated_copies_are_named_by_image(weights, images, fddb_list, tmp_path):
    vis = tmp_path / 'vis'
    _fddb(weights, images, fddb_list, tmp_path / 'eval', '--save_image', '--vis_folder', vis)
    assert sorted(p.relative_to(vis).as_posix() for p in vis.rglob('*') if p.is_file()) == \
        [f'{n}.jpg' for n in FDDB_NAMES]
