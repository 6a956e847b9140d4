"""The compiled pipeline stages (utils/kernels/cpu_pipeline.pyx) give exactly the numpy
stages' bits, and the pipeline falls back to numpy when they are not built."""
import logging
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

import layers.functions.detection as detection
import utils.compiled
import utils.kernels as kernels
from data import BGR_MEAN, cfg_mnet
from layers.functions.detection import Detect
from layers.functions.prior_box import prior_boxes
from models.detector import load_detector
from tests.conftest import golden_image_path, need_shared
from utils.image import read_image


def _compiled_and_numpy(fn, *args):
    """fn(*args) with the compiled stages, then with the numpy ones."""
    compiled = fn(*args)
    saved = detection.to_input_kernel, kernels.warn_not_built
    detection.to_input_kernel, kernels.warn_not_built = None, lambda: None
    try:
        return compiled, fn(*args)
    finally:
        detection.to_input_kernel, kernels.warn_not_built = saved


def _same_bits(a, b):
    """Equal shape, dtype and bytes (NaNs and signed zeros included)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _raw(name):
    raw = np.load(need_shared('golden', 'mnet', f'{name}_raw.npz'))
    return raw['loc'][0], raw['conf'][0], raw['landms'][0]


def test_the_compiled_stages_are_built():
    """.ci/setup builds them; the tests must not silently exercise only the fallback."""
    from utils.kernels import cpu_pipeline
    assert kernels.compiled is cpu_pipeline
    assert detection.to_input_kernel is cpu_pipeline.to_input  # what the pipeline runs


# -- preprocessing ------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['test', 'largest_selfie'])
def test_to_input_equals_the_reference_subtraction(name):
    """uint8 photos: `np.float32(img) - (104, 117, 123)` as CHW, bit for bit."""
    img = read_image(need_shared('images', f'{name}.jpg'))
    dst = np.full((3,) + img.shape[:2], np.nan, dtype=np.float32)
    detection.to_input(img, dst)
    reference = (np.float32(img) - BGR_MEAN).astype(np.float32).transpose(2, 0, 1)  # [H, W, 3] -> [3, H, W]
    assert _same_bits(dst, np.ascontiguousarray(reference))


def test_to_input_of_a_resized_float_image_into_a_padded_batch():
    """float32 (resized) images, written into the top-left of a larger padded plane set:
    the compiled stage equals the numpy one and leaves the padding alone."""
    img = read_image(need_shared('images', 'test.jpg'))
    resized = cv2.resize(np.float32(img), None, None, fx=0.37, fy=0.37, interpolation=cv2.INTER_LINEAR)
    h, w = resized.shape[:2]

    def write():
        batch = np.full((2, 3, h + 9, w + 17), -7.0, dtype=np.float32)
        detection.to_input(resized, batch[1])
        return batch

    compiled, numpy = _compiled_and_numpy(write)
    assert _same_bits(compiled, numpy)
    assert (compiled[0] == -7).all() and (compiled[1, :, h:] == -7).all() and (compiled[1, :, :, w:] == -7).all()
    np.testing.assert_array_equal(compiled[1, :, :h, :w], (resized - np.float32(BGR_MEAN)).transpose(2, 0, 1))


def test_to_input_takes_non_contiguous_images():
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    flipped = img[:, ::-1]  # a view with a negative stride
    dst = np.empty((3, 40, 60), dtype=np.float32)
    detection.to_input(flipped, dst)
    np.testing.assert_array_equal(dst, (np.float32(flipped) - np.float32(BGR_MEAN)).transpose(2, 0, 1))


def test_to_input_rejects_a_destination_that_does_not_fit():
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match='does not fit'):
        kernels.compiled.to_input(img, np.empty((3, 39, 60), dtype=np.float32), BGR_MEAN)
    with pytest.raises(ValueError, match='contiguous'):
        kernels.compiled.to_input(img, np.empty((3, 40, 120), dtype=np.float32)[:, :, ::2], BGR_MEAN)


# -- selection (numpy: its kernel saved too little to keep, see bench/README.md) ----------------

@pytest.mark.parametrize('on_device', [False, True])
@pytest.mark.parametrize('threshold', [0.02, 0.1, 0.5, 0.999])
def test_selection_compares_in_float32(threshold, on_device):
    """numpy compares a float32 array with a Python float in float32, as the reference's
    `np.where(scores > threshold)`: a score of exactly float32(threshold) is not above the
    threshold (for 0.1, float32(0.1) > 0.1 in float64), the next float32 up is; NaN never is.
    torch, which filters outputs on a GPU, compares the same way."""
    t = np.float32(threshold)
    face = np.array([t, np.nextafter(t, np.float32(2)), np.nan, np.nextafter(t, np.float32(-1)), 1.0], np.float32)
    conf = np.stack([1 - face, face], axis=1)  # [5, 2]
    loc = np.arange(20, dtype=np.float32).reshape(5, 4)  # row i holds 4i .. 4i + 3
    landms = np.arange(50, dtype=np.float32).reshape(5, 10)
    priors = -np.arange(20, dtype=np.float32).reshape(5, 4)
    detect = Detect([0.1, 0.2], confidence_threshold=threshold)
    if on_device:
        chosen = detect.select_on_device(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(landms),
                                         priors)
    else:
        chosen = detect.select(loc, conf, landms, priors)
    for got, expected in zip(chosen, (loc[[1, 4]], landms[[1, 4]], priors[[1, 4]], face[[1, 4]])):
        assert _same_bits(got, expected)


def test_torch_exp_in_chunks_equals_one_call():
    x = np.random.default_rng(2).normal(0, 5, 3 * kernels.EXP_CHUNK + 17).astype(np.float32)
    expected = torch.exp(torch.from_numpy(x)).numpy()
    assert kernels.torch_exp_(x) is x
    assert _same_bits(x, expected)


def test_torch_exp_rejects_arrays_it_cannot_change_in_place():
    with pytest.raises(ValueError, match='C-contiguous'):
        kernels.torch_exp_(np.zeros((4, 4), np.float32)[:, ::2])


# -- the whole pipeline -------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['test', 'largest_selfie'])
def test_filtering_on_the_device_gives_the_host_path_s_detections(name):
    """On a GPU the candidates are filtered on the device and only they are copied to the
    host; that path, run here on CPU tensors, gives exactly the CPU path's detections."""
    loc, conf, landms = _raw(name)
    size = read_image(golden_image_path(name)).shape[:2]
    priors = prior_boxes(cfg_mnet, size)
    detect = Detect(cfg_mnet['variance'], confidence_threshold=0.02, nms_threshold=0.4)
    on_host = detect.select(loc, conf, landms, priors)
    on_device = detect.select_on_device(*(torch.from_numpy(x) for x in (loc, conf, landms)), priors)
    assert len(on_host[3]) > 100 and all(_same_bits(d, h) for d, h in zip(on_device, on_host))
    # CPU tensors, as the torch backend hands them over, take the host path: the same detections.
    assert _same_bits(detect(*(torch.from_numpy(x) for x in (loc, conf, landms)), priors, size, 1),
                      detect(loc, conf, landms, priors, size, 1))


