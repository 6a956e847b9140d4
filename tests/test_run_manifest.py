"""utils/run_manifest.py, the record of what made a results folder: --no-resume removes only
the files its own script recorded (C2), and train.py's record keeps a fresh run from writing
over another run's files and every run from replacing a file no run recorded (T9, T10).
train.py's own tests (tests/test_train_safety.py) cover the same end to end."""
import json
import logging

import pytest

import test_fddb as fddb_script
import test_widerface as wider_script
from tests.conftest import golden_image_path, need_shared
from utils.cli import run_cli
from utils.errors import InputError
from utils.run_manifest import (MANIFEST_NAME, prepare_results_folder, prepare_training_folder, read_manifest,
                                training_record_name, write_manifest)

EVENT = '0--Parade'
STEM = '0_Parade_Parade_0_102'
WIDER_FILES = [f'{EVENT}/{STEM}.txt', f'{EVENT}/b.txt']
SETTINGS = {'model_sha256': 'ab' * 32, 'confidence_threshold': 0.02}


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture
def wider_folder(tmp_path):
    """A results folder as test_widerface.py leaves it: two prediction files and its manifest."""
    folder = tmp_path / 'results'
    (folder / EVENT).mkdir(parents=True)
    for f in WIDER_FILES:
        (folder / f).write_text(f"{f.split('/')[-1][:-4]}\n0\n")
    write_manifest(folder, SETTINGS, 'w.pth', 'test_widerface.py', WIDER_FILES)
    return folder


# --------------------------------------------------------------------------- C2: another script's results

@pytest.mark.parametrize('recompute', [False, True], ids=['resume', 'no-resume'])
def test_another_scripts_results_are_refused_without_suggesting_no_resume(wider_folder, recompute):
    """test_fddb.py --no-resume in test_widerface.py's folder deleted its files, though
    test_fddb.py never writes them."""
    before = _files(wider_folder)
    with pytest.raises(InputError) as e:
        prepare_results_folder(str(wider_folder), SETTINGS, ['FDDB_dets.txt'], 'w.pth', script='test_fddb.py',
                               recompute=recompute, recompute_flag='--no-resume')
    assert str(e.value) == (
        f"{wider_folder} holds 2 result files of test_widerface.py ({wider_folder}/{MANIFEST_NAME}): "
        f"{WIDER_FILES[0]}, {WIDER_FILES[1]}. test_fddb.py never replaces or removes another script's results: "
        f"choose another --save_folder")
    assert _files(wider_folder) == before


def test_no_resume_still_removes_its_own_scripts_results(wider_folder):
    prepare_results_folder(str(wider_folder), {**SETTINGS, 'confidence_threshold': 0.5}, WIDER_FILES[:1], 'w.pth',
                           script='test_widerface.py', recompute=True, recompute_flag='--no-resume')
    assert _files(wider_folder).keys() == {MANIFEST_NAME}


def test_a_folder_whose_files_another_script_removed_is_free(wider_folder):
    for f in WIDER_FILES:
        (wider_folder / f).unlink()
    prepare_results_folder(str(wider_folder), SETTINGS, ['FDDB_dets.txt'], 'w.pth', script='test_fddb.py',
                           recompute=False, recompute_flag='--no-resume')
    assert read_manifest(wider_folder)['script'] == 'test_fddb.py'


def _wider_cli(images, listing, out, *extra):
    return run_cli(wider_script.main, wider_script.get_args_parser(), [
        '-m', str(need_shared('weights', 'mobilenet0.25_Final.pth')), '--network', 'mobile0.25', '--cpu',
        '--dataset_folder', str(images), '--image_list', str(listing), '--save_folder', str(out), *extra])


def _fddb_cli(images, listing, out, *extra):
    return run_cli(fddb_script.main, fddb_script.get_args_parser(), [
        '-m', str(need_shared('weights', 'mobilenet0.25_Final.pth')), '--network', 'mobile0.25', '--cpu',
        '--images_folder', str(images), '--image_list', str(listing), '--save_folder', str(out), *extra])


