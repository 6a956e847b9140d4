"""train.py under misuse: impossible settings and label files that cannot train are
refused up front, an unwritable --save_folder fails before the first step, expected
errors are one 'error:' line, the log goes to stdout and beside the checkpoints, and the
opt-in --faceless_negatives loss."""
import json
import logging
import math
import runpy
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

import train
from data import cfg_mnet
from layers.modules import MultiBoxLoss
from tests.conftest import ROOT, need_shared
from tests.test_train import EPOCH_SIZE, _args, _subprocess_env, backbone, one_thread, subset  # noqa: F401 (fixtures)

NAME = cfg_mnet['name']
# The first minitrain photos (416 x 416): 0_102 has faces, 0_125 and 0_137 have none.
FACE_IMAGE = '0--Parade/0_Parade_Parade_0_102.jpg'
FACELESS_IMAGES = ['0--Parade/0_Parade_Parade_0_125.jpg', '0--Parade/0_Parade_Parade_0_137.jpg']
# Its faces (30 to 45 px) match priors at small training sizes.
BIG_FACES_IMAGE = '0--Parade/0_Parade_Parade_0_194.jpg'
NO_LANDMARKS = ' '.join(['-1'] * 16)


def _label_file(tmp_path, entries):
    """label.txt in tmp_path with images/ linked to minitrain's; entries: [(image, [face line, ...])]."""
    src = need_shared('minitrain', 'train')
    (tmp_path / 'images').symlink_to(src / 'images', target_is_directory=True)
    text = ''.join(f'# {image}\n' + ''.join(f'{line}\n' for line in faces) for image, faces in entries)
    (tmp_path / 'label.txt').write_text(text)
    return tmp_path / 'label.txt'


def _real_faces(image):
    """The minitrain label lines of one image."""
    lines = need_shared('minitrain', 'train', 'label.txt').read_text().splitlines()
    start = lines.index(f'# {image}') + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith('#'))
    return lines[start:end]


def _count_forward_calls(monkeypatch):
    calls = []
    real_forward = MultiBoxLoss.forward

    def counting_forward(self, *a, **k):
        calls.append(1)
        return real_forward(self, *a, **k)

    monkeypatch.setattr(MultiBoxLoss, 'forward', counting_forward)
    return calls


