"""What each compiled kernel saves end to end, measured side by side in one run.

    .venv/bin/python -m bench.bench_kernels                # the four ../shared/images photos
    .venv/bin/python -m bench.bench_kernels --repeats 41 --eval_repeats 7

Detection: detector.detect(img) (eager torch unless --backend says otherwise, mobile0.25,
CPU, original size, the default thresholds) with every kernel compiled, and with one compiled stage at a time falling back
to its numpy version (NMS: the reference py_cpu_nms). A stage is switched off by patching
the module that runs it: layers.functions.detection.to_input_kernel and utils.nms.compiled
set to None. All
configurations of a photo run interleaved (round robin, the order rotating every round),
so that load on the machine affects them alike. 'saving' is 1 - all-compiled /
without-stage of the medians, 'paired' the median of that ratio over the rounds (each
round's runs back to back). Every configuration must give the same detections bit for bit.
A stage's own time is a small part of detect(img), well inside the run-to-run noise of the
forward pass on a shared machine, so the stage is also timed alone on the photo's data
(compiled and fallback interleaved): 'alone saves' is the difference of their medians as a
share of detect(img) without the kernel (all-compiled median + the difference).

Evaluation: bench_evaluation.run_fast (read the predictions and the ground truth, compute
the APs, as widerface_evaluate/evaluation.py does) with and without the compiled
box-overlap kernel (widerface_evaluate.compiled set to None), interleaved likewise; the
APs must be equal.
"""
import argparse
import contextlib
import logging
import os
import statistics
import time

import numpy as np
import torch

import layers.functions.detection as detection
import utils.kernels
import utils.nms
from bench.bench_evaluation import run_fast
from bench.common import IMAGES, _timed, default_weights
from utils.datapaths import shared_path
from models.detector import load_detector
from utils.device import BACKENDS
from utils.image import read_image
from utils.memory import keep_freed_memory
from widerface_evaluate import evaluation

# The compiled stages of utils/kernels/cpu_pipeline.pyx (select_scores, decode_dets and
# assemble were removed after this bench: see bench/README.md), each with the attribute of
# layers.functions.detection that holds it, and the NMS.
PIPELINE_STAGES = {'to_input': 'to_input_kernel'}
NMS = 'cpu_nms'
ALL = 'all-compiled'
# The prediction sets the evaluation is timed on (in ../shared; tests/test_evaluation.py
# knows their reference APs).
PREDICTIONS = (('widerface', 'predictions', 'mobilenet0.25_official'), ('golden', 'eval_perturbed_predictions'))


def get_args_parser():
    parser = argparse.ArgumentParser(description='What each compiled kernel saves end to end')
    parser.add_argument('--images', nargs='+', default=None,
                        help='image files (default: the four photos in $RETINAFACE_DATA/images)')
    parser.add_argument('--backend', default='torch', choices=BACKENDS)
    parser.add_argument('--repeats', default=41, type=int, help='interleaved rounds per photo (median reported)')
    parser.add_argument('--warmup', default=3, type=int, help='untimed rounds first')
    parser.add_argument('--stage_repeats', default=101, type=int,
                        help='interleaved rounds of each stage timed alone (median reported)')
    parser.add_argument('--predictions', nargs='*', default=None,
                        help='WIDER FACE prediction folders to evaluate (default: the two in $RETINAFACE_DATA)')
    parser.add_argument('--eval_repeats', default=7, type=int, help='interleaved rounds per prediction set')
    return parser


@contextlib.contextmanager
def without(stage):
    """Run the pipeline with stage's compiled kernel switched off (ALL: none off)."""
    if stage == ALL:
        yield
    elif stage == NMS:
        saved, utils.nms.compiled = utils.nms.compiled, None
        try:
            yield
        finally:
            utils.nms.compiled = saved
    else:
        name = PIPELINE_STAGES[stage]
        saved = getattr(detection, name)
        setattr(detection, name, None)
        try:
            yield
        finally:
            setattr(detection, name, saved)


def _with(config, call):
    """Milliseconds of call() with config's kernel switched off."""
    with without(config):
        return _timed(call, 'cpu')[1]


def rounds(configs, run, repeats, warmup):
    """{config: [ms per round]}: run(config) timed for every config in each round, the
    order rotating from round to round."""
    times = {c: [] for c in configs}
    for r in range(warmup + repeats):
        k = r % len(configs)
        for c in configs[k:] + configs[:k]:
            ms = run(c)
            if r >= warmup:
                times[c].append(ms)
    return times


def stage_calls(detector, img):
    """{stage: a call of that stage alone on the data detector.detect(img) gives it}, as the
    pipeline runs them on the CPU."""
    batch, sizes, resizes = detector.preprocess([img])
    loc, conf, landms = (x[0] if isinstance(x, np.ndarray) else x[0].numpy() for x in detector.forward(batch))
    size, resize, post = sizes[0], resizes[0], detector.postprocessor
    # NMS's input, as Detect makes it: the candidates by score, decoded.
    loc, _, priors, scores = post.select(loc, conf, landms, detector.priors(size))
    order = scores.argsort()[::-1]
    boxes = detection.decode_boxes(loc[order], priors[order], post.variance, size, resize, post.exp_)
    dets = np.hstack((boxes, scores[order, np.newaxis]))  # [K, 5]
    dst = np.empty_like(batch[0])
    return {
        'to_input': lambda: detection.to_input(img, dst, detector.mean),
        NMS: lambda: utils.nms.fast_nms(dets, post.nms_threshold),
    }


