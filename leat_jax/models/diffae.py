"""Diffusion Autoencoders (phizaz/diffae), NHWC, Flax NNX.

Two networks of the official ``BeatGANsAutoencModel`` (``model/unet.py``,
``model/unet_autoenc.py``, ``model/blocks.py``):

- the semantic encoder (``BeatGANsEncoderModel``, the model's ``.encoder``):
  a 256x256 face in [-1, 1] -> z_sem (512);
- the conditional decoder UNet (the rest of the model): noisy image x_t,
  original timestep t and z_sem -> predicted noise eps;

plus the attribute classifier of ``ffhq256_autoenc_cls`` (``ClsModel``'s
linear head and z_sem statistics).

Modules mirror the official attribute names and ``nn.Sequential`` indices
(``input_blocks.13.1.qkv``, ``out.3``, ``time_embed.time_embed.2``...), so the
checkpoint keys map by position; parameter-free torch layers (SiLU, pooling,
dropout, Flatten) are ``layers.Slot``s, there only to hold those indices.

Numerics follow the official code in eval mode:
- GroupNorm32: ``min(32, C)`` groups, eps 1e-5 (Flax's default is 1e-6),
  two-pass variance like torch;
- encoder ResBlocks are unconditioned, so they have *one* conv: the official
  ``out_layers`` (second norm/conv, dropout) only exist when conditioned;
- down-ResBlocks average-pool both paths, between SiLU and conv on the
  residual one; up-ResBlocks repeat pixels (nearest x2) at the same place;
  no strided conv anywhere;
- conditioned ResBlocks (the UNet's): GN -> ``*(1 + s_t) + b_t`` (time) ->
  ``*(1 + s_z)`` (z_sem, scale only) -> SiLU -> dropout (off) -> conv; each
  head applies a SiLU to its input first (to the raw z_sem too);
- attention: one GroupNorm, qkv as a per-token dense layer in the legacy
  head-major [q|k|v] order, q and k each scaled by C^-1/4, softmax in at least
  float32, residual on the un-normalised input;
- time embedding: cos first, then sin, of the raw integer timestep (not
  rescaled) times float32 frequencies ``exp(-ln(10000) k / half)``.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leat_jax.models import layers
from leat_jax.models.layers import Buffer, Slot


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


def group_norm32(channels: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """``GroupNorm32``: min(32, C) groups, torch eps and two-pass variance."""
    return layers.group_norm(min(32, channels), channels, eps=1e-5, rngs=rngs)


def avg_pool2(x: jax.Array) -> jax.Array:
    """``nn.AvgPool2d(2, 2)`` on NHWC (an odd trailing row/column is dropped, as torch does)."""
    n, h, w, c = x.shape
    x = x[:, : 2 * (h // 2), : 2 * (w // 2)]
    return jnp.mean(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def upsample2(x: jax.Array) -> jax.Array:
    """``F.interpolate(scale_factor=2, mode='nearest')`` on NHWC: each pixel repeated 2x2."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nnx.Module):
    """``ResBlock``: ``skip(x) + h``, optionally resampling and conditioned.

    ``in_layers`` = [GroupNorm, SiLU, conv3x3]; ``skip_connection`` is a 1x1
    conv when the width changes, else identity (absent). With ``down`` (or
    ``up``) both paths are 2x2 average-pooled (or nearest-upsampled), the
    residual one between SiLU and conv.

    Unconditioned (``emb_channels=None``, the encoder's), ``h`` is that one
    conv. Conditioned (the UNet's, ``two_cond``), ``emb_layers`` = [SiLU,
    Linear(emb -> 2C)] gives the time scale and shift, ``cond_emb_layers`` =
    [SiLU, Linear(cond -> C)] the z_sem scale, and ``out_layers`` = [GroupNorm,
    SiLU, Dropout, conv3x3] the second half:
    ``conv(SiLU(GN(h) * (1 + s_t) + b_t) * (1 + s_z)))``. With
    ``has_lateral`` the input is ``concat(x, lateral)`` (x first) and
    ``channels`` counts both.
    """

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        down: bool = False,
        up: bool = False,
        emb_channels: int | None = None,
        cond_channels: int | None = None,
        has_lateral: bool = False,
        *,
        rngs: nnx.Rngs,
    ):
        if up and down:
            raise ValueError("a ResBlock resamples up or down, not both")
        out_channels = out_channels or channels
        self.down = down
        self.up = up
        self.has_lateral = has_lateral
        self.in_layers = nnx.List([
            group_norm32(channels, rngs=rngs),
            Slot(jax.nn.silu),
            layers.conv2d(channels, out_channels, 3, padding=1, rngs=rngs),
        ])
        if emb_channels is not None:
            self.emb_layers = nnx.List([Slot(jax.nn.silu), nnx.Linear(emb_channels, 2 * out_channels, rngs=rngs)])
            cond_channels = cond_channels or emb_channels
            self.cond_emb_layers = nnx.List([Slot(jax.nn.silu), nnx.Linear(cond_channels, out_channels, rngs=rngs)])
            self.out_layers = nnx.List([
                group_norm32(out_channels, rngs=rngs),
                Slot(jax.nn.silu),
                Slot(layers.identity, "Dropout"),
                layers.conv2d(out_channels, out_channels, 3, padding=1, rngs=rngs),
            ])
        else:
            self.emb_layers = self.cond_emb_layers = self.out_layers = None
        if out_channels != channels:
            self.skip_connection = layers.conv2d(channels, out_channels, 1, rngs=rngs)
        else:
            self.skip_connection = None

    def __call__(self, x, emb=None, cond=None, lateral=None):
        if self.has_lateral:
            if lateral is None:
                raise ValueError("this ResBlock takes a lateral input")
            x = jnp.concatenate([x, lateral], axis=-1)
        norm, act, conv = self.in_layers
        h = act(norm(x))
        if self.down:
            h, x = avg_pool2(h), avg_pool2(x)
        elif self.up:
            h, x = upsample2(h), upsample2(x)
        h = conv(h)
        if self.out_layers is not None:
            h = self._condition(h, emb, cond)
        skip = x if self.skip_connection is None else self.skip_connection(x)
        return skip + h

    def _condition(self, h, emb, cond):
        """The official ``apply_conditions``: time scale-shift, then z scale (if given)."""
        norm, act, dropout, conv = self.out_layers
        c = h.shape[-1]
        h = norm(h)
        if emb is not None:
            st = self.emb_layers[1](self.emb_layers[0](emb))[:, None, None, :]
            h = h * (1 + st[..., :c]) + st[..., c:]
        if cond is not None:
            sz = self.cond_emb_layers[1](self.cond_emb_layers[0](cond))[:, None, None, :]
            h = h * (1 + sz)
        return conv(dropout(act(h)))


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
            Slot(jax.nn.silu),
            Slot(layers.global_avg_pool),  # pool before the 1x1 conv, as the official head
            layers.conv2d(ch, cfg.out_channels, 1, rngs=rngs),
            Slot(layers.nchw_flatten),
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


