"""The scripts: test_widerface.py, test_fddb.py, detect.py, convert_to_onnx.py and the benchmark,
run in-process through their main(args) on temporary datasets built from ../shared."""
import json
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import convert_to_onnx
import detect
import test_fddb as fddb_script
import test_widerface as wider_script
from tests.conftest import GOLDEN_IMAGES, VAL416_PREFIX, golden_image_path, need_shared
from tests.detection_match import DETECTION_TOLERANCES, assert_detections_match, assert_wider_files_match
from utils.atomic import LOCK_NAME
from utils.cli import run_cli
from models.detector import Detector, load_detector
from utils.image import read_image

ROOT = Path(__file__).resolve().parent.parent
PHOTOS_EVENT = 'photos'
VAL_EVENT = '0--Parade'


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


@pytest.fixture(scope='module')
def detector(weights):
    return load_detector('mobile0.25', weights)


def _event(name):
    return VAL_EVENT if name.startswith(VAL416_PREFIX) else PHOTOS_EVENT


def _link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


@pytest.fixture(scope='module')
def wider_dataset(tmp_path_factory):
    """val/images/<event>/<golden name>.jpg -> the shared photos, and val/wider_val.txt listing
    them in both of the list's forms ('event/name.jpg' and '/event/name.jpg')."""
    root = tmp_path_factory.mktemp('widerface')
    lines = []
    for i, name in enumerate(GOLDEN_IMAGES):
        rel = f"{_event(name)}/{name}.jpg"
        _link(golden_image_path(name), root / 'val' / 'images' / rel)
        lines.append(('/' if i % 2 else '') + rel)
    (root / 'val' / 'wider_val.txt').write_text("\n".join(lines) + "\n")
    return root / 'val' / 'images'


def _golden_text(name, kind):
    return need_shared('golden', 'mnet', f'{name}_{kind}.txt').read_text()


def _golden_dets(name):
    return np.load(need_shared('golden', 'mnet', f'{name}_dets.npy'))


def _assert_end_to_end(dets, golden_dets, text, golden_text, expected_text):
    """A script's file against the reference's, for detections computed on this machine.

    The script writes exactly what the pipeline detects here (expected_text). Where this
    machine's detections equal the reference's bit for bit, so must the file; elsewhere the
    detections agree with the reference's up to float rounding (tests/detection_match.py):
    network outputs differ between CPUs and thread counts in their last bits.
    """
    assert text == expected_text
    if np.array_equal(dets, golden_dets):
        assert text == golden_text
    else:
        assert_detections_match(dets, golden_dets, **DETECTION_TOLERANCES)


def _wider_args(weights, dataset_folder, save_folder, *extra):
    return wider_script.get_args_parser().parse_args(
        ['-m', weights, '--network', 'mobile0.25', '--dataset_folder', str(dataset_folder) + os.sep,
         '--save_folder', str(save_folder) + os.sep, *extra])


# -- test_widerface.py ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def wider_run(weights, wider_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp('wider_out')
    result = wider_script.main(_wider_args(weights, wider_dataset, out))
    return out, result


def test_widerface_writes_every_image(wider_run):
    out, result = wider_run
    assert result['written'] == len(GOLDEN_IMAGES) and result['skipped'] == []
    # No hidden file is left but the folder's lock (kept: see utils.atomic.LOCK_NAME).
    assert not list(out.rglob('*.tmp')) and [p.name for p in out.rglob('.*')] == [LOCK_NAME]


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
def test_widerface_files_match_golden(wider_run, detector, name):
    out, _ = wider_run
    text = (out / _event(name) / f'{name}.txt').read_text()
    dets = detector.detect(read_image(golden_image_path(name)))
    _assert_end_to_end(dets, _golden_dets(name), text, _golden_text(name, 'wider'),
                       wider_script.wider_text(name, dets))


