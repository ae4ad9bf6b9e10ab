"""Latent distances, per image."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def latent_mse(latent, clean) -> jax.Array:
    """``mean((E(x+eta) - E(x))**2)`` over every element of a latent pytree.

    Both arguments hold one image's latent (leading batch axis of 1 or none);
    the mean runs in float32 whatever the compute dtype.
    """
    sq = jax.tree.map(lambda a, b: jnp.sum(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32))), latent, clean)
    count = sum(a.size for a in jax.tree.leaves(clean))
    return sum(jax.tree.leaves(sq)) / count
