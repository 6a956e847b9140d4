"""The RetinaFace detector: backbone -> FPN -> SSH -> class / box / landmark heads.

Module names and registration order match the reference exactly, so the published
weights load with strict=True and state_dict() lists the keys in the same order.
"""
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as models
import torchvision.models._utils as _utils

from models.net import FPN, SSH, MobileNetV1

logger = logging.getLogger(__name__)

# Every feature-map cell has two anchors (the two min_sizes of its level).
NUM_ANCHORS = 2


class ClassHead(nn.Module):
    """1x1 conv giving face / background logits for each anchor."""

    def __init__(self, inchannels=512, num_anchors=3):
        super().__init__()
        self.num_anchors = num_anchors
        self.conv1x1 = nn.Conv2d(inchannels, self.num_anchors * 2, kernel_size=(1, 1), stride=1, padding=0)

    def forward(self, x):
        out = self.conv1x1(x)
        out = out.permute(0, 2, 3, 1).contiguous()  # [B, A*2, H, W] -> [B, H, W, A*2]
        return out.view(out.shape[0], -1, 2)  # -> [B, H*W*A, 2]


class BboxHead(nn.Module):
    """1x1 conv giving the 4 encoded box offsets for each anchor."""

    def __init__(self, inchannels=512, num_anchors=3):
        super().__init__()
        self.conv1x1 = nn.Conv2d(inchannels, num_anchors * 4, kernel_size=(1, 1), stride=1, padding=0)

    def forward(self, x):
        out = self.conv1x1(x)
        out = out.permute(0, 2, 3, 1).contiguous()  # [B, A*4, H, W] -> [B, H, W, A*4]
        return out.view(out.shape[0], -1, 4)  # -> [B, H*W*A, 4]


class LandmarkHead(nn.Module):
    """1x1 conv giving the 10 encoded landmark offsets (5 points) for each anchor."""

    def __init__(self, inchannels=512, num_anchors=3):
        super().__init__()
        self.conv1x1 = nn.Conv2d(inchannels, num_anchors * 10, kernel_size=(1, 1), stride=1, padding=0)

    def forward(self, x):
        out = self.conv1x1(x)
        out = out.permute(0, 2, 3, 1).contiguous()  # [B, A*10, H, W] -> [B, H, W, A*10]
        return out.view(out.shape[0], -1, 10)  # -> [B, H*W*A, 10]


def _make_backbone(cfg):
    """The bare backbone for cfg['name'], randomly initialised.

    Nothing is read from disk here: loading ImageNet weights is an explicit, separate
    step (load_pretrained_backbone), so building a model for inference never depends
    on files the user may not have.
    """
    if cfg['name'] == 'mobilenet0.25':
        return MobileNetV1()
    if cfg['name'] == 'Resnet50':
        return models.resnet50(weights=None)
    raise ValueError(f"unknown backbone name {cfg['name']!r}: expected 'mobilenet0.25' or 'Resnet50'")


class RetinaFace(nn.Module):
    """RetinaFace(cfg, phase).

    forward(inputs) takes a [B, 3, H, W] float tensor (BGR, mean-subtracted) and returns
    (loc [B, P, 4], conf [B, P, 2], landms [B, P, 10]) for the P priors of PriorBox(cfg, (H, W)).
    In phase 'train' conf holds raw logits; in phase 'test' it holds softmax probabilities.
    """

    def __init__(self, cfg=None, phase='train'):
        super().__init__()
        if phase not in ('train', 'test'):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        self.phase = phase
        backbone = _make_backbone(cfg)

        self.body = _utils.IntermediateLayerGetter(backbone, cfg['return_layers'])
        in_channels_stage2 = cfg['in_channel']
        in_channels_list = [
            in_channels_stage2 * 2,
            in_channels_stage2 * 4,
            in_channels_stage2 * 8,
        ]
        out_channels = cfg['out_channel']
        self.fpn = FPN(in_channels_list, out_channels)
        self.ssh1 = SSH(out_channels, out_channels)
        self.ssh2 = SSH(out_channels, out_channels)
        self.ssh3 = SSH(out_channels, out_channels)

        self.ClassHead = self._make_class_head(fpn_num=3, inchannels=cfg['out_channel'])
        self.BboxHead = self._make_bbox_head(fpn_num=3, inchannels=cfg['out_channel'])
        self.LandmarkHead = self._make_landmark_head(fpn_num=3, inchannels=cfg['out_channel'])

    def _make_class_head(self, fpn_num=3, inchannels=64, anchor_num=NUM_ANCHORS):
        return nn.ModuleList([ClassHead(inchannels, anchor_num) for _ in range(fpn_num)])

    def _make_bbox_head(self, fpn_num=3, inchannels=64, anchor_num=NUM_ANCHORS):
        return nn.ModuleList([BboxHead(inchannels, anchor_num) for _ in range(fpn_num)])

    def _make_landmark_head(self, fpn_num=3, inchannels=64, anchor_num=NUM_ANCHORS):
        return nn.ModuleList([LandmarkHead(inchannels, anchor_num) for _ in range(fpn_num)])

    def forward(self, inputs):
        out = self.body(inputs)

        fpn = self.fpn(out)

        feature1 = self.ssh1(fpn[0])
        feature2 = self.ssh2(fpn[1])
        feature3 = self.ssh3(fpn[2])
        features = [feature1, feature2, feature3]

        # Concatenating level by level gives the prior order of PriorBox: level, row, column, anchor.
        bbox_regressions = torch.cat([self.BboxHead[i](feature) for i, feature in enumerate(features)], dim=1)
        classifications = torch.cat([self.ClassHead[i](feature) for i, feature in enumerate(features)], dim=1)
        ldm_regressions = torch.cat([self.LandmarkHead[i](feature) for i, feature in enumerate(features)], dim=1)

        if self.phase == 'train':
            return bbox_regressions, classifications, ldm_regressions
        return bbox_regressions, F.softmax(classifications, dim=-1), ldm_regressions


def load_pretrained_backbone(net, cfg, path):
    """Load ImageNet-pretrained backbone weights into net.body (for training).

    For 'mobilenet0.25', path is the reference's mobilenetV1X0.25_pretrain.tar: a dict whose
    'state_dict' carries a 'module.' prefix and the classifier 'fc.*', which RetinaFace does
    not use. For 'Resnet50', path is a torchvision-style ImageNet resnet50 .pth.
    The backbone keys must match exactly; anything else is an error naming the file.
    """
    from utils.checkpoint import load_state_dict_file

    state_dict = load_state_dict_file(path)
    # The classifier is not part of RetinaFace's body (IntermediateLayerGetter drops it).
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith('fc.')}
    expected = net.body.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} is not an ImageNet {cfg['name']} backbone checkpoint: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    net.body.load_state_dict(state_dict, strict=True)
    logger.info("loaded pretrained %s backbone from %s (%d tensors)", cfg['name'], path, len(state_dict))
    return net