def test_widerface_batches_write_the_bytes_of_one_by_one(wider_run, weights, wider_dataset, tmp_path):
    """--batch_size 3 over the seven photos of four sizes: on the CPU every file is the bytes of
    the default run (a batch runs image by image, each at its own size)."""
    out, _ = wider_run
    result = wider_script.main(_wider_args(weights, wider_dataset, tmp_path / 'b3', '--batch_size', '3'))
    assert result['written'] == len(GOLDEN_IMAGES)
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob('*.txt')}
    assert len(files) == len(GOLDEN_IMAGES)
    assert {p.relative_to(tmp_path / 'b3').as_posix(): p.read_bytes() for p in (tmp_path / 'b3').rglob('*.txt')} \
        == files


def test_widerface_at_test_scale(weights, tmp_path):
    images = tmp_path / 'val' / 'images'
    _link(golden_image_path('test'), images / PHOTOS_EVENT / 'test.jpg')
    (tmp_path / 'val' / 'wider_val.txt').write_text(f"/{PHOTOS_EVENT}/test.jpg\n")
    wider_script.main(_wider_args(weights, images, tmp_path / 'out', '--origin_size', 'False'))
    dets = load_detector('mobile0.25', weights, origin_size=False).detect(read_image(golden_image_path('test')))
    # The golden file is named test_resized but, like the reference's, names the image 'test'.
    _assert_end_to_end(dets, _golden_dets('test_resized'), (tmp_path / 'out' / PHOTOS_EVENT / 'test.txt').read_text(),
                       _golden_text('test_resized', 'wider'), wider_script.wider_text('test', dets))
    assert _golden_text('test_resized', 'wider').splitlines()[1] == '176'


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
def test_files_from_golden_raw_outputs_are_byte_identical(detector, name):
    """The whole post-processing and both file formats, from the reference's network outputs."""
    raw = np.load(need_shared('golden', 'mnet', f'{name}_raw.npz'))
    size = read_image(golden_image_path(name)).shape[:2]
    dets = detector.postprocess(*(torch.from_numpy(raw[k][0]) for k in ('loc', 'conf', 'landms')), size, 1)
    assert wider_script.wider_text(name, dets) == _golden_text(name, 'wider')
    assert fddb_script.fddb_block(name, dets) == _golden_text(name, 'fddb')


@pytest.mark.parametrize('script', [wider_script, fddb_script])
def test_origin_size_parses_both_ways(script):
    parser = script.get_args_parser()
    assert parser.parse_args([]).origin_size is True
    for value, expected in [('False', False), ('false', False), ('0', False), ('no', False),
                            ('True', True), ('true', True), ('1', True), ('yes', True)]:
        assert parser.parse_args(['--origin_size', value]).origin_size is expected, value
    with pytest.raises(SystemExit):
        parser.parse_args(['--origin_size', 'maybe'])


@pytest.mark.parametrize('script', [wider_script, fddb_script])
def test_top_k_flags_default_to_the_reference_behaviour(script):
    parser = script.get_args_parser()
    args = parser.parse_args([])
    assert args.top_k is None and args.keep_top_k is None  # declared but never applied by the reference
    args = parser.parse_args(['--top_k', '5000', '--keep_top_k', '750'])
    assert (args.top_k, args.keep_top_k) == (5000, 750)
    # Turned off (0: all) is not left out (None: the default, which a mode may fill in).
    assert [parser.parse_args(['--keep_top_k', v]).keep_top_k for v in ('-1', '0', 'none', 'off')] == [0] * 4
    assert args.network == 'resnet50' and args.trained_model == './weights/Resnet50_Final.pth'


def test_widerface_list_path_is_beside_the_images_folder():
    for folder in ('./data/widerface/val/images/', './data/widerface/val/images', 'data/widerface/val/images//'):
        assert os.path.normpath(wider_script.image_list_path(folder)) == os.path.normpath(
            'data/widerface/val/wider_val.txt')