@pytest.fixture
def restore_logging():
    """run_cli and train.py's command line reconfigure the root logger; put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


# --------------------------------------------------------------------------- impossible settings

def test_image_size_below_the_largest_stride_is_refused(subset, backbone, tmp_path, monkeypatch):
    """--image_size 7 trained 'fine' at loss 0: every prior (16 px and up) dwarfs every face."""
    calls = _count_forward_calls(monkeypatch)
    with pytest.raises(ValueError, match=r'--image_size 7 is too small for mobilenet0\.25: it must be larger than '
                                         r'its largest stride, 32'):
        train.main(_args(subset, tmp_path, backbone, '--max_epoch', '1', '--image_size', '7'))
    assert calls == []


def test_image_size_of_the_largest_stride_is_refused(subset, backbone, tmp_path):
    """At 32 px the coarsest feature map is one cell: batch norm fails on a batch of one."""
    with pytest.raises(ValueError, match=r'--image_size 32 is too small'):
        train.main(_args(subset, tmp_path, backbone, '--max_epoch', '1', '--image_size', '32'))


def test_smallest_image_size_trains_a_batch_of_one(tmp_path, backbone):
    label = _label_file(tmp_path, [(BIG_FACES_IMAGE, _real_faces(BIG_FACES_IMAGE))])
    result = train.main(_args(label, tmp_path / 'out', backbone, '--max_epoch', '1', '--image_size', '33'))
    assert result.exit_code == 0 and result.iteration == 1


@pytest.mark.parametrize('flag, value', [
    ('--lr', '0'), ('--lr', 'nan'), ('--momentum', '1'), ('--momentum', '-0.1'), ('--weight_decay', '-1e-4'),
    ('--gamma', '0'), ('--gamma', '1.5'), ('--batch_size', '0'), ('--num_workers', '-1'), ('--max_epoch', '0'),
    ('--image_size', '-640'), ('--decay1', '-1'), ('--decay2', '-1'), ('--resume_epoch', '-1'),
    ('--log_interval', '0'), ('--threads', '0'), ('--faceless_negatives', '-1'), ('--batch_size', '2.5'),
    ('--eval_every', '0'), ('--lr', '-1e-3'),
])
def test_out_of_range_flag_is_a_usage_error_naming_flag_and_value(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        train.get_args_parser().parse_args([f'{flag}={value}'])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f'error: argument {flag}' in err and repr(value) in err, err


def test_range_limits_themselves_are_accepted():
    args = train.get_args_parser().parse_args(['--momentum', '0', '--gamma', '1', '--weight_decay', '0',
                                               '--num_workers', '0', '--decay1', '0'])
    assert (args.momentum, args.gamma, args.weight_decay, args.num_workers, args.decay1) == (0, 1, 0, 0, 0)


# --------------------------------------------------------------------------- label files that cannot train

def test_label_file_of_degenerate_and_off_image_boxes_is_refused(tmp_path, backbone, monkeypatch):
    """Each image has a zero-width box and one wholly right of / below the 416 x 416 photo."""
    label = _label_file(tmp_path, [(image, [f'10 10 0 20 {NO_LANDMARKS}', f'500 500 20 20 {NO_LANDMARKS}'])
                                   for image in [FACE_IMAGE] + FACELESS_IMAGES])
    calls = _count_forward_calls(monkeypatch)
    with pytest.raises(ValueError, match=r'none of its 6 boxes is usable \(3 degenerate .*, 3 outside the image\)'):
        train.main(_args(label, tmp_path / 'out', backbone, '--max_epoch', '1'))
    assert calls == []


def test_label_file_of_faceless_images_is_refused(tmp_path, backbone, monkeypatch):
    label = _label_file(tmp_path, [(image, []) for image in FACELESS_IMAGES])
    calls = _count_forward_calls(monkeypatch)
    with pytest.raises(ValueError, match=r'none of its 2 images has a face line'):
        train.main(_args(label, tmp_path / 'out', backbone, '--max_epoch', '1'))
    assert calls == []


def test_many_dropped_boxes_warn_once_with_counts(tmp_path, backbone, caplog):
    faces = _real_faces(FACE_IMAGE)
    bad = [f'10 10 20 0 {NO_LANDMARKS}', f'-50 30 20 20 {NO_LANDMARKS}']  # zero height; left of the photo
    label = _label_file(tmp_path, [(FACE_IMAGE, faces + bad)] + [(image, []) for image in FACELESS_IMAGES])
    with caplog.at_level(logging.INFO, logger='train'):
        result = train.main(_args(label, tmp_path / 'out', backbone, '--max_epoch', '1'))
    assert result.exit_code == 0
    expected = f'dropped 2 of {len(faces) + 2} boxes (1 degenerate, 1 outside the image)'
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(expected in w for w in warnings) == 1, warnings
    # ... and what the two faceless images contribute is said too.
    assert any('2 of 3 images have no usable face' in r.getMessage() for r in caplog.records)


def test_epoch_where_no_face_matches_a_prior_warns(tmp_path, backbone, caplog):
    """A face of 2 px is a usable box, but at 64 px no prior overlaps it enough: the loss
    is 0 throughout, and the run says so once."""
    label = _label_file(tmp_path, [(FACE_IMAGE, [f'200 200 2 2 {NO_LANDMARKS}'])])
    steps = []
    with caplog.at_level(logging.INFO, logger='train'):
        train.main(_args(label, tmp_path / 'out', backbone, '--max_epoch', '2', '--image_size', '64'),
                   on_step=steps.append)
    assert [s.loc for s in steps] == [0.0, 0.0]
    warnings = [r.getMessage() for r in caplog.records if 'no face matched a prior' in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith('epoch 1:'), warnings


# --------------------------------------------------------------------------- faceless images and the loss

def _faceless_batch():
    """Two images without faces, 4 priors; background logit 0 and face logits whose
    background cross-entropies log(1 + e^f) are log 2, log 4, log 8 and log 1.5."""
    face = torch.tensor([0.0, math.log(3), math.log(7), math.log(0.5)])
    conf = torch.stack([torch.zeros(4), face], dim=1).expand(2, 4, 2).contiguous()
    predictions = (torch.zeros(2, 4, 4), conf, torch.zeros(2, 4, 10))
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5],
                           [0.75, 0.75, 0.5, 0.5]])
    return predictions, priors, [torch.zeros(0, 15), torch.zeros(0, 15)]


def test_faceless_negatives_mines_the_k_hardest_background_priors():
    """K = 2: per image log 8 + log 4 = log 32, over 2 images log 1024, divided by max(0 positives, 1).
    (Without K the loss is 0: tests/test_multibox_loss.py checks the reference's behaviour.)"""
    _, loss_c, _ = MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False, faceless_negatives=2)(*_faceless_batch())
    assert loss_c.item() == pytest.approx(10 * math.log(2), rel=1e-6)
    # K is capped at P - 1 priors, as the proportional mining is: log 8 + log 4 + log 2 per image.
    _, loss_c, _ = MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False, faceless_negatives=100)(*_faceless_batch())
    assert loss_c.item() == pytest.approx(12 * math.log(2), rel=1e-6)


