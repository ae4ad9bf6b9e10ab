"""What every PGD loop here shares: the start, the projection after a step, and the weights in the compute dtype.

Used by LEAT's loop (``attack.pgd``) and the image-space baseline
(``attack.image_space``), so both step and compute exactly alike.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from leat_jax.attack.config import AttackConfig
from leat_jax.models.base import cast_floating

# A zero start is this fraction of eps of keyed noise: at exactly zero every latent residual, so every
# gradient, is zero; this small a start moves nothing visible (eps/100 is about 0.06/255 at the default eps).
ZERO_START_SCALE = 1e-2


def initial_perturbation(config: AttackConfig, key: jax.Array, x: jax.Array) -> jax.Array:
    """The start of one image: uniform noise in [-eps, eps] keyed by ``key``, or ``ZERO_START_SCALE`` of it
    without ``random_start``; with a learned ``config.start``, its perturbation resized to ``x`` plus keyed
    noise of ``start.jitter * eps``; projected.

    Returns:
        The starting perturbation (same shape as ``x``).
    """
    if config.start is not None:
        radius = config.eps * config.start.jitter
        base = resized(jnp.asarray(config.start.perturbation), x.shape)
        noise = jax.random.uniform(key, x.shape, jnp.float32, -radius, radius) if radius else 0.0
        return project(x, base + noise, config.eps)
    radius = config.eps if config.random_start else config.eps * ZERO_START_SCALE
    return project(x, jax.random.uniform(key, x.shape, jnp.float32, -radius, radius), config.eps)


def resized(u: jax.Array, shape) -> jax.Array:
    """A universal perturbation ``u`` (h, w, 3) at the image shape ``shape`` (H, W, 3): bilinear, antialiased
    when shrinking; its weights are non-negative and sum to one, so ``|u|_inf`` does not grow.

    Returns:
        ``u`` itself when the shapes agree, else the resized array.
    """
    if tuple(u.shape) == tuple(shape):
        return u
    return jax.image.resize(u, tuple(shape), "linear")


def project(x: jax.Array, eta: jax.Array, eps: float) -> jax.Array:
    """``eta`` back onto the L-inf ball of radius ``eps``, then ``x + eta`` into [-1, 1].

    Returns:
        The projected perturbation (same shape as ``eta``).
    """
    eta = optax.projections.projection_linf_ball(eta, eps)
    return optax.projections.projection_box(x + eta, -1.0, 1.0) - x


def compute_params(config: AttackConfig, params: Sequence) -> tuple:
    """The parameters in ``config.compute_dtype`` (floating leaves cast; float32 left as given).

    Returns:
        ``(dtype, [params per victim])``.
    """
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    if dtype != jnp.float32:
        params = [cast_floating(p, dtype) for p in params]
    return dtype, list(params)