# --- the conditional decoder UNet ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """``BeatGANsAutoencConfig`` (minus the encoder) as ``templates.ffhq256_autoenc()`` builds it.

    Only the variant of the released models is implemented:
    ``resblock_updown=True``, ``resnet_two_cond=True`` (time scale-shift plus
    z_sem scale in every ResBlock), legacy attention order, no class labels,
    no latent DPM. The decoder has ``num_res_blocks + 1`` blocks per level.
    """

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 3
    num_res_blocks: int = 2
    embed_channels: int = 512  # time embedding width, and z_sem width (resnet_cond_channels=None)
    attention_resolutions: tuple[int, ...] = (16,)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_heads: int = 1
    num_head_channels: int = -1


FFHQ256_UNET = UNetConfig()


def two_product(a, b):
    """(p, e) with p + e == a * b exactly (Dekker's TwoProduct, no fused multiply-add needed)."""
    split = float(2 ** ((jnp.finfo(a.dtype).nmant + 2) // 2) + 1)

    def halves(v):
        c = split * v
        hi = c - (c - v)
        return hi, v - hi

    (ah, al), (bh, bl) = halves(a), halves(b)
    p = a * b
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def timestep_embedding(t: jax.Array, dim: int, dtype=jnp.float32, max_period: float = 10000.0) -> jax.Array:
    """The official ``timestep_embedding``: ``[cos(t f), sin(t f)]`` (cos first), (N,) -> (N, dim).

    ``t`` is the original 1000-step index as given (not rescaled). The
    frequencies are float32, as torch's ``exp(-ln(max_period) * arange(half) /
    half)``, rounded correctly (float64 exp, then float32). The phase ``t f``
    is kept exactly, as a sum ``p + e`` of two ``dtype`` numbers, and
    ``cos(p + e)``, ``sin(p + e)`` are expanded to first order in ``e``: with t
    up to 999, rounding ``t f`` to float32 alone moves the phase by up to 3e-5,
    which the UNet's eps, and a DDIM render through it, amplify.
    """
    half = dim // 2
    # the exponent as torch forms it, in float32
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    p, e = two_product(jnp.asarray(t).astype(dtype)[:, None], jnp.asarray(freqs, dtype)[None])
    cos, sin = jnp.cos(p), jnp.sin(p)
    emb = jnp.concatenate([cos - sin * e, sin + cos * e], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimeStyleSeperateEmbed(nnx.Module):
    """``TimeStyleSeperateEmbed``: the time MLP ``time_embed`` = [Linear, SiLU, Linear].

    Its ``style`` is an identity: z_sem reaches the ResBlocks untouched.
    """

    def __init__(self, time_channels: int, time_out_channels: int, *, rngs: nnx.Rngs):
        self.time_embed = nnx.List([
            nnx.Linear(time_channels, time_out_channels, rngs=rngs),
            Slot(jax.nn.silu),
            nnx.Linear(time_out_channels, time_out_channels, rngs=rngs),
        ])

    def __call__(self, t_emb):
        for layer in self.time_embed:
            t_emb = layer(t_emb)
        return t_emb


def _run(block, h, emb, cond, lateral=None):
    """``TimestepEmbedSequential``: conditions go to the ResBlocks, the rest see ``h`` only."""
    for layer in block:
        h = layer(h, emb, cond, lateral) if isinstance(layer, ResBlock) else layer(h)
    return h


class ConditionalUNet(nnx.Module):
    """The decoder of ``BeatGANsAutoencModel``: ``(x_t, t, z_sem) -> eps`` (NHWC).

    ``input_blocks[0]`` is the stem conv; then per level ``num_res_blocks``
    ResBlocks (each followed by attention at the listed resolutions) and,
    except after the last level, a down-ResBlock. Every down-path output is
    kept on its level's stack. ``middle_block`` is ResBlock, attention,
    ResBlock. ``output_blocks`` visit the levels upwards, ``num_res_blocks + 1``
    blocks each; each block's ResBlock takes the latest entry of its level's
    stack as a lateral input (concatenated after h), and the last block of a
    level (but the top one) ends with an up-ResBlock. ``out`` is GN, SiLU,
    conv3x3. Timestep embedding via ``time_embed``; z_sem is the raw
    ``cond`` of the official forward.
    """

    def __init__(self, config: UNetConfig = FFHQ256_UNET, *, rngs: nnx.Rngs):
        cfg = self.config = config
        emb = cfg.embed_channels
        cond_kw = dict(emb_channels=emb, cond_channels=emb)
        levels = len(cfg.channel_mult)
        self.time_embed = TimeStyleSeperateEmbed(cfg.model_channels, emb, rngs=rngs)

        def attention(c):
            return AttentionBlock(c, cfg.num_heads, cfg.num_head_channels, rngs=rngs)

        ch = input_ch = cfg.channel_mult[0] * cfg.model_channels
        blocks = [nnx.List([layers.conv2d(cfg.in_channels, ch, 3, padding=1, rngs=rngs)])]
        chans = [[ch]] + [[] for _ in range(levels - 1)]  # per-level widths of the stacked outputs
        input_num_blocks = [1] + [0] * (levels - 1)
        resolution = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out_ch = mult * cfg.model_channels
                block = [ResBlock(ch, out_ch, **cond_kw, rngs=rngs)]
                ch = out_ch
                if resolution in cfg.attention_resolutions:
                    block.append(attention(ch))
                blocks.append(nnx.List(block))
                chans[level].append(ch)
                input_num_blocks[level] += 1
            if level != levels - 1:
                resolution //= 2
                blocks.append(nnx.List([ResBlock(ch, ch, down=True, **cond_kw, rngs=rngs)]))
                chans[level + 1].append(ch)
                input_num_blocks[level + 1] += 1
        self.input_blocks = nnx.List(blocks)
        self.input_num_blocks = tuple(input_num_blocks)
        self.middle_block = nnx.List([
            ResBlock(ch, **cond_kw, rngs=rngs),
            attention(ch),
            ResBlock(ch, **cond_kw, rngs=rngs),
        ])
        blocks = []
        output_num_blocks = [0] * levels
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                ich = chans[level].pop() if chans[level] else 0
                out_ch = mult * cfg.model_channels
                block = [ResBlock(ch + ich, out_ch, has_lateral=ich > 0, **cond_kw, rngs=rngs)]
                ch = out_ch
                if resolution in cfg.attention_resolutions:
                    block.append(attention(ch))
                if level and i == cfg.num_res_blocks:
                    resolution *= 2
                    block.append(ResBlock(ch, ch, up=True, **cond_kw, rngs=rngs))
                blocks.append(nnx.List(block))
                output_num_blocks[level] += 1
        self.output_blocks = nnx.List(blocks)
        self.output_num_blocks = tuple(output_num_blocks[::-1])  # in visiting order (deepest first)
        self.out = nnx.List([
            group_norm32(ch, rngs=rngs),
            Slot(jax.nn.silu),
            layers.conv2d(input_ch, cfg.out_channels, 3, padding=1, rngs=rngs),
        ])

    def __call__(self, x, t, cond):
        """``x``: (N, H, W, C) x_t; ``t``: (N,) original timesteps; ``cond``: (N, 512) raw z_sem."""
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels, x.dtype))
        hs = [[] for _ in self.input_num_blocks]
        h, k = x, 0
        for level, n in enumerate(self.input_num_blocks):
            for _ in range(n):
                h = _run(self.input_blocks[k], h, emb, cond)
                hs[level].append(h)
                k += 1
        h = _run(self.middle_block, h, emb, cond)
        k = 0
        for i, n in enumerate(self.output_num_blocks):
            for _ in range(n):
                lateral = hs[-i - 1].pop() if hs[-i - 1] else None
                h = _run(self.output_blocks[k], h, emb, cond, lateral)
                k += 1
        for layer in self.out:
            h = layer(h)
        return h


# --- the attribute classifier (ffhq256_autoenc_cls) ---------------------------------


CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # list_attr_celeba.txt order (the official CelebAttrDataset.id_to_cls)


class AttributeClassifier(nnx.Module):
    """What ``ClsModel`` (``manipulate_mode='celebahq_all'``) saves: z_sem statistics and linear heads.

    ``conds_mean`` / ``conds_std`` (1, D) normalise z_sem; ``classifier`` is
    the head the official edit steps along (non-EMA, as ``manipulate.ipynb``
    and ``predict.py`` use it); ``ema_classifier`` is kept for the file's
    sake and ``ema_logits``.
    """

    def __init__(self, z_channels: int = 512, num_classes: int = len(CELEBA_ATTRIBUTES), *, rngs: nnx.Rngs):
        self.conds_mean = Buffer(jnp.zeros((1, z_channels), jnp.float32))
        self.conds_std = Buffer(jnp.ones((1, z_channels), jnp.float32))
        self.classifier = nnx.Linear(z_channels, num_classes, rngs=rngs)
        self.ema_classifier = nnx.Linear(z_channels, num_classes, rngs=rngs)

    def normalize(self, z):
        return (z - self.conds_mean[...]) / self.conds_std[...]

    def denormalize(self, z):
        return z * self.conds_std[...] + self.conds_mean[...]

    def __call__(self, z):
        """Logits of the 40 attributes (sigmoid = P(present)) of raw z_sem."""
        return self.classifier(self.normalize(z))

    def ema_logits(self, z):
        return self.ema_classifier(self.normalize(z))

    def edit(self, z, strengths):
        """The official manipulation, for signed strengths per attribute.

        ``z' = denormalize(normalize(z) + sqrt(D) * sum_k a_k w_k / max(||w_k||, 1e-12))``
        with ``w_k`` the rows of ``classifier.weight``; one non-zero ``a_k`` is
        exactly the notebook's edit of attribute k with amplitude a_k.
        ``strengths``: (K,) for the whole batch or (N, K).
        """
        w = self.classifier.kernel[...].T  # torch's weight layout (K, D)
        unit = w / jnp.maximum(jnp.linalg.norm(w, axis=1, keepdims=True), 1e-12)  # F.normalize
        step = jnp.asarray(strengths, z.dtype) @ unit.astype(z.dtype)
        return self.denormalize(self.normalize(z) + math.sqrt(z.shape[-1]) * step)
