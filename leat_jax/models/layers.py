"""Layers with PyTorch's numerics, NHWC.

Flax's defaults differ from torch's in ways that matter for an exact port:
padding "SAME" is asymmetric at stride 2 where torch pads both sides equally,
BatchNorm and GroupNorm epsilons differ (1e-5 in torch, 1e-6 for Flax's
GroupNorm), PReLU in torch is per channel. These helpers fix each choice once.
Parameter names follow Flax (``kernel``, ``scale``, ``mean``, ``var``) except
where the layer is ours (PReLU keeps torch's ``weight``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leat_jax.models import conv, norms


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
    loses digits on activations with a large mean (measured on DiffAE).
    ``norms.GroupNorm`` rather than ``nnx.GroupNorm``: same parameters, its
    statistics as matrix products (2-3x faster on CPU, ``models.norms``).
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
