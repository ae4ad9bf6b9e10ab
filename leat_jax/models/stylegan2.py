"""StyleGAN2's generator (rosinality's PyTorch port, FFHQ config-f) in Flax NNX, NHWC: e4e's and StyleCLIP's decoder.

``Generator(1024, 512, 8, channel_multiplier=2)`` of rosinality/stylegan2-pytorch
(MIT), as encoder4editing and StyleCLIP vendor it; attribute names and list
indices mirror the official modules (``convs.<i>``, ``noises.noise_<i>``...), so
the converter needs only layout rules. Only the evaluation call is implemented,
``G([w], input_is_latent=True, randomize_noise=False, truncation=1)``: stored
noise, no truncation, no style mixing, the raw image [N, size, size, 3] (no
tanh, no clamp). The numerics, layer by layer, are in ``Generator``'s docstring.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from leat_jax.models.layers import Buffer

_NHWC = ("NHWC", "HWIO", "NHWC")
SQRT2 = math.sqrt(2.0)
# make_kernel([1, 3, 3, 1]) * 4 is outer(K1, K1): the 1-D factor, gain 2 per axis.
FIR_1D = (0.25, 0.75, 0.75, 0.25)


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """rosinality ``Generator`` arguments (defaults: FFHQ config-f as e4e/StyleCLIP build it).

    ``channel_cap`` caps every resolution's width; the default (512) leaves the
    official widths untouched; smaller values build small test generators.
    """

    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    lr_mlp: float = 0.01
    channel_cap: int = 512

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """W+ slots: 18 at 1024."""
        return self.log_size * 2 - 2

    def channels(self, res: int) -> int:
        cm = self.channel_multiplier
        official = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm,
                    256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}[res]
        return min(official, self.channel_cap)

    def noise_size(self, i: int) -> int:
        """``noises.noise_i`` is [r, r] with r = 2 ** ((i + 5) // 2)."""
        return 2 ** ((i + 5) // 2)


# ----------------------------------------------------------------------------
# FIR filtering (upfirdn2d with the [1, 3, 3, 1] kernel), separable, NHWC


def _interleave(even, odd, axis):
    """Samples ``even[m]`` at 2m and ``odd[m]`` at 2m + 1 along ``axis``."""
    stacked = jnp.stack([even, odd], axis=axis + 1)
    shape = list(even.shape)
    shape[axis] *= 2
    return stacked.reshape(shape)


def _pad_axis(x, axis, before, after):
    pads = [(0, 0)] * x.ndim
    pads[axis] = (before, after)
    return jnp.pad(x, pads)


def _slice_axis(x, axis, start, length):
    return jax.lax.slice_in_dim(x, start, start + length, axis=axis)


def upsample_2x(x):
    """``upfirdn2d(x, make_kernel([1,3,3,1]) * 4, up=2, pad=(2, 1))`` on NHWC: H, W doubled.

    Zero-insertion, padding (2, 1) and the 4-tap FIR per axis reduce to two
    phases: even outputs ``x[m-1]/4 + 3x[m]/4``, odd ``3x[m]/4 + x[m+1]/4``,
    zeros beyond the border.
    """
    k0, k1 = FIR_1D[0], FIR_1D[1]
    for axis in (1, 2):
        n = x.shape[axis]
        xp = _pad_axis(x, axis, 1, 1)
        prev, cur, nxt = (_slice_axis(xp, axis, s, n) for s in (0, 1, 2))
        x = _interleave(k0 * prev + k1 * cur, k1 * cur + k0 * nxt, axis)
    return x


def blur(x, pad: tuple[int, int] = (1, 1)):
    """``upfirdn2d(x, make_kernel([1,3,3,1]) * 4, pad=pad)`` (up = down = 1) on NHWC.

    The kernel is symmetric, so the true convolution is this correlation.
    """
    for axis in (1, 2):
        xp = _pad_axis(x, axis, *pad)
        n = xp.shape[axis] - len(FIR_1D) + 1
        x = sum(t * _slice_axis(xp, axis, s, n) for s, t in enumerate(FIR_1D))
    return x


# ----------------------------------------------------------------------------
# Layers


def leaky_relu_gain(x, slope: float = 0.2):
    """rosinality's fused activation after the bias: ``leaky_relu(x, 0.2) * sqrt(2)``."""
    return jnp.where(x >= 0, x, slope * x) * SQRT2


class PixelNorm(nnx.Module):
    """``x * rsqrt(mean(x ** 2, dim=1) + 1e-8)``: axis 1, whatever it holds.

    For z [N, 512] that is the features; for the StyleCLIP mapper's [N, slots,
    512] it is the slots of the group, as the official code computes.
    """

    def __call__(self, x):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=1, keepdims=True) + 1e-8)