@pytest.fixture
def one_photo(tmp_path):
    """images/0--Parade/<STEM>.jpg (a 416 x 416 minitrain photo), and the lists of both scripts."""
    (tmp_path / 'images' / EVENT).mkdir(parents=True)
    (tmp_path / 'images' / EVENT / f'{STEM}.jpg').symlink_to(golden_image_path(f'val416_{STEM}'))
    (tmp_path / 'wider_val.txt').write_text(f'{EVENT}/{STEM}.jpg\n')
    (tmp_path / 'img_list.txt').write_text(f'{EVENT}/{STEM}\n')
    return tmp_path / 'images', tmp_path / 'wider_val.txt', tmp_path / 'img_list.txt'


@pytest.mark.parametrize('first', ['test_widerface.py', 'test_fddb.py'])
def test_no_resume_of_one_script_keeps_the_other_scripts_results(one_photo, tmp_path, capsys, first):
    """C2 end to end, both ways: the error says what is there and suggests another folder,
    never --no-resume, and the first script's files stay byte for byte."""
    images, wider_list, fddb_list = one_photo
    out = tmp_path / 'out'
    if first == 'test_widerface.py':
        assert _wider_cli(images, wider_list, out) == 0
        second, expected = (lambda: _fddb_cli(images, fddb_list, out, '--no-resume')), f'{EVENT}/{STEM}.txt'
    else:
        assert _fddb_cli(images, fddb_list, out) == 0
        second, expected = (lambda: _wider_cli(images, wider_list, out, '--no-resume')), 'FDDB_dets.txt'
    before = _files(out)
    capsys.readouterr()
    assert second() == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert line.startswith(f"error: {out} holds 1 result file of {first} ({out}/{MANIFEST_NAME}): {expected}. "), line
    assert line.endswith("another script's results: choose another --save_folder") and '--no-resume' not in line
    assert _files(out) == before


# --------------------------------------------------------------------------- train.py's record

NAME = 'mobilenet0.25'
RECORD = training_record_name(NAME)
STATE = f'{NAME}_last_state.pth'
PLANNED = [f'{NAME}_Final.pth', STATE, f'{NAME}_metrics.jsonl', f'{NAME}_train.log', f'{NAME}_epoch_10.pth']
RUN = {'network': NAME, 'run_id': 'run0', 'seed': 0}


def _prepare(folder, settings=RUN, resume=None, replace=False, check_only=False, unrecorded_run=None):
    prepare_training_folder(str(folder), RECORD, settings, PLANNED, script='train.py', resume=resume, replace=replace,
                            state_name=STATE, check_only=check_only, unrecorded_run=unrecorded_run)


@pytest.fixture
def run_folder(tmp_path):
    """A folder with a finished run's files (all recorded), a user's notes and another network's run."""
    folder = tmp_path / 'run'
    folder.mkdir()
    _prepare(folder)
    for f in PLANNED[:4] + ['notes.txt', 'Resnet50_Final.pth']:
        (folder / f).write_text(f)
    return folder


def test_record_names_the_network_and_lists_what_the_run_may_write(tmp_path):
    assert RECORD == 'mobilenet0.25_run.json'
    _prepare(tmp_path)
    record = json.loads((tmp_path / RECORD).read_text())
    assert (record['script'], record['settings'], record['files']) == ('train.py', RUN, sorted(PLANNED))


def test_check_only_writes_nothing(tmp_path):
    _prepare(tmp_path, check_only=True)
    assert list(tmp_path.iterdir()) == []


def test_fresh_run_over_a_recorded_run_is_refused(run_folder):
    before = _files(run_folder)
    for check_only in (True, False):
        with pytest.raises(InputError, match=rf'^--save_folder {run_folder} holds the files of an earlier training '
                                             rf'run: {NAME}_Final\.pth, {STATE}, {NAME}_metrics\.jsonl, '
                                             rf'{NAME}_train\.log \({run_folder}/{RECORD}\)\. To keep them, continue '
                                             rf'it with --resume {run_folder}/{STATE}, or choose another '
                                             r'--save_folder; to replace that run, pass --no-resume'):
            _prepare(run_folder, {**RUN, 'run_id': 'run1'}, check_only=check_only)
    assert _files(run_folder) == before


def test_replace_removes_exactly_the_recorded_files(run_folder, caplog):
    with caplog.at_level(logging.WARNING, logger='utils.run_manifest'):
        _prepare(run_folder, {**RUN, 'run_id': 'run1'}, replace=True)
    assert sorted(_files(run_folder)) == ['Resnet50_Final.pth', RECORD, 'notes.txt']
    assert read_manifest(run_folder, RECORD)['settings']['run_id'] == 'run1'
    assert 'removed the 4 files of an earlier training run' in caplog.text


