"""The detection pipeline (models/detector.py, layers/functions/detection.py, utils/image.py):
reference numerics, batching, backends, image reading and errors."""
import ast
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import layers.functions.detection as detection
from data import BGR_MEAN, cfg_mnet
from layers.functions.prior_box import PriorBox, prior_boxes
from models.detector import Detector, load_detector
from tests.conftest import GOLDEN_IMAGES, golden_image_path, need_shared
from tests.detection_match import DETECTION_TOLERANCES, assert_detections_match
from utils.image import draw_detections, read_image

ROOT = Path(__file__).resolve().parent.parent
# Post-processing the golden raw outputs is compared row by row to this many pixels: numpy's
# and the golden machine's exp may differ in the last bit, which moves a coordinate by < 2e-4 px.
COORD_ATOL = 1e-3
SCORE_ATOL = 1e-6


@pytest.fixture(scope='module')
def weights():
    return need_shared('weights', 'mobilenet0.25_Final.pth')


@pytest.fixture(scope='module')
def detector(weights):
    return load_detector('mobile0.25', weights)


@pytest.fixture(scope='module')
def images():
    return {name: read_image(golden_image_path(name)) for name in GOLDEN_IMAGES}


def _golden(name):
    return np.load(need_shared('golden', 'mnet', f'{name}_dets.npy'))


def _assert_close_dets(a, b, coord_atol=COORD_ATOL, score_atol=SCORE_ATOL):
    assert a.shape == b.shape and a.dtype == np.float32
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=0, atol=coord_atol)
    np.testing.assert_allclose(a[:, 4], b[:, 4], rtol=0, atol=score_atol)
    np.testing.assert_allclose(a[:, 5:], b[:, 5:], rtol=0, atol=coord_atol)


# -- the test scale --------------------------------------------------------------------------

def test_resize_factor_is_the_reference_test_scale():
    assert detection.resize_factor(624, 1024, origin_size=True) == 1
    # test.jpg: short side 624 -> 1600 keeps the long side at 2626 > 2150, so the long side rules.
    assert detection.resize_factor(624, 1024, origin_size=False) == 2150 / 1024 == 2.099609375
    assert detection.resize_factor(1000, 1200, origin_size=False) == 1.6  # 1920 <= 2150
    assert detection.resize_factor(416, 416, origin_size=False) == 1600 / 416
    summary = need_shared('golden', 'mnet', 'summary.json').read_text()
    assert '"resize": 2.099609375' in summary


# -- detections against the golden outputs ---------------------------------------------------

@pytest.mark.parametrize('name', GOLDEN_IMAGES)
def test_golden_detections(detector, images, name):
    """End to end, the reference's detections up to float rounding.

    The network's outputs depend on the CPU and thread count in the last bits, so the
    detections are matched by position with the stated DETECTION_TOLERANCES, and may appear
    or vanish only where a threshold decides by a hair (tests/detection_match.py).
    """
    assert_detections_match(detector.detect(images[name]), _golden(name), **DETECTION_TOLERANCES)


def test_golden_detections_at_test_scale(weights, images):
    det = load_detector('mobile0.25', weights, origin_size=False)
    dets = det.detect(images['test'])
    golden = np.load(need_shared('golden', 'mnet', 'test_resized_dets.npy'))
    assert len(golden) == 176
    assert_detections_match(dets, golden, **DETECTION_TOLERANCES)


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
def test_postprocess_of_golden_raw_outputs(detector, images, name):
    """Post-processing alone, from the reference's own network outputs: same count and
    order, and the same values up to one float32 rounding of exp (a few 1e-4 px)."""
    raw = np.load(need_shared('golden', 'mnet', f'{name}_raw.npz'))
    outputs = [torch.from_numpy(raw[k][0]) for k in ('loc', 'conf', 'landms')]
    dets = detector.postprocess(*outputs, images[name].shape[:2], 1)
    golden = _golden(name)
    _assert_close_dets(dets, golden)
    assert np.abs(dets.view(np.int32) - golden.view(np.int32)).max() <= 8  # float32 ulps


