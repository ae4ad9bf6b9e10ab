"""SimSwap's networks in plain PyTorch (NCHW), for speed comparisons.

Written from the architecture notes, not from the official code; the module
trees and attribute names match the official ones, so the state_dicts of
``arcface_checkpoint.tar``'s ResNet and of ``latest_net_G.pth`` load strictly:

* ``ArcFaceResNet``: SE-LResNet101E-IR (``netArc``), [N,3,112,112] -> [N,512];
  ``identity_embedding`` adds SimSwap's nearest 224 -> 112 resize and the L2 norm.
* ``GeneratorEncoder``: ``first_layer``, ``down1``..``down3`` of the 224 generator.
* ``Generator``: the whole ``Generator_Adain_Upsample(3, 3, 512, 9)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SEBlock(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.PReLU(),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x):
        y = self.fc(self.avg_pool(x).flatten(1))
        return x * y[:, :, None, None]


class IRBlock(nn.Module):
    """Pre-BN IR block; the one PReLU is applied after conv1 and after the residual add."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 use_se: bool = True):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, inplanes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self.use_se = use_se
        if use_se:
            self.se = SEBlock(planes)

    def forward(self, x):
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        if self.use_se:
            out = self.se(out)
        residual = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + residual)


class ArcFaceResNet(nn.Module):
    def __init__(self, layers: Sequence[int] = (3, 4, 23, 3), use_se: bool = True):
        super().__init__()
        self.inplanes = 64
        self.use_se = use_se
        self.conv1 = nn.Conv2d(3, 64, 3, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(2, 2)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.bn2 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc = nn.Linear(512 * 7 * 7, 512)
        self.bn3 = nn.BatchNorm1d(512)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        stage = [IRBlock(self.inplanes, planes, stride, downsample, self.use_se)]
        self.inplanes = planes
        stage += [IRBlock(planes, planes, use_se=self.use_se) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        return self.bn3(self.fc(x.flatten(1)))


def identity_embedding(net: ArcFaceResNet, img_id: torch.Tensor) -> torch.Tensor:
    """SimSwap's ``latent_id`` of a 224 ImageNet-normalised crop (default 'nearest' resize)."""
    return F.normalize(net(F.interpolate(img_id, size=(112, 112))), p=2, dim=1)


class GeneratorEncoder(nn.Module):
    def __init__(self, input_nc: int = 3):
        super().__init__()
        self.first_layer = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(input_nc, 64, 7), nn.BatchNorm2d(64), nn.ReLU(True)
        )
        self.down1 = nn.Sequential(nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(True))
        self.down2 = nn.Sequential(nn.Conv2d(128, 256, 3, 2, 1), nn.BatchNorm2d(256), nn.ReLU(True))
        self.down3 = nn.Sequential(nn.Conv2d(256, 512, 3, 2, 1), nn.BatchNorm2d(512), nn.ReLU(True))

    def encode(self, x):
        return self.down3(self.down2(self.down1(self.first_layer(x))))

    def forward(self, x):
        return self.encode(x)


class InstanceNorm(nn.Module):
    """No affine, biased variance, eps 1e-8 inside the rsqrt."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        x = x - x.mean((2, 3), keepdim=True)
        return x * torch.rsqrt((x * x).mean((2, 3), keepdim=True) + self.eps)


class ApplyStyle(nn.Module):
    def __init__(self, latent_size: int, channels: int):
        super().__init__()
        self.linear = nn.Linear(latent_size, 2 * channels)

    def forward(self, x, latent):
        scale, shift = self.linear(latent)[:, :, None, None].chunk(2, dim=1)
        return x * (scale + 1.0) + shift


class ResnetBlockAdain(nn.Module):
    def __init__(self, dim: int, latent_size: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), InstanceNorm())
        self.style1 = ApplyStyle(latent_size, dim)
        self.act1 = nn.ReLU(True)
        self.conv2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), InstanceNorm())
        self.style2 = ApplyStyle(latent_size, dim)

    def forward(self, x, latent):
        y = self.act1(self.style1(self.conv1(x), latent))
        return x + self.style2(self.conv2(y), latent)


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout),
        nn.ReLU(True),
    )


class Generator(GeneratorEncoder):
    def __init__(self, input_nc: int = 3, output_nc: int = 3, latent_size: int = 512, n_blocks: int = 9):
        super().__init__(input_nc)
        self.BottleNeck = nn.Sequential(*[ResnetBlockAdain(512, latent_size) for _ in range(n_blocks)])
        self.up3 = _up(512, 256)
        self.up2 = _up(256, 128)
        self.up1 = _up(128, 64)
        self.last_layer = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, output_nc, 7), nn.Tanh())

    def forward(self, x, latent_id):
        x = self.encode(x)
        for block in self.BottleNeck:
            x = block(x, latent_id)
        x = self.last_layer(self.up1(self.up2(self.up3(x))))
        return (x + 1) / 2


def load(net: nn.Module, state_dict) -> nn.Module:
    """``net`` with ``state_dict`` (numpy or torch values) loaded strictly, float32, eval."""
    sd = {k: torch.as_tensor(v) for k, v in state_dict.items()}
    net.load_state_dict(sd, strict=True)
    return net.float().eval()