def test_faceless_negatives_flag_trains_faceless_images(tmp_path, backbone):
    """Batch 1 over one face image and two faceless ones: with the flag the faceless steps
    (no positive, Loc 0) have a classification loss."""
    label = _label_file(tmp_path, [(BIG_FACES_IMAGE, _real_faces(BIG_FACES_IMAGE))] + [(i, []) for i in FACELESS_IMAGES])
    steps = []
    train.main(_args(label, tmp_path / 'out', backbone, '--max_epoch', '1', '--batch_size', '1',
                     '--faceless_negatives', '16'), on_step=steps.append)
    faceless_steps = [s for s in steps if s.loc == 0]
    assert len(faceless_steps) == 2 and all(s.cla > 0 for s in faceless_steps), steps


# --------------------------------------------------------------------------- the save folder

def test_unwritable_save_folder_fails_before_the_first_step(subset, backbone, tmp_path, monkeypatch):
    """A folder where no file can be created (a read-only one; root could still write into
    a chmod-ed folder, so file creation there is made to fail): the old code trained the
    whole run and failed when saving."""
    save_folder = tmp_path / 'read_only'
    save_folder.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and str(dir).rstrip('/') == str(save_folder):
            raise PermissionError(13, 'Permission denied')
        return real_mkstemp(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, 'mkstemp', mkstemp)
    calls = _count_forward_calls(monkeypatch)
    with pytest.raises(ValueError, match=r'cannot write --save_folder .*read_only: cannot create files in '
                                         r'folder .*read_only \(Permission denied\)'):
        train.main(_args(subset, save_folder, backbone, '--max_epoch', '1'))
    assert calls == []


def _cli(argv, capsys, monkeypatch):
    """Run train.py as a script, in this process: (exit status, captured output)."""
    monkeypatch.setattr(sys, 'argv', ['train.py', *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / 'train.py'), run_name='__main__')
    return e.value.code, capsys.readouterr()


def test_save_folder_under_a_file_is_one_error_line(subset, backbone, tmp_path, capsys, monkeypatch,
                                                     restore_logging):
    (tmp_path / 'file.txt').write_text('not a folder\n')
    status, out = _cli(['--training_dataset', subset, '--save_folder', tmp_path / 'file.txt' / 'sub',
                        '--device', 'cpu', '--pretrained', backbone], capsys, monkeypatch)
    assert status == 1
    assert out.err.splitlines() == [f'error: cannot write --save_folder {tmp_path}/file.txt/sub: '
                                    f'{tmp_path}/file.txt is a file, not a folder']


