"""curve/plot_metrics.py: the plot never replaces the metrics file it draws (issue 25)."""
import pytest

from curve import plot_metrics
from utils.cli import run_cli

RECORD = '{"epoch": 1, "loss": 1.0, "loc": 0.5, "cla": 0.3, "landm": 0.2, "lr": 0.001}\n'


@pytest.mark.parametrize('name, output', [('run_metrics.jsonl', 'run_metrics.jsonl'),
                                          ('run_metrics.png', None)])  # the default -o: the metrics' .png
def test_output_over_the_metrics_file_is_refused(tmp_path, capsys, name, output):
    metrics = tmp_path / name
    metrics.write_text(RECORD)
    argv = [str(metrics)] + (['-o', str(tmp_path / output)] if output else [])
    assert run_cli(plot_metrics.main, plot_metrics.get_args_parser(), argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: -o {metrics} would overwrite the metrics file {metrics} with the plot: choose another -o")
    assert metrics.read_text() == RECORD
