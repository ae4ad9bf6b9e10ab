"""DiffAE's semantic encoder and conditional decoder UNet (ffhq256_autoenc) in PyTorch, NCHW.

Written for this project from the architecture of phizaz/diffae
``model/unet.py::BeatGANsEncoderModel`` and ``model/unet_autoenc.py::BeatGANsAutoencModel``;
their ``state_dict`` keys equal the official ones (``input_blocks.13.1.qkv.weight``,
``out.3.bias``...), so ``ema_model.encoder.*`` and the rest of ``ema_model.*`` of the
official checkpoint load with ``strict=True`` once the prefix is stripped.
Eval-mode numerics equal the official fp32 path (no BatchNorm; dropout is off
in eval); attention uses PyTorch's fused ``scaled_dot_product_attention``,
whose default scale 1/sqrt(C) equals the official C^-1/4 on q and on k.
"""
from __future__ import annotations

import dataclasses
import math

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


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """``BeatGANsAutoencConfig`` minus the encoder (``resnet_two_cond``, ``resblock_updown``)."""

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 3
    num_res_blocks: int = 2
    embed_channels: int = 512
    attention_resolutions: tuple = (16,)
    channel_mult: tuple = (1, 1, 2, 2, 4, 4)
    num_heads: int = 1


def timestep_embedding(t: torch.Tensor, dim: int, dtype=torch.float32) -> torch.Tensor:
    """``model/nn.py::timestep_embedding``: [cos, sin] of t times float32 frequencies.

    The phase is formed in ``dtype``: float64 keeps it exact, as float64 runs of the official code do.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].to(dtype) * freqs[None].to(dtype)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class CondResBlock(nn.Module):
    """The UNet's ResBlock: ``skip(x) + conv(drop(SiLU(GN(h) * (1 + s_t) + b_t) * (1 + s_z)))``."""

    def __init__(self, channels: int, out_channels: int | None = None, emb_channels: int = 512, down: bool = False,
                 up: bool = False, has_lateral: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.down, self.up, self.has_lateral = down, up, has_lateral
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb, cond, lateral=None):
        if self.has_lateral:
            x = torch.cat([x, lateral], dim=1)
        h = self.in_layers[1](self.in_layers[0](x))
        if self.down:
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        elif self.up:
            h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.in_layers[2](h)
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift  # time first, then z_sem (scale only)
        h = h * (1 + self.cond_emb_layers(cond)[:, :, None, None])
        h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        return self.skip_connection(x) + h


class EmbedSequential(nn.ModuleList):
    """``TimestepEmbedSequential``: the conditions reach the ResBlocks only."""

    def forward(self, h, emb, cond, lateral=None):
        for layer in self:
            h = layer(h, emb, cond, lateral) if isinstance(layer, CondResBlock) else layer(h)
        return h


class TimeStyleSeperateEmbed(nn.Module):
    def __init__(self, time_channels: int, out_channels: int):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(time_channels, out_channels), nn.SiLU(),
                                        nn.Linear(out_channels, out_channels))

    def forward(self, t_emb):
        return self.time_embed(t_emb)


class ConditionalUNet(nn.Module):
    """``BeatGANsAutoencModel`` without its encoder: ``forward(x_t, t, cond)`` -> eps, t the original timestep."""

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.model_channels = cfg.model_channels
        emb = cfg.embed_channels
        self.time_embed = TimeStyleSeperateEmbed(cfg.model_channels, emb)
        ch = cfg.channel_mult[0] * cfg.model_channels
        blocks = [EmbedSequential([nn.Conv2d(cfg.in_channels, ch, 3, padding=1)])]
        chans = [[ch]] + [[] for _ in cfg.channel_mult[1:]]  # widths kept for the laterals, per level
        resolution = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [CondResBlock(ch, mult * cfg.model_channels, emb)]
                ch = mult * cfg.model_channels
                if resolution in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                blocks.append(EmbedSequential(layers))
                chans[level].append(ch)
            if level != len(cfg.channel_mult) - 1:
                resolution //= 2
                blocks.append(EmbedSequential([CondResBlock(ch, ch, emb, down=True)]))
                chans[level + 1].append(ch)
        self.input_blocks = nn.ModuleList(blocks)
        self.input_num_blocks = [len(c) for c in chans]
        self.middle_block = EmbedSequential([CondResBlock(ch, ch, emb), AttentionBlock(ch, cfg.num_heads),
                                             CondResBlock(ch, ch, emb)])
        blocks = []
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                ich = chans[level].pop() if chans[level] else 0
                layers = [CondResBlock(ch + ich, mult * cfg.model_channels, emb, has_lateral=ich > 0)]
                ch = mult * cfg.model_channels
                if resolution in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                if level and i == cfg.num_res_blocks:
                    resolution *= 2
                    layers.append(CondResBlock(ch, ch, emb, up=True))
                blocks.append(EmbedSequential(layers))
        self.output_blocks = nn.ModuleList(blocks)
        self.output_num_blocks = [cfg.num_res_blocks + 1] * len(cfg.channel_mult)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x, t, cond):
        emb = self.time_embed(timestep_embedding(t, self.model_channels, x.dtype))
        hs, h, k = [], x, 0
        for n in self.input_num_blocks:
            hs.append([])
            for _ in range(n):
                h = self.input_blocks[k](h, emb, cond)
                hs[-1].append(h)
                k += 1
        h = self.middle_block(h, emb, cond)
        k = 0
        for i, n in enumerate(self.output_num_blocks):
            for _ in range(n):
                lateral = hs[-i - 1].pop() if hs[-i - 1] else None  # deepest level first, latest output first
                h = self.output_blocks[k](h, emb, cond, lateral)
                k += 1
        return self.out(h)
