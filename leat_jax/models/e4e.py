"""e4e (encoder4editing), the encoder StyleCLIP inverts faces with, in Flax NNX.

Mirrors ``models/encoders/psp_encoders.py::Encoder4Editing(50, 'ir_se')`` of
omertov/encoder4editing (MIT), NHWC. Attribute names and list indices follow
the official modules, so ``encoder.body.3.res_layer.1.weight`` of the official
checkpoint is the leaf of ``encoder/body/3/res_layer/1`` here and the
converter needs no renaming table. Eval mode only (BatchNorm running stats).

Trunk: an ArcFace IR-SE50 (input conv + 24 pre-activation bottlenecks with
squeeze-excitation); FPN merges of its 64/32/16-pixel taps; 18 style heads
(strided 3x3 convs down to 1x1, then an EqualLinear), combined the e4e way:
``w[i] = head_0(c3) + head_i(features_i)`` for i >= 1, ``w[0] = head_0(c3)``.
``E4E`` adds the checkpoint's ``latent_avg``, giving the W+ code (N, 18, 512).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leat_jax.models.layers import Buffer, PReLU, Slot, batch_norm, conv2d

STYLE_COUNT = 18  # 2 * log2(1024) - 2: one W+ slot per StyleGAN2-1024 layer input
COARSE_IND = 3    # slots 0-2 read c3 (16 px)
MIDDLE_IND = 7    # slots 3-6 read p2 (32 px), slots 7-17 read p1 (64 px)
INPUT_SIZE = 256  # the heads reduce exactly to 1x1 only from a 256 input

# ArcFace IR-SE50 stages: (in channels, depth, units); the first unit strides 2.
IR_SE50 = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
TAP_C1, TAP_C2, TAP_C3 = 6, 20, 23  # body indices of the FPN taps (64, 32, 16 px)


def _leaky_relu_001(x):
    # torch's nn.LeakyReLU() default slope, not StyleGAN's 0.2.
    return jnp.where(x >= 0, x, 0.01 * x)


class SEModule(nnx.Module):
    """Squeeze-excitation: channel gates from the spatial mean."""

    def __init__(self, channels: int, reduction: int, *, rngs: nnx.Rngs):
        self.fc1 = conv2d(channels, channels // reduction, 1, bias=False, rngs=rngs)
        self.fc2 = conv2d(channels // reduction, channels, 1, bias=False, rngs=rngs)

    def __call__(self, x):
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(s))))
        return x * s


class BottleneckIRSE(nnx.Module):
    """``bottleneck_IR_SE``: BN, conv3x3, PReLU, conv3x3 (stride s), BN, SE; plus shortcut."""

    def __init__(self, in_ch: int, depth: int, stride: int, *, rngs: nnx.Rngs):
        self.stride = stride
        if in_ch == depth:
            # MaxPool2d(kernel 1, stride s): identity or even-pixel subsampling, no state.
            self.shortcut_layer = None
        else:
            self.shortcut_layer = nnx.List([
                conv2d(in_ch, depth, 1, stride=stride, padding=0, bias=False, rngs=rngs),
                batch_norm(depth, rngs=rngs),
            ])
        self.res_layer = nnx.List([
            batch_norm(in_ch, rngs=rngs),
            conv2d(in_ch, depth, 3, stride=1, padding=1, bias=False, rngs=rngs),
            PReLU(depth),
            # Explicit (1, 1) padding: 'SAME' would pad (0, 1) at stride 2.
            conv2d(depth, depth, 3, stride=stride, padding=1, bias=False, rngs=rngs),
            batch_norm(depth, rngs=rngs),
            SEModule(depth, 16, rngs=rngs),
        ])

    def __call__(self, x):
        if self.shortcut_layer is None:
            shortcut = x[:, :: self.stride, :: self.stride]
        else:
            shortcut = x
            for layer in self.shortcut_layer:
                shortcut = layer(shortcut)
        res = x
        for layer in self.res_layer:
            res = layer(res)
        return res + shortcut  # no activation after the sum


class EqualLinear(nnx.Module):
    """StyleGAN2's EqualLinear without activation: the 1/sqrt(in) scale is applied at run time."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (in_dim, out_dim)) / lr_mul)
        self.bias = nnx.Param(jnp.zeros((out_dim,)))
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def __call__(self, x):
        # Same order as the official F.linear(x, W * scale, b * lr_mul).
        return x @ (self.kernel[...] * self.scale) + self.bias[...] * self.lr_mul


