"""RetinaFace's multi-task loss: box and landmark smooth-L1 on the positive priors and a
face / background cross-entropy with hard negative mining."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.config import cfg_mnet
from utils.box_utils import log_sum_exp, match


class MultiBoxLoss(nn.Module):
    """MultiBoxLoss(num_classes, overlap_thresh, prior_for_matching, bkg_label, neg_mining,
    neg_pos, neg_overlap, encode_target), the reference's SSD-style loss.

    1) Match every prior to the ground truth face it overlaps most (IoU >= overlap_thresh,
       0.35 in RetinaFace; each face also keeps its best prior) and encode the box and
       landmark offsets (utils.box_utils.match).
    2) Box loss: smooth-L1 between predicted and target offsets over the positive priors
       (faces with or without landmarks). Landmark loss: smooth-L1 over the priors
       matched to faces with landmarks (label 1) only.
    3) Confidence loss: cross-entropy over the positives and the hardest negatives,
       at most neg_pos negatives per positive in each image (so an image without faces
       contributes no negatives, as in the reference). With faceless_negatives = K > 0
       (opt-in, not the reference's) an image without positives gives its K hardest
       negatives instead.
    Box and class losses are divided by the number of positives N, the landmark loss by
    the number of landmark positives N1 (both floored at 1).

    Only num_classes, overlap_thresh, neg_pos, variance and faceless_negatives change the
    result; the other arguments are kept for the reference's signature. Call with the
    reference's MultiBoxLoss(2, 0.35, True, 0, True, 7, 0.35, False); variance is the
    config's cfg['variance'] (the reference's value, in both configs, by default) and
    faceless_negatives=0 (the default) is the reference's loss.

    The loss runs on the device of the predictions (the reference hard-codes .cuda()) and
    in at least float32, also for float16 predictions under autocast.
    """

    def __init__(self, num_classes, overlap_thresh, prior_for_matching, bkg_label, neg_mining, neg_pos, neg_overlap,
                 encode_target, faceless_negatives=0, variance=None):
        super().__init__()
        self.num_classes = num_classes
        self.threshold = overlap_thresh
        self.background_label = bkg_label
        self.encode_target = encode_target
        self.use_prior_for_matching = prior_for_matching
        self.do_neg_mining = neg_mining
        self.negpos_ratio = neg_pos
        self.neg_overlap = neg_overlap
        # The box / landmark encoding variances (centre, size), as the detector decodes them.
        self.variance = list(cfg_mnet['variance'] if variance is None else variance)
        self.faceless_negatives = int(faceless_negatives)

    def forward(self, predictions, priors, targets):
        """
        Args:
            predictions (tuple): the network's training outputs
                loc (Tensor[B, P, 4]) encoded box offsets,
                conf (Tensor[B, P, num_classes]) class logits,
                landm (Tensor[B, P, 10]) encoded landmark offsets.
            priors (Tensor[P, 4]): (cx, cy, w, h) relative to the image.
            targets (list of B Tensor[N_i, 15]): per image, x1 y1 x2 y2 and ten landmark
                coordinates relative to the image, then the label (1, or -1 for a face
                without landmarks). N_i may be 0.
        Returns:
            (loss_l, loss_c, loss_landm): scalar Tensors.
        """
        loc_data, conf_data, landm_data = predictions
        # Compute in at least float32: autocast may hand us float16 predictions, and the
        # sums and log-sum-exp below lose too much precision in half.
        dtype = torch.promote_types(loc_data.dtype, torch.float32)
        device = loc_data.device
        loc_data, conf_data, landm_data = loc_data.to(dtype), conf_data.to(dtype), landm_data.to(dtype)
        priors = priors.to(device=device, dtype=dtype)
        num = loc_data.size(0)
        num_priors = priors.size(0)

        # match priors (default boxes) and ground truth boxes
        loc_t = torch.empty(num, num_priors, 4, device=device, dtype=dtype)
        landm_t = torch.empty(num, num_priors, 10, device=device, dtype=dtype)
        conf_t = torch.empty(num, num_priors, device=device, dtype=torch.long)
        with torch.no_grad():
            for idx in range(num):
                target = targets[idx].to(device=device, dtype=dtype)
                truths = target[:, :4]
                labels = target[:, -1]
                landms = target[:, 4:14]
                match(self.threshold, truths, priors, self.variance, labels, landms, loc_t, conf_t, landm_t, idx)

        # landm Loss (Smooth L1): priors matched to faces with landmarks (label 1).
        pos1 = conf_t > 0  # [B, P]
        num_pos_landm = pos1.long().sum(1, keepdim=True)  # [B, 1]
        N1 = max(num_pos_landm.sum().float(), 1)
        pos_idx1 = pos1.unsqueeze(pos1.dim()).expand_as(landm_data)  # [B, P] -> [B, P, 10]
        landm_p = landm_data[pos_idx1].view(-1, 10)  # [num landmark positives, 10]
        landm_t = landm_t[pos_idx1].view(-1, 10)
        loss_landm = F.smooth_l1_loss(landm_p, landm_t, reduction='sum')

        # From here on every face is class 1, with or without landmarks.
        pos = conf_t != 0  # [B, P]
        conf_t[pos] = 1

        # Localization Loss (Smooth L1)
        pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)  # [B, P] -> [B, P, 4]
        loc_p = loc_data[pos_idx].view(-1, 4)  # [num positives, 4]
        loc_t = loc_t[pos_idx].view(-1, 4)
        loss_l = F.smooth_l1_loss(loc_p, loc_t, reduction='sum')

        # Hard negative mining: rank each image's priors by their confidence loss and
        # keep the negpos_ratio * num_pos hardest background ones. The ranking needs no
        # gradient.
        with torch.no_grad():
            batch_conf = conf_data.view(-1, self.num_classes)  # [B, P, C] -> [B*P, C]
            loss_c = log_sum_exp(batch_conf) - batch_conf.gather(1, conf_t.view(-1, 1))  # [B*P, 1]
            loss_c[pos.view(-1, 1)] = 0  # filter out pos boxes for now
            loss_c = loss_c.view(num, -1)  # [B*P, 1] -> [B, P]
            _, loss_idx = loss_c.sort(1, descending=True)
            _, idx_rank = loss_idx.sort(1)  # each prior's rank within its image
            num_pos = pos.long().sum(1, keepdim=True)  # [B, 1]
            num_neg = torch.clamp(self.negpos_ratio * num_pos, max=pos.size(1) - 1)  # [B, 1]
            if self.faceless_negatives > 0:
                # Proportional mining takes nothing from an image without positives; give
                # such images a fixed number of hard negatives so that they train.
                num_neg = torch.where(num_pos == 0, min(self.faceless_negatives, pos.size(1) - 1), num_neg)
            neg = idx_rank < num_neg.expand_as(idx_rank)  # [B, P]

        # Confidence Loss Including Positive and Negative Examples
        pos_idx = pos.unsqueeze(2).expand_as(conf_data)  # [B, P] -> [B, P, C]
        neg_idx = neg.unsqueeze(2).expand_as(conf_data)
        conf_p = conf_data[pos_idx | neg_idx].view(-1, self.num_classes)  # [num selected, C]
        targets_weighted = conf_t[pos | neg]
        loss_c = F.cross_entropy(conf_p, targets_weighted, reduction='sum')

        # Sum of losses: L(x,c) = L(x,c) + lambda * L(x,c), normalised by the positives.
        N = max(num_pos.sum().float(), 1)
        loss_l = loss_l / N
        loss_c = loss_c / N
        loss_landm = loss_landm / N1

        return loss_l, loss_c, loss_landm
