"""layers/functions/detection.py: the size rule (resize_factor, resized_size, resize_image),
checked by hand on odd sizes."""
import cv2
import numpy as np
import pytest

from layers.functions.detection import resize_factor, resize_image, resized_size
from utils.errors import InputError


def test_the_reference_test_scale_is_the_default_of_the_rule():
    # 301 x 417: 1600 / 301 makes the long side 2216.6 -> 2217 > 2150, so the long side decides.
    assert resize_factor(301, 417, False) == 2150 / 417
    assert resized_size(301, 417, 2150 / 417) == (1552, 2150)  # 301 * 5.1559 = 1551.9
    assert resize_factor(417, 301, False) == 2150 / 417  # either orientation


@pytest.mark.parametrize('height, width, target, cap, expected, size', [
    # Both sizes: the short side becomes target unless the long side then rounds to more than cap.
    (417, 301, 640, 1000, 640 / 301, (887, 640)),     # 417 * 2.1262 = 886.6 <= 1000: the target decides
    (417, 301, 640, 800, 800 / 417, (800, 577)),      # 886.6 > 800: the cap decides; 301 * 1.9185 = 577.5 -> 577
    # max_size alone: the long side becomes the cap, up or down, for any photo.
    (417, 301, None, 640, 640 / 417, (640, 462)),     # 301 * 1.5348 = 461.97
    (30, 40, None, 640, 16.0, (480, 640)),            # a small photo is enlarged
    (1, 5000, None, 320, 320 / 5000, (0, 320)),       # 1 * 0.064 rounds to no pixel at all
    # target_size alone: the short side becomes the target, the long side is not capped.
    (1, 5000, 320, None, 320.0, (320, 1600000)),
    (417, 301, 320, None, 320 / 301, (443, 320)),     # 417 * 1.0631 = 443.3
])
def test_the_rule_by_hand(height, width, target, cap, expected, size):
    resize = resize_factor(height, width, False, target, cap)
    assert resize == expected
    assert resized_size(height, width, resize) == size


def test_a_photo_exactly_at_the_cap():
    # 800 x 1075 at target 1600: the long side becomes 2150.0, not more than 2150: the target decides.
    assert resize_factor(800, 1075, False) == 2.0
    assert resized_size(800, 1075, 2.0) == (1600, 2150)
    # One pixel longer and it would be 2152: the cap decides.
    assert resize_factor(800, 1076, False) == 2150 / 1076
    # A long side that rounds to the cap is not above it: 1344 * 1.6 = 2150.4 -> 2150, ...
    assert resize_factor(1000, 1344, False) == 1.6
    assert resized_size(1000, 1344, 1.6) == (1600, 2150)
    # ... and max_size alone on a photo whose long side is the cap is the original size.
    assert resize_factor(480, 640, False, None, 640) == 1.0


def test_the_original_size_reads_no_size():
    assert resize_factor(1, 5000, True, None, None) == 1
    with pytest.raises(ValueError, match='target_size or a max_size'):
        resize_factor(10, 10, False, None, None)


@pytest.mark.parametrize('height, width, resize', [(7, 3, 0.5), (5, 5, 0.5), (301, 417, 2150 / 417),
                                                   (417, 301, 640 / 417), (13, 11, 1.37), (624, 1024, 0.3125)])
def test_resized_size_is_the_size_opencv_makes(height, width, resize):
    """OpenCV rounds each scaled side to the nearest integer, halves to even (7 * 0.5 -> 4, 5 * 0.5 -> 2)."""
    img = np.zeros((height, width, 3), np.uint8)
    out = resize_image(img, resize)
    assert out.shape[:2] == resized_size(height, width, resize) and out.dtype == np.float32
    expected = cv2.resize(np.float32(img), None, None, fx=resize, fy=resize, interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(out, expected)


def test_resize_image_at_factor_one_is_the_image_itself():
    img = np.zeros((4, 6, 3), np.uint8)
    assert resize_image(img, 1) is img and resize_image(img, 1.0) is img


def test_an_image_resized_to_no_pixel_is_a_clear_error():
    with pytest.raises(InputError, match=r'a 5000x1 image resized by 0\.064 would be 320x0 pixels'):
        resize_image(np.zeros((1, 5000, 3), np.uint8), 320 / 5000)