@pytest.mark.parametrize('name', GOLDEN_IMAGES)
def test_host_decoding_equals_the_reference_torch_decoding_bit_for_bit(images, name):
    """decode_boxes / decode_landmarks give exactly the reference's
    `decode(...) * scale / resize` and `decode_landm(...) * scale1 / resize` on every prior
    of the golden raw outputs, at the original size and at test-scale-like factors."""
    from utils.box_utils import decode, decode_landm
    raw = np.load(need_shared('golden', 'mnet', f'{name}_raw.npz'))
    loc, landms = raw['loc'][0], raw['landms'][0]
    h, w = images[name].shape[:2]
    priors = PriorBox(cfg_mnet, image_size=(h, w)).forward()
    variance = cfg_mnet['variance']
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)  # the reference's `scale` and `scale1`
    scale1 = torch.tensor([w, h] * 5, dtype=torch.float32)
    for resize in (1, detection.resize_factor(h, w, False), 0.7, 4 / 3):
        boxes = decode(torch.from_numpy(loc), priors, variance) * scale / resize
        points = decode_landm(torch.from_numpy(landms), priors, variance) * scale1 / resize
        assert np.array_equal(detection.decode_boxes(loc, priors.numpy(), variance, (h, w), resize),
                              boxes.numpy()), resize
        assert np.array_equal(detection.decode_landmarks(landms, priors.numpy(), variance, (h, w), resize),
                              points.numpy()), resize


def test_thresholds_top_k_and_keep_top_k(detector, images):
    img = images['street_crowd']
    full = detector.detect(img)

    def detect(**kwargs):
        return Detector(detector.net, cfg_mnet, **kwargs).detect(img)

    np.testing.assert_array_equal(detect(keep_top_k=10), full[:10])
    np.testing.assert_array_equal(detect(confidence_threshold=0.5), full[full[:, 4] > 0.5])
    # top_k limits the candidates before NMS: at most 50 survive, the best ones unchanged.
    top = detect(top_k=50)
    assert 0 < len(top) <= 50
    np.testing.assert_array_equal(top[:5], full[:5])
    none = detect(confidence_threshold=1.0)
    assert none.shape == (0, 15) and none.dtype == np.float32


# -- batching ----------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['test', 'val416_0_Parade_Parade_0_102'])
def test_same_size_batch_equals_one_by_one(detector, images, name):
    single = detector.detect(images[name])
    batch = detector.detect_batch([images[name]] * 3)
    assert len(batch) == 3
    for dets in batch:
        np.testing.assert_array_equal(dets, single)


def test_batch_of_different_images_of_one_size(detector, images):
    names = ['val416_0_Parade_Parade_0_102', 'val416_0_Parade_Parade_0_125', 'val416_0_Parade_Parade_0_137']
    batch = detector.detect_batch([images[n] for n in names])
    for n, dets in zip(names, batch):
        np.testing.assert_array_equal(dets, detector.detect(images[n]))


def test_batching_leaves_the_network_unchanged(detector, images):
    detector.detect_batch([images['val416_0_Parade_Parade_0_102']] * 2)
    assert not any('forward' in m.__dict__ for m in detector.net.modules())


@pytest.fixture
def padding_detector(detector):
    """The published weights, padding batches of mixed sizes as a GPU does (the CPU runs them unpadded)."""
    padding = Detector(detector.net, cfg_mnet)
    padding.pad_mixed_sizes = True
    return padding


def test_padded_batch_is_close_to_one_by_one(padding_detector, images):
    """Mixed sizes are padded; faces keep their place and differ by little (measured in bench/README.md)."""
    detector = padding_detector
    names = ['test', 'val416_0_Parade_Parade_0_102']
    batch = detector.detect_batch([images[n] for n in names])
    for n, dets in zip(names, batch):
        single = detector.detect(images[n])
        strong = single[single[:, 4] >= 0.5]
        assert len(dets) > 0
        for d in strong:
            j = np.argmin(np.abs(dets[:, :4] - d[:4]).max(axis=1))
            assert np.abs(dets[j, :4] - d[:4]).max() < 4.0
            assert abs(dets[j, 4] - d[4]) < 0.2