class GradualStyleBlock(nnx.Module):
    """log2(spatial) stride-2 3x3 convs (LeakyReLU 0.01 after each) to 1x1, then EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int, *, rngs: nnx.Rngs):
        self.out_c = out_c
        layers = []
        for i in range(int(np.log2(spatial))):
            layers.append(conv2d(in_c if i == 0 else out_c, out_c, 3, stride=2, padding=1, bias=True, rngs=rngs))
            layers.append(Slot(_leaky_relu_001, "LeakyReLU(0.01)"))
        self.convs = nnx.List(layers)  # convs at even indices, as in the official Sequential
        self.linear = EqualLinear(out_c, out_c, lr_mul=1.0, rngs=rngs)

    def __call__(self, x):
        for layer in self.convs:
            x = layer(x)
        if x.shape[1:3] != (1, 1):
            raise ValueError(f"style head reached {x.shape[1:3]}, not 1x1: the e4e input must be 256x256")
        return self.linear(x.reshape(x.shape[0], self.out_c))


def _align_corners_axis(size_in: int, size_out: int):
    """Neighbour indices and weights of bilinear interpolation with align_corners=True.

    Computed with static numpy (shapes are known at trace time) following torch's
    CPU kernel: src = i * (in-1)/(out-1), upper neighbour clamped at in-1.
    """
    if size_out > 1:
        scale = np.float32((size_in - 1) / (size_out - 1))
    else:
        scale = np.float32(0.0)
    src = np.arange(size_out, dtype=np.float32) * scale
    i0 = np.minimum(np.floor(src).astype(np.int32), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    lam1 = (src - i0).astype(np.float32)
    return i0, i1, 1.0 - lam1, lam1


def upsample_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``F.interpolate(x, size, mode='bilinear', align_corners=True)`` on NHWC.

    ``jax.image.resize`` uses half-pixel centres (align_corners=False), which
    moves e4e's codes by ~4%; this gathers the two neighbours per axis instead.
    Differentiable (gathers and a weighted sum).
    """
    h0, h1, wh0, wh1 = _align_corners_axis(x.shape[1], size[0])
    w0, w1, ww0, ww1 = _align_corners_axis(x.shape[2], size[1])
    dt = x.dtype
    ww0, ww1 = jnp.asarray(ww0, dt)[:, None], jnp.asarray(ww1, dt)[:, None]
    wh0, wh1 = jnp.asarray(wh0, dt)[:, None, None], jnp.asarray(wh1, dt)[:, None, None]
    # Along W, then along H: torch's h0*(w0*a + w1*b) + h1*(w0*c + w1*d).
    xw = jnp.take(x, w0, axis=2) * ww0 + jnp.take(x, w1, axis=2) * ww1
    return jnp.take(xw, h0, axis=1) * wh0 + jnp.take(xw, h1, axis=1) * wh1


def _upsample_add(x, y):
    return upsample_bilinear_align_corners(x, y.shape[1:3]) + y


class Encoder4Editing(nnx.Module):
    """``Encoder4Editing(50, 'ir_se', stylegan_size=1024)`` at progressive stage Inference."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.input_layer = nnx.List([
            conv2d(3, 64, 3, stride=1, padding=1, bias=False, rngs=rngs),
            batch_norm(64, rngs=rngs),
            PReLU(64),
        ])
        units = []
        for in_ch, depth, n in IR_SE50:
            units.append(BottleneckIRSE(in_ch, depth, 2, rngs=rngs))
            units.extend(BottleneckIRSE(depth, depth, 1, rngs=rngs) for _ in range(n - 1))
        self.body = nnx.List(units)
        self.styles = nnx.List([
            GradualStyleBlock(512, 512, 16 if i < COARSE_IND else 32 if i < MIDDLE_IND else 64, rngs=rngs)
            for i in range(STYLE_COUNT)
        ])
        self.latlayer1 = conv2d(256, 512, 1, bias=True, rngs=rngs)
        self.latlayer2 = conv2d(128, 512, 1, bias=True, rngs=rngs)

    def __call__(self, x):
        """(N, 256, 256, 3) in [-1, 1] -> codes (N, 18, 512)."""
        for layer in self.input_layer:
            x = layer(x)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == TAP_C1:
                c1 = x
            elif i == TAP_C2:
                c2 = x
        c3 = x
        p2 = _upsample_add(c3, self.latlayer1(c2))
        p1 = _upsample_add(p2, self.latlayer2(c1))
        w0 = self.styles[0](c3)
        # e4e (not pSp): every slot is w0 plus a delta; slot 0 has none.
        slots = [w0]
        for i in range(1, STYLE_COUNT):
            features = c3 if i < COARSE_IND else p2 if i < MIDDLE_IND else p1
            slots.append(w0 + self.styles[i](features))
        return jnp.stack(slots, axis=1)


class E4E(nnx.Module):
    """The official wrapper's view: W+ = encoder(x) + latent_avg (start_from_latent_avg)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.encoder = Encoder4Editing(rngs=rngs)
        self.latent_avg = Buffer(jnp.zeros((STYLE_COUNT, 512), jnp.float32))

    def __call__(self, x):
        """(N, 256, 256, 3) in [-1, 1] -> W+ (N, 18, 512)."""
        return self.encoder(x) + self.latent_avg[...]
