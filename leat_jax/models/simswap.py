"""SimSwap's networks in Flax NNX (NHWC): the ArcFace identity net and the 224 generator.

Both mirror the official module trees attribute for attribute, and
``nn.Sequential`` positions are kept as ``nnx.List`` indices (parameter-free
entries such as paddings and activations hold their slot), so a torch key
``down1.0.weight`` lands on the Flax node ``down1/0`` with no renaming.

* ``ArcFaceResNet``: foamliu's SE-LResNet-E-IR (SimSwap's ``netArc``),
  101 layers = IR blocks [3, 4, 23, 3]. Input [N, 112, 112, 3] ImageNet-
  normalised, output the raw 512-d embedding (the pipeline L2-normalises).
* ``GeneratorEncoder``: ``first_layer``, ``down1``..``down3`` of
  ``Generator_Adain_Upsample``, the part that sees only the target image.
* ``Generator``: the whole 224 generator (encoder, 9 AdaIN blocks, decoder),
  holding every key of ``latest_net_G.pth``.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leat_jax.models.layers import PReLU, Slot, batch_norm, conv2d, nchw_flatten, reflection_pad_slot

ARCFACE_R101 = (3, 4, 23, 3)


# ----------------------------------------------------------------------------
# Parameter-free pieces (they keep their nn.Sequential slot)


def upsample2x_bilinear(x):
    """``nn.Upsample(scale_factor=2, mode='bilinear')`` (align_corners False).

    Half-pixel centres with clamped edges; for a pure x2 upsample this is
    exactly jax's linear resize (antialiasing only acts when shrinking).
    """
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="linear", antialias=False)


def run(seq, x):
    for layer in seq:
        x = layer(x)
    return x


# ----------------------------------------------------------------------------
# ArcFace (models/arcface_models.py)


class SEBlock(nnx.Module):
    """Squeeze-excitation: avgpool -> Linear C->C/16 -> PReLU(1) -> Linear -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 16, *, rngs: nnx.Rngs):
        hidden = channels // reduction
        self.fc = nnx.List([
            nnx.Linear(channels, hidden, rngs=rngs),
            PReLU(1),
            nnx.Linear(hidden, channels, rngs=rngs),
            Slot(jax.nn.sigmoid),
        ])

    def __call__(self, x):
        y = jnp.mean(x, axis=(1, 2))
        y = run(self.fc, y)
        return x * y[:, None, None, :]


