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
    without ``random_start``; projected.

    Returns:
        The starting perturbation (same shape as ``x``).
    """
    radius = config.eps if config.random_start else config.eps * ZERO_START_SCALE
    return project(x, jax.random.uniform(key, x.shape, jnp.float32, -radius, radius), config.eps)


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
