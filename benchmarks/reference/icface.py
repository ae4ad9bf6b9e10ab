"""ICface's generator in PyTorch (pix2pix ``ResnetGenerator``), for benchmarks.

Written for this project from the architecture description; its state_dict
keys are the official ones (``model.<i>...``, ``model.<i>.conv_block.<j>...``),
so an official checkpoint (``module.`` prefix stripped) loads with
``strict=True``. Use it in eval mode: BatchNorm on running statistics,
Dropout off.
"""
from __future__ import annotations

import torch
from torch import nn


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, use_dropout: bool = True):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc: int = 23, output_nc: int = 3, ngf: int = 128, n_blocks: int = 6,
                 use_dropout: bool = True):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(4 * ngf, use_dropout) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=False),
                       nn.BatchNorm2d(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, attr: torch.Tensor | None = None) -> torch.Tensor:
        """``image`` NCHW; ``attr`` (A,) or (N, A) broadcast to constant planes after it, as ICface does."""
        if attr is not None:
            n, _, h, w = image.shape
            attr = attr.to(image.dtype).reshape(-1, attr.shape[-1], 1, 1).expand(n, -1, h, w)
            image = torch.cat([image, attr], dim=1)
        return self.model(image)


def icface_generator() -> ResnetGenerator:
    """netGN / netG as ICface builds them (eval mode)."""
    return ResnetGenerator(23, 3, 128, 6, True).eval()