def test_grid_crop_index_picks_the_images_own_priors():
    size, padded = (417, 301), (448, 320)
    rows = detection.grid_crop_rows(tuple(cfg_mnet['steps']), (2, 2, 2), size, padded)
    own = PriorBox(cfg_mnet, image_size=size).forward()
    pad = PriorBox(cfg_mnet, image_size=padded).forward()
    assert rows.shape[0] == own.shape[0]
    # In pixels the chosen priors of the padded input are the image's own priors.
    h, w = size
    ph, pw = padded
    np.testing.assert_allclose((pad[rows] * torch.tensor([pw, ph, pw, ph])).numpy(),
                               (own * torch.tensor([w, h, w, h], dtype=torch.float32)).numpy(), rtol=0, atol=1e-3)
    same = detection.grid_crop_rows(tuple(cfg_mnet['steps']), (2, 2, 2), size, size)
    assert np.array_equal(same, np.arange(own.shape[0]))


def test_preprocess_layout_and_padding(padding_detector, images):
    img_a, img_b = images['test'], images['val416_0_Parade_Parade_0_102']
    batch, sizes, resizes = padding_detector.preprocess([img_a, img_b])
    assert sizes == [(624, 1024), (416, 416)] and resizes == [1, 1]
    assert batch.shape == (2, 3, 640, 1024) and batch.dtype == np.float32  # rounded up to PAD_MULTIPLE
    expected = img_b.astype(np.float32) - np.float32(BGR_MEAN)
    np.testing.assert_array_equal(batch[1, :, :416, :416], expected.transpose(2, 0, 1))
    assert not batch[1, :, 416:, :].any() and not batch[1, :, :, 416:].any()  # padding = the mean colour


# -- the onnxruntime backend -------------------------------------------------------------------

@pytest.fixture(scope='module')
def ort_detector(weights):
    pytest.importorskip('onnxruntime')
    return load_detector('mobile0.25', weights, backend='onnxruntime')


@pytest.mark.parametrize('name', ['test', 'kids_group', 'street_crowd', 'largest_selfie'])
def test_onnxruntime_backend_matches_eager(detector, ort_detector, images, name):
    """The fast backend's detections equal eager PyTorch's within 1 px and 1e-4 in score."""
    eager = detector.detect(images[name])
    fast = ort_detector.detect(images[name])
    assert len(fast) == len(eager)
    for d in eager:
        j = np.argmin(np.abs(fast[:, :4] - d[:4]).max(axis=1))
        assert np.abs(fast[j, :4] - d[:4]).max() <= 1.0
        assert np.abs(fast[j, 5:] - d[5:]).max() <= 1.0
        assert abs(fast[j, 4] - d[4]) <= 1e-4


def test_onnxruntime_backend_batches_equal_one_by_one(ort_detector, images):
    """On the CPU the onnxruntime backend, like eager PyTorch, runs a batch image by image:
    a same-size batch gives exactly the single-image detections."""
    img, other = images['val416_0_Parade_Parade_0_102'], images['val416_0_Parade_Parade_0_125']
    batched = ort_detector.detect_batch([img, other, img])
    np.testing.assert_array_equal(batched[0], ort_detector.detect(img))
    np.testing.assert_array_equal(batched[1], ort_detector.detect(other))
    np.testing.assert_array_equal(batched[2], batched[0])


def test_onnxruntime_backend_from_a_file_needs_no_weights(tmp_path, weights, images):
    pytest.importorskip('onnxruntime')
    from models.onnx_export import export_onnx
    net = load_detector('mobile0.25', weights).net
    export_onnx(net, str(tmp_path / 'm.onnx'))
    det = load_detector('mobile0.25', tmp_path / 'missing.pth', backend='onnxruntime', onnx_model=tmp_path / 'm.onnx')
    assert det.net is None
    assert len(det.detect(images['kids_group'])) == 11


# -- devices, modes, construction --------------------------------------------------------------

def test_forward_runs_in_inference_mode(detector, images):
    batch, sizes, _ = detector.preprocess([images['val416_0_Parade_Parade_0_102']])
    loc, conf, landms = detector.forward(batch)
    assert loc.is_inference() and conf.is_inference() and landms.is_inference()


