"""Issue 17, second audit: inputs a hostile user gives the scripts (device files, FIFOs, file
names that are not UTF-8, glob characters in real names, images without an extension,
--json over an input, absurd --threads, BOM'd and binary text inputs, huge photos at the
original size, a folder given as the weights)."""
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import detect
import test_fddb as fddb_script
import test_widerface as wider_script
from tests.conftest import golden_image_path, need_shared
from utils.cli import run_cli
from utils.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ['val416_0_Parade_Parade_0_102', 'val416_0_Parade_Parade_0_125', 'val416_0_Parade_Parade_0_137']
BOM = b'\xef\xbb\xbf'
# Bytes no UTF-8 decoder accepts, with a NUL among them: what a photo or a checkpoint starts like.
BINARY = b'\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x80\x81\xfe' * 8


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


def _run_detect(weights, *argv):
    return run_cli(detect.main, detect.get_args_parser(), ['-m', weights, *map(str, argv)])


def _script(args, timeout=120, **kwargs):
    """Run python args in the project root as a subprocess; CompletedProcess with text output."""
    return subprocess.run([sys.executable, *map(os.fsdecode, args)], cwd=ROOT, capture_output=True, timeout=timeout,
                          **kwargs)


def _limit_memory():
    # So that a regression reading /dev/zero fails with MemoryError instead of taking the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


# -- B1, B2: device files and FIFOs are refused without being read ---------------------------------------

def test_read_image_refuses_dev_zero_without_reading_it():
    code = ("from utils.image import read_image\n"
            "from utils.errors import InputError\n"
            "try:\n    read_image('/dev/zero')\nexcept InputError as e:\n    print('refused:', e)\n")
    done = _script(['-c', code], timeout=60, preexec_fn=_limit_memory)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == "refused: /dev/zero is a character device, not an image file"


def test_detect_dev_zero_is_a_one_line_error(weights, capsys):
    assert _run_detect(weights, '--image', '/dev/zero', '--no-save_image') == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: /dev/zero is a character device, not an image file")