# --------------------------------------------------------------------------- expected errors, logging, threads

@pytest.mark.parametrize('case', ['bad label line', 'missing label file', 'missing image', 'bad weights'])
def test_expected_error_is_one_line_and_status_1(case, tmp_path, backbone, capsys, monkeypatch, restore_logging):
    label = _label_file(tmp_path, [(FACE_IMAGE, _real_faces(FACE_IMAGE))])
    extra = []
    if case == 'bad label line':
        label.write_text(f'# {FACE_IMAGE}\n1 2 3\n')
        expected = f'error: {label}:2: expected 20 values'
    elif case == 'missing label file':
        label = tmp_path / 'no_such_label.txt'
        expected = f'error: label file not found: {label}'
    elif case == 'missing image':
        label.write_text(f'# 0--Parade/no_such_photo.jpg\n')
        expected = f'error: 1 of the 1 images listed in {label} are missing, e.g. {tmp_path}/images/0--Parade/no_such'
    else:
        (tmp_path / 'weights.pth').write_text('not weights\n')
        extra = ['--resume_net', tmp_path / 'weights.pth']
        expected = f'error: {tmp_path}/weights.pth'
    status, out = _cli(['--training_dataset', label, '--save_folder', tmp_path / 'out', '--device', 'cpu',
                        '--pretrained', backbone, '--num_workers', '0', *extra], capsys, monkeypatch)
    assert status == 1
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), out.err


def test_log_goes_to_stdout(subset, backbone, tmp_path):
    """`python train.py ... > train.log` keeps the log (the reference printed to stdout)."""
    cmd = [sys.executable, str(ROOT / 'train.py'), '--training_dataset', str(subset), '--save_folder', str(tmp_path),
           '--device', 'cpu', '--batch_size', '4', '--image_size', '64', '--num_workers', '0', '--seed', '0',
           '--pretrained', str(backbone), '--max_epoch', '1']
    proc = subprocess.run(cmd, cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Iter: 2/2' in proc.stdout and 'epoch 1/1: mean Loc' in proc.stdout, proc.stdout[-3000:]
    assert proc.stderr == ''


def test_log_copy_beside_the_checkpoints_is_appended(subset, backbone, tmp_path):
    """A resumed run continues the log of the run it resumes, from its first line (the
    checks of the inputs, logged before the folder is claimed, included)."""
    train.main(_args(subset, tmp_path, backbone, '--max_epoch', '1', '--image_size', '64'))
    train.main(_args(subset, tmp_path, backbone, '--max_epoch', '2', '--image_size', '64',
                     '--resume', str(tmp_path / f'{NAME}_last_state.pth')))
    log = (tmp_path / f'{NAME}_train.log').read_text()
    assert log.count('train.py --training_dataset') == 2 and log.count('Loading Dataset...') == 2
    assert log.splitlines()[0].split(' ', 2)[2].startswith('train.py --training_dataset')
    assert log.count('Iter: 2/2') == 1 and log.count('Iter: 3/4') == 1 and log.count('Iter: 4/4') == 1
    assert log.count(f'saved {tmp_path}/{NAME}_Final.pth') == 2
    # The handler is gone once main returns.
    log_path = str(tmp_path / f'{NAME}_train.log')
    assert not any(getattr(h, 'baseFilename', None) == log_path for h in logging.getLogger().handlers)


def test_threads_flag_sets_torch_threads_for_the_run(subset, backbone, tmp_path):
    seen = []
    before = torch.get_num_threads()
    train.main(_args(subset, tmp_path, backbone, '--max_epoch', '1', '--image_size', '64', '--threads', '2'),
               on_step=lambda step: seen.append(torch.get_num_threads()))
    assert seen == [2, 2] and torch.get_num_threads() == before


def test_image_size_from_the_header_follows_exif_rotation(tmp_path):
    """label_summary's sizes are those cv2.imread returns, which applies EXIF rotations."""
    import cv2
    from PIL import Image

    from data.wider_face import image_size
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.new('RGB', (40, 20)).save(tmp_path / 'rotated.jpg', exif=exif.tobytes())
    Image.new('RGB', (40, 20)).save(tmp_path / 'plain.png')
    for name in ('rotated.jpg', 'plain.png'):
        img = cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR)
        assert image_size(str(tmp_path / name)) == (img.shape[1], img.shape[0])
    assert image_size(str(tmp_path / 'rotated.jpg')) == (20, 40)


