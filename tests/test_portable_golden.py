"""End to end against ../shared/golden/mnet_portable: the reference run with its kernels pinned to
code paths meant not to depend on the CPU (PINNED_ENV, set before Python starts).

The project runs under the same variables in a subprocess. Where its raw network outputs equal
the portable ones bit for bit, its WIDER files must equal the reference's byte for byte; where
they do not (another CPU may still round differently), the detections must agree up to float
rounding. At the test scale there are no raw outputs to compare, so the files are compared
as detections (see README, "Exactness").
"""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import need_shared
from tests.detection_match import assert_wider_files_match

ROOT = Path(__file__).resolve().parent.parent
PINNED_ENV = {'ONEDNN_MAX_CPU_ISA': 'SSE41', 'ATEN_CPU_CAPABILITY': 'default', 'OMP_NUM_THREADS': '1',
              'MKL_CBWR': 'COMPATIBLE'}

# Runs in the pinned subprocess: the raw outputs at the original size, then test_widerface.py at
# the original size and at the test scale.
RUN = r'''
import json, sys
import numpy as np
import test_widerface
from models.detector import load_detector
from utils.image import read_image
images, out, weights = sys.argv[1:4]
names = [l.strip() for l in open(images + '/../wider_val.txt') if l.strip()]
det = load_detector('mobile0.25', weights)
for rel in names:
    batch, _, _ = det.preprocess([read_image(images + '/' + rel)])
    loc, conf, landms = (o.numpy() for o in det.forward(batch))
    np.savez(out + '/' + rel.split('/')[-1][:-4] + '_raw.npz', loc=loc, conf=conf, landms=landms)
for kind, origin in (('wider_origin', 'True'), ('wider_resized', 'False')):
    test_widerface.main(test_widerface.get_args_parser().parse_args(
        ['-m', weights, '--network', 'mobile0.25', '--dataset_folder', images + '/',
         '--save_folder', out + '/' + kind + '/', '--origin_size', origin]))
'''


@pytest.fixture(scope='module')
def portable_run(tmp_path_factory):
    golden = need_shared('golden', 'mnet_portable')
    weights = need_shared('weights', 'mobilenet0.25_Final.pth')
    root = tmp_path_factory.mktemp('portable')
    names = golden.joinpath('wider_val.txt').read_text().split()
    for rel in names:
        event, file = rel.split('/')
        src = need_shared('images', file) if event == 'photos' else need_shared('minitrain', 'train', 'images', rel)
        (root / 'val' / 'images' / event).mkdir(parents=True, exist_ok=True)
        os.symlink(src, root / 'val' / 'images' / rel)
    (root / 'val' / 'wider_val.txt').write_text("\n".join(names) + "\n")
    out = root / 'out'
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV and not k.startswith(('MKL_', 'ONEDNN_'))}
    env.update(PINNED_ENV, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, '-c', RUN, str(root / 'val' / 'images'), str(out), str(weights)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return golden, out, names


def _raw_equal(golden, out, name):
    ours, ref = np.load(out / f'{name}_raw.npz'), np.load(golden / 'raw' / f'{name}_raw.npz')
    return all(np.array_equal(ours[k], ref[k]) for k in ('loc', 'conf', 'landms'))


def test_portable_raw_outputs_and_original_size_files(portable_run):
    golden, out, names = portable_run
    differing = []
    for rel in names:
        name = rel.split('/')[-1][:-4]
        text = (out / 'wider_origin' / rel.replace('.jpg', '.txt')).read_text()
        golden_text = (golden / 'wider_origin' / rel.replace('.jpg', '.txt')).read_text()
        if _raw_equal(golden, out, name):
            assert text == golden_text, rel
        else:
            differing.append(name)
            assert_wider_files_match(text, golden_text)
    if differing:  # visible in the test log: this CPU still rounds differently under PINNED_ENV
        warnings.warn(f"pinned raw outputs differ from the portable goldens for {differing}: {json.dumps(PINNED_ENV)}")


def test_portable_test_scale_files(portable_run):
    golden, out, names = portable_run
    for rel in names:
        assert_wider_files_match((out / 'wider_resized' / rel.replace('.jpg', '.txt')).read_text(),
                                 (golden / 'wider_resized' / rel.replace('.jpg', '.txt')).read_text())
