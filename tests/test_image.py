"""utils/image.py: reading an image that does not fit in memory (the other reading cases are
in tests/test_inference.py)."""
import cv2
import numpy as np
import pytest

import utils.image
from utils.errors import InputError, InputTooLargeError
from utils.image import read_image


def _cv2_error(code):
    try:  # a real cv2.error (an empty resize), given another code
        cv2.resize(np.zeros((1, 1, 3), np.uint8), (0, 0))
    except cv2.error as e:
        e.code = code
        return e
    pytest.fail('cv2.resize to (0, 0) did not fail')


def test_an_image_that_does_not_fit_in_memory_is_an_input_error(tmp_path, monkeypatch):
    path = tmp_path / 'huge.png'
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))

    def imdecode(*_):
        raise _cv2_error(-4)  # OpenCV's Insufficient memory

    monkeypatch.setattr(utils.image.cv2, 'imdecode', imdecode)
    with pytest.raises(InputTooLargeError, match=rf'out of memory decoding {path} \(a 0\.0 MB file\): error'):
        read_image(path)


def test_another_decoder_failure_is_not_taken_for_memory(tmp_path, monkeypatch):
    path = tmp_path / 'a.png'
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))

    def imdecode(*_):
        raise _cv2_error(-215)

    monkeypatch.setattr(utils.image.cv2, 'imdecode', imdecode)
    with pytest.raises(cv2.error) as e:
        read_image(path)
    assert not isinstance(e.value, InputError)
