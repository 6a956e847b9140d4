"""convert_to_onnx.py: where the export may go (issue 25), checked before the model is loaded."""
import shutil

import pytest

import convert_to_onnx
from tests.conftest import need_shared
from utils.cli import run_cli


@pytest.fixture
def weights_copy(tmp_path):
    path = tmp_path / 'w.pth'
    shutil.copyfile(need_shared('weights', 'mobilenet0.25_Final.pth'), path)
    return path


@pytest.fixture
def no_work(monkeypatch):
    monkeypatch.setattr(convert_to_onnx, 'load_detector',
                        lambda *a, **k: pytest.fail('the weights were loaded before the output was checked'))


def _error_line(capsys):
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_output_over_the_weights_is_refused_and_the_weights_kept(weights_copy, capsys, no_work):
    """W9: exit 0, and the weights replaced by the ONNX file."""
    before = weights_copy.read_bytes()
    assert run_cli(convert_to_onnx.main, convert_to_onnx.get_args_parser(),
                   ['-m', str(weights_copy), '--output', str(weights_copy)]) == 1
    assert _error_line(capsys) == (f"error: --output {weights_copy} would overwrite the weights {weights_copy} (-m) "
                                   f"with the ONNX model: choose another --output")
    assert weights_copy.read_bytes() == before


def test_output_through_a_link_to_the_weights_is_refused(weights_copy, tmp_path, capsys, no_work):
    (tmp_path / 'face.onnx').symlink_to(weights_copy)
    assert run_cli(convert_to_onnx.main, convert_to_onnx.get_args_parser(),
                   ['-m', str(weights_copy), '--output', str(tmp_path / 'face.onnx')]) == 1
    assert f"({tmp_path / 'face.onnx'} leads to it)" in _error_line(capsys)


@pytest.mark.parametrize('output, message', [('-', "--output writes a file, not stdout"),
                                             ('/dev/null', "it is a character device, not a file")])
def test_output_to_a_stream_is_refused(weights_copy, capsys, no_work, output, message):
    assert run_cli(convert_to_onnx.main, convert_to_onnx.get_args_parser(),
                   ['-m', str(weights_copy), '--output', output]) == 1
    assert _error_line(capsys) == f"error: cannot write --output {output}: {message}" + (
        ": give it a file name" if output == '-' else '')
