"""Building blocks of RetinaFace: conv-BN helpers, the SSH context module, the FPN
and the MobileNetV1 x0.25 backbone.

Module names and order follow the reference exactly, because they define the
state_dict keys of the published weights.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(inp, oup, stride=1, leaky=0):
    """3x3 conv (padding 1, no bias) -> BatchNorm -> LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_no_relu(inp, oup, stride):
    """3x3 conv (padding 1, no bias) -> BatchNorm, no activation."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
    )


def conv_bn1X1(inp, oup, stride, leaky=0):
    """1x1 conv (no bias) -> BatchNorm -> LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, padding=0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(inp, oup, stride, leaky=0.1):
    """Depthwise-separable block: 3x3 depthwise conv-BN-LeakyReLU, then 1x1 pointwise conv-BN-LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),

        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def _leaky_slope(out_channel):
    # The reference uses LeakyReLU(0.1) in the small (MobileNet, 64-channel) heads
    # and plain ReLU in the wide (ResNet50, 256-channel) ones.
    return 0.1 if out_channel <= 64 else 0


class SSH(nn.Module):
    """Single Stage Headless context module: parallel 3x3, 5x5 and 7x7 receptive
    fields (the larger two built from stacked 3x3 convs), concatenated to
    out_channel channels (1/2 + 1/4 + 1/4)."""

    def __init__(self, in_channel, out_channel):
        super().__init__()
        if out_channel % 4 != 0:
            raise ValueError(f"SSH out_channel must be divisible by 4, got {out_channel}")
        leaky = _leaky_slope(out_channel)
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2, stride=1)

        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, stride=1, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)

        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, stride=1, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)

    def forward(self, input):
        conv3X3 = self.conv3X3(input)

        conv5X5_1 = self.conv5X5_1(input)
        conv5X5 = self.conv5X5_2(conv5X5_1)

        # The 7x7 branch reuses the first 3x3 of the 5x5 branch.
        conv7X7_2 = self.conv7X7_2(conv5X5_1)
        conv7X7 = self.conv7x7_3(conv7X7_2)

        out = torch.cat([conv3X3, conv5X5, conv7X7], dim=1)
        return F.relu(out)


class FPN(nn.Module):
    """Feature pyramid over three backbone levels (strides 8, 16, 32): 1x1 lateral
    convs, nearest-neighbour top-down upsampling, and a 3x3 merge conv."""

    def __init__(self, in_channels_list, out_channels):
        super().__init__()
        leaky = _leaky_slope(out_channels)
        self.output1 = conv_bn1X1(in_channels_list[0], out_channels, stride=1, leaky=leaky)
        self.output2 = conv_bn1X1(in_channels_list[1], out_channels, stride=1, leaky=leaky)
        self.output3 = conv_bn1X1(in_channels_list[2], out_channels, stride=1, leaky=leaky)

        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, input):
        # input: dict of the three backbone levels, finest first.
        input = list(input.values())

        output1 = self.output1(input[0])
        output2 = self.output2(input[1])
        output3 = self.output3(input[2])

        up3 = F.interpolate(output3, size=[output2.size(2), output2.size(3)], mode="nearest")
        output2 = self.merge2(output2 + up3)

        up2 = F.interpolate(output2, size=[output1.size(2), output1.size(3)], mode="nearest")
        output1 = self.merge1(output1 + up2)

        return [output1, output2, output3]


class MobileNetV1(nn.Module):
    """MobileNetV1 with width multiplier 0.25 (the ImageNet classifier is kept so
    the pretrained checkpoint loads as is; RetinaFace only uses stage1..stage3)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            conv_dw(64, 128, 2),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
            conv_dw(128, 128, 1),
        )
        self.stage3 = nn.Sequential(
            conv_dw(128, 256, 2),
            conv_dw(256, 256, 1),
        )
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(256, 1000)

    def forward(self, x):
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.avg(x)
        x = x.view(-1, 256)  # [B, 256, 1, 1] -> [B, 256]
        return self.fc(x)
