"""Wall time of detect.py on one photo, as a user runs it, for each way of running the network.

    .venv/bin/python -m bench.bench_startup                  # ../shared/images/test.jpg, 5 rounds
    .venv/bin/python -m bench.bench_startup --rounds 9 --image photo.jpg

Variants (each a fresh `python detect.py ... --cpu` process writing the annotated photo):

- torch:             eager PyTorch with the .pth weights (the default backend);
- ort+export:        --backend onnxruntime with the .pth: imports torch, exports in memory;
- ort file+torch:    --onnx_model FaceDetector.onnx, with torch imported first (what this
                     path cost while the scripts imported torch);
- ort file, no torch: --onnx_model FaceDetector.onnx, with `import torch` made to fail.

The rounds run the variants one after the other, in a rotating order, so that load from
other processes affects all of them alike; it prints the median wall time of each and its
ratio to the torch-free run. Then, in one more process per variant, the start-up phases:
`import torch`, the project's imports (detect.py's, and the model's for the .pth), weight loading, export, the onnxruntime session,
and the first detection. The ONNX file is made first with
convert_to_onnx.py (timed too: a one-off cost of deployment, not of a run).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT
from utils.datapaths import shared_path

# Run before a script or a phase measurement: IMPORT_TORCH=1 imports torch first,
# BLOCK_TORCH=1 makes `import torch` / `import torchvision` fail.
PRELUDE = r'''
import importlib.abc, os, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ImportError(f"torch is blocked: import {name}")
        return None
if os.environ.get('BLOCK_TORCH') == '1':
    sys.meta_path.insert(0, _NoTorch())
if os.environ.get('IMPORT_TORCH') == '1':
    import torch
'''

RUN_SCRIPT = PRELUDE + r'''
import runpy
script, sys.argv = sys.argv[1], sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name='__main__')
'''

# Prints the start-up phases of one variant as JSON (seconds).
PHASES = PRELUDE + r'''
import json, time
t = {'python start': time.time() - PARENT_START}
variant, weights, onnx_model, image = sys.argv[1:5]
s = time.perf_counter()
if variant != 'ort file, no torch':
    import torch
    t['import torch'] = time.perf_counter() - s
s = time.perf_counter()
import detect  # the script's imports: the project's modules, numpy, OpenCV
from utils.image import read_image
from models.detector import load_detector, Detector
from data import cfg_mnet
if variant in ('torch', 'ort+export'):  # what load_detector imports to build the network
    from models.retinaface import RetinaFace
    from utils.checkpoint import load_model
t['project imports'] = time.perf_counter() - s
if variant in ('torch', 'ort+export'):
    s = time.perf_counter()
    net = load_model(RetinaFace(cfg_mnet, phase='test'), weights).eval()
    t['weight load'] = time.perf_counter() - s
    if variant == 'torch':
        det = Detector(net, cfg_mnet)
    else:
        from models.onnx_export import export_onnx_bytes
        s = time.perf_counter()
        with torch.inference_mode(False):
            data = export_onnx_bytes(net, cfg=cfg_mnet)
        t['export'] = time.perf_counter() - s
        s = time.perf_counter()
        det = Detector(None, cfg_mnet, backend='onnxruntime', onnx_model=data)
        t['session'] = time.perf_counter() - s
else:
    s = time.perf_counter()
    det = load_detector('mobile0.25', weights, onnx_model=onnx_model)
    t['session'] = time.perf_counter() - s
img = read_image(image)
s = time.perf_counter()
det.detect(img)
t['first detect'] = time.perf_counter() - s
t['torch loaded'] = 'torch' in sys.modules
t['end'] = time.time()
print(json.dumps(t), flush=True)
'''

VARIANTS = ('torch', 'ort+export', 'ort file+torch', 'ort file, no torch')
PHASE_ORDER = ('python start', 'import torch', 'project imports', 'weight load', 'export', 'session', 'first detect', 'exit')


def _env(variant):
    env = dict(os.environ, BLOCK_TORCH='0', IMPORT_TORCH='0')
    if variant == 'ort file, no torch':
        env['BLOCK_TORCH'] = '1'
    elif variant == 'ort file+torch':
        env['IMPORT_TORCH'] = '1'
    return env


def _detect_argv(variant, weights, onnx_model, image, output):
    argv = ['--cpu', '--image', image, '--output', output]
    if variant == 'torch':
        return argv + ['-m', weights]
    if variant == 'ort+export':
        return argv + ['-m', weights, '--backend', 'onnxruntime']
    return argv + ['--onnx_model', onnx_model]


def time_detect(variant, weights, onnx_model, image, output):
    """Wall seconds of one detect.py process, and its summary line."""
    cmd = [sys.executable, '-c', RUN_SCRIPT, os.path.join(ROOT, 'detect.py'),
           *_detect_argv(variant, weights, onnx_model, image, output)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(variant), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {variant} run failed:\n{proc.stderr[-2000:]}")
    return wall, proc.stdout.strip().splitlines()[-1]


def phases(variant, weights, onnx_model, image):
    """The start-up phases of variant in one process ({phase: s}), and the process's wall seconds.

    'python start' is from the parent starting the process to its first line, 'exit' from
    its last line to the parent seeing it end (wall clock, the same machine).
    """
    start_wall = time.time()
    # `python -c` puts the working directory, ROOT, first on sys.path.
    code = f"PARENT_START = {start_wall!r}\n" + PHASES
    start = time.perf_counter()
    env = _env(variant)
    env['IMPORT_TORCH'] = '0'  # the phases import it themselves, to time it
    proc = subprocess.run([sys.executable, '-c', code, variant, weights, onnx_model, image], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {variant} phases failed:\n{proc.stderr[-2000:]}")
    t = json.loads(proc.stdout.strip().splitlines()[-1])
    t['exit'] = start_wall + wall - t.pop('end')
    return t, wall


def interpreter_start():
    """Wall seconds of `python -c pass` (process start, no project code)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, '-c', 'pass'], check=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=5, help='runs of each variant (median reported)')
    parser.add_argument('--image', default=str(shared_path('images', 'test.jpg')))
    parser.add_argument('--weights', default=str(shared_path('weights', 'mobilenet0.25_Final.pth')))
    args = parser.parse_args()
    for path in (args.image, args.weights):
        if not os.path.isfile(path):
            raise SystemExit(f"error: not found: {path}")

    with tempfile.TemporaryDirectory() as tmp:
        onnx_model = os.path.join(tmp, 'FaceDetector.onnx')
        start = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(ROOT, 'convert_to_onnx.py'), '-m', args.weights,
                        '--output', onnx_model], cwd=ROOT, check=True, capture_output=True)
        export_s = time.perf_counter() - start

        import platform
        print(f"detect.py on {os.path.relpath(args.image, ROOT)}, {os.cpu_count()} CPUs, "
              f"python {platform.python_version()}, {args.rounds} rounds (variants in rotating order)")
        print(f"convert_to_onnx.py (one-off, with its onnxruntime check): {export_s:.2f} s")
        python_s = statistics.median(interpreter_start() for _ in range(3))
        print(f"python -c pass: {python_s:.3f} s\n")

        walls = {v: [] for v in VARIANTS}
        lines = {}
        for r in range(args.rounds):
            for i in range(len(VARIANTS)):
                v = VARIANTS[(r + i) % len(VARIANTS)]
                wall, lines[v] = time_detect(v, args.weights, onnx_model, args.image, os.path.join(tmp, 'out'))
                walls[v].append(wall)

        base = statistics.median(walls['ort file, no torch'])
        print(f"{'variant':<20}{'median s':>9}{'min s':>8}{'max s':>8}{'vs no torch':>13}   detect.py says")
        for v in VARIANTS:
            med = statistics.median(walls[v])
            said = lines[v].split(': ', 1)[1].split(' -> ')[0]
            print(f"{v:<20}{med:9.2f}{min(walls[v]):8.2f}{max(walls[v]):8.2f}{med / base:12.2f}x   {said}")

        print("\nstart-up phases, one process each (s):")
        print(f"{'variant':<20}" + ''.join(f"{p:>16}" for p in PHASE_ORDER) + f"{'process':>9}  torch loaded")
        for v in VARIANTS:
            t, wall = phases(v, args.weights, onnx_model, args.image)
            cells = ''.join(f"{t[p]:16.3f}" if p in t else f"{'-':>16}" for p in PHASE_ORDER)
            print(f"{v:<20}{cells}{wall:9.2f}  {t['torch loaded']}")
        print("('python start': process start to the first line of code; 'exit': the last line to the "
              "process's end; 'process': all of it)")


if __name__ == '__main__':
    main()
