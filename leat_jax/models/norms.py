"""GroupNorm whose statistics are products with a vector of ones.

XLA's CPU reductions over the spatial axes of an NHWC map run ~5x slower than
the same sums written as a matrix-vector product (Eigen's, multi-threaded):
DiffAE's encoder spent more time in GroupNorm's statistics (forward, and the
reductions its gradient adds) than torch's fused kernels. The gradient is
written out (a custom VJP) so that it, too, reduces through products.

Numerics are torch's: two-pass variance (mean first, then the mean squared
deviation), statistics in at least float32 whatever the compute dtype, ``eps`` inside
the square root. Parameter names are Flax's (``scale``, ``bias``), so a
checkpoint map is the same as for ``nnx.GroupNorm``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax


def _channel_sums(a):
    """(N, H, W, C) -> (N, C) sums over H and W, as two batched products with ones: each row, then the rows.

    At least float32 whatever the input dtype. Two levels, because one product
    over all H*W positions accumulates them in sequence: 1e-5 relative error at
    256x256 against 6e-7 this way (DiffAE's 256 maps; its T=2 render multiplies
    eps errors by 3.4).
    """
    n, h, w, c = a.shape
    acc = jnp.promote_types(a.dtype, jnp.float32)
    batched = (((2,), (1,)), ((0,), (0,)))
    rows = lax.dot_general(jnp.ones((n * h, 1, w), a.dtype), a.reshape(n * h, w, c), batched,
                           preferred_element_type=acc)
    return lax.dot_general(jnp.ones((n, 1, h), acc), rows.reshape(n, h, c), batched, preferred_element_type=acc)[:, 0]


def _group_means(s, groups: int, count: int):
    """(N, C) channel sums -> (N, 1, 1, C): each channel's group mean."""
    n, c = s.shape
    g = jnp.sum(s.reshape(n, groups, c // groups), -1) / count
    return jnp.repeat(g, c // groups, -1)[:, None, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def normalize(x, groups: int, eps: float):
    """(x - group mean) / sqrt(group variance + eps), per image and group of channels."""
    return _forward(x, groups, eps)[0]


def _forward(x, groups, eps):
    n, h, w, c = x.shape
    count = h * w * (c // groups)
    d = x - _group_means(_channel_sums(x), groups, count).astype(x.dtype)
    rstd = lax.rsqrt(_group_means(_channel_sums(d * d), groups, count) + eps)
    xhat = d * rstd.astype(x.dtype)
    return xhat, (xhat, rstd)


def _backward(groups, eps, res, g):
    xhat, rstd = res
    n, h, w, c = xhat.shape
    count = h * w * (c // groups)
    mean_g = _group_means(_channel_sums(g), groups, count).astype(g.dtype)
    mean_g_xhat = _group_means(_channel_sums(g * xhat), groups, count).astype(g.dtype)
    return ((g - mean_g - xhat * mean_g_xhat) * rstd.astype(g.dtype),)


normalize.defvjp(_forward, _backward)


def group_norm(x, scale, bias, groups: int, eps: float):
    """torch's ``F.group_norm`` on NHWC ``x``, per-channel ``scale``/``bias``.

    Only the normalisation has a written-out gradient; the affine part is
    left to autodiff (so parameter gradients, and their sums across devices
    under ``shard_map``, are JAX's own).
    """
    return normalize(x, groups, eps) * scale + bias


class GroupNorm(nnx.Module):
    """``torch.nn.GroupNorm(num_groups, num_channels, eps)`` on NHWC, affine."""

    def __init__(self, num_channels: int, num_groups: int, epsilon: float = 1e-5, *, rngs: nnx.Rngs | None = None):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.epsilon = num_groups, epsilon
        self.scale = nnx.Param(jnp.ones((num_channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_channels,), jnp.float32))

    def __call__(self, x):
        return group_norm(x, self.scale[...].astype(x.dtype), self.bias[...].astype(x.dtype),
                          self.num_groups, self.epsilon)
