"""OpenVINO's CPU runtime beside onnxruntime on the project's ONNX export (issue 26, item 6):
the forward pass and end to end, idle and next to busy processes, on the four shared photos.

    .venv/bin/python -m bench.bench_openvino                          # 1 and 2 threads, idle and +2 busy
    .venv/bin/python -m bench.bench_openvino --threads 2 --busy 2 --rounds 3

The model is the file convert_to_onnx.py writes (models.onnx_export.export_onnx of the published
MobileNet0.25; --onnx_model to use one already made). Each runtime runs it inside the project's
own pipeline: a Detector built on the file, whose preprocessing and post-processing (the same
Detect) are the ones every backend uses; only the network's runner differs. OpenVINO gets there
as a session (OpenVinoSession: the two methods of an onnxruntime session the Detector calls), so
no line of the pipeline is special to it. Runtimes:

  onnxruntime        the 'onnxruntime' backend as the scripts make it (allow_spinning off)
  openvino           the file compiled once with dynamic input shapes (as onnxruntime runs it)
  openvino static    compiled again for each input shape (cached): what a video of one frame size
                     would use; the compile of a new shape is timed apart and not in the table

Both runtimes get the same thread count (--threads) and float32 arithmetic (OpenVINO's CPU plugin
would otherwise pick bf16 on CPUs that have it). Each (runtime, threads) runs in its own child
process, --rounds times, the runtimes alternating, next to each --busy count of competing busy
processes (bench/bench_threads.py's busy loop); the fastest round's median is kept, since other
work on a shared machine only ever slows a round down. 'forward' is Detector.forward on the
preprocessed input; 'end to end' is Detector.detect (preprocess, forward, post-process).

The detections of each runtime are compared with the reference's golden ones (golden/mnet): the
largest differences are printed; tests/test_bench_openvino.py checks OpenVINO's against the
end-to-end matcher's tolerances (tests/detection_match.py DETECTION_TOLERANCES; a benchmark does
not import the tests).

Issue 26 adds '--backend openvino' only if OpenVINO is at least 1.2x faster end to end on every
photo with outputs within those tolerances: the last lines say whether this run shows the speed;
decide on a quiet machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from bench.common import IMAGES, ROOT, busy_processes, compare_detections, default_weights, speed_ratio

RUNTIMES = ('onnxruntime', 'openvino', 'openvino static')
BACKEND_GAIN = 1.2  # issue 26: the end-to-end speed-up on every photo that would add the backend


class OpenVinoSession:
    """An ONNX export compiled by OpenVINO's CPU runtime, offering what models.detector uses of
    an onnxruntime session: get_modelmeta() (the export's metadata) and run(None, feeds).

    Args:
        path (str): the .onnx file.
        threads (int): OpenVINO's inference threads.
        static (bool): compile the model again for each input shape (cached), instead of once
            with dynamic shapes.
    """

    def __init__(self, path, threads, static=False):
        import onnx
        import openvino as ov

        self.path = path
        self.core = ov.Core()
        self.model = self.core.read_model(path)
        # float32 as onnxruntime computes (the CPU plugin's default on CPUs with bf16 is bf16);
        # one stream answering one request at a time, as the pipeline calls it.
        self.config = {'INFERENCE_NUM_THREADS': int(threads), 'INFERENCE_PRECISION_HINT': 'f32',
                       'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1}
        self.static = static
        self._compiled = {}
        self.compile_ms = {}
        meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        self._meta = SimpleNamespace(custom_metadata_map=meta)
        if not static:
            self._compile(None)

    def __str__(self):
        return self.path

    def _compile(self, shape):
        tic = time.perf_counter()
        model = self.model
        if shape is not None:
            model = self.model.clone()
            model.reshape({model.input(0).get_any_name(): list(shape)})
        compiled = self.core.compile_model(model, 'CPU', self.config)
        self._compiled[shape] = (compiled, compiled.create_infer_request(),
                                 [compiled.output(name) for name in ('loc', 'conf', 'landms')])
        self.compile_ms[shape] = 1000 * (time.perf_counter() - tic)

    def get_modelmeta(self):
        return self._meta

    def run(self, output_names, feeds):
        x = next(iter(feeds.values()))
        key = tuple(x.shape) if self.static else None
        if key not in self._compiled:
            self._compile(key)
        _, request, outputs = self._compiled[key]
        result = request.infer({0: x})
        # Copies: the request's output buffers are overwritten by its next call.
        return [np.array(result[o]) for o in outputs]


def make_detector(runtime, onnx_model, threads):
    from models.detector import Detector, load_detector

    if runtime == 'onnxruntime':
        return load_detector('mobile0.25', None, backend='onnxruntime', onnx_model=onnx_model, num_threads=threads,
                             allow_spinning=False)
    from data.config import cfg_mnet

    session = OpenVinoSession(onnx_model, threads, static=runtime == 'openvino static')
    return Detector(None, cfg_mnet, backend='onnxruntime', onnx_model=session)


def child(args):
    """Time one runtime on the photos; print JSON {photo: {forward, e2e, compile_ms}}; save detections."""
    from utils.datapaths import shared_path
    from utils.image import read_image

    det = make_detector(args.child, args.onnx_model, args.threads[0])
    out, dets = {}, {}
    for name in IMAGES:
        img = read_image(shared_path('images', f'{name}.jpg'))
        batch, sizes, resizes = det.preprocess([img])
        dets[name] = det.detect(img)  # warm-up: compiles the shape for 'openvino static'
        compile_ms = None
        if isinstance(det.session, OpenVinoSession) and det.session.static:
            compile_ms = det.session.compile_ms[tuple(batch.shape)]
        det.forward(batch)
        forward, e2e = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            det.forward(batch)
            forward.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            det.detect(img)
            e2e.append(1000 * (time.perf_counter() - t))
        out[name] = {'forward': statistics.median(forward), 'e2e': statistics.median(e2e), 'compile_ms': compile_ms}
    if args.dets_out:
        np.savez(args.dets_out, **dets)
    print(json.dumps(out))
    return 0


def run_child(args, runtime, threads, dets_out):
    cmd = [sys.executable, '-m', 'bench.bench_openvino', '--child', runtime, '--onnx_model', args.onnx_model,
           '--threads', str(threads), '--repeats', str(args.repeats), '--dets_out', dets_out]
    env = dict(os.environ)
    if runtime != 'onnxruntime':
        # OpenVINO's CPU plugin reads oneDNN's ISA limit too, and fails on this network under
        # ONEDNN_MAX_CPU_ISA=SSE41 (its FPN's Interpolate has no kernel there): its own defaults.
        env.pop('ONEDNN_MAX_CPU_ISA', None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {runtime!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export(weights, path):
    from models.detector import load_detector
    from models.onnx_export import export_onnx

    export_onnx(load_detector('mobile0.25', weights).net, path)


def compare_with_golden(dets_file):
    """{photo: bench.common.compare_detections of saved detections against golden/mnet}."""
    from utils.datapaths import shared_path

    found = np.load(dets_file)
    return {name: compare_detections(np.load(shared_path('golden', 'mnet', f'{name}_dets.npy')), found[name])
            for name in IMAGES}


def _match_text(m):
    return (f"{m['n_other']} dets (golden {m['n_ref']}), {m['unmatched']} of {m['strong']} >= 0.5 unmatched, "
            f"max diff box {m['max_box']:.1e} px, landmarks {m['max_landmark']:.1e} px, score {m['max_score']:.1e}")


def get_args_parser():
    parser = argparse.ArgumentParser(description="OpenVINO beside onnxruntime on the project's ONNX export")
    parser.add_argument('-m', '--trained_model', default=None,
                        help='weights to export (default: weights/mobilenet0.25_Final.pth, else $RETINAFACE_DATA)')
    parser.add_argument('--onnx_model', default=None, help='an export to use (default: exported from -m for the run)')
    parser.add_argument('--runtimes', nargs='+', default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument('--threads', nargs='+', default=[1, 2], type=int, help='thread counts, the same for both')
    parser.add_argument('--busy', nargs='+', default=[2], type=int, help='competing busy processes in the loaded runs')
    parser.add_argument('--rounds', default=2, type=int, help='rounds of each child (runtimes alternating)')
    parser.add_argument('--repeats', default=5, type=int, help='timed runs per photo in a child (median kept)')
    parser.add_argument('--child', default=None, choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument('--dets_out', default=None, help=argparse.SUPPRESS)
    return parser


def main(args):
    with tempfile.TemporaryDirectory(prefix='bench_openvino_') as tmp:
        if args.onnx_model is None:
            args.onnx_model = os.path.join(tmp, 'FaceDetector.onnx')
            export(args.trained_model or default_weights(), args.onnx_model)
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {os.path.basename(args.onnx_model)} "
              f"(mobile0.25); ms, median of {args.repeats} runs, fastest of {args.rounds} rounds")
        loads = [0] + [n for n in args.busy if n > 0]
        best, matches, compile_ms = {}, {}, {}
        for load in loads:
            with busy_processes(load):
                for r in range(args.rounds):
                    for threads in args.threads:
                        for runtime in args.runtimes:
                            dets_out = os.path.join(tmp, f'{runtime}_{threads}.npz'.replace(' ', '_'))
                            res = run_child(args, runtime, threads, dets_out)
                            key = (load, threads, runtime)
                            for name, v in res.items():
                                old = best.get((key, name))
                                if old is None or v['e2e'] < old['e2e']:
                                    best[key, name] = v
                                if v['compile_ms'] is not None:
                                    compile_ms.setdefault(runtime, {})[name] = v['compile_ms']
                            if (threads, runtime) not in matches:
                                matches[threads, runtime] = compare_with_golden(dets_out)
        label = {n: 'idle' if n == 0 else f'+{n} busy' for n in loads}
        others = [r for r in args.runtimes if r != 'onnxruntime']
        head = f"{'load':<8} {'threads':>7} {'photo':<15} " + ''.join(f"{r + ' fwd':>22}" for r in args.runtimes) \
            + ''.join(f"{r + ' e2e':>22}" for r in args.runtimes)
        print(head)
        print('-' * len(head))
        ratios = {}
        for load in loads:
            for threads in args.threads:
                for name in IMAGES:
                    row = [best[(load, threads, r), name] for r in args.runtimes]
                    print(f"{label[load]:<8} {threads:>7} {name:<15} " + ''.join(f"{v['forward']:>22.1f}" for v in row)
                          + ''.join(f"{v['e2e']:>22.1f}" for v in row))
                    if 'onnxruntime' in args.runtimes:
                        ort = best[(load, threads, 'onnxruntime'), name]
                        for r in others:
                            v = best[(load, threads, r), name]
                            ratios[load, threads, r, name] = ort['e2e'] / v['e2e']
        if 'onnxruntime' in args.runtimes:
            print()
            for r in others:
                for load in loads:
                    for threads in args.threads:
                        parts = []
                        for name in IMAGES:
                            ort, v = best[(load, threads, 'onnxruntime'), name], best[(load, threads, r), name]
                            parts.append(f"{name} fwd {speed_ratio(v['forward'], ort['forward'], 'ort')}, "
                                         f"e2e {speed_ratio(v['e2e'], ort['e2e'], 'ort')}")
                        print(f"{r}, {label[load]}, {threads} thread(s): " + '; '.join(parts))
        for r, per in compile_ms.items():
            print(f"{r}: compiling a new input shape took " + ', '.join(f"{n} {ms:.0f} ms" for n, ms in per.items()))
        print("\nDetections against the reference's golden ones (tests/test_bench_openvino.py checks OpenVINO's "
              "against the end-to-end matcher's DETECTION_TOLERANCES):")
        for (threads, runtime), per in matches.items():
            print(f"  {runtime}, {threads} thread(s):")
            for name, m in per.items():
                print(f"    {name:<15} {_match_text(m)}")
        for r in others:
            if 'onnxruntime' not in args.runtimes:
                break
            slow = {k: v for k, v in ratios.items() if k[2] == r and v < BACKEND_GAIN}
            worst = min(((v, k) for k, v in ratios.items() if k[2] == r), default=None)
            print(f"{r}: >= {BACKEND_GAIN}x faster end to end on every photo, load and thread count: "
                  f"{'no' if slow else 'yes'}" + (f" (slowest: {worst[1][3]}, {label[worst[1][0]]}, {worst[1][1]} "
                                                 f"thread(s): {worst[0]:.2f}x)" if worst else ''))
    return {'best': best, 'matches': matches, 'ratios': ratios}


if __name__ == '__main__':
    cli_args = get_args_parser().parse_args()
    if cli_args.child:
        raise SystemExit(child(cli_args))
    main(cli_args)