def test_pipeline_falls_back_to_numpy_with_the_same_detections(monkeypatch, caplog):
    weights = need_shared('weights', 'mobilenet0.25_Final.pth')
    detector = load_detector('mobile0.25', weights)
    img = read_image(need_shared('images', 'street_crowd.jpg'))
    compiled = detector.detect(img)
    monkeypatch.setattr(detection, 'to_input_kernel', None)
    utils.compiled.warn_not_built.cache_clear()
    with caplog.at_level(logging.WARNING, logger='utils.compiled'):
        assert _same_bits(detector.detect(img), compiled)
        assert _same_bits(detector.detect(img), compiled)
    utils.compiled.warn_not_built.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if 'not built' in r.getMessage()]
    assert len(warnings) == 1 and 'cpu_pipeline.pyx' in warnings[0]  # warned once, with the root command
    assert f'`{utils.compiled.BUILD_COMMAND}` at the repository root' in warnings[0]


def test_a_build_from_an_older_pyx_counts_as_not_built():
    """A build whose API_VERSION is not this package's (or a build from before API_VERSION,
    with the stages that were removed since) is treated as not built."""
    def decode_dets():
        """exp_ (callable | None): replaces a C-contiguous float32 ndarray by its exp in place"""

    def select_scores():
        pass

    before = SimpleNamespace(to_input=kernels.compiled.to_input, select_scores=select_scores, decode_dets=decode_dets)
    assert not kernels.up_to_date(before)
    assert not kernels.up_to_date(SimpleNamespace(**vars(before), API_VERSION=kernels.API_VERSION - 1))
    assert kernels.up_to_date(kernels.compiled) and kernels.compiled.API_VERSION == kernels.API_VERSION
    assert not any(hasattr(kernels.compiled, name) for name in ('select_scores', 'decode_dets', 'assemble'))