def savings(times, config):
    """(median all-compiled, median without config, saving %, paired saving %)."""
    base, off = times[ALL], times[config]
    t_all, t_off = statistics.median(base), statistics.median(off)
    paired = statistics.median(1 - a / b for a, b in zip(base, off))
    return t_all, t_off, 100 * (1 - t_all / t_off), 100 * paired


def main(args):
    if utils.kernels.compiled is None or utils.nms.compiled is None or evaluation.compiled is None:
        raise SystemExit("error: the compiled kernels are not built (or are out of date): "
                         "run `python setup.py build_ext --inplace` at the repository root")
    # The bench switches kernels off on purpose: no "not built" warnings; and it evaluates
    # the same prediction sets again and again: their warnings once are enough (bench_evaluation).
    logging.getLogger('utils.compiled').setLevel(logging.ERROR)
    logging.getLogger('widerface_evaluate.evaluation').setLevel(logging.ERROR)
    stages = [s for s in PIPELINE_STAGES if hasattr(utils.kernels.compiled, s)] + [NMS]
    configs = [ALL] + stages
    weights = default_weights()
    paths = args.images or [str(shared_path('images', f'{n}.jpg')) for n in IMAGES]
    images = {os.path.splitext(os.path.basename(p))[0]: read_image(p) for p in paths}
    kept = keep_freed_memory()  # as the scripts do on the CPU (after models.detector.detector_from_args)
    detector = load_detector('mobile0.25', weights, device='cpu', backend=args.backend)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {args.backend}, device cpu, "
          f"mobile0.25 ({weights}), "
          f"malloc keeps freed memory: {'yes' if kept else 'no'}, load average {os.getloadavg()[0]:.2f}; "
          f"detect(img), median of {args.repeats} interleaved rounds, ms")

    results, alone, identical = {}, {}, True
    for name, img in images.items():
        reference = detector.detect(img)
        for stage, call in stage_calls(detector, img).items():
            if stage in stages:
                alone[stage, name] = rounds([ALL, stage], lambda c: _with(c, call), args.stage_repeats, args.warmup)

        def run(config):
            with without(config):
                dets, ms = _timed(lambda: detector.detect(img), 'cpu')
            nonlocal identical
            identical &= dets.tobytes() == reference.tobytes() and dets.shape == reference.shape
            return ms

        results[name] = rounds(configs, run, args.repeats, args.warmup)

    header = (f"{'stage':<15}{'photo':<16}{'all-compiled ms':>16}{'without-stage ms':>17}{'saving %':>10}"
              f"{'paired %':>10} | {'alone: compiled ms':>18}{'without ms':>11}{'saves %':>9}")
    print("\n" + header + "\n" + "-" * len(header))
    for stage in stages:
        for name in images:
            t_all, t_off, saving, paired = savings(results[name], stage)
            a_on, a_off = (statistics.median(alone[stage, name][c]) for c in (ALL, stage))
            alone_saving = 100 * (a_off - a_on) / (t_all + a_off - a_on)
            print(f"{stage:<15}{name:<16}{t_all:16.2f}{t_off:17.2f}{saving:10.1f}{paired:10.1f} | "
                  f"{a_on:18.3f}{a_off:11.3f}{alone_saving:9.1f}")
    print(f"detections: {'identical (bit for bit) in every configuration' if identical else 'DIFFERENT'}")

    # -- the evaluation -----------------------------------------------------------------------
    predictions = args.predictions if args.predictions is not None else [shared_path(*p) for p in PREDICTIONS]
    if not predictions:
        return 0 if identical else 1
    print(f"\nWIDER FACE evaluation (read predictions and ground truth, evaluate), median of "
          f"{args.eval_repeats} interleaved rounds, s")
    header = f"{'kernel':<15}{'predictions':<30}{'all-compiled s':>15}{'without-kernel s':>17}{'saving %':>10}"
    print(header + "\n" + "-" * len(header))
    gt = shared_path('widerface', 'ground_truth')
    same_ap = True
    for pred in predictions:
        aps = {}

        def run(config):
            saved = evaluation.compiled
            if config != ALL:
                evaluation.compiled = None
            try:
                t = time.perf_counter()
                aps[config] = run_fast(pred, gt)
                return time.perf_counter() - t
            finally:
                evaluation.compiled = saved

        times = rounds([ALL, 'box_overlaps'], run, args.eval_repeats, 1)
        t_all, t_off, saving, _ = savings(times, 'box_overlaps')
        same_ap &= aps[ALL] == aps['box_overlaps']
        print(f"{'box_overlaps':<15}{os.path.basename(os.path.normpath(pred)):<30}{t_all:15.3f}{t_off:17.3f}"
              f"{saving:10.1f}")
    print(f"APs: {'equal' if same_ap else 'DIFFERENT'} with and without the kernel")
    return 0 if identical and same_ap else 1


if __name__ == '__main__':
    raise SystemExit(main(get_args_parser().parse_args()))