class IRBlock(nnx.Module):
    """Pre-BN improved residual block with SE.

    BN0 -> conv3x3 -> BN1 -> PReLU -> conv3x3(stride) -> BN2 -> SE, plus the
    (projected) input, then the *same* PReLU again: one scalar slope per block,
    used twice.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.bn0 = batch_norm(inplanes, rngs=rngs)
        self.conv1 = conv2d(inplanes, inplanes, 3, 1, 1, bias=False, rngs=rngs)
        self.bn1 = batch_norm(inplanes, rngs=rngs)
        self.prelu = PReLU(1)
        self.conv2 = conv2d(inplanes, planes, 3, stride, 1, bias=False, rngs=rngs)
        self.bn2 = batch_norm(planes, rngs=rngs)
        if stride != 1 or inplanes != planes:
            self.downsample = nnx.List([
                conv2d(inplanes, planes, 1, stride, 0, bias=False, rngs=rngs),
                batch_norm(planes, rngs=rngs),
            ])
        else:
            self.downsample = None
        self.se = SEBlock(planes, rngs=rngs)

    def __call__(self, x):
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.se(self.bn2(self.conv2(out)))
        residual = x if self.downsample is None else run(self.downsample, x)
        return self.prelu(out + residual)


class ArcFaceResNet(nnx.Module):
    """SimSwap's ``netArc``: [N, 112, 112, 3] ImageNet-normalised -> [N, 512] (not normalised)."""

    def __init__(self, layers: Sequence[int] = ARCFACE_R101, *, rngs: nnx.Rngs):
        self.conv1 = conv2d(3, 64, 3, 1, 0, bias=False, rngs=rngs)  # no padding: 112 -> 110
        self.bn1 = batch_norm(64, rngs=rngs)
        self.prelu = PReLU(1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = [IRBlock(inplanes, planes, stride, rngs=rngs)]
            stage += [IRBlock(planes, planes, 1, rngs=rngs) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nnx.List(stage))
            inplanes = planes
        self.bn2 = batch_norm(512, rngs=rngs)
        self.fc = nnx.Linear(512 * 7 * 7, 512, rngs=rngs)
        self.bn3 = batch_norm(512, rngs=rngs)  # BatchNorm1d

    def __call__(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # 110 -> 55
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = run(stage, x)
        x = self.bn2(x)  # dropout: identity in eval
        x = self.fc(nchw_flatten(x))  # the fc rows are in torch's c*49 + h*7 + w order
        return self.bn3(x)


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of ``F.interpolate(mode='nearest')``: floor(i * in / out).

    PyTorch's legacy nearest mode (not half-pixel): for 224 -> 112 it is
    exactly every second pixel, starting at 0.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def nearest_resize_torch(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """NHWC ``F.interpolate(x, size, mode='nearest')``: a gather, so gradients
    land only on the pixels it reads."""
    h, w = size
    if x.shape[1] % h == 0 and x.shape[2] % w == 0:  # integer factor: a strided slice
        return x[:, :: x.shape[1] // h, :: x.shape[2] // w]
    x = jnp.take(x, torch_nearest_indices(x.shape[1], h), axis=1)
    return jnp.take(x, torch_nearest_indices(x.shape[2], w), axis=2)


def l2_normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``F.normalize(v, p=2, dim=1)``: v / max(||v||, eps)."""
    norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))
    return v / jnp.maximum(norm, eps)


# ----------------------------------------------------------------------------
# Generator (models/fs_networks.py, Generator_Adain_Upsample, deep=False)


class GeneratorEncoder(nnx.Module):
    """The target-image encoder: [N, H, W, 3] in [0, 1] -> [N, H/8, W/8, 512] (post-ReLU)."""

    def __init__(self, input_nc: int = 3, *, rngs: nnx.Rngs):
        self.first_layer = nnx.List([
            reflection_pad_slot(3), conv2d(input_nc, 64, 7, rngs=rngs), batch_norm(64, rngs=rngs), Slot(jax.nn.relu),
        ])
        # stride-2 convs pad (1, 1) with zeros as torch does ('SAME' would pad (0, 1))
        self.down1 = nnx.List([conv2d(64, 128, 3, 2, 1, rngs=rngs), batch_norm(128, rngs=rngs), Slot(jax.nn.relu)])
        self.down2 = nnx.List([conv2d(128, 256, 3, 2, 1, rngs=rngs), batch_norm(256, rngs=rngs), Slot(jax.nn.relu)])
        self.down3 = nnx.List([conv2d(256, 512, 3, 2, 1, rngs=rngs), batch_norm(512, rngs=rngs), Slot(jax.nn.relu)])

    def encode(self, x):
        for seq in (self.first_layer, self.down1, self.down2, self.down3):
            x = run(seq, x)
        return x

    def __call__(self, x):
        return self.encode(x)


def instance_norm(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """SimSwap's own InstanceNorm: no affine, biased variance, eps 1e-8 inside the rsqrt."""
    x = x - jnp.mean(x, axis=(1, 2), keepdims=True)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=(1, 2), keepdims=True) + eps)


class ApplyStyle(nnx.Module):
    """AdaIN modulation: Linear(latent) -> (scale offset, shift), x * (1 + scale) + shift."""

    def __init__(self, latent_size: int, channels: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(latent_size, 2 * channels, rngs=rngs)

    def __call__(self, x, latent):
        c = x.shape[-1]
        style = self.linear(latent)  # [N, 2C]: first C scale offsets, then C shifts
        scale = style[:, None, None, :c]
        shift = style[:, None, None, c:]
        return x * (scale + 1.0) + shift


class ResnetBlockAdain(nnx.Module):
    def __init__(self, dim: int, latent_size: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.List([reflection_pad_slot(1), conv2d(dim, dim, 3, rngs=rngs), Slot(instance_norm)])
        self.style1 = ApplyStyle(latent_size, dim, rngs=rngs)
        self.conv2 = nnx.List([reflection_pad_slot(1), conv2d(dim, dim, 3, rngs=rngs), Slot(instance_norm)])
        self.style2 = ApplyStyle(latent_size, dim, rngs=rngs)

    def __call__(self, x, latent):
        y = jax.nn.relu(self.style1(run(self.conv1, x), latent))
        y = self.style2(run(self.conv2, y), latent)
        return x + y  # no activation after the add


class Generator(GeneratorEncoder):
    """``Generator_Adain_Upsample(3, 3, 512, n_blocks=9, deep=False)``: (target in [0, 1],
    latent_id) -> swapped face in [0, 1]."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, latent_size: int = 512, n_blocks: int = 9,
                 *, rngs: nnx.Rngs):
        super().__init__(input_nc, rngs=rngs)
        self.BottleNeck = nnx.List([ResnetBlockAdain(512, latent_size, rngs=rngs) for _ in range(n_blocks)])
        self.up3 = nnx.List([Slot(upsample2x_bilinear), conv2d(512, 256, 3, 1, 1, rngs=rngs),
                                batch_norm(256, rngs=rngs), Slot(jax.nn.relu)])
        self.up2 = nnx.List([Slot(upsample2x_bilinear), conv2d(256, 128, 3, 1, 1, rngs=rngs),
                                batch_norm(128, rngs=rngs), Slot(jax.nn.relu)])
        self.up1 = nnx.List([Slot(upsample2x_bilinear), conv2d(128, 64, 3, 1, 1, rngs=rngs),
                                batch_norm(64, rngs=rngs), Slot(jax.nn.relu)])
        self.last_layer = nnx.List([reflection_pad_slot(3), conv2d(64, output_nc, 7, rngs=rngs), Slot(jnp.tanh)])

    def decode(self, feat, latent_id):
        x = feat
        for block in self.BottleNeck:
            x = block(x, latent_id)
        for seq in (self.up3, self.up2, self.up1, self.last_layer):
            x = run(seq, x)
        return (x + 1.0) / 2.0

    def __call__(self, x, latent_id):
        return self.decode(self.encode(x), latent_id)