class EqualLinear(nnx.Module):
    """StyleGAN2's EqualLinear: run-time scale ``lr_mul / sqrt(in)``, bias times ``lr_mul``.

    ``kernel`` is the stored weight transposed ([in, out]). With ``activation``
    the bias goes inside the fused leaky ReLU, broadcast over the last axis.
    """

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, bias_init: float = 0.0,
                 activation: bool = False, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (in_dim, out_dim)) / lr_mul)
        self.bias = nnx.Param(jnp.full((out_dim,), bias_init, jnp.float32))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def __call__(self, x):
        y = x @ (self.kernel[...] * self.scale) + self.bias[...] * self.lr_mul
        return leaky_relu_gain(y) if self.activation else y


class Blur(nnx.Module):
    """Parameter-free slot of the upsampling conv (its stored kernel is the constant FIR)."""

    def __call__(self, x):
        return blur(x, (1, 1))


class ModulatedConv2d(nnx.Module):
    """Style-modulated convolution; ``kernel`` is the stored [1, out, in, k, k] weight as HWIO."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (kernel, kernel, in_ch, out_ch)))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0, rngs=rngs)
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.demodulate = demodulate
        self.upsample = upsample
        self.padding = kernel // 2
        if upsample:
            self.blur = Blur()

    def __call__(self, x, w):
        s = self.modulation(w)  # [N, in]
        weight = self.kernel[...] * self.scale  # HWIO, shared by the batch
        x = x * s[:, None, None, :]
        if self.upsample:
            # conv_transpose2d(stride 2, padding 0) = zero-stuffed input, padded
            # k - 1 on each side, correlated with the kernel rotated 180 degrees.
            k = weight.shape[0]
            y = jax.lax.conv_general_dilated(
                x, weight[::-1, ::-1], (1, 1), ((k - 1, k - 1), (k - 1, k - 1)),
                lhs_dilation=(2, 2), dimension_numbers=_NHWC,
            )
            y = self.blur(y)
        else:
            p = self.padding
            y = jax.lax.conv_general_dilated(x, weight, (1, 1), ((p, p), (p, p)), dimension_numbers=_NHWC)
        if self.demodulate:
            # sum over (in, kh, kw) of (W * scale * s_in)^2, per sample and output channel
            energy = (s * s) @ jnp.sum(weight * weight, axis=(0, 1))  # [N, out]
            y = y * jax.lax.rsqrt(energy + 1e-8)[:, None, None, :]
        return y


class NoiseInjection(nnx.Module):
    """``x + weight * noise``, one scalar weight, noise [1, r, r, 1] broadcast."""

    def __init__(self):
        self.weight = nnx.Param(jnp.zeros((1,), jnp.float32))

    def __call__(self, x, noise):
        return x + self.weight[...] * noise


class FusedLeakyReLU(nnx.Module):
    def __init__(self, channels: int):
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x):
        return leaky_relu_gain(x + self.bias[...])


class StyledConv(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, upsample: bool = False,
                 *, rngs: nnx.Rngs):
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel, style_dim, upsample=upsample, rngs=rngs)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def __call__(self, x, w, noise):
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nnx.Module):
    """1x1 modulated conv to RGB (no demodulation) + bias, plus the FIR-upsampled skip."""

    def __init__(self, in_ch: int, style_dim: int, *, rngs: nnx.Rngs):
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((3,), jnp.float32))

    def __call__(self, x, w, skip=None):
        out = self.conv(x, w) + self.bias[...]
        return out if skip is None else out + upsample_2x(skip)


class ConstantInput(nnx.Module):
    def __init__(self, channels: int, size: int = 4, *, rngs: nnx.Rngs):
        self.input = nnx.Param(jax.random.normal(rngs.params(), (1, size, size, channels)))

    def __call__(self, batch: int):
        return jnp.broadcast_to(self.input[...], (batch, *self.input.shape[1:]))


class Noises(nnx.Module):
    """The fixed noise maps ``noise_0`` .. ``noise_{n-1}``, [1, r, r, 1] each."""

    def __init__(self, config: GeneratorConfig, *, rngs: nnx.Rngs):
        self.count = config.n_latent - 1
        for i in range(self.count):
            r = config.noise_size(i)
            setattr(self, f"noise_{i}", Buffer(jax.random.normal(rngs.params(), (1, r, r, 1))))

    def __getitem__(self, i: int):
        return getattr(self, f"noise_{i}")[...]


class Generator(nnx.Module):
    """``Generator(size, style_dim, n_mlp, channel_multiplier)``: ``synthesis(w_plus)`` -> image.

    Numerics (rosinality, pure-PyTorch path):

    * EqualLinear: ``x @ (W * lr_mul / sqrt(in)) + b * lr_mul``; with the fused
      activation, ``leaky_relu(. + b * lr_mul, 0.2) * sqrt(2)``.
    * ModulatedConv2d: style ``s = modulation(w_slot)``; weight
      ``W * s_in / sqrt(in * k * k)``, demodulated per output channel by
      ``rsqrt(sum_{in,kh,kw} W'^2 + 1e-8)`` (not in ToRGB). Computed here in the
      equivalent per-sample form: scale the input by ``s``, convolve with the
      shared weight, scale the output by the demodulation factor, so the batch
      shares one convolution and the gradient w.r.t. ``s`` is elementwise.
    * Upsampling conv: stride-2 transposed conv (output 2H+1), then the 4x4 FIR
      blur ``[1,3,3,1]`` (x4 gain) with padding (1, 1) -> 2H.
    * ToRGB skip: ``upfirdn2d(up=2, pad=(2, 1))`` with the same FIR, i.e. per axis
      ``out[2m] = x[m-1]/4 + 3x[m]/4``, ``out[2m+1] = 3x[m]/4 + x[m+1]/4`` with
      zeros outside (not bilinear resizing, which clamps the edges).
    * StyledConv: modulated conv, ``+ noise_weight * noise`` (one [r, r] map
      shared by batch and channels), ``leaky_relu(. + bias, 0.2) * sqrt(2)``.
    * W+ routing: ``conv1`` slot 0, ``to_rgb1`` 1; for resolution step k,
      ``convs.2k`` slot 2k+1, ``convs.2k+1`` slot 2k+2, ``to_rgbs.k`` slot 2k+3.
    """

    def __init__(self, config: GeneratorConfig = GeneratorConfig(), *, rngs: nnx.Rngs):
        self.config = config
        sd = config.style_dim
        self.style = nnx.List([PixelNorm()] + [
            EqualLinear(sd, sd, lr_mul=config.lr_mlp, activation=True, rngs=rngs) for _ in range(config.n_mlp)
        ])
        self.input = ConstantInput(config.channels(4), rngs=rngs)
        self.conv1 = StyledConv(config.channels(4), config.channels(4), 3, sd, rngs=rngs)
        self.to_rgb1 = ToRGB(config.channels(4), sd, rngs=rngs)
        convs, to_rgbs = [], []
        in_ch = config.channels(4)
        for i in range(3, config.log_size + 1):
            out_ch = config.channels(2**i)
            convs += [StyledConv(in_ch, out_ch, 3, sd, upsample=True, rngs=rngs),
                      StyledConv(out_ch, out_ch, 3, sd, rngs=rngs)]
            to_rgbs.append(ToRGB(out_ch, sd, rngs=rngs))
            in_ch = out_ch
        self.convs = nnx.List(convs)
        self.to_rgbs = nnx.List(to_rgbs)
        self.noises = Noises(config, rngs=rngs)

    def mapping(self, z):
        """z [N, style_dim] -> w (PixelNorm, then the lr_mul 0.01 MLP): not used from W+."""
        for layer in self.style:
            z = layer(z)
        return z

    def synthesis(self, w_plus):
        """W+ [N, n_latent, style_dim] -> image [N, size, size, 3], raw (no tanh, no clamp)."""
        n_latent = self.config.n_latent
        if w_plus.ndim != 3 or w_plus.shape[1] != n_latent:
            raise ValueError(f"expected W+ of shape [N, {n_latent}, {self.config.style_dim}], got {w_plus.shape}")
        out = self.conv1(self.input(w_plus.shape[0]), w_plus[:, 0], self.noises[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        for k, to_rgb in enumerate(self.to_rgbs):
            i = 2 * k + 1  # slot of the upsampling conv; its ToRGB reads i + 2
            out = self.convs[2 * k](out, w_plus[:, i], self.noises[2 * k + 1])
            out = self.convs[2 * k + 1](out, w_plus[:, i + 1], self.noises[2 * k + 2])
            skip = to_rgb(out, w_plus[:, i + 2], skip)
        return skip

    def __call__(self, w_plus):
        return self.synthesis(w_plus)


def face_pool(images, size: int = 256):
    """``nn.AdaptiveAvgPool2d((size, size))`` for sizes that divide: a mean over f x f blocks."""
    n, h, w, c = images.shape
    if h % size or w % size:
        raise ValueError(f"face pool to {size} needs a multiple of it, got {h}x{w}")
    fh, fw = h // size, w // size
    return images.reshape(n, size, fh, size, fw, c).mean(axis=(2, 4))


def generator(rngs: nnx.Rngs, config: GeneratorConfig = GeneratorConfig()) -> Generator:
    return Generator(config, rngs=rngs)