# --------------------------------------------------------------------------- inputs before outputs (T6, T1, T3, T11)

def _landmark_far_away(faces):
    """The face lines with the first one's nose at (5000, -5000) (it has landmarks)."""
    values = faces[0].split()
    values[10], values[11] = '5000', '-5000'
    return [' '.join(values)] + faces[1:]


@pytest.mark.parametrize('case', ['missing --val_dataset', 'missing --resume', 'bad --resume_net', 'missing backbone',
                                  'image listed twice', 'landmark far outside', 'nothing to train'])
def test_refused_input_leaves_no_save_folder(case, tmp_path, backbone, capsys, monkeypatch, restore_logging):
    """Every input is checked before --save_folder is made: a refused run leaves no folder,
    no lock and no log (a missing --val_dataset used to leave all three)."""
    faces = _real_faces(FACE_IMAGE)
    entries = [(FACE_IMAGE, faces)]
    label = tmp_path / 'label.txt'
    out = tmp_path / 'out'
    flags = ['--pretrained', backbone]
    if case == 'missing --val_dataset':
        flags += ['--val_dataset', tmp_path / 'no_such_val' / 'label.txt']
        expected = f"error: --val_dataset not found: {tmp_path}/no_such_val/label.txt"
    elif case == 'missing --resume':
        flags += ['--resume', tmp_path / 'no_such_state.pth']
        expected = f"error: training state not found: {tmp_path}/no_such_state.pth"
    elif case == 'bad --resume_net':
        (tmp_path / 'weights.pth').write_text('not weights\n')
        flags += ['--resume_net', tmp_path / 'weights.pth']
        expected = f"error: {tmp_path}/weights.pth"
    elif case == 'missing backbone':
        flags = ['--pretrained', tmp_path / 'no_such_backbone.tar']
        expected = f"error: pretrained backbone not found: {tmp_path}/no_such_backbone.tar"
    elif case == 'image listed twice':  # T1: it trained twice an epoch without a word
        entries = [(FACE_IMAGE, faces), (BIG_FACES_IMAGE, []), (FACE_IMAGE, faces)]
        expected = (f"error: {label}:1 and {label}:{len(faces) + 3}: duplicate entry '{FACE_IMAGE}' (each image "
                    f"is listed once")
    elif case == 'landmark far outside':  # T3: accepted, with a landmark loss of 263 against about 20
        entries = [(BIG_FACES_IMAGE, _landmark_far_away(_real_faces(BIG_FACES_IMAGE)))]
        expected = f"error: {label}:2: landmark 3 (5000, -5000) is far outside its face's box"
    else:  # T11: it returned at once, with status 0 and no word
        (tmp_path / 'weights.pth').write_bytes(need_shared('weights', 'mobilenet0.25_Final.pth').read_bytes())
        flags += ['--resume_net', tmp_path / 'weights.pth', '--resume_epoch', 5, '--max_epoch', 2]
        expected = ("error: nothing to train: --resume_epoch 5 starts after epoch 5, and the run ends at epoch 2 "
                    "(--max_epoch); pass a --max_epoch larger than 5")
    _label_file(tmp_path, entries)
    status, output = _cli(['--training_dataset', label, '--save_folder', out, '--device', 'cpu', '--num_workers', 0,
                           '--image_size', 64, *flags], capsys, monkeypatch)
    assert status == 1
    lines = output.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), output.err
    assert not out.exists()