def test_replace_never_removes_an_input_of_the_run(run_folder):
    before = _files(run_folder)
    with pytest.raises(InputError, match=rf'^--no-resume would remove {run_folder}/{NAME}_Final\.pth, which this run '
                                         r'reads'):
        prepare_training_folder(str(run_folder), RECORD, {**RUN, 'run_id': 'run1'}, PLANNED, script='train.py',
                                resume=None, replace=True, state_name=STATE, inputs=[str(run_folder / PLANNED[0])])
    assert _files(run_folder) == before


def test_resume_of_the_same_run_keeps_its_files_and_adds_its_own(run_folder):
    before = _files(run_folder)
    prepare_training_folder(str(run_folder), RECORD, RUN, PLANNED + [f'{NAME}_epoch_20.pth'], script='train.py',
                            resume=str(run_folder / STATE), replace=False, state_name=STATE)
    assert {k: v for k, v in _files(run_folder).items() if k != RECORD} == \
        {k: v for k, v in before.items() if k != RECORD}
    assert read_manifest(run_folder, RECORD)['files'] == sorted(PLANNED + [f'{NAME}_epoch_20.pth'])


def test_resume_of_another_run_is_refused(run_folder):
    with pytest.raises(InputError, match=r'holds the files of another training run \(.*: run_id "run0" -> "run1"\)'):
        _prepare(run_folder, {**RUN, 'run_id': 'run1'}, resume='elsewhere/' + STATE)


@pytest.mark.parametrize('flags', [{}, {'replace': True}, {'resume': 'elsewhere/' + STATE}],
                         ids=['fresh', 'replace', 'resume'])
def test_a_file_no_run_recorded_is_never_replaced(tmp_path, flags):
    """The published weights in ./weights/: no flag lets a run write over them (a link stays a link)."""
    published = tmp_path / 'published.pth'
    published.write_bytes(b'the published weights')
    weights = tmp_path / 'weights'
    weights.mkdir()
    (weights / f'{NAME}_Final.pth').symlink_to(published)
    with pytest.raises(InputError, match=rf'^--save_folder {weights} holds {NAME}_Final\.pth, which no training run '
                                         r'of this project recorded making: train\.py never replaces a file it did '
                                         r'not make \(such as the published weights\), whatever the flags\.'):
        _prepare(weights, **flags)
    assert [p.name for p in weights.iterdir()] == [f'{NAME}_Final.pth']
    assert (weights / f'{NAME}_Final.pth').is_symlink() and published.read_bytes() == b'the published weights'


def test_a_file_the_record_does_not_list_is_never_replaced(run_folder):
    """A user's file named like a checkpoint this run would write, beside a recorded run."""
    record = read_manifest(run_folder, RECORD)
    write_manifest(run_folder, RUN, None, 'train.py', [f for f in record['files'] if f != f'{NAME}_Final.pth'],
                   name=RECORD)
    with pytest.raises(InputError, match=rf'holds {NAME}_Final\.pth, which its record .*{RECORD} does not list'):
        _prepare(run_folder, replace=True)
    assert (run_folder / f'{NAME}_Final.pth').exists()


def test_an_older_runs_files_are_known_by_the_record_it_would_have_written(tmp_path):
    """A folder of an older train.py (no record): unrecorded_run says whose files they are."""
    for f in PLANNED[:3]:
        (tmp_path / f).write_text(f)
    seen = []

    def older(files):
        seen.append(files)
        return {'script': 'train.py', 'settings': RUN, 'files': [f for f in files if f != f'{NAME}_Final.pth']}
    with pytest.raises(InputError, match=rf'holds {NAME}_Final\.pth, which no training run'):
        _prepare(tmp_path, resume=str(tmp_path / STATE), unrecorded_run=older)
    assert seen == [sorted(PLANNED[:3])]
    (tmp_path / f'{NAME}_Final.pth').unlink()
    _prepare(tmp_path, resume=str(tmp_path / STATE), unrecorded_run=older)
    assert read_manifest(tmp_path, RECORD)['files'] == sorted(PLANNED)
