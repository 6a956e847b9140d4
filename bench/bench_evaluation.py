"""Times widerface_evaluate.evaluation against a straightforward implementation.

The straightforward implementation below is the reference's evaluation.py (WiderFace-
Evaluation by wondervictor) loop for loop, with only what modern numpy and the data need
changed: no ``np.float``, whitespace splitting of box lines, a missing prediction file
counted as an image without detections (the reference raised KeyError), and each file's
rows sorted by score (stable, highest first) as the project's evaluation does, unless
``sort_rows=False`` (the reference's file order). Both run in this process on the same
data and must print the same APs.

    python -m bench.bench_evaluation            # full val set, official MobileNet0.25 predictions
    python -m bench.bench_evaluation -p ../shared/golden/eval_perturbed_predictions
"""
import argparse
import os
import time

import numpy as np

from utils.datapaths import shared_path
from widerface_evaluate import evaluation as fast


# ---- the straightforward (reference-style) implementation ----

def ref_get_gt_boxes(gt_dir):
    from scipy.io import loadmat
    gt_mat = loadmat(os.path.join(gt_dir, "wider_face_val.mat"))
    hard_mat = loadmat(os.path.join(gt_dir, "wider_hard_val.mat"))
    medium_mat = loadmat(os.path.join(gt_dir, "wider_medium_val.mat"))
    easy_mat = loadmat(os.path.join(gt_dir, "wider_easy_val.mat"))
    return (gt_mat["face_bbx_list"], gt_mat["event_list"], gt_mat["file_list"],
            hard_mat["gt_list"], medium_mat["gt_list"], easy_mat["gt_list"])


def ref_read_pred_file(filepath):
    with open(filepath, "r") as f:
        lines = f.readlines()
        img_file = lines[0].rstrip("\n\r")
        lines = lines[2:]
    boxes = np.array(list(map(lambda x: [float(a) for a in x.split()], lines))).astype("float").reshape(-1, 5)
    return img_file.split("/")[-1], boxes


def ref_get_preds(pred_dir, sort_rows=True):
    boxes = dict()
    for event in os.listdir(pred_dir):
        event_dir = os.path.join(pred_dir, event)
        current_event = dict()
        for imgtxt in os.listdir(event_dir):
            imgname, _boxes = ref_read_pred_file(os.path.join(event_dir, imgtxt))
            if sort_rows:
                _boxes = _boxes[np.argsort(-_boxes[:, 4], kind="stable")]
            current_event[imgname.rstrip(".jpg")] = _boxes
        boxes[event] = current_event
    return boxes


def ref_norm_score(pred):
    max_score = 0
    min_score = 1
    for _, k in pred.items():
        for _, v in k.items():
            if len(v) == 0:
                continue
            _min = np.min(v[:, -1])
            _max = np.max(v[:, -1])
            max_score = max(_max, max_score)
            min_score = min(_min, min_score)
    diff = max_score - min_score
    for _, k in pred.items():
        for _, v in k.items():
            if len(v) == 0:
                continue
            v[:, -1] = (v[:, -1] - min_score) / diff


def ref_image_eval(pred, gt, ignore, iou_thresh):
    _pred = pred.copy()
    _gt = gt.copy()
    pred_recall = np.zeros(_pred.shape[0])
    recall_list = np.zeros(_gt.shape[0])
    proposal_list = np.ones(_pred.shape[0])

    _pred[:, 2] = _pred[:, 2] + _pred[:, 0]
    _pred[:, 3] = _pred[:, 3] + _pred[:, 1]
    _gt[:, 2] = _gt[:, 2] + _gt[:, 0]
    _gt[:, 3] = _gt[:, 3] + _gt[:, 1]

    overlaps = fast.bbox_overlaps(_pred[:, :4], _gt)

    for h in range(_pred.shape[0]):
        gt_overlap = overlaps[h]
        max_overlap, max_idx = gt_overlap.max(), gt_overlap.argmax()
        if max_overlap >= iou_thresh:
            if ignore[max_idx] == 0:
                recall_list[max_idx] = -1
                proposal_list[h] = -1
            elif recall_list[max_idx] == 0:
                recall_list[max_idx] = 1
        r_keep_index = np.where(recall_list == 1)[0]
        pred_recall[h] = len(r_keep_index)
    return pred_recall, proposal_list


