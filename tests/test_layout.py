"""The layout: imports only go down (scripts -> models -> layers -> widerface_evaluate -> data -> utils),
nothing imports in a circle, and the reference's import paths still work."""
import importlib
import subprocess
import sys

from tests.import_graph import ROOT, cycles, import_graph, imports_of, layer_of, project_modules, upward_edges


def test_no_module_imports_a_layer_above_its_own():
    assert upward_edges(import_graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(import_graph()) == []


def test_the_check_finds_upward_edges_and_cycles():
    graph = {'utils.a': ['models.b'], 'models.b': ['models.c'], 'models.c': ['models.b', 'utils.a'],
             'detect': ['utils.a']}
    assert upward_edges(graph) == [('utils.a', 'models.b')]
    assert cycles(graph) == [['models.b', 'models.c', 'utils.a']]
    assert [layer_of(m) for m in ('utils.nms.cpu_nms', 'train', 'widerface_evaluate.evaluation')] == \
        ['utils', 'scripts', 'widerface_evaluate']


def test_lazy_and_relative_imports_are_edges():
    modules = project_modules()
    # models.detector builds the network lazily, inside load_detector.
    assert 'models.retinaface' in imports_of('models.detector', modules['models.detector'], modules)
    # layers/__init__.py: `from .functions import *`.
    assert 'layers.functions' in imports_of('layers', modules['layers'], modules)


def test_the_reference_import_paths_work():
    from data import WiderFaceDetection, cfg_mnet, cfg_re50, detection_collate, preproc  # noqa: F401
    from layers.functions.prior_box import PriorBox  # noqa: F401
    from layers.modules import MultiBoxLoss  # noqa: F401
    from models.retinaface import RetinaFace  # noqa: F401
    from utils.box_utils import decode, decode_landm  # noqa: F401
    from utils.nms.py_cpu_nms import py_cpu_nms  # noqa: F401
    assert importlib.import_module('widerface_evaluate.evaluation').evaluate


def test_the_check_command_passes():
    out = subprocess.run([sys.executable, 'tests/import_graph.py'], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert ' 0 upward, 0 cycles' in out.stdout


def test_utils_train_is_a_layer_above_the_rest_of_utils():
    """train.py's pieces in utils/train/ may import the rest of utils, which must not import them."""
    assert [layer_of(m) for m in ('utils.train', 'utils.train.schedule', 'utils.train_state')] == \
        ['utils.train', 'utils.train', 'utils']
    graph = {'utils.train.resume': ['utils.train_state'], 'utils.train_state': ['utils.train.schedule']}
    assert upward_edges(graph) == [('utils.train_state', 'utils.train.schedule')]
