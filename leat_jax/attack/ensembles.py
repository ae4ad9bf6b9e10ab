"""Combining per-victim input gradients into one ascent direction (per image)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def normalized(grads: Sequence[jax.Array], floor: float) -> jax.Array:
    """LEAT's Normalized Gradient Ensemble: sum of g_k / (||g_k||_2 + floor).

    Each victim gets an equal say whatever the scale of its latent, which a
    plain sum would hand to the network with the largest gradients.
    """
    return sum(g / (jnp.sqrt(jnp.sum(jnp.square(g))) + floor) for g in grads)


def summed(grads: Sequence[jax.Array]) -> jax.Array:
    return sum(grads)