def test_the_detector_s_priors_are_the_one_cached_numpy_array(detector):
    assert detector.priors((417, 301)) is prior_boxes(cfg_mnet, (417, 301))


def test_library_code_never_calls_cuda():
    paths = [p for d in ('data', 'layers', 'models', 'utils', 'widerface_evaluate') for p in (ROOT / d).rglob('*.py')]
    paths += list(ROOT.glob('*.py')) + list((ROOT / 'bench').glob('*.py'))
    assert len(paths) > 40
    for path in paths:
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr == 'cuda']
        assert not calls, f"{path}:{calls[0].lineno} calls .cuda()" if calls else ''
    # The check sees a call (and not the word in a comment or a string).
    assert [n.func.attr for n in ast.walk(ast.parse("x = net.cuda()  # not '.cuda()'")) if isinstance(n, ast.Call)] \
        == ['cuda']


def test_bad_settings_are_clear_errors(detector):
    with pytest.raises(ValueError, match='backend'):
        Detector(detector.net, cfg_mnet, backend='tensorrt')
    with pytest.raises(ValueError, match='nms_threshold'):
        Detector(detector.net, cfg_mnet, nms_threshold=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA'):
            Detector(detector.net, cfg_mnet, device='cuda')


def test_missing_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'put it in \./weights/') as e:
        load_detector('mobile0.25', tmp_path / 'mobilenet0.25_Final.pth')
    assert 'mobilenet0.25_Final.pth' in str(e.value)


def test_wrong_network_for_the_weights(weights):
    with pytest.raises(ValueError, match='mobilenet0.25'):
        load_detector('resnet50', weights)


@pytest.mark.parametrize('bad', [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8), 'img.jpg'])
def test_detect_rejects_arrays_that_are_not_bgr_images(detector, bad):
    with pytest.raises(ValueError, match='uint8 BGR'):
        detector.detect(bad)


def test_detect_batch_rejects_an_empty_list(detector):
    with pytest.raises(ValueError, match='no images'):
        detector.detect_batch([])


# -- reading images ------------------------------------------------------------------------------

def test_read_image_equals_reference_imread():
    path = golden_image_path('test')
    img = read_image(path)
    assert img.dtype == np.uint8 and img.shape == (624, 1024, 3)
    np.testing.assert_array_equal(img, cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_read_image_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.jpg'):
        read_image(tmp_path / 'nothere.jpg')


def test_read_image_directory_empty_and_text_files(tmp_path):
    with pytest.raises(ValueError, match='is a folder, not an image file'):
        read_image(tmp_path)
    (tmp_path / 'empty.jpg').write_bytes(b'')
    with pytest.raises(ValueError, match='empty.jpg.*empty'):
        read_image(tmp_path / 'empty.jpg')
    (tmp_path / 'notes.jpg').write_text('not an image')
    with pytest.raises(ValueError, match='notes.jpg.*not a readable image'):
        read_image(tmp_path / 'notes.jpg')


def test_read_image_truncated_jpeg(tmp_path):
    data = golden_image_path('test').read_bytes()
    for cut in (len(data) // 2, len(data) - 2):
        (tmp_path / 'cut.jpg').write_bytes(data[:cut])
        with pytest.raises(ValueError, match='cut.jpg.*truncated'):
            read_image(tmp_path / 'cut.jpg')


def test_read_image_truncated_png(tmp_path):
    img = read_image(golden_image_path('val416_0_Parade_Parade_0_102'))
    cv2.imwrite(str(tmp_path / 'full.png'), img)
    data = (tmp_path / 'full.png').read_bytes()
    (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='cut.png'):
        read_image(tmp_path / 'cut.png')


@pytest.mark.parametrize('kind', ['gray.png', 'gray.jpg', 'bgra.png', 'u16.png', 'gray.bmp'])
def test_read_image_converts_like_imread_color_and_says_so(tmp_path, caplog, kind):
    img = read_image(golden_image_path('val416_0_Parade_Parade_0_102'))
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    data = {'gray.png': gray, 'gray.jpg': gray, 'gray.bmp': gray,
            'bgra.png': np.dstack([img, np.full(gray.shape, 100, np.uint8)]),
            'graya.png': np.dstack([gray, gray, gray, np.full(gray.shape, 7, np.uint8)]),
            'u16.png': img.astype(np.uint16) * 257}[kind]
    path = tmp_path / kind
    assert cv2.imwrite(str(path), data)
    with caplog.at_level(logging.WARNING, logger='utils.image'):
        out = read_image(path)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, cv2.imread(str(path), cv2.IMREAD_COLOR))
    if kind.startswith('gray'):
        assert 'grayscale' in caplog.text and kind in caplog.text
        np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])
    elif kind == 'bgra.png':
        assert 'alpha' in caplog.text
    else:
        assert caplog.text == ''


