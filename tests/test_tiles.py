"""Tiles (layers/functions/pyramid.py tile_*, Detector(tile=N), --tile): the grid and its
cores, bit-identity within one tile, faces across tile borders found once and whole, and
the flag's checks."""
import numpy as np
import pytest

import models.detector as detector_module
import test_fddb as fddb_script
import test_widerface as wider_script
from layers.functions.pyramid import in_core, tile_cores, tile_grid, tile_overlap
from models.detector import load_detector
from tests.conftest import need_shared
from tests.test_scripts import detector, weights  # noqa: F401 - fixtures shared with these tests
from utils.errors import InputError
from utils.image import read_image




@pytest.fixture(scope='module')
def test_photo():
    return read_image(need_shared('images', 'test.jpg'))  # 1024 x 624, faces of 40-80 pixels


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = w * h
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


# -- the grid --------------------------------------------------------------------------------

def test_overlap_is_the_largest_anchor_at_most_half_a_tile():
    assert tile_overlap(2048, 512) == 512
    assert tile_overlap(1024, 512) == 512
    assert tile_overlap(256, 512) == 128


def test_grid_by_hand():
    # 1000 wide in tiles of 400 overlapping by 100: starts 0, 300, 600 (flush with the end).
    grid = tile_grid(300, 1000, 400, 100)
    assert grid == [(0, 0, 300, 400), (0, 300, 300, 700), (0, 600, 300, 1000)]
    # Cores split each overlap half way: 300..400 at 350, 600..700 at 650.
    cores = tile_cores(300, 1000, 400, 100)
    assert [(c[1], c[3]) for c in cores] == [(-np.inf, 350), (350, 650), (650, np.inf)]
    # The last tile is pulled back to the image's end: 1100 wide -> starts 0, 300, 600, 700.
    assert [t[1] for t in tile_grid(10, 1100, 400, 100)] == [0, 300, 600, 700]
    assert tile_grid(400, 400, 400, 100) == [(0, 0, 400, 400)]


@pytest.mark.parametrize('height, width, tile', [(6000, 8000, 2048), (1000, 777, 256), (624, 1024, 64)])
def test_cores_partition_the_image_and_hold_small_faces_whole(height, width, tile):
    overlap = tile_overlap(tile, 512)
    grid, cores = tile_grid(height, width, tile, overlap), tile_cores(height, width, tile, overlap)
    assert all(y1 - y0 == min(tile, height) and x1 - x0 == min(tile, width) for y0, x0, y1, x1 in grid)
    rng = np.random.default_rng(0)
    # Random faces of at most `overlap` pixels: each centre in exactly one core, whose tile holds it whole.
    size = rng.uniform(1, overlap, (2000, 2))
    x1 = rng.uniform(0, width - size[:, 0])
    y1 = rng.uniform(0, height - size[:, 1])
    boxes = np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], axis=1)
    inside = np.stack([in_core(boxes, core) for core in cores])  # [tiles, boxes]
    assert np.all(inside.sum(axis=0) == 1)
    owner = inside.argmax(axis=0)
    for box, k in zip(boxes, owner):
        y0, x0, y1_, x1_ = grid[k]
        assert x0 <= box[0] and box[2] <= x1_ and y0 <= box[1] and box[3] <= y1_


# -- the pipeline ----------------------------------------------------------------------------

@pytest.mark.parametrize('tile', [1024, 4096])
def test_a_photo_within_one_tile_gives_exactly_the_untiled_detections(weights, detector, test_photo, tile):
    tiled = load_detector('mobile0.25', weights, tile=tile)
    np.testing.assert_array_equal(tiled.detect(test_photo), detector.detect(test_photo))


def test_one_tile_at_the_test_scale_is_the_untiled_test_scale(weights, test_photo):
    # At the test scale test.jpg becomes 2150 x 1310: one tile of 2150.
    plain = load_detector('mobile0.25', weights, origin_size=False)
    tiled = load_detector('mobile0.25', weights, origin_size=False, tile=2150)
    np.testing.assert_array_equal(tiled.detect(test_photo), plain.detect(test_photo))


def _crossings(box, grid):
    """How many tile edges inside the image cut through box."""
    edges_x = {x for _, x0, _, x1 in grid for x in (x0, x1)} - {0, max(t[3] for t in grid)}
    edges_y = {y for y0, _, y1, _ in grid for y in (y0, y1)} - {0, max(t[2] for t in grid)}
    return sum(box[0] < x < box[2] for x in edges_x) + sum(box[1] < y < box[3] for y in edges_y)


