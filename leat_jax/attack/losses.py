"""Latent distances, per image, and the per-victim loss names.

A loss is any ``(latent, clean) -> scalar`` over one image's latent pytree
(leading batch axis of 1 or none); ``AttackConfig.losses`` names one per
victim (``LOSSES``) or gives a function. Every loss is zero at ``latent ==
clean`` and grows with the damage; each runs in float32 whatever the compute
dtype.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Loss = Callable[..., jax.Array]  # (latent, clean) -> scalar


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(a).astype(jnp.float32) for a in jax.tree.leaves(tree)])


def latent_mse(latent, clean) -> jax.Array:
    """``mean((E(x+eta) - E(x))**2)`` over every element of a latent pytree.

    Both arguments hold one image's latent (leading batch axis of 1 or none);
    the mean runs in float32 whatever the compute dtype.
    """
    sq = jax.tree.map(lambda a, b: jnp.sum(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32))), latent, clean)
    count = sum(a.size for a in jax.tree.leaves(clean))
    return sum(jax.tree.leaves(sq)) / count


def latent_l1(latent, clean) -> jax.Array:
    """``mean(|E(x+eta) - E(x)|)`` over every element of a latent pytree."""
    return jnp.mean(jnp.abs(_flat(latent) - _flat(clean)))


def cosine_distance(latent, clean) -> jax.Array:
    """``1 - cos(E(x+eta), E(x))``, the whole latent pytree as one vector.

    For identity embeddings (ArcFace), whose matching is by angle: a change of
    norm alone does not count. Norms are floored at 1e-12, so a zero latent
    gives 1.
    """
    a, b = _flat(latent), _flat(clean)
    return 1.0 - jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-12)


LOSSES: dict[str, Loss] = {"mse": latent_mse, "cosine": cosine_distance, "l1": latent_l1}
