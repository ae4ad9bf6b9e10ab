"""Combining per-victim input gradients into one ascent direction (per image).

The arms of the paper's ensemble ablation (``AttackConfig.ensemble``):
``normalized`` sums unit-norm gradients, ``summed`` raw ones, and
``scaled_mean_loss`` averages losses each divided by its victim's clean-latent
scale before one gradient is taken. Victim weights multiply each victim's
share; a weight of exactly 1 leaves its gradient untouched (bit for bit).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def normalized(grads: Sequence[jax.Array], floor: float, weights: Sequence[float] | None = None) -> jax.Array:
    """LEAT's Normalized Gradient Ensemble: sum of w_k * g_k / (||g_k||_2 + floor).

    Each victim gets an equal say whatever the scale of its latent, which a
    plain sum would hand to the network with the largest gradients; a weight
    scales that say after the normalisation (before it, the norm would cancel
    it). Weights of 1 are skipped, so the default stays bit-identical.
    """
    units = [g / (jnp.sqrt(jnp.sum(jnp.square(g))) + floor) for g in grads]
    return sum(weighted(units, weights) if weights is not None else units)


def summed(grads: Sequence[jax.Array]) -> jax.Array:
    return sum(grads)


def weighted(grads: Sequence[jax.Array], weights: Sequence[float]) -> list[jax.Array]:
    """Each victim's gradient times its weight (weights of 1 skipped, so defaults stay bit-identical)."""
    return [g if w == 1.0 else w * g for g, w in zip(grads, weights)]


def scaled_mean_loss(losses: jax.Array, scales: Sequence[jax.Array], weights: Sequence[float], floor: float):
    """``mean_k(w_k * L_k / (s_k + floor))``: each loss in units of its victim's clean-latent scale.

    ``s_k`` is the victim's loss at a latent wiped to zero (for MSE, the clean
    latent's mean square), so a victim whose latent is 1000x larger does not
    get 1000x the say, yet the losses still weigh in by how far each has come,
    unlike ``normalized``, which gives every gradient unit norm.

    Args:
        losses: (K,) the victims' losses.
        scales: K scalars, the victims' losses at a zero latent.
        weights: K victim weights.
        floor: added to each scale.
    """
    scaled = [w * losses[k] / (s + floor) for k, (s, w) in enumerate(zip(scales, weights))]
    return jnp.mean(jnp.stack(scaled))
