"""What a newcomer meets first (issue 18): each message printed once, the busy-CPU warning
reached through the default flags."""
import pytest

from tests.conftest import need_shared
from utils.cli import run_cli


@pytest.fixture(scope='module')
def weights():
    return str(need_shared('weights', 'mobilenet0.25_Final.pth'))


def test_convert_to_onnx_prints_each_check_once(weights, tmp_path, capsys):
    import convert_to_onnx

    status = run_cli(convert_to_onnx.main, convert_to_onnx.get_args_parser(),
                     ['-m', weights, '--output', str(tmp_path / 'm.onnx')])
    out, err = capsys.readouterr()
    lines = (out + err).splitlines()
    assert status == 0
    for size in ('640x640', '417x301'):
        checks = [line for line in lines if size in line]
        assert len(checks) == 1, checks
        assert checks[0].startswith(f"onnxruntime matches PyTorch on {size}: max |diff| loc ")
        assert checks[0].endswith("(<= 0.0001)")


# -- defaults that hold up on a busy machine -------------------------------------------------------

def _busy_machine(monkeypatch, threads=2):
    import models.detector
    import utils.cli
    monkeypatch.setattr(models.detector, 'set_threads', lambda n=None: threads if n is None else n)
    monkeypatch.setattr(models.detector, 'other_busy_processes', lambda: 3.0)
    monkeypatch.setattr(utils.cli, 'other_busy_processes', lambda: 3.0)


@pytest.mark.parametrize('script_name', ['detect', 'test_widerface', 'test_fddb'])
def test_the_busy_cpu_warning_reaches_the_default_flags(script_name, weights, monkeypatch, caplog):
    """--backend is None unless given: the warning must look at the backend that runs."""
    import importlib
    import logging

    from models.detector import detector_from_args
    script = importlib.import_module(script_name)
    _busy_machine(monkeypatch)
    with caplog.at_level(logging.WARNING, logger='utils.cli'):
        detector_from_args(script.get_args_parser().parse_args(['-m', weights, '--network', 'mobile0.25', '--cpu']))
    assert [r.message for r in caplog.records] == [
        "the CPUs are busy (3.0 other busy processes): eager PyTorch's 2 threads can run several times slower "
        "next to them; --threads 1 avoids it"]


def test_the_machine_is_looked_at_once_for_the_wait_policy_and_the_warning(weights, monkeypatch, caplog):
    """Each look takes a tenth of a second of the start-up."""
    import logging

    import detect
    import models.detector
    import utils.cli
    from models.detector import detector_from_args
    _busy_machine(monkeypatch)
    looks = []
    monkeypatch.setattr(models.detector, 'other_busy_processes', lambda: looks.append(1) or 3.0)
    monkeypatch.setattr(utils.cli, 'other_busy_processes', lambda: looks.append(2) or 3.0)
    with caplog.at_level(logging.WARNING, logger='utils.cli'):
        detector_from_args(detect.get_args_parser().parse_args(['-m', weights, '--cpu']))
    assert looks == [1]
    assert [r.message for r in caplog.records if 'CPUs are busy (3.0 other busy processes)' in r.message]


@pytest.mark.parametrize('flags', [['--threads', '2'], ['--backend', 'onnxruntime']])
def test_no_busy_cpu_warning_for_a_chosen_thread_count_or_onnxruntime(flags, weights, monkeypatch, caplog):
    import logging

    import detect
    from models.detector import detector_from_args
    _busy_machine(monkeypatch)
    with caplog.at_level(logging.WARNING, logger='utils.cli'):
        detector_from_args(detect.get_args_parser().parse_args(['-m', weights, '--cpu', *flags]))
    assert not [r for r in caplog.records if 'CPUs are busy' in r.message]


_POLICY_CHILD = '''
import os, sys
import detect
import models.detector
from models.detector import detector_from_args
assert 'torch' not in sys.modules
models.detector.other_busy_processes = lambda: float(sys.argv[2])  # the machine the test pretends to be on
detector_from_args(detect.get_args_parser().parse_args(['-m', sys.argv[1], '--cpu']))
print(os.environ.get('OMP_WAIT_POLICY'))
'''


@pytest.mark.parametrize('busy, given, expected', [('0', None, 'None'), ('1', None, 'PASSIVE'), ('3', None, 'PASSIVE'),
                                                   ('3', 'ACTIVE', 'ACTIVE'), ('0', 'PASSIVE', 'PASSIVE')])
def test_scripts_start_torch_with_a_passive_openmp_wait_on_a_busy_machine(busy, given, expected, weights):
    """Idle threads spin on an idle machine (fastest there) and sleep on a busy one (where
    spinning collapses); a policy the user set is kept."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    if given:
        env['OMP_WAIT_POLICY'] = given
    out = subprocess.run([sys.executable, '-c', _POLICY_CHILD, weights, busy], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [expected]


def test_other_busy_processes_sees_a_busy_loop_at_once():
    import subprocess
    import sys
    import time

    from utils.cli import other_busy_processes
    loops = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(2)]
    try:
        time.sleep(0.5)
        assert other_busy_processes() >= 1
    finally:
        for p in loops:
            p.kill()
            p.wait()


def test_the_wait_policy_does_not_change_the_result_files(weights, tmp_path):
    """PASSIVE changes how idle threads wait, not what they compute: at one thread count the
    files are the same bytes whatever the policy."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    images = need_shared('minitrain', 'train', 'images')
    names = sorted(str(p.relative_to(images)) for p in images.glob('0--Parade/*.jpg'))[:4]
    (tmp_path / 'list.txt').write_text('\n'.join(names) + '\n')
    files = {}
    for policy in ('PASSIVE', 'ACTIVE'):
        env = dict(os.environ, OMP_WAIT_POLICY=policy, OMP_NUM_THREADS='2')
        out = tmp_path / policy
        proc = subprocess.run([sys.executable, 'test_widerface.py', '-m', weights, '--network', 'mobile0.25', '--cpu',
                               '--dataset_folder',
                               str(images), '--image_list', str(tmp_path / 'list.txt'), '--save_folder', str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        files[policy] = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob('*.txt')}
    assert len(files['PASSIVE']) == 4 and files['PASSIVE'] == files['ACTIVE']
