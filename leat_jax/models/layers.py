"""Layers every network family shares, with PyTorch's numerics, NHWC.

Flax's defaults differ from torch's where an exact port cares (stride-2
"SAME" padding, norm epsilons, per-channel PReLU); these helpers fix each
choice once. Also the two pieces that keep a port's tree the official one:
``Buffer`` (a stored, untrained tensor) and ``Slot`` (a parameter-free layer
holding its ``nn.Sequential`` index). Parameter names follow Flax (``kernel``,
``scale``, ``mean``, ``var``) except in our own layers (PReLU's ``weight``).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from leat_jax.models import conv, norms


class Buffer(nnx.Variable):
    """A registered torch buffer: part of the checkpoint, never trained (``latent_avg``, noise maps)."""


class Slot(nnx.Module):
    """A parameter-free layer of an official ``nn.Sequential`` (activation, Dropout, padding, Flatten).

    It adds nothing to the parameter tree; it only holds its index, so the
    official keys after it (``model.4``, ``conv_block.6``) map by position.
    """

    def __init__(self, fn: Callable[[jax.Array], jax.Array], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, x):
        return self.fn(x)

    def __repr__(self):
        return f"Slot({self.name})"


def identity(x: jax.Array) -> jax.Array:
    """``nn.Dropout`` in eval mode (the only mode the released models are run in)."""
    return x


def global_avg_pool(x: jax.Array) -> jax.Array:
    """``nn.AdaptiveAvgPool2d((1, 1))`` on NHWC."""
    return jnp.mean(x, axis=(1, 2), keepdims=True)


def reflection_pad_slot(pad: int) -> Slot:
    """``nn.ReflectionPad2d(pad)`` as a Sequential slot."""
    return Slot(lambda x: reflection_pad(x, pad), f"ReflectionPad2d({pad})")


def conv2d(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = True,
    *,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """``torch.nn.Conv2d`` (zero padding, symmetric, as torch does it)."""
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=bias,
        conv_general_dilated=conv.conv_general_dilated,  # input gradient without weight shuffles
        rngs=rngs,
    )


def batch_norm(num_features: int, eps: float = 1e-5, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """``torch.nn.BatchNorm2d/1d`` in eval mode: running statistics only."""
    return nnx.BatchNorm(num_features, epsilon=eps, use_running_average=True, rngs=rngs)


def group_norm(num_groups: int, num_channels: int, eps: float = 1e-5, *, rngs: nnx.Rngs) -> norms.GroupNorm:
    """``torch.nn.GroupNorm`` (eps 1e-5, where Flax defaults to 1e-6).

    Two-pass variance, as torch computes it: Flax's fast E[x^2] - E[x]^2
    loses digits on activations with a large mean (DiffAE's).
    ``norms.GroupNorm`` rather than ``nnx.GroupNorm``: same parameters, its
    statistics as matrix products (faster on CPU, ``models.norms``).
    """
    return norms.GroupNorm(num_channels, num_groups, eps, rngs=rngs)


class PReLU(nnx.Module):
    """``torch.nn.PReLU(num_parameters)``: one slope per channel (last axis)."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25):
        self.weight = nnx.Param(jnp.full((num_parameters,), init, jnp.float32))

    def __call__(self, x):
        return jnp.where(x >= 0, x, self.weight[...] * x)


def reflection_pad(x: jax.Array, pad: int) -> jax.Array:
    """``torch.nn.ReflectionPad2d(pad)`` on NHWC (edge not repeated)."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def nchw_flatten(x: jax.Array) -> jax.Array:
    """Flatten NHWC features in torch's NCHW order (before a dense layer)."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
