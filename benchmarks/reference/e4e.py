"""e4e encoder in plain PyTorch: the speed/accuracy reference for the JAX port.

Written for this project from the architecture (not copied from the official
repository); its ``state_dict`` keys are those of the official
``Encoder4Editing(50, 'ir_se', stylegan_size=1024)``, so the official
checkpoint's ``encoder.*`` entries load strictly. ``E4EReference`` adds
``latent_avg`` as the official wrapper does, giving W+.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

STYLE_COUNT, COARSE_IND, MIDDLE_IND = 18, 3, 7
IR_SE50 = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


class SE(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Unit(nn.Module):
    """IR-SE bottleneck: pre-activation residual branch plus (subsampling) shortcut."""

    def __init__(self, cin: int, depth: int, stride: int):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SE(depth, 16),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class StyleHead(nn.Module):
    def __init__(self, channels: int, spatial: int):
        super().__init__()
        layers = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels)

    def forward(self, x):
        return self.linear(self.convs(x).flatten(1))


class Encoder4Editing(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for cin, depth, n in IR_SE50:
            units.append(Unit(cin, depth, 2))
            units += [Unit(depth, depth, 1) for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        self.styles = nn.ModuleList(
            StyleHead(512, 16 if i < COARSE_IND else 32 if i < MIDDLE_IND else 64) for i in range(STYLE_COUNT)
        )
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def forward(self, x):
        x = self.input_layer(x)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == 6:
                c1 = x
            elif i == 20:
                c2 = x
        c3 = x
        p2 = F.interpolate(c3, size=c2.shape[2:], mode="bilinear", align_corners=True) + self.latlayer1(c2)
        p1 = F.interpolate(p2, size=c1.shape[2:], mode="bilinear", align_corners=True) + self.latlayer2(c1)
        w0 = self.styles[0](c3)
        deltas = [self.styles[i](c3 if i < COARSE_IND else p2 if i < MIDDLE_IND else p1) for i in range(1, STYLE_COUNT)]
        # e4e: every slot is w0 plus its delta (none for slot 0).
        return torch.cat([w0[:, None], w0[:, None] + torch.stack(deltas, dim=1)], dim=1)


class E4EReference(nn.Module):
    """W+ = encoder(x) + latent_avg (the official wrapper with start_from_latent_avg)."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder4Editing()
        self.register_buffer("latent_avg", torch.zeros(STYLE_COUNT, 512))

    def forward(self, x):
        return self.encoder(x) + self.latent_avg


def build(encoder_state_dict, latent_avg, dtype=torch.float32) -> E4EReference:
    """An eval-mode reference from official ``encoder.*`` entries (prefix stripped) and latent_avg.

    Built on the meta device and given the checkpoint tensors directly
    (``assign``), so no random initialisation of 267 M parameters is spent.
    """
    with torch.device("meta"):
        model = E4EReference()
    tensors = {"encoder." + k: torch.as_tensor(v) for k, v in encoder_state_dict.items()}
    tensors["latent_avg"] = torch.as_tensor(latent_avg).expand(STYLE_COUNT, 512).contiguous()
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.to(dtype).eval()
