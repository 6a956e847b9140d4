"""bench.common's shared wording: a ratio below 1 never reads as 'faster'."""
from bench.common import speed_ratio


def test_a_faster_run_is_called_faster():
    assert speed_ratio(13.3, 112, 'the reference') == '8.42x faster than the reference'


def test_a_slower_run_is_called_slower_not_1x_faster():
    # bench_inference once printed "1.0x faster than the reference's 113 ms" for 116.7 ms.
    assert speed_ratio(116.7, 112, 'the reference') == '1.04x slower than the reference'


def test_equal_times_are_1x_faster():
    assert speed_ratio(50, 50, 'torch') == '1.00x faster than torch'