def ref_img_pr_info(thresh_num, pred_info, proposal_list, pred_recall):
    pr_info = np.zeros((thresh_num, 2)).astype("float")
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        r_index = np.where(pred_info[:, 4] >= thresh)[0]
        if len(r_index) == 0:
            pr_info[t, 0] = 0
            pr_info[t, 1] = 0
        else:
            r_index = r_index[-1]
            p_index = np.where(proposal_list[:r_index + 1] == 1)[0]
            pr_info[t, 0] = len(p_index)
            pr_info[t, 1] = pred_recall[r_index]
    return pr_info


def ref_dataset_pr_info(thresh_num, pr_curve, count_face):
    _pr_curve = np.zeros((thresh_num, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(thresh_num):
            _pr_curve[i, 0] = pr_curve[i, 1] / pr_curve[i, 0]
            _pr_curve[i, 1] = pr_curve[i, 1] / count_face
    return _pr_curve


def reference_evaluation(pred_dir, gt_dir, iou_thresh=fast.IOU_THRESH, sort_rows=True):
    """The reference's evaluation(): returns [easy, medium, hard] AP (sort_rows: see ref_get_preds)."""
    pred = ref_get_preds(pred_dir, sort_rows)
    ref_norm_score(pred)
    facebox_list, event_list, file_list, hard_gt_list, medium_gt_list, easy_gt_list = ref_get_gt_boxes(gt_dir)
    event_num = len(event_list)
    thresh_num = fast.THRESH_NUM
    setting_gts = [easy_gt_list, medium_gt_list, hard_gt_list]
    aps = []
    for setting_id in range(3):
        gt_list = setting_gts[setting_id]
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2)).astype("float")
        for i in range(event_num):
            event_name = str(event_list[i][0][0])
            img_list = file_list[i][0]
            pred_list = pred.get(event_name, {})
            sub_gt_list = gt_list[i][0]
            gt_bbx_list = facebox_list[i][0]
            for j in range(len(img_list)):
                pred_info = pred_list.get(str(img_list[j][0][0]), np.zeros((0, 5)))
                gt_boxes = gt_bbx_list[j][0].astype("float")
                keep_index = sub_gt_list[j][0]
                count_face += len(keep_index)
                if len(gt_boxes) == 0 or len(pred_info) == 0:
                    continue
                ignore = np.zeros(gt_boxes.shape[0])
                if len(keep_index) != 0:
                    ignore[keep_index - 1] = 1
                pred_recall, proposal_list = ref_image_eval(pred_info, gt_boxes, ignore, iou_thresh)
                pr_curve += ref_img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        pr_curve = ref_dataset_pr_info(thresh_num, pr_curve, count_face)
        aps.append(fast.voc_ap(pr_curve[:, 1], pr_curve[:, 0]))
    return [float(ap) for ap in aps]


# ---- the benchmark ----

def run_fast(pred_dir, gt_dir):
    results = fast.evaluate(fast.load_predictions(pred_dir), fast.load_wider_gt(gt_dir))
    return [results[s]["ap"] for s in fast.SETTINGS]


def get_args_parser():
    parser = argparse.ArgumentParser(description="Fast vs straightforward WIDER FACE evaluation, same process.")
    parser.add_argument("-p", "--pred", default=str(shared_path("widerface", "predictions", "mobilenet0.25_official")))
    parser.add_argument("-g", "--gt", default=str(shared_path("widerface", "ground_truth")))
    parser.add_argument("--repeats", type=int, default=3, help="fast runs; the best time is reported")
    return parser


def main(args):
    fast_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast_aps = run_fast(args.pred, args.gt)
        fast_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref_aps = reference_evaluation(args.pred, args.gt)
    ref_time = time.perf_counter() - t0
    t_fast = min(fast_times)
    print(f"predictions: {args.pred}")
    print(f"straightforward: {ref_time:8.3f} s   AP easy/medium/hard = {ref_aps[0]!r} {ref_aps[1]!r} {ref_aps[2]!r}")
    print(f"fast (best of {args.repeats}): {t_fast:8.3f} s   AP easy/medium/hard = "
          f"{fast_aps[0]!r} {fast_aps[1]!r} {fast_aps[2]!r}")
    print(f"speed-up: {ref_time / t_fast:.1f}x   max |AP difference|: "
          f"{max(abs(a - b) for a, b in zip(fast_aps, ref_aps)):.3g}")
    return ref_time / t_fast


if __name__ == "__main__":
    main(get_args_parser().parse_args())