def test_resume_epoch_at_the_last_epoch_leaves_nothing_to_train(subset, backbone, tmp_path):
    with pytest.raises(ValueError, match=r'^nothing to train: --resume_epoch 3 starts after epoch 3, and the run '
                                         r'ends at epoch 3'):
        train.main(_args(subset, tmp_path / 'out', backbone, '--max_epoch', '3', '--resume_epoch', '3'))


def test_resume_and_no_resume_together_are_refused(subset, backbone, tmp_path):
    with pytest.raises(ValueError, match=r'^give either --resume .* or --no-resume .*, not both'):
        train.main(_args(subset, tmp_path / 'out', backbone, '--resume', str(tmp_path / 'state.pth'), '--no-resume'))
    assert not (tmp_path / 'out').exists()


# --------------------------------------------------------------------------- another run's files (T9, T10)

@pytest.fixture(scope='module')
def finished_run(subset, backbone, tmp_path_factory):
    """The --save_folder of a finished one-epoch run (2 iterations at 64 px)."""
    out = tmp_path_factory.mktemp('finished')
    assert train.main(_args(subset, out, backbone, '--max_epoch', '1', '--image_size', '64')).exit_code == 0
    return out


def test_resume_of_a_stopped_run_at_its_last_epoch_is_an_error(finished_run, subset, backbone, tmp_path):
    """T11 for --resume: a run stopped after epoch 1 of 4, resumed with --max_epoch 1. (Of a
    finished run it is not an error: tests/test_validation.py.)"""
    state = torch.load(finished_run / f'{NAME}_last_state.pth', map_location='cpu', weights_only=True)
    state['max_iter'] = 4 * state['epoch_size']
    torch.save(state, tmp_path / 'state.pth')
    with pytest.raises(ValueError, match=rf'^nothing to train: {tmp_path}/state\.pth is at the end of epoch 1, and '
                                         r'the run ends at epoch 1 \(--max_epoch\); pass a --max_epoch larger than 1 '
                                         r'\(its run was to end at epoch 4\)$'):
        train.main(_args(subset, tmp_path / 'out', backbone, '--max_epoch', '1', '--image_size', '64',
                         '--resume', str(tmp_path / 'state.pth')))
    assert not (tmp_path / 'out').exists()


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() or p.is_symlink()}


def test_fresh_run_into_a_finished_run_is_refused_naming_the_ways_out(finished_run, subset, backbone, capsys,
                                                                      monkeypatch, restore_logging):
    """T9: it exited 0, its Final.pth, resumable state and metrics replaced."""
    before = _contents(finished_run)
    calls = _count_forward_calls(monkeypatch)
    status, output = _cli(['--training_dataset', subset, '--save_folder', finished_run, '--device', 'cpu',
                           '--num_workers', 0, '--image_size', 64, '--pretrained', backbone, '--max_epoch', 1],
                          capsys, monkeypatch)
    assert status == 1 and calls == []
    assert output.err.splitlines() == [
        f"error: --save_folder {finished_run} holds the files of an earlier training run: {NAME}_Final.pth, "
        f"{NAME}_last_state.pth, {NAME}_metrics.jsonl, {NAME}_metrics.png and 1 more ({finished_run}/{NAME}_run.json)."
        f" To keep them, continue it with --resume {finished_run}/{NAME}_last_state.pth, or choose another "
        f"--save_folder; to replace that run, pass --no-resume (its files are removed first)"]
    assert _contents(finished_run) == before  # not even the log copy was appended to


def test_no_resume_replaces_exactly_the_recorded_run(finished_run, subset, backbone, tmp_path, caplog):
    """--no-resume removes the files <name>_run.json lists, then trains afresh; a user's file
    and another network's run stay."""
    folder = tmp_path / 'run'
    shutil.copytree(finished_run, folder)
    theirs = {'notes.txt': b'my notes\n', 'Resnet50_Final.pth': b'another network\n'}
    for name, data in theirs.items():
        (folder / name).write_bytes(data)
    old_record = json.loads((folder / f'{NAME}_run.json').read_text())
    with caplog.at_level(logging.WARNING, logger='utils.run_manifest'):
        result = train.main(_args(subset, folder, backbone, '--max_epoch', '1', '--image_size', '64', '--no-resume'))
    assert result.exit_code == 0
    assert f'removed the 5 files of an earlier training run from {folder} (--no-resume)' in caplog.text
    assert all((folder / name).read_bytes() == data for name, data in theirs.items())
    # The log and the record are the new run's alone.
    assert (folder / f'{NAME}_train.log').read_text().count('train.py --training_dataset') == 1
    new_record = json.loads((folder / f'{NAME}_run.json').read_text())
    assert new_record['settings']['run_id'] != old_record['settings']['run_id']