def test_detect_fifo_image_is_refused_without_hanging(weights, tmp_path):
    fifo = tmp_path / 'photo.jpg'
    os.mkfifo(fifo)
    done = _script(['detect.py', '-m', weights, '--image', fifo, '--no-save_image', '--cpu'], timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode().strip().splitlines()[-1] == f"error: {fifo} is a FIFO, not an image file"


def test_widerface_fifo_in_the_list_is_skipped_and_the_rest_runs(weights, tmp_path):
    images = tmp_path / 'images' / 'ev'
    images.mkdir(parents=True)
    shutil.copyfile(golden_image_path(PHOTOS[0]), images / 'a.jpg')
    os.mkfifo(images / 'b.jpg')
    shutil.copyfile(golden_image_path(PHOTOS[1]), images / 'c.jpg')
    (tmp_path / 'wider_val.txt').write_text("ev/a.jpg\nev/b.jpg\nev/c.jpg\n")
    out = tmp_path / 'out'
    done = _script(['test_widerface.py', '-m', weights, '--network', 'mobile0.25', '--cpu',
                    '--dataset_folder', tmp_path / 'images', '--save_folder', out], timeout=90)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sorted(p.name for p in (out / 'ev').iterdir()) == ['a.txt', 'c.txt']
    assert f"{images / 'b.jpg'}: {images / 'b.jpg'} is a FIFO, not an image file" in done.stderr.decode()


# -- B3: a file name that is not UTF-8 ------------------------------------------------------------------

def test_detect_non_utf8_file_name_is_written_and_named_in_the_json(weights, tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    raw_name = b'caf\xe9.jpg'
    shutil.copyfile(golden_image_path(PHOTOS[0]), os.path.join(os.fsencode(folder), raw_name))
    out, dets = tmp_path / 'out', tmp_path / 'dets.json'
    done = _script(['detect.py', '-m', weights, '--cpu', '--image', folder, '--output', out, '--json', dets],
                   timeout=90)
    assert done.returncode == 0, done.stderr.decode('utf-8', 'replace')[-2000:]
    annotated = os.path.join(os.fsencode(out), raw_name)
    assert cv2.imdecode(np.fromfile(annotated, np.uint8), cv2.IMREAD_COLOR).shape == (416, 416, 3)
    shown = os.fsdecode(os.path.join(os.fsencode(folder), raw_name)).encode('utf-8', 'surrogateescape') \
        .decode('utf-8', 'backslashreplace')
    assert shown.endswith('caf\\xe9.jpg')
    assert done.stdout.decode('utf-8').startswith(f"{shown}: ")
    payload = json.loads(dets.read_bytes().decode('utf-8'))  # valid UTF-8, no lone surrogates
    (image,) = payload['images']
    assert image['image'] == shown
    assert bytes.fromhex(image['image_path_hex']) == os.path.join(os.fsencode(folder), raw_name)
    assert image['detections']


def test_json_text_keeps_valid_utf8_names_as_they_are():
    assert detect.json_path_fields('photos/été.jpg') == {'image': 'photos/été.jpg'}
    assert detect.json_path_fields(os.fsdecode(b'x/\xff.jpg')) == {'image': 'x/\\xff.jpg',
                                                                  'image_path_hex': b'x/\xff.jpg'.hex()}


# -- B4: an existing file whose name has glob characters ---------------------------------------------------

def test_detect_existing_file_with_glob_characters_is_that_file(weights, tmp_path):
    shutil.copyfile(golden_image_path(PHOTOS[0]), tmp_path / 'photo[1].jpg')
    shutil.copyfile(golden_image_path(PHOTOS[1]), tmp_path / 'photo1.jpg')
    assert detect.list_images(str(tmp_path / 'photo[1].jpg')) == [str(tmp_path / 'photo[1].jpg')]
    # Still a glob when no such file exists.
    assert detect.list_images(str(tmp_path / 'photo[12].jpg')) == [str(tmp_path / 'photo1.jpg')]


# -- B5: an image without an extension, matched by a glob -------------------------------------------------

def test_detect_image_without_extension_gets_a_jpg_copy(weights, tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    shutil.copyfile(golden_image_path(PHOTOS[0]), folder / 'snapshot')
    shutil.copyfile(golden_image_path(PHOTOS[1]), folder / 'other.jpg')
    out = tmp_path / 'out'
    assert _run_detect(weights, '--image', folder / '*', '--output', out) == 0
    stdout = capsys.readouterr().out
    assert f"-> {out / 'snapshot.jpg'}\n" in stdout
    assert sorted(p.name for p in out.iterdir()) == ['other.jpg', 'snapshot.jpg']
    assert cv2.imread(str(out / 'snapshot.jpg')).shape == (416, 416, 3)


def test_detect_two_inputs_with_one_output_name_are_refused_before_any_work(weights, tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    shutil.copyfile(golden_image_path(PHOTOS[0]), folder / 'snap')
    shutil.copyfile(golden_image_path(PHOTOS[1]), folder / 'snap.jpg')
    assert _run_detect(weights, '--image', folder / '*', '--output', tmp_path / 'out') == 1
    out, err = capsys.readouterr()
    assert out == ''
    assert err.strip().splitlines()[-1] == (
        f"error: {folder / 'snap'} and {folder / 'snap.jpg'} would both be written to {tmp_path / 'out' / 'snap.jpg'} "
        f"(--output {tmp_path / 'out'}): rename one of them")
    assert not (tmp_path / 'out').exists()


# -- B6: --json over an input or an output of the same run --------------------------------------------------

def test_detect_json_over_an_input_photo_is_refused(weights, tmp_path, capsys):
    photo = tmp_path / 'photo.jpg'
    shutil.copyfile(golden_image_path(PHOTOS[0]), photo)
    before = photo.read_bytes()
    assert _run_detect(weights, '--image', photo, '--no-save_image', '--json', photo) == 1
    out, err = capsys.readouterr()
    assert out == '' and photo.read_bytes() == before
    assert err.strip().splitlines()[-1] == (f"error: --json {photo} would overwrite the input image {photo} "
                                            f"(--image) with the detections: choose another --json")


def test_detect_json_over_an_annotated_output_is_refused(weights, tmp_path, capsys):
    photo = tmp_path / 'in' / 'photo.jpg'
    photo.parent.mkdir()
    shutil.copyfile(golden_image_path(PHOTOS[0]), photo)
    out = tmp_path / 'out'
    assert _run_detect(weights, '--image', photo, '--output', out, '--json', out / 'photo.jpg') == 1
    stdout, err = capsys.readouterr()
    assert stdout == '' and not out.exists()
    assert err.strip().splitlines()[-1] == (
        f"error: --json {out / 'photo.jpg'} and --output {out} would both write {out / 'photo.jpg'} (the annotated "
        f"copy of {photo}): only one would survive; choose another --json")


# -- --threads has an upper bound ----------------------------------------------------------------------------

@pytest.mark.parametrize('script', ['detect', 'test_widerface', 'test_fddb', 'train', 'convert_to_onnx'])
def test_threads_above_the_bound_is_a_usage_error(script, capsys):
    import importlib

    from utils.cli import max_threads
    parser = importlib.import_module(script).get_args_parser
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(['--threads', '100000'])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: argument --threads: expected an integer in [1, {max_threads()}], got '100000'")
    assert parser().parse_args(['--threads', '256']).threads == 256


def test_thread_bound_is_at_least_256_and_four_per_core(monkeypatch):
    from utils import cli
    monkeypatch.setattr(cli.os, 'cpu_count', lambda: 2)
    assert cli.max_threads() == 256
    monkeypatch.setattr(cli.os, 'cpu_count', lambda: 128)
    assert cli.max_threads() == 512
    monkeypatch.setattr(cli.os, 'cpu_count', lambda: None)
    assert cli.max_threads() == 256


# -- text inputs: a BOM is ignored, a binary file is a one-line error ----------------------------------------

def _bom_and_binary(tmp_path, name, text):
    """(plain file, the same with a UTF-8 BOM, a binary file) named name in three folders."""
    paths = []
    for sub, data in (('plain', text.encode()), ('bom', BOM + text.encode()), ('binary', BINARY)):
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / name).write_bytes(data)
        paths.append(tmp_path / sub / name)
    return paths


def _same_with_bom_error_when_binary(tmp_path, name, text, read, equal=None):
    """read(plain) and read(BOM'd) agree (equal(a, b) asserts it, else ==); read(binary)
    is one InputError line naming the file. Returns read(plain)."""
    plain, bom, binary = _bom_and_binary(tmp_path, name, text)
    a, b = read(plain), read(bom)
    if equal is None:
        assert a == b
    else:
        equal(a, b)
    with pytest.raises(InputError) as info:
        read(binary)
    message = str(info.value)
    assert str(binary) in message and 'not a UTF-8 text file' in message and '\n' not in message
    return a


LABEL = "# 0--Parade/a.jpg\n10 20 30 40\n# 0--Parade/b.jpg\n1 2 3 4\n5 6 7 8\n"


def test_label_file_with_bom_and_binary(tmp_path):
    from data.label_file import read_label_file

    def equal(a, b):
        assert [n for n, _ in a] == [n for n, _ in b] == ['0--Parade/a.jpg', '0--Parade/b.jpg']
        assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
    _same_with_bom_error_when_binary(tmp_path, 'label.txt', LABEL, read_label_file, equal)


def test_split_labels_with_bom(tmp_path):
    from data.split_labels import split_blocks
    plain, bom, _ = _bom_and_binary(tmp_path, 'label.txt', LABEL)
    assert split_blocks(bom, 2) == split_blocks(plain, 2) == (
        [['# 0--Parade/b.jpg', '1 2 3 4', '5 6 7 8']], [['# 0--Parade/a.jpg', '10 20 30 40']])


def test_wider_image_list_with_bom_and_binary(tmp_path):
    names = _same_with_bom_error_when_binary(tmp_path, 'wider_val.txt', "/0--Parade/a.jpg\n1--Handshaking/b.jpg\n",
                                             wider_script.read_image_list)
    assert names == ['0--Parade/a.jpg', '1--Handshaking/b.jpg']


def test_fddb_image_list_with_bom_and_binary(weights, tmp_path, capsys):
    plain, bom, binary = _bom_and_binary(tmp_path, 'img_list.txt', "2002/08/11/big/img_591\n")
    images = tmp_path / 'images' / '2002' / '08' / '11' / 'big'
    images.mkdir(parents=True)
    shutil.copyfile(golden_image_path(PHOTOS[0]), images / 'img_591.jpg')
    blocks = []
    for i, listed in enumerate((plain, bom)):
        status = run_cli(fddb_script.main, fddb_script.get_args_parser(),
                         ['-m', weights, '--network', 'mobile0.25', '--cpu', '--image_list', str(listed),
                          '--images_folder', str(tmp_path / 'images'),
                          '--save_folder', str(tmp_path / f'out{i}')])
        assert status == 0
        blocks.append((tmp_path / f'out{i}' / 'FDDB_dets.txt').read_text())
    assert blocks[0] == blocks[1] and blocks[0].startswith('2002/08/11/big/img_591\n')
    capsys.readouterr()
    status = run_cli(fddb_script.main, fddb_script.get_args_parser(),
                     ['-m', weights, '--image_list', str(binary), '--save_folder', str(tmp_path / 'out2')])
    assert status == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: image list {binary}:1: not a UTF-8 text file")


def test_wider_prediction_file_with_bom_and_binary(tmp_path):
    from widerface_evaluate.evaluation import read_pred_file

    def equal(a, b):
        assert a[0] == b[0] == 'a' and np.array_equal(a[1], b[1]) and a[1].shape == (1, 5)
    _same_with_bom_error_when_binary(tmp_path, 'a.txt', "a\n1\n1 2 3 4 0.9 \n", read_pred_file, equal)


def test_fddb_ellipses_detections_and_fold_list_with_bom_and_binary(tmp_path):
    from fddb_evaluate.evaluation import load_detections, load_ellipse_list, read_fold_list

    def equal(a, b):
        assert list(a) == list(b) == ['2002/08/11/big/img_591']
        assert all(np.array_equal(a[k], b[k]) for k in a)
    _same_with_bom_error_when_binary(tmp_path, 'ellipses.txt', "2002/08/11/big/img_591\n1\n40 30 1.2 100 90 1\n",
                                     load_ellipse_list, equal)
    _same_with_bom_error_when_binary(tmp_path, 'dets.txt', "2002/08/11/big/img_591\n1.0\n10 20 30 40 0.9\n",
                                     load_detections, equal)
    assert _same_with_bom_error_when_binary(tmp_path, 'fold.txt', "2002/08/11/big/img_591\n",
                                            lambda p: read_fold_list(p, ['2002/08/11/big/img_591'])) == \
        ['2002/08/11/big/img_591']


def test_metrics_records_with_bom_and_binary(tmp_path):
    pytest.importorskip('matplotlib')
    from curve.plot_metrics import read_records
    records = _same_with_bom_error_when_binary(tmp_path, 'metrics.jsonl', '{"epoch": 1, "loss": 2.5}\n', read_records)
    assert records == [{'epoch': 1, 'loss': 2.5}]


def test_validation_label_file_with_bom_and_binary(tmp_path):
    from widerface_evaluate.validation import load_validation_set
    plain, bom, binary = _bom_and_binary(tmp_path, 'label.txt', "# a.jpg\n10 20 30 40\n")
    for folder in (plain.parent, bom.parent):
        (folder / 'images').mkdir()
        shutil.copyfile(golden_image_path(PHOTOS[0]), folder / 'images' / 'a.jpg')
    assert load_validation_set(bom).keys == load_validation_set(plain).keys == ['a']
    with pytest.raises(InputError, match='not a UTF-8 text file'):
        load_validation_set(binary)


def test_text_input_errors(tmp_path):
    from utils.input_files import open_text
    with pytest.raises(InputError, match=rf"^image list {tmp_path} is a folder, not a text file$"):
        open_text(tmp_path, 'image list')
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"fifo is a FIFO, not a text file$"):
        open_text(fifo, 'image list')
    (tmp_path / 'nul.txt').write_bytes(b'a.jpg\n\x00b.jpg\n')
    with pytest.raises(InputError, match=r"nul\.txt:2: not a UTF-8 text file \(a NUL byte"):
        open_text(tmp_path / 'nul.txt', 'image list')
    (tmp_path / 'latin.txt').write_bytes(b'a.jpg\ncaf\xe9.jpg\n')
    with pytest.raises(InputError, match=r"latin\.txt:2: not a UTF-8 text file \(byte 0xe9"):
        open_text(tmp_path / 'latin.txt')
    if os.geteuid() != 0:
        (tmp_path / 'secret.txt').write_text('x')
        (tmp_path / 'secret.txt').chmod(0)
        with pytest.raises(InputError, match='cannot read'):
            open_text(tmp_path / 'secret.txt')
    # Line endings are read as open() reads them.
    (tmp_path / 'crlf.txt').write_bytes(BOM + b'a\r\nb\rc\n')
    with open_text(tmp_path / 'crlf.txt') as f:
        assert list(f) == ['a\n', 'b\n', 'c\n']


# -- a very large image at the original size gives a hint, once ---------------------------------------------

def _hints(caplog):
    return [r for r in caplog.records if r.name == 'models.detector' and r.levelno >= logging.WARNING]


def test_large_image_at_origin_size_logs_one_hint(weights, caplog):
    from models.detector import load_detector
    detector = load_detector('mobile0.25', weights,
                             large_image_hints=('--origin_size false detects at the test scale instead',))
    detector.large_image_pixels = 100 * 100
    small = np.zeros((64, 64, 3), np.uint8)
    big = np.zeros((128, 128, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger='models.detector'):
        detector.preprocess([small])
        assert not _hints(caplog)
        detector.preprocess([big])
        detector.preprocess([big])
    (record,) = _hints(caplog)
    assert record.getMessage() == (
        "a 128x128 image goes into the network at its original size (0.02 megapixels): slow, and memory-hungry; "
        "--origin_size false detects at the test scale instead (this hint is shown once)")


def test_large_image_hint_not_given_at_the_test_scale(weights, caplog):
    from models.detector import load_detector
    detector = load_detector('mobile0.25', weights, origin_size=False)
    detector.large_image_pixels = 100 * 100
    with caplog.at_level(logging.WARNING, logger='models.detector'):
        detector.preprocess([np.zeros((128, 128, 3), np.uint8)])
    assert not _hints(caplog)


def test_detect_names_origin_size_in_the_large_image_hint(weights, monkeypatch, tmp_path, capsys):
    import models.detector
    monkeypatch.setattr(models.detector, 'LARGE_IMAGE_PIXELS', 100 * 100)
    folder = tmp_path / 'in'
    folder.mkdir()
    for name in PHOTOS[:2]:
        shutil.copyfile(golden_image_path(name), folder / f'{name}.jpg')
    assert _run_detect(weights, '--image', folder, '--no-save_image') == 0
    hints = [line for line in capsys.readouterr().err.splitlines() if 'megapixels' in line]
    assert hints == ["a 416x416 image goes into the network at its original size (0.17 megapixels): slow, and "
                     "memory-hungry; --origin_size false detects at the test scale instead; --max_size 2048 detects "
                     "at a smaller size; --tile 2048 detects in tiles in bounded memory (this hint is shown once)"]


def test_detect_origin_size_false_runs_at_the_test_scale(weights, tmp_path):
    assert detect.get_args_parser().parse_args([]).origin_size is True  # the reference's detect.py: original size
    photo = golden_image_path(PHOTOS[0])
    found = []
    for flag in ('true', 'false'):
        assert _run_detect(weights, '--image', photo, '--no-save_image', '--origin_size', flag,
                           '--json', tmp_path / f'{flag}.json') == 0
        found.append(json.loads((tmp_path / f'{flag}.json').read_text())['images'][0]['detections'])
    assert found[0] and found[1] and found[0] != found[1]


# -- a folder given as the weights ----------------------------------------------------------------------

def test_detect_weights_folder_says_it_is_a_folder(tmp_path, capsys):
    (tmp_path / 'mobilenet0.25_Final.pth').write_bytes(b'not used')
    assert _run_detect(str(tmp_path), '--image', golden_image_path(PHOTOS[0]), '--no-save_image') == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: weights {tmp_path} is a folder, not a weights file (it holds mobilenet0.25_Final.pth): "
        f"pass the file itself with -m/--trained_model")


def test_onnx_model_folder_says_it_is_a_folder(tmp_path, capsys):
    assert run_cli(detect.main, detect.get_args_parser(),
                   ['--onnx_model', str(tmp_path), '--image', str(golden_image_path(PHOTOS[0])),
                    '--no-save_image']) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: ONNX model {tmp_path} is a folder, not an .onnx file")


def test_checkpoint_loader_says_a_folder_is_a_folder(tmp_path):
    from utils.checkpoint import load_state_dict_file
    with pytest.raises(InputError, match=rf"^checkpoint {tmp_path} is a folder, not a checkpoint file$"):
        load_state_dict_file(tmp_path)


# -- plain mistakes that escaped as tracebacks --------------------------------------------------------------

def test_wider_image_list_permission_or_folder_is_a_one_line_error(weights, tmp_path, capsys):
    status = run_cli(wider_script.main, wider_script.get_args_parser(),
                     ['-m', weights, '--image_list', str(tmp_path), '--save_folder', str(tmp_path / 'out')])
    assert status == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"error: image list {tmp_path} is a folder, not a text file"


def test_a_fifo_named_like_a_result_is_not_read(tmp_path):
    """A FIFO in --save_folder named like a prediction or FDDB part would block the run on
    open(); it is never a result."""
    fifo = tmp_path / 'x.txt'
    os.mkfifo(fifo)
    assert not wider_script.is_complete(str(fifo), 'x')
    assert not wider_script.looks_like_prediction(str(fifo))
    assert fddb_script._read_text(str(fifo)) == ''


def test_an_earlier_result_is_judged_as_the_evaluation_reads_it(tmp_path):
    """A prediction file that an editor saved with a byte-order mark and CRLF line ends still
    evaluates (widerface_evaluate reads it with utils.input_files.read_text), so a resumed run
    keeps it; one cut short, or with bytes that are not UTF-8, is redone."""
    from widerface_evaluate.evaluation import read_pred_file
    text = 'x\n1\n1.0 2.0 3.0 4.0 0.9\n'
    saved = tmp_path / 'x.txt'
    saved.write_bytes(b'\xef\xbb\xbf' + text.replace('\n', '\r\n').encode())
    assert read_pred_file(str(saved))[0] == 'x'
    assert wider_script.is_complete(str(saved), 'x') and wider_script.looks_like_prediction(str(saved))
    assert fddb_script._read_text(str(saved)) == text
    saved.write_text(text[:-1])  # the last line's newline not written yet
    assert not wider_script.is_complete(str(saved), 'x')
    saved.write_bytes(text.encode()[:-6] + b'\xff\n')
    assert not wider_script.is_complete(str(saved), 'x') and fddb_script._read_text(str(saved)) == ''
