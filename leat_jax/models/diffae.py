"""Diffusion Autoencoders (phizaz/diffae), NHWC, Flax NNX.

For now this holds the semantic encoder (``BeatGANsEncoderModel`` of the
official ``model/unet.py``), which maps a 256x256 face in [-1, 1] to z_sem
(512). The conditional decoder UNet will join it here and reuse the blocks.

Modules mirror the official attribute names and ``nn.Sequential`` indices
(``input_blocks.13.1.qkv``, ``out.3``...), so the checkpoint keys map by
position; parameter-free torch layers (SiLU, pooling, Flatten) are kept as
empty modules only to hold those indices in place.

Numerics follow the official code in eval mode:
- GroupNorm32: ``min(32, C)`` groups, eps 1e-5 (Flax's default is 1e-6),
  two-pass variance like torch;
- encoder ResBlocks are unconditioned, so they have *one* conv: the official
  ``out_layers`` (second norm/conv, dropout) only exist when conditioned;
- down-ResBlocks average-pool both paths, between SiLU and conv on the
  residual one; no strided conv anywhere;
- attention: one GroupNorm, qkv as a per-token dense layer in the legacy
  head-major [q|k|v] order, q and k each scaled by C^-1/4, softmax in at least
  float32, residual on the un-normalised input.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from leat_jax.models import layers


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """``BeatGANsEncoderConfig`` as ``templates.ffhq256_autoenc()`` builds it.

    Only the variant used by the released models is implemented:
    ``resblock_updown=True`` (pool-ResBlocks), ``use_time_condition=False``,
    ``pool='adaptivenonzero'``, legacy attention order.
    """

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 512
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4, 4)
    num_heads: int = 1
    num_head_channels: int = -1


FFHQ256_ENCODER = EncoderConfig()


def group_norm32(channels: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """``GroupNorm32``: min(32, C) groups, torch eps and two-pass variance."""
    return layers.group_norm(min(32, channels), channels, eps=1e-5, rngs=rngs)


class SiLU(nnx.Module):
    """``nn.SiLU`` (holds its index in a Sequential; no parameters)."""

    def __call__(self, x):
        return jax.nn.silu(x)


class GlobalAvgPool(nnx.Module):
    """``nn.AdaptiveAvgPool2d((1, 1))`` on NHWC."""

    def __call__(self, x):
        return jnp.mean(x, axis=(1, 2), keepdims=True)


class Flatten(nnx.Module):
    """``nn.Flatten()`` after a 1x1 spatial map: (N, 1, 1, C) -> (N, C)."""

    def __call__(self, x):
        return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def avg_pool2(x: jax.Array) -> jax.Array:
    """``nn.AvgPool2d(2, 2)`` on NHWC (an odd trailing row/column is dropped, as torch does)."""
    n, h, w, c = x.shape
    x = x[:, : 2 * (h // 2), : 2 * (w // 2)]
    return jnp.mean(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class ResBlock(nnx.Module):
    """Unconditioned ``ResBlock``: ``skip(x) + conv(SiLU(GN(x)))``, optionally pooling.

    ``in_layers`` = [GroupNorm, SiLU, conv3x3]; ``skip_connection`` is a 1x1
    conv when the width changes, else identity (absent). With ``down`` both
    paths are 2x2 average-pooled, the residual one between SiLU and conv.
    """

    def __init__(self, channels: int, out_channels: int | None = None, down: bool = False, *, rngs: nnx.Rngs):
        out_channels = out_channels or channels
        self.down = down
        self.in_layers = nnx.List([
            group_norm32(channels, rngs=rngs),
            SiLU(),
            layers.conv2d(channels, out_channels, 3, padding=1, rngs=rngs),
        ])
        if out_channels != channels:
            self.skip_connection = layers.conv2d(channels, out_channels, 1, rngs=rngs)
        else:
            self.skip_connection = None

    def __call__(self, x):
        norm, act, conv = self.in_layers
        h = act(norm(x))
        if self.down:
            h = avg_pool2(h)
            x = avg_pool2(x)
        h = conv(h)
        skip = x if self.skip_connection is None else self.skip_connection(x)
        return skip + h


class AttentionBlock(nnx.Module):
    """Self-attention over all positions (``AttentionBlock`` with ``QKVAttentionLegacy``).

    The official 1x1 ``Conv1d``s are per-token dense layers here; their
    torch weights (O, I, 1) become (I, O) kernels in the converter.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, *, rngs: nnx.Rngs):
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible into heads of {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.norm = group_norm32(channels, rngs=rngs)
        self.qkv = nnx.Linear(channels, 3 * channels, rngs=rngs)
        self.proj_out = nnx.Linear(channels, channels, rngs=rngs)

    def __call__(self, x):
        n, h, w, c = x.shape
        heads = self.num_heads
        ch = c // heads
        # The norm sees the same (channel group x all positions) sets in NHWC
        # as on torch's (B, C, T); token order is irrelevant to attention.
        qkv = self.qkv(self.norm(x).reshape(n, h * w, c))
        # Legacy layout: the 3C outputs are [head][q|k|v][ch].
        qkv = qkv.reshape(n, h * w, heads, 3 * ch)
        q, k, v = qkv[..., :ch], qkv[..., ch : 2 * ch], qkv[..., 2 * ch :]
        scale = 1.0 / math.sqrt(math.sqrt(ch))  # on q and k each, as the official code
        logits = jnp.einsum("bthc,bshc->bhts", q * scale, k * scale)
        # Softmax in at least float32 (the official ``weight.float()``).
        weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
        a = jnp.einsum("bhts,bshc->bthc", weights.astype(logits.dtype), v)
        out = self.proj_out(a.reshape(n, h * w, c))
        return x + out.reshape(n, h, w, c)


class SemanticEncoder(nnx.Module):
    """``BeatGANsEncoderModel``: NHWC image -> z_sem (N, out_channels).

    ``input_blocks[0]`` is the stem conv; then per level ``num_res_blocks``
    ResBlocks (each followed by attention at the listed resolutions) and,
    except after the last level, a down-ResBlock. ``middle_block`` is
    ResBlock, attention, ResBlock; ``out`` is GN, SiLU, global average pool,
    1x1 conv, flatten.
    """

    def __init__(self, config: EncoderConfig = FFHQ256_ENCODER, *, rngs: nnx.Rngs):
        cfg = config
        ch = cfg.channel_mult[0] * cfg.model_channels
        blocks = [nnx.List([layers.conv2d(cfg.in_channels, ch, 3, padding=1, rngs=rngs)])]
        resolution = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out_ch = mult * cfg.model_channels
                block = [ResBlock(ch, out_ch, rngs=rngs)]
                ch = out_ch
                if resolution in cfg.attention_resolutions:
                    block.append(AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels, rngs=rngs))
                blocks.append(nnx.List(block))
            if level != len(cfg.channel_mult) - 1:
                resolution //= 2
                blocks.append(nnx.List([ResBlock(ch, ch, down=True, rngs=rngs)]))
        self.input_blocks = nnx.List(blocks)
        self.middle_block = nnx.List([
            ResBlock(ch, rngs=rngs),
            AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels, rngs=rngs),
            ResBlock(ch, rngs=rngs),
        ])
        self.out = nnx.List([
            group_norm32(ch, rngs=rngs),
            SiLU(),
            GlobalAvgPool(),  # pool before the 1x1 conv, as the official head
            layers.conv2d(ch, cfg.out_channels, 1, rngs=rngs),
            Flatten(),
        ])

    def __call__(self, x):
        h = x
        for block in self.input_blocks:
            for layer in block:
                h = layer(h)
        for layer in self.middle_block:
            h = layer(h)
        for layer in self.out:
            h = layer(h)
        return h