def test_resume_into_another_runs_folder_is_refused(finished_run, subset, backbone, tmp_path):
    """--resume of one run's state into a folder that another run's record owns."""
    folder = tmp_path / 'other'
    shutil.copytree(finished_run, folder)
    record = json.loads((folder / f'{NAME}_run.json').read_text())
    record['settings']['run_id'] = 'another0run'
    (folder / f'{NAME}_run.json').write_text(json.dumps(record))
    before = _contents(folder)
    with pytest.raises(ValueError, match=rf'^--save_folder {folder} holds the files of another training run '
                                         rf'\({folder}/{NAME}_run\.json: run_id "another0run" -> "\w+"\), not of the '
                                         rf'run {finished_run}/{NAME}_last_state\.pth continues'):
        train.main(_args(subset, folder, backbone, '--max_epoch', '2', '--image_size', '64',
                         '--resume', str(finished_run / f'{NAME}_last_state.pth')))
    assert _contents(folder) == before


@pytest.fixture(params=['link', 'copy'])
def user_folder(request, tmp_path, monkeypatch):
    """A user's working folder, the current one: weights/ holds the published weights (a
    link into the shared folder, as in CI, or a downloaded copy) and the backbone."""
    published = need_shared('weights', 'mobilenet0.25_Final.pth')
    weights = tmp_path / 'weights'
    weights.mkdir()
    if request.param == 'link':
        (weights / f'{NAME}_Final.pth').symlink_to(published)
    else:
        shutil.copyfile(published, weights / f'{NAME}_Final.pth')
    (weights / 'mobilenetV1X0.25_pretrain.tar').symlink_to(need_shared('weights', 'mobilenetV1X0.25_pretrain.tar'))
    monkeypatch.chdir(tmp_path)
    return weights, published


@pytest.mark.parametrize('flags', [[], ['--no-resume'], ['--resume']], ids=['fresh', 'no-resume', 'resume'])
def test_default_save_folder_never_replaces_the_published_weights(user_folder, flags, subset, finished_run, capsys,
                                                                  monkeypatch, restore_logging):
    """T10: `train.py --training_dataset X` with the default --save_folder ./weights/ replaced
    the published weights/mobilenet0.25_Final.pth (which detect.py loads by default) with a
    one-epoch model. Now it refuses up front, whatever the flags."""
    weights, published = user_folder
    assert train.get_args_parser().get_default('save_folder') == './weights/'  # the reference's, kept
    published_bytes = published.read_bytes()
    listing = {p.name: (p.is_symlink(), p.stat().st_ino) for p in weights.iterdir()}
    if flags == ['--resume']:
        flags = ['--resume', finished_run / f'{NAME}_last_state.pth', '--max_epoch', 2]
    calls = _count_forward_calls(monkeypatch)
    status, output = _cli(['--training_dataset', subset, '--device', 'cpu', '--num_workers', 0, '--image_size', 64,
                           *flags], capsys, monkeypatch)
    assert status == 1 and calls == []
    way_out = (f"Resume into another folder (--save_folder OTHER --resume {finished_run}/{NAME}_last_state.pth)"
               if '--resume' in flags else "Pass --save_folder FOLDER to train into another folder")
    assert output.err.splitlines() == [
        f"error: --save_folder ./weights/ holds {NAME}_Final.pth, which no training run of this project recorded "
        f"making: train.py never replaces a file it did not make (such as the published weights), whatever the "
        f"flags. {way_out}"]
    assert {p.name: (p.is_symlink(), p.stat().st_ino) for p in weights.iterdir()} == listing  # no lock, no record
    assert (weights / f'{NAME}_Final.pth').read_bytes() == published_bytes == published.read_bytes()