def test_a_grayscale_image_is_detected_on(detector, tmp_path):
    gray = cv2.cvtColor(read_image(golden_image_path('kids_group')), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / 'g.png'), gray)
    dets = detector.detect(read_image(tmp_path / 'g.png'))
    assert (dets[:, 4] > 0.9).sum() >= 5


# -- drawing -----------------------------------------------------------------------------------

def test_draw_detections_as_the_reference(detector, images):
    img = images['kids_group']
    dets = detector.detect(img)
    drawn = draw_detections(img.copy(), dets, 0.6)
    expected = img.copy()
    for b in dets:  # the reference's drawing code, verbatim
        if b[4] < 0.6:
            continue
        text = "{:.4f}".format(b[4])
        b = list(map(int, b))
        cv2.rectangle(expected, (b[0], b[1]), (b[2], b[3]), (0, 0, 255), 2)
        cx = b[0]
        cy = b[1] + 12
        cv2.putText(expected, text, (cx, cy), cv2.FONT_HERSHEY_DUPLEX, 0.5, (255, 255, 255))
        cv2.circle(expected, (b[5], b[6]), 1, (0, 0, 255), 4)
        cv2.circle(expected, (b[7], b[8]), 1, (0, 255, 255), 4)
        cv2.circle(expected, (b[9], b[10]), 1, (255, 0, 255), 4)
        cv2.circle(expected, (b[11], b[12]), 1, (0, 255, 0), 4)
        cv2.circle(expected, (b[13], b[14]), 1, (255, 0, 0), 4)
    np.testing.assert_array_equal(drawn, expected)
    assert not np.array_equal(drawn, img)


# -- CUDA (run where a GPU is present) ---------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')


def _assert_faces_match(a, b, box_px, score_tol, min_score=0.5):
    """Every face of a with score >= min_score has a counterpart in b (boxes within box_px)."""
    for d in a[a[:, 4] >= min_score]:
        j = np.argmin(np.abs(b[:, :4] - d[:4]).max(axis=1))
        assert np.abs(b[j, :4] - d[:4]).max() <= box_px
        assert abs(b[j, 4] - d[4]) <= score_tol


@needs_cuda
@pytest.mark.parametrize('name', ['test', 'kids_group', 'street_crowd', 'largest_selfie'])
def test_cuda_detections_match_cpu(weights, detector, images, name):
    """The CUDA path (filter and decode on the device) finds the CPU's faces. cuDNN may
    use TF32 and other summation orders, so scores and boxes agree closely, not bit for bit."""
    gpu = load_detector('mobile0.25', weights, device='cuda')
    cpu_dets, gpu_dets = detector.detect(images[name]), gpu.detect(images[name])
    assert gpu_dets.dtype == np.float32 and gpu_dets.shape[1] == 15
    assert abs(len(gpu_dets) - len(cpu_dets)) <= max(2, len(cpu_dets) // 50)
    _assert_faces_match(cpu_dets, gpu_dets, box_px=1.0, score_tol=1e-2)


@needs_cuda
def test_cuda_batches(weights, images):
    gpu = load_detector('mobile0.25', weights, device='cuda')
    single = gpu.detect(images['test'])
    for dets in gpu.detect_batch([images['test']] * 4):
        _assert_faces_match(single, dets, box_px=0.5, score_tol=1e-3)
    mixed = gpu.detect_batch([images['test'], images['kids_group'], images['val416_0_Parade_Parade_0_102']])
    assert [len(m) > 0 for m in mixed] == [True, True, True]