def _assert_each_face_found_once_and_whole(untiled, tiled, grid, min_iou):
    faces = untiled[untiled[:, 4] > 0.9]
    confident = tiled[tiled[:, 4] > 0.5]
    crossing = 0
    for face in faces:
        touching = [t for t in confident if iou(face, t) > 0.1]
        assert len(touching) == 1, f"face {face[:4]} found {len(touching)} times"
        assert iou(face, touching[0]) >= min_iou  # whole, not a cut-off part
        crossing += _crossings(face, grid) > 0
    return len(faces), crossing


def test_faces_across_tile_borders_are_found_once_whole(weights, detector, test_photo):
    # Tiles of 256 overlap by 128: tile edges every 128 pixels cut through most faces.
    tiled = load_detector('mobile0.25', weights, tile=256)
    grid = tile_grid(*test_photo.shape[:2], 256, 128)
    n, crossing = _assert_each_face_found_once_and_whole(detector.detect(test_photo), tiled.detect(test_photo),
                                                         grid, 0.85)
    assert n >= 20 and crossing >= n // 2


def test_pasted_faces_straddling_borders_and_corners(weights, detector):
    # The faces of kids_group (about 100-150 pixels) pasted onto a plain canvas, centred on the
    # edges and corners of 512 tiles (overlap 256, edges at 256, 512, 768, ...).
    kids = read_image(need_shared('images', 'kids_group.jpg'))
    found = detector.detect(kids)
    faces = found[found[:, 4] > 0.99][:6]
    canvas = np.full((1280, 1280, 3), (104, 117, 123), dtype=np.uint8)
    spots = [(256, 400), (512, 900), (900, 512), (768, 768), (1024, 256), (256, 1024)]  # (y, x) centres
    for face, (cy, cx) in zip(faces, spots):
        x0, y0, x1, y1 = [int(v) for v in face[:4]]
        mx, my = (x1 - x0) // 4, (y1 - y0) // 4
        crop = kids[max(0, y0 - my):y1 + my, max(0, x0 - mx):x1 + mx]
        h, w = crop.shape[:2]
        canvas[cy - h // 2:cy - h // 2 + h, cx - w // 2:cx - w // 2 + w] = crop
    tiled = load_detector('mobile0.25', weights, tile=512)
    grid = tile_grid(1280, 1280, 512, 256)
    untiled = detector.detect(canvas)
    n, crossing = _assert_each_face_found_once_and_whole(untiled, tiled.detect(canvas), grid, 0.85)
    assert n == 6 and crossing == 6


def test_tile_batches_give_the_same_detections(weights, test_photo, monkeypatch):
    one = load_detector('mobile0.25', weights, tile=256).detect(test_photo)
    monkeypatch.setattr(detector_module, 'CPU_TILE_BATCH', 3)
    np.testing.assert_array_equal(load_detector('mobile0.25', weights, tile=256).detect(test_photo), one)


def test_tiles_at_the_test_scale_map_back_to_the_original(weights, test_photo):
    plain = load_detector('mobile0.25', weights, origin_size=False).detect(test_photo)
    tiled = load_detector('mobile0.25', weights, origin_size=False, tile=1024).detect(test_photo)
    for face in plain[plain[:, 4] > 0.9]:
        assert max(iou(face, t) for t in tiled) > 0.85


def test_settings_record_the_tile(weights):
    settings = load_detector('mobile0.25', weights, tile=1024).settings()
    assert settings['tile'] == 1024 and 'pyramid' not in settings


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize('script', [wider_script, fddb_script])
@pytest.mark.parametrize('value, message', [('32', "expected an integer >= 64, got '32'"),
                                            ('63', "expected an integer >= 64, got '63'"),
                                            ('big', "expected an integer, got 'big'"),
                                            ('1.5e3', "expected an integer, got '1.5e3'")])
def test_bad_tile_is_a_usage_error(script, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.get_args_parser().parse_args(['--tile', value])
    assert exit_info.value.code == 2
    assert f"argument --tile: {message}" in capsys.readouterr().err


def test_tile_with_pyramid_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        wider_script.get_args_parser().parse_args(['--tile', '512', '--pyramid'])
    assert 'not allowed with argument' in capsys.readouterr().err
    assert wider_script.get_args_parser().parse_args(['--tile', '64']).tile == 64


def test_api_refuses_a_tile_below_two_coarse_cells(weights):
    with pytest.raises(InputError, match='tile size 63 is too small: at least 64'):
        load_detector('mobile0.25', weights, tile=63)