def test_widerface_resumes(weights, tmp_path):
    images = tmp_path / 'val' / 'images'
    names = ['val416_0_Parade_Parade_0_102', 'val416_0_Parade_Parade_0_125']
    for n in names:
        _link(golden_image_path(n), images / VAL_EVENT / f'{n}.jpg')
    (tmp_path / 'val' / 'wider_val.txt').write_text("".join(f"{VAL_EVENT}/{n}.jpg\n" for n in names))
    out = tmp_path / 'out'
    args = _wider_args(weights, images, out)
    assert wider_script.main(args)['written'] == 2
    first = {n: (out / VAL_EVENT / f'{n}.txt').read_text() for n in names}
    again = wider_script.main(args)
    assert (again['written'], again['resumed']) == (0, 2)
    # A cut-off file (as a crash of a non-atomic writer would leave) is redone.
    path = out / VAL_EVENT / f'{names[0]}.txt'
    path.write_text(first[names[0]][:40])
    assert wider_script.main(args)['written'] == 1
    assert path.read_text() == first[names[0]]
    assert wider_script.main(_wider_args(weights, images, out, '--no-resume'))['written'] == 2
    assert not list(out.rglob('*.tmp'))


def _bad_images(folder):
    """A folder with good, grayscale, 4-channel, missing, corrupt and truncated images.
    Returns (list lines, the names expected to be skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = read_image(golden_image_path('val416_0_Parade_Parade_0_102'))
    _link(golden_image_path('val416_0_Parade_Parade_0_102'), folder / 'good.jpg')
    cv2.imwrite(str(folder / 'gray.jpg'), cv2.cvtColor(good, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / 'alpha.png'), np.dstack([good, np.full(good.shape[:2], 200, np.uint8)]))
    (folder / 'notes.jpg').write_text('this is not a photo')
    data = golden_image_path('test').read_bytes()
    (folder / 'cut.jpg').write_bytes(data[:len(data) // 3])
    return ['good.jpg', 'gray.jpg', 'alpha.png', 'missing.jpg', 'notes.jpg', 'cut.jpg'], \
        {'missing.jpg', 'notes.jpg', 'cut.jpg'}


def test_widerface_skips_and_reports_bad_images(weights, tmp_path, caplog):
    images = tmp_path / 'val' / 'images'
    names, bad = _bad_images(images / 'ev')
    (tmp_path / 'val' / 'wider_val.txt').write_text("".join(f"ev/{n}\n" for n in names))
    with caplog.at_level(logging.INFO):
        result = wider_script.main(_wider_args(weights, images, tmp_path / 'out'))
    assert result['written'] == 3
    assert {os.path.basename(p) for p, _ in result['skipped']} == bad
    assert 'skipped 3 unreadable images' in caplog.text
    assert 'grayscale' in caplog.text and 'alpha' in caplog.text
    for n in ('good', 'gray', 'alpha'):
        assert (tmp_path / 'out' / 'ev' / f'{n}.txt').is_file()


def test_widerface_fails_when_no_image_can_be_read(weights, tmp_path, capsys):
    images = tmp_path / 'val' / 'images'
    images.mkdir(parents=True)
    (tmp_path / 'val' / 'wider_val.txt').write_text("ev/a.jpg\nev/b.jpg\n")
    argv = ['-m', weights, '--network', 'mobile0.25', '--dataset_folder', str(images), '--save_folder',
            str(tmp_path / 'out')]
    assert run_cli(wider_script.main, wider_script.get_args_parser(), argv) == 1
    assert 'none of the 2 images could be read' in capsys.readouterr().err


def test_widerface_missing_list_is_a_clear_error(weights, tmp_path, capsys):
    argv = ['-m', weights, '--network', 'mobile0.25', '--dataset_folder', str(tmp_path / 'images')]
    assert run_cli(wider_script.main, wider_script.get_args_parser(), argv) == 1
    assert 'wider_val.txt' in capsys.readouterr().err


def test_widerface_results_over_the_image_list_or_weights_are_refused(weights, tmp_path, capsys, monkeypatch):
    """A prediction file (--save_folder/ev/a.txt) that is the image list, and the results
    record over the weights, refused before the detector is built (issue 25)."""
    monkeypatch.setattr(wider_script, 'detector_from_args',
                        lambda *a, **k: pytest.fail('the detector was built before the outputs were checked'))
    images = tmp_path / 'val' / 'images'
    images.mkdir(parents=True)
    image_list = tmp_path / 'out' / 'ev' / 'a.txt'
    image_list.parent.mkdir(parents=True)
    image_list.write_text("ev/a.jpg\n")
    argv = ['-m', weights, '--network', 'mobile0.25', '--dataset_folder', str(images), '--save_folder',
            str(tmp_path / 'out'), '--image_list', str(image_list)]
    assert run_cli(wider_script.main, wider_script.get_args_parser(), argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --save_folder {tmp_path / 'out'} would overwrite the image list {image_list} (--image_list) with the "
        f"prediction file of ev/a.jpg: choose another --save_folder")
    assert image_list.read_text() == "ev/a.jpg\n"
    model = tmp_path / 'out' / 'retinaface_run.json'
    model.write_bytes(b'weights')
    argv = ['-m', str(model), '--dataset_folder', str(images), '--save_folder', str(tmp_path / 'out'),
            '--image_list', str(tmp_path / 'val' / 'wider_val.txt')]
    (tmp_path / 'val' / 'wider_val.txt').write_text("ev/b.jpg\n")
    assert run_cli(wider_script.main, wider_script.get_args_parser(), argv) == 1
    assert f"would overwrite the weights {model} (-m) with the results folder's record" in capsys.readouterr().err


def test_fddb_detection_file_over_the_image_list_is_refused(weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fddb_script, 'detector_from_args',
                        lambda *a, **k: pytest.fail('the detector was built before the outputs were checked'))
    image_list = tmp_path / 'FDDB_dets.txt'
    image_list.write_text('img_1\n')
    argv = ['-m', weights, '--image_list', str(image_list), '--images_folder', str(tmp_path), '--save_folder',
            str(tmp_path)]
    assert run_cli(fddb_script.main, fddb_script.get_args_parser(), argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --save_folder {tmp_path} would overwrite the image list {image_list} (--image_list) with the "
        f"detection file: choose another --save_folder")
    assert image_list.read_text() == 'img_1\n'


def test_widerface_onnxruntime_backend(weights, wider_dataset, tmp_path):
    pytest.importorskip('onnxruntime')
    (tmp_path / 'list.txt').write_text(f"{PHOTOS_EVENT}/kids_group.jpg\n")
    args = _wider_args(weights, wider_dataset, tmp_path / 'out', '--image_list', str(tmp_path / 'list.txt'),
                       '--backend', 'onnxruntime')
    wider_script.main(args)
    # onnxruntime's kernels round differently from eager PyTorch's.
    assert_wider_files_match((tmp_path / 'out' / PHOTOS_EVENT / 'kids_group.txt').read_text(),
                             _golden_text('kids_group', 'wider'))


# -- test_fddb.py ----------------------------------------------------------------------------------

def _fddb_args(weights, image_list, images_folder, save_folder, *extra):
    return fddb_script.get_args_parser().parse_args(
        ['-m', weights, '--network', 'mobile0.25', '--image_list', str(image_list), '--images_folder',
         str(images_folder), '--save_folder', str(save_folder), *extra])


def test_fddb_blocks_match_golden(weights, detector, tmp_path):
    images = tmp_path / 'images'
    for name in GOLDEN_IMAGES:
        _link(golden_image_path(name), images / f'{name}.jpg')
    (tmp_path / 'img_list.txt').write_text("\n".join(GOLDEN_IMAGES) + "\n")
    result = fddb_script.main(_fddb_args(weights, tmp_path / 'img_list.txt', images, tmp_path / 'eval'))
    assert result['path'] == os.path.join(str(tmp_path / 'eval'), 'FDDB_dets.txt')
    text = Path(result['path']).read_text()
    for name in GOLDEN_IMAGES:  # split the file back into its blocks
        dets = detector.detect(read_image(golden_image_path(name)))
        lines = text.splitlines(keepends=True)
        block, text = "".join(lines[:len(dets) + 2]), "".join(lines[len(dets) + 2:])
        _assert_end_to_end(dets, _golden_dets(name), block, _golden_text(name, 'fddb'),
                           fddb_script.fddb_block(name, dets))
    assert text == ''
    assert not list((tmp_path / 'eval').glob('*.tmp'))


def test_fddb_reference_keep_top_k_would_cut_the_golden_block(weights, tmp_path):
    """Why --keep_top_k is off by default: the golden largest_selfie block has 2850 detections."""
    _link(golden_image_path('largest_selfie'), tmp_path / 'images' / 'largest_selfie.jpg')
    (tmp_path / 'list.txt').write_text("largest_selfie\n")
    result = fddb_script.main(_fddb_args(weights, tmp_path / 'list.txt', tmp_path / 'images', tmp_path / 'eval',
                                         '--top_k', '5000', '--keep_top_k', '750'))
    assert Path(result['path']).read_text().splitlines()[1] == '750.0'
    assert _golden_text('largest_selfie', 'fddb').splitlines()[1] == '2850.0'


def test_fddb_batches_skip_bad_images_and_write_the_bytes_of_one_by_one(weights, tmp_path):
    """Bad images inside a batch are skipped alone; the file and the skipped list are those of --batch_size 1."""
    images = tmp_path / 'images'
    names, bad = _bad_images(images)
    jpgs = [n[:-4] for n in names if n.endswith('.jpg')]
    (tmp_path / 'list.txt').write_text("\n".join(jpgs) + "\n")
    runs = {n: fddb_script.main(_fddb_args(weights, tmp_path / 'list.txt', images, tmp_path / f'eval{n}',
                                           '--batch_size', n)) for n in ('1', '4')}
    assert runs['1']['written'] == runs['4']['written'] == 2
    assert runs['4']['skipped'] == runs['1']['skipped'] and {os.path.basename(p) for p, _ in runs['4']['skipped']} \
        == bad - {'alpha.png'}
    assert Path(runs['4']['path']).read_bytes() == Path(runs['1']['path']).read_bytes()


def test_fddb_default_paths_follow_the_reference():
    args = fddb_script.get_args_parser().parse_args([])
    assert (args.dataset, args.save_folder, args.image_list, args.images_folder) == ('FDDB', 'eval/', None, None)


def test_fddb_skips_and_reports_bad_images(weights, tmp_path, caplog):
    images = tmp_path / 'images'
    names, bad = _bad_images(images)
    jpgs = [n[:-4] for n in names if n.endswith('.jpg')]  # FDDB lists names without .jpg
    (tmp_path / 'list.txt').write_text("\n".join(jpgs) + "\n")
    with caplog.at_level(logging.INFO):
        result = fddb_script.main(_fddb_args(weights, tmp_path / 'list.txt', images, tmp_path / 'eval'))
    assert result['written'] == 2
    assert {os.path.basename(p) for p, _ in result['skipped']} == bad
    assert 'skipped 3 unreadable images' in caplog.text
    lines = Path(result['path']).read_text().splitlines()
    assert lines[0] == 'good' and 'gray' in lines and 'notes' not in lines


# -- detect.py -------------------------------------------------------------------------------------

def _detect_args(weights, image, *extra):
    return detect.get_args_parser().parse_args(['-m', weights, '--image', str(image), *extra])


def test_detect_defaults_are_the_reference_demo():
    args = detect.get_args_parser().parse_args([])
    assert (args.network, args.trained_model) == ('mobile0.25', './weights/mobilenet0.25_Final.pth')
    assert (args.top_k, args.keep_top_k, args.vis_thres, args.save_image) == (5000, 750, 0.6, True)
    assert detect.get_args_parser().parse_args(['--no-save_image']).save_image is False


def test_detect_json_annotated_image_and_summary(weights, detector, tmp_path, capsys):
    images = tmp_path / 'in'
    _link(golden_image_path('kids_group'), images / 'kids_group.jpg')
    (images / 'broken.jpg').write_text('not an image')
    result = detect.main(_detect_args(weights, images, '--output', str(tmp_path / 'out'),
                                      '--json', str(tmp_path / 'dets.json')))
    img = read_image(golden_image_path('kids_group'))
    expected = Detector(detector.net, detector.cfg, top_k=5000, keep_top_k=750).detect(img)

    payload = json.loads((tmp_path / 'dets.json').read_text())
    assert [os.path.basename(s['image']) for s in payload['skipped']] == ['broken.jpg']
    (entry,) = payload['images']
    assert (entry['width'], entry['height']) == (1024, 768)
    assert len(entry['detections']) == len(expected) == 11
    for d, e in zip(entry['detections'], expected):
        assert np.allclose(d['box'], e[:4], atol=1e-3) and abs(d['score'] - e[4]) < 1e-6
        assert np.allclose(np.array(d['landmarks']).ravel(), e[5:], atol=1e-3)
    assert np.float32(entry['detections'][0]['score']) == expected[0, 4]  # float32 round trip

    from utils.image import draw_detections
    written = cv2.imread(str(tmp_path / 'out' / 'kids_group.jpg'))
    cv2.imwrite(str(tmp_path / 'expected.jpg'), draw_detections(img.copy(), expected, 0.6))
    np.testing.assert_array_equal(written, cv2.imread(str(tmp_path / 'expected.jpg')))

    out = capsys.readouterr().out
    assert 'kids_group.jpg: 8 faces >= 0.6 (11 detections > 0.02)' in out
    assert len(result['results']) == 1 and len(result['skipped']) == 1


def test_detect_batches_give_the_json_and_images_of_one_by_one(weights, tmp_path):
    images = tmp_path / 'in'
    for name in ('kids_group', 'val416_0_Parade_Parade_0_102', 'test'):
        _link(golden_image_path(name), images / f'{name}.jpg')
    (images / 'broken.jpg').write_text('not an image')
    for n in ('1', '3'):
        detect.main(_detect_args(weights, images, '--output', str(tmp_path / f'out{n}'), '--json',
                                 str(tmp_path / f'dets{n}.json'), '--batch_size', n))
    one, three = (json.loads((tmp_path / f'dets{n}.json').read_text()) for n in ('1', '3'))
    assert len(one['images']) == 3 and len(one['skipped']) == 1 and three == one
    for name in ('kids_group', 'test'):
        assert (tmp_path / 'out3' / f'{name}.jpg').read_bytes() == (tmp_path / 'out1' / f'{name}.jpg').read_bytes()


def test_detect_at_max_size(weights, detector, tmp_path):
    """--max_size 320: test.jpg goes into the network at 320x195; the JSON is that detector's, in the photo's pixels."""
    detect.main(_detect_args(weights, golden_image_path('test'), '--no-save_image', '--max_size', '320',
                             '--json', str(tmp_path / 'dets.json')))
    (entry,) = json.loads((tmp_path / 'dets.json').read_text())['images']
    small = Detector(detector.net, detector.cfg, top_k=5000, keep_top_k=750, max_size=320)
    expected = small.detect(read_image(golden_image_path('test')))
    assert small.input_size(624, 1024) == (195, 320) and (entry['width'], entry['height']) == (1024, 624)
    assert [d['score'] for d in entry['detections']] == [float(str(v)) for v in expected[:, 4]]
    assert np.allclose([d['box'] for d in entry['detections']], expected[:, :4], atol=1e-3)


def test_detect_batch_size_is_for_photos(weights, tmp_path, capsys):
    status = run_cli(detect.main, detect.get_args_parser(),
                     ['-m', weights, '--video', str(tmp_path / 'clip.avi'), '--batch_size', '4'])
    assert status == 1
    assert "error: --batch_size 4 applies to --image runs: --video detects frame by frame" in capsys.readouterr().err


def test_detect_save_image_can_be_turned_off(weights, tmp_path):
    detect.main(_detect_args(weights, golden_image_path('val416_0_Parade_Parade_0_125'), '--no-save_image',
                             '--output', str(tmp_path / 'out')))
    assert not (tmp_path / 'out').exists()


def test_detect_glob(weights, tmp_path):
    for n in ('val416_0_Parade_Parade_0_102', 'val416_0_Parade_Parade_0_125'):
        _link(golden_image_path(n), tmp_path / 'in' / f'{n}.jpg')
    result = detect.main(_detect_args(weights, tmp_path / 'in' / 'val416_*_10?.jpg', '--no-save_image'))
    assert [os.path.basename(r['image']) for r in result['results']] == ['val416_0_Parade_Parade_0_102.jpg']


def test_detect_without_weights_says_where_to_put_them(tmp_path, capsys):
    argv = ['-m', str(tmp_path / 'weights' / 'mobilenet0.25_Final.pth'), '--image',
            str(golden_image_path('val416_0_Parade_Parade_0_102'))]
    assert run_cli(detect.main, detect.get_args_parser(), argv) == 1
    err = capsys.readouterr().err
    assert 'weights not found' in err and 'put it in ./weights/' in err


def test_detect_bad_single_image_is_a_clear_error(weights, tmp_path, capsys):
    (tmp_path / 'x.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
    assert run_cli(detect.main, detect.get_args_parser(), ['-m', weights, '--image', str(tmp_path / 'x.jpg')]) == 1
    err = capsys.readouterr().err
    assert 'x.jpg' in err and 'could be read' in err
    assert run_cli(detect.main, detect.get_args_parser(), ['-m', weights, '--image', str(tmp_path / 'no.jpg')]) == 1
    assert 'image not found' in capsys.readouterr().err


# -- convert_to_onnx.py ------------------------------------------------------------------------------

def test_convert_to_onnx_exports_and_verifies(weights, tmp_path):
    pytest.importorskip('onnxruntime')
    import onnx
    out = tmp_path / 'FaceDetector.onnx'
    args = convert_to_onnx.get_args_parser().parse_args(['-m', weights, '--output', str(out)])
    assert (args.network, args.long_side, args.opset) == ('mobile0.25', 640, 17)
    result = convert_to_onnx.main(args)
    assert [r['size'] for r in result['verification']] == [(640, 640), (417, 301)]
    assert all(v <= 1e-4 for r in result['verification'] for v in r['max_abs_diff'].values())
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ['input0']
    assert [o.name for o in model.graph.output] == ['loc', 'conf', 'landms']
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width'] and dims[1].dim_value == 3
    assert model.opset_import[0].version == 17


def test_convert_to_onnx_fails_loudly_when_outputs_differ(weights, tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    out = tmp_path / 'FaceDetector.onnx'
    argv = ['-m', weights, '--output', str(out), '--tolerance', '0', '--long_side', '64']
    assert run_cli(convert_to_onnx.main, convert_to_onnx.get_args_parser(), argv) == 1
    assert 'does not match PyTorch' in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_verify_onnx_catches_a_model_of_other_weights(detector, tmp_path):
    pytest.importorskip('onnxruntime')
    import copy
    from models.onnx_export import export_onnx, verification_inputs, verify_onnx
    other = copy.deepcopy(detector.net)
    with torch.no_grad():
        other.ClassHead[0].conv1x1.bias[1] += 0.5  # the face logit of one anchor (a shift of both would cancel in softmax)
    export_onnx(other, str(tmp_path / 'other.onnx'))
    with pytest.raises(ValueError, match="'conf' differs"):
        verify_onnx(detector.net, str(tmp_path / 'other.onnx'), verification_inputs(64))


# -- all scripts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', ['test_widerface.py', 'test_fddb.py', 'detect.py', 'convert_to_onnx.py',
                                  'bench/bench_inference.py', 'bench/bench_malloc.py'])
def test_scripts_have_the_standard_shape(path):
    source = (ROOT / path).read_text()
    assert 'def get_args_parser(' in source and 'def main(args)' in source
    assert "if __name__ == '__main__':" in source or 'if __name__ == "__main__":' in source


def test_benchmark_runs(weights, capsys):
    from bench import bench_inference
    args = bench_inference.get_args_parser().parse_args(
        ['-m', weights, '--images', str(golden_image_path('val416_0_Parade_Parade_0_102')),
         str(golden_image_path('val416_0_Parade_Parade_0_125')), '--backends', 'torch',
         '--repeats', '1', '--warmup', '0', '--batch', '2'])
    assert bench_inference.main(args) == 0
    out = capsys.readouterr().out
    assert 'end2end' in out and 'batch-2' in out and 'Padded mixed-size batch' in out


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the malloc setting exists on Linux/glibc only')
def test_malloc_benchmark_runs_both_settings_with_identical_detections(weights, capsys):
    from bench import bench_malloc
    args = bench_malloc.get_args_parser().parse_args(
        ['-m', weights, '--images', str(golden_image_path('val416_0_Parade_Parade_0_102')), '--backends', 'torch',
         '--rounds', '1', '--repeats', '1'])
    assert bench_malloc.main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith('0_Parade_Parade_0_102')]
    assert len(rows) == 1 and rows[0][1] == 'torch' and rows[0][-1] == 'identical'