def test_a_save_folder_of_an_older_train_py_resumes_as_before(finished_run, subset, backbone, tmp_path):
    """An older train.py kept no <name>_run.json: its run's state says whose files they are,
    so that --resume in its folder works as it did."""
    folder = tmp_path / 'older'
    shutil.copytree(finished_run, folder)
    (folder / f'{NAME}_run.json').unlink()
    state_path = folder / f'{NAME}_last_state.pth'
    run_id = torch.load(state_path, map_location='cpu', weights_only=True)['history']['run_id']
    result = train.main(_args(subset, folder, backbone, '--max_epoch', '2', '--image_size', '64',
                              '--resume', str(state_path)))
    assert result.exit_code == 0 and result.iteration == 2 * EPOCH_SIZE
    assert json.loads((folder / f'{NAME}_run.json').read_text())['settings']['run_id'] == run_id
    # A fresh run there is refused as over any earlier run, and --no-resume replaces it.
    (folder / f'{NAME}_run.json').unlink()
    with pytest.raises(ValueError, match=rf"holds the files of an earlier training run: .* \(an older version's run: "
                                         rf"{folder}/{NAME}_last_state\.pth\)\. To keep them, continue it"):
        train.main(_args(subset, folder, backbone, '--max_epoch', '1', '--image_size', '64'))
    assert train.main(_args(subset, folder, backbone, '--max_epoch', '1', '--image_size', '64',
                            '--no-resume')).exit_code == 0


def test_an_unfinished_older_run_never_replaces_the_published_weights_beside_it(finished_run, subset, backbone,
                                                                                tmp_path):
    """Its state had not finished, so the Final.pth beside it is not its own."""
    weights = tmp_path / 'weights'
    weights.mkdir()
    published = need_shared('weights', 'mobilenet0.25_Final.pth')
    (weights / f'{NAME}_Final.pth').symlink_to(published)
    state = torch.load(finished_run / f'{NAME}_last_state.pth', map_location='cpu', weights_only=True)
    state['max_iter'] = 4 * state['epoch_size']
    torch.save(state, weights / f'{NAME}_last_state.pth')
    with pytest.raises(ValueError, match=rf'^--save_folder {weights} holds {NAME}_Final\.pth, which no training run '
                                         r'of this project recorded making'):
        train.main(_args(subset, weights, backbone, '--max_epoch', '4', '--image_size', '64',
                         '--resume', str(weights / f'{NAME}_last_state.pth')))
    assert sorted(p.name for p in weights.iterdir()) == [f'{NAME}_Final.pth', f'{NAME}_last_state.pth']
    assert (weights / f'{NAME}_Final.pth').is_symlink()


def test_no_resume_never_removes_a_file_the_run_reads(finished_run, subset, backbone, tmp_path):
    """Fine-tuning from the earlier run's epoch 10 checkpoint, in its folder: --no-resume would
    have removed the very weights the run starts from."""
    folder = tmp_path / 'run'
    shutil.copytree(finished_run, folder)
    shutil.copyfile(folder / f'{NAME}_Final.pth', folder / f'{NAME}_epoch_10.pth')
    record = json.loads((folder / f'{NAME}_run.json').read_text())
    record['files'].append(f'{NAME}_epoch_10.pth')
    (folder / f'{NAME}_run.json').write_text(json.dumps(record))
    before = _contents(folder)
    with pytest.raises(ValueError, match=rf'^--no-resume would remove {folder}/{NAME}_epoch_10\.pth, which this run '
                                         rf'reads: copy it out of --save_folder {folder} first'):
        train.main(_args(subset, folder, backbone, '--max_epoch', '1', '--image_size', '64', '--no-resume',
                         '--resume_net', str(folder / f'{NAME}_epoch_10.pth')))
    assert _contents(folder) == before
