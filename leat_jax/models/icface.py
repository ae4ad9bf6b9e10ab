"""ICface's generators: the pix2pix/CycleGAN ``ResnetGenerator`` in Flax NNX.

ICface (Tripathy, Kannala, Rahtu, 2020) runs the same class twice: the
neutralizer ``netGN`` (source face + the neutral attribute vector -> neutral
face) and the reenactment generator ``netG`` (neutral face + a driving frame's
attributes -> animated face). Both are ``ResnetGenerator(input_nc=23,
output_nc=3, ngf=128, n_blocks=6, norm=BatchNorm, use_dropout=True,
padding_type='reflect')``; this module builds either.

The layer list mirrors the official ``nn.Sequential`` index for index
(``model.<i>``, ``model.<i>.conv_block.<j>``), parameterless layers included,
so the checkpoint maps by position. Eval-mode behaviour: BatchNorm uses its
running statistics, Dropout is the identity. Every conv is bias-free (torch
drops the bias when BatchNorm follows) except the last 7x7 one.

Attributes enter as constant planes concatenated after the image channels.
Reflection padding keeps a constant plane constant, so the attribute part of
the first 7x7 conv is one number per output channel: ``__call__(image, attr)``
computes it as such (exact up to rounding order) instead of convolving 20
constant planes; ``__call__(x)`` with the full concatenated input is the
literal official computation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leat_jax.models.layers import Slot, batch_norm, conv2d, identity, reflection_pad, reflection_pad_slot

_NHWC = ("NHWC", "HWIO", "NHWC")


class ConvTranspose2d(nnx.Module):
    """``torch.nn.ConvTranspose2d`` (no groups, dilation 1), NHWC.

    A transposed conv is a stride-1 conv over the input dilated by ``stride``,
    padded by ``k - 1 - padding`` before and ``k - 1 - padding +
    output_padding`` after, with the torch kernel flipped spatially and its
    (in, out) axes read as (I, O). ``kernel`` is stored in that ready-to-use
    HWIO form: the converter does the flip once (torch ``(in, out, kh, kw)``
    -> ``w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)``).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
                 output_padding: int = 0, bias: bool = True, *, rngs: nnx.Rngs):
        if not 0 <= output_padding < stride:
            raise ValueError("output_padding must be smaller than stride (as torch requires)")
        self.stride, self.pad_lo = stride, kernel - 1 - padding
        self.pad_hi = kernel - 1 - padding + output_padding
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (kernel, kernel, in_ch, out_ch), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32)) if bias else None

    def __call__(self, x):
        pads = ((self.pad_lo, self.pad_hi),) * 2
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...].astype(x.dtype), window_strides=(1, 1), padding=pads,
            lhs_dilation=(self.stride, self.stride), dimension_numbers=_NHWC,
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class ResnetBlock(nnx.Module):
    """``y = x + F(x)``, F = pad, conv3, BN, ReLU, [Dropout], pad, conv3, BN.

    Reflection padding only (the ICface setting); with ``use_dropout`` the
    identity stand-in at index 4 shifts the second conv/BN to 6 and 7, as in
    the official keys.
    """

    def __init__(self, dim: int, use_dropout: bool, *, rngs: nnx.Rngs):
        layers = [reflection_pad_slot(1), conv2d(dim, dim, 3, bias=False, rngs=rngs),
                  batch_norm(dim, rngs=rngs), Slot(jax.nn.relu)]
        if use_dropout:
            layers.append(Slot(identity, "Dropout"))
        layers += [reflection_pad_slot(1), conv2d(dim, dim, 3, bias=False, rngs=rngs), batch_norm(dim, rngs=rngs)]
        self.conv_block = nnx.List(layers)

    def __call__(self, x):
        h = x
        for layer in self.conv_block:
            h = layer(h)
        return x + h


class ResnetGenerator(nnx.Module):
    """pix2pix ``ResnetGenerator`` with BatchNorm (bias-free convs), reflect padding.

    ``model`` holds the official ``nn.Sequential`` layer for layer:
    pad3, conv7, BN, ReLU, 2 x (conv3/s2, BN, ReLU), n_blocks ResnetBlocks,
    2 x (convT3/s2, BN, ReLU), pad3, conv7 (with bias), tanh.
    """

    def __init__(self, input_nc: int = 23, output_nc: int = 3, ngf: int = 128, n_blocks: int = 6,
                 use_dropout: bool = True, *, rngs: nnx.Rngs):
        self.input_nc = input_nc
        layers = [reflection_pad_slot(3), conv2d(input_nc, ngf, 7, bias=False, rngs=rngs),
                  batch_norm(ngf, rngs=rngs), Slot(jax.nn.relu)]
        for i in range(2):  # downsampling, torch pads (1, 1) at stride 2, not "SAME"'s (0, 1)
            c = ngf * 2**i
            layers += [conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False, rngs=rngs),
                       batch_norm(2 * c, rngs=rngs), Slot(jax.nn.relu)]
        layers += [ResnetBlock(ngf * 4, use_dropout, rngs=rngs) for _ in range(n_blocks)]
        for i in range(2):  # upsampling
            c = ngf * 2 ** (2 - i)
            layers += [ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=False, rngs=rngs),
                       batch_norm(c // 2, rngs=rngs), Slot(jax.nn.relu)]
        layers += [reflection_pad_slot(3), conv2d(ngf, output_nc, 7, bias=True, rngs=rngs), Slot(jnp.tanh)]
        self.model = nnx.List(layers)

    def __call__(self, x, attr=None):
        """The generator's output (NHWC, tanh range).

        ``x`` alone: the full ``input_nc``-channel input, as the official
        forward takes it. ``x`` and ``attr``: the image channels, and the
        attribute values that the official code broadcasts to constant planes
        after them, shape ``(A,)`` or ``(N, A)`` with ``A = input_nc -
        x.shape[-1]``; the same result, without convolving constant planes.
        """
        if attr is None:
            if x.shape[-1] != self.input_nc:
                raise ValueError(f"expected {self.input_nc} input channels, got {x.shape[-1]}")
            h = x
            for layer in self.model:
                h = layer(h)
            return h
        return self._rest(self._first_conv(x, attr))

    def _first_conv(self, image, attr):
        conv = self.model[1]
        c = image.shape[-1]
        attr = jnp.asarray(attr, image.dtype)
        if attr.shape[-1] + c != self.input_nc:
            raise ValueError(f"{c} image channels + {attr.shape[-1]} attributes != {self.input_nc} inputs")
        kernel = conv.kernel[...].astype(image.dtype)  # HWIO
        h = conv2d_valid(reflection_pad(image, 3), kernel[:, :, :c, :])
        # A constant plane meets every tap of the 7x7 window wherever the
        # window is (reflection keeps it constant): sum the taps once.
        planes = jnp.einsum("...a,hwao->...o", attr, kernel[:, :, c:, :])
        planes = planes[:, None, None, :] if planes.ndim == 2 else planes
        return h + planes

    def _rest(self, h):
        for layer in self.model[2:]:
            h = layer(h)
        return h


def conv2d_valid(x, kernel):
    """Stride-1, unpadded NHWC/HWIO convolution."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC)


def icface_generator(rngs: nnx.Rngs) -> ResnetGenerator:
    """Either ICface network (``netGN`` or ``netG``): they share these arguments."""
    return ResnetGenerator(input_nc=23, output_nc=3, ngf=128, n_blocks=6, use_dropout=True, rngs=rngs)
