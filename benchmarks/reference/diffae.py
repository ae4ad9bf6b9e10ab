"""DiffAE semantic encoder (ffhq256_autoenc) in PyTorch, NCHW.

Written for this project from the architecture of phizaz/diffae
``model/unet.py::BeatGANsEncoderModel``; its ``state_dict`` keys equal the
official encoder's (``input_blocks.13.1.qkv.weight``, ``out.3.bias``...), so
``ema_model.encoder.*`` of the official checkpoint loads with ``strict=True``
once the prefix is stripped. Eval-mode numerics equal the official fp32 path
(the encoder has no dropout and no BatchNorm); attention uses PyTorch's fused
``scaled_dot_product_attention``, whose default scale 1/sqrt(C) equals the
official C^-1/4 on q and on k.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 512
    num_res_blocks: int = 2
    attention_resolutions: tuple = (16,)
    channel_mult: tuple = (1, 1, 2, 2, 4, 4, 4)
    num_heads: int = 1


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels, eps=1e-5)


class ResBlock(nn.Module):
    """Unconditioned encoder ResBlock: skip(x) + conv3x3(SiLU(GN(x))), optionally 2x2-pooled."""

    def __init__(self, channels: int, out_channels: int | None = None, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.down = down
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x):
        if self.down:
            # Pool between the activation and the conv; the skip is pooled too.
            h = F.avg_pool2d(self.in_layers[1](self.in_layers[0](x)), 2)
            x = F.avg_pool2d(x, 2)
            h = self.in_layers[2](h)
        else:
            h = self.in_layers(x)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention, legacy [head][q|k|v][ch] qkv layout, residual on the raw input."""

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        t = x.shape[-1]
        ch = c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, self.num_heads, 3 * ch, t)
        q, k, v = (z.transpose(-1, -2) for z in qkv.split(ch, dim=2))  # (b, heads, t, ch)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(ch)) v
        h = self.proj_out(a.transpose(-1, -2).reshape(b, c, t))
        return (x + h).reshape(b, c, *spatial)


class SemanticEncoder(nn.Module):
    """``BeatGANsEncoderModel`` (pool 'adaptivenonzero', resblock_updown, no time condition)."""

    def __init__(self, cfg: EncoderConfig = EncoderConfig()):
        super().__init__()
        ch = cfg.channel_mult[0] * cfg.model_channels
        blocks = [nn.Sequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        resolution = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out_ch = mult * cfg.model_channels
                layers = [ResBlock(ch, out_ch)]
                ch = out_ch
                if resolution in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                blocks.append(nn.Sequential(*layers))
            if level != len(cfg.channel_mult) - 1:
                resolution //= 2
                blocks.append(nn.Sequential(ResBlock(ch, ch, down=True)))
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = nn.Sequential(ResBlock(ch), AttentionBlock(ch, cfg.num_heads), ResBlock(ch))
        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(ch, cfg.out_channels, 1), nn.Flatten()
        )

    def forward(self, x):
        h = x
        for block in self.input_blocks:
            h = block(h)
        return self.out(self.middle_block(h))


def from_state_dict(state_dict, cfg: EncoderConfig = EncoderConfig()) -> SemanticEncoder:
    """The encoder in float32 eval mode with ``state_dict`` (bare encoder keys) loaded strictly."""
    model = SemanticEncoder(cfg)
    sd = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in state_dict.items()}
    model.load_state_dict(sd, strict=True)
    return model.float().eval()
