"""StyleGAN2's generator and StyleCLIP's latent mapper in plain PyTorch (NCHW): references for the JAX port.

Written for this project from the architecture of rosinality/stylegan2-pytorch
``model.py`` (as StyleCLIP and encoder4editing vendor it) and StyleCLIP's
``mapper/latent_mappers.py``, in plain PyTorch ops (no CUDA kernels). Module
trees and names follow the official ones, so the ``decoder.*`` / ``mapper.*``
entries of ``e4e_ffhq_encode.pt`` and of a released mapper load strictly.

Only the evaluation call is written: ``G([w_plus], input_is_latent=True,
truncation=1)`` with the stored noise maps (``randomize_noise=False``), or
fresh normal noise per call when ``randomize_noise`` is asked for.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FIR = (1.0, 3.0, 3.0, 1.0)
MAPPER_GROUPS = (("course_mapping", 0, 4), ("medium_mapping", 4, 8), ("fine_mapping", 8, 18))


def fir_kernel(gain: float = 1.0) -> torch.Tensor:
    """``make_kernel([1, 3, 3, 1]) * gain``: the normalised 4x4 outer product."""
    k = torch.tensor(FIR)
    k = k[None, :] * k[:, None]
    return k / k.sum() * gain


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Zero-insert by ``up``, pad both axes by ``pad``, convolve each channel with ``kernel`` (true convolution)."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(n, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c)


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activation = lr_mul / math.sqrt(in_dim), lr_mul, activation

    def forward(self, x):
        if self.activation:  # the fused leaky ReLU: bias broadcast over the last axis, gain sqrt(2)
            return F.leaky_relu(F.linear(x, self.weight * self.scale) + self.bias * self.lr_mul, 0.2) * math.sqrt(2)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)


class Blur(nn.Module):
    def __init__(self, pad: tuple[int, int], gain: float = 1.0):
        super().__init__()
        self.pad = pad
        self.register_buffer("kernel", fir_kernel(gain))

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", fir_kernel(4.0))

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=2, pad=(2, 1))


class ModulatedConv2d(nn.Module):
    """Per-sample weights (style-scaled, optionally demodulated) as one grouped convolution."""

    def __init__(self, cin: int, cout: int, k: int, style_dim: int, demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:
            self.blur = Blur((1, 1), gain=4.0)  # pads of a 4-tap FIR after a 3x3 stride-2 transposed conv
        self.scale = 1 / math.sqrt(cin * k * k)
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.modulation = EqualLinear(style_dim, cin, bias_init=1.0)

    def forward(self, x, w):
        n, _, h, wd = x.shape
        weight = self.scale * self.weight * self.modulation(w).view(n, 1, self.cin, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4)) + 1e-8).view(n, self.cout, 1, 1, 1)
        x = x.reshape(1, n * self.cin, h, wd)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * self.cin, self.cout, self.k, self.k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)
            return self.blur(out.view(n, self.cout, *out.shape[2:]))
        out = F.conv2d(x, weight.reshape(n * self.cout, self.cin, self.k, self.k), padding=self.k // 2, groups=n)
        return out.view(n, self.cout, *out.shape[2:])


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise=None):
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, *x.shape[2:]).normal_()
        return x + self.weight * noise


class StyledConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, k, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(cout)

    def forward(self, x, w, noise=None):
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    def __init__(self, cin: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, w, skip=None):
        out = self.conv(x, w) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int):
        return self.input.repeat(batch, 1, 1, 1)


class Generator(nn.Module):
    """``Generator(size, 512, 8, channel_multiplier)``; ``forward(w_plus)`` -> the raw image (no clamp)."""

    def __init__(self, size: int = 1024, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2):
        super().__init__()
        cm = channel_multiplier
        ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
              1024: 16 * cm}
        # The z -> w MLP: unused from W+, but part of the strict state_dict.
        self.style = nn.Sequential(PixelNorm(), *(EqualLinear(style_dim, style_dim, lr_mul=0.01, activation=True)
                                                  for _ in range(n_mlp)))
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.log_size = int(math.log2(size))
        self.n_latent = self.log_size * 2 - 2
        self.noises = nn.Module()
        for i in range(self.n_latent - 1):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        cin = ch[4]
        for i in range(3, self.log_size + 1):
            cout = ch[2 ** i]
            self.convs.extend([StyledConv(cin, cout, 3, style_dim, upsample=True),
                               StyledConv(cout, cout, 3, style_dim)])
            self.to_rgbs.append(ToRGB(cout, style_dim))
            cin = cout

    def forward(self, w_plus: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
        noise = [None if randomize_noise else getattr(self.noises, f"noise_{i}") for i in range(self.n_latent - 1)]
        out = self.conv1(self.input(w_plus.shape[0]), w_plus[:, 0], noise[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        for k, to_rgb in enumerate(self.to_rgbs):
            i = 2 * k + 1  # W+ slots: the upsampling conv i, the next conv i + 1, their ToRGB i + 2
            out = self.convs[2 * k](out, w_plus[:, i], noise[i])
            out = self.convs[2 * k + 1](out, w_plus[:, i + 1], noise[i + 1])
            skip = to_rgb(out, w_plus[:, i + 2], skip)
        return skip


class Mapper(nn.Module):
    """PixelNorm (over dim 1: a group's W+ slots, as the official) and four lr_mul 0.01 layers."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.mapping = nn.Sequential(PixelNorm(), *(EqualLinear(dim, dim, lr_mul=0.01, activation=True)
                                                    for _ in range(4)))

    def forward(self, x):
        return self.mapping(x)


class LevelsMapper(nn.Module):
    """Coarse (W+ slots 0-3), medium (4-7) and fine (8-17) mappers; a group switched off gives zeros."""

    def __init__(self, no_coarse: bool = False, no_medium: bool = False, no_fine: bool = False):
        super().__init__()
        for (name, _, _), off in zip(MAPPER_GROUPS, (no_coarse, no_medium, no_fine)):
            if not off:
                setattr(self, name, Mapper())

    def forward(self, w):
        parts = []
        for name, lo, hi in MAPPER_GROUPS:
            part = w[:, lo:hi]
            parts.append(getattr(self, name)(part) if hasattr(self, name) else torch.zeros_like(part))
        return torch.cat(parts, dim=1)


def load(net: nn.Module, state_dict) -> nn.Module:
    """``net`` with ``state_dict`` (numpy or torch values) loaded strictly, float32, eval."""
    net.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()}, strict=True)
    return net.float().eval()
