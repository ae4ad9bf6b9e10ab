"""Combining per-victim input gradients into one ascent direction (per image).

The arms of the paper's ensemble ablation (``AttackConfig.ensemble``):
``normalized`` sums unit-norm gradients (L2, the paper's; ``normalized_l1``
divides by the L1 norm instead), ``summed`` raw ones, and
``scaled_mean_loss`` averages losses each divided by its victim's clean-latent
scale before one gradient is taken. Victim weights multiply each victim's
share; a weight of exactly 1 leaves its gradient untouched (bit for bit).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def normalized(grads: Sequence[jax.Array], floor: float, weights: Sequence[float] | None = None,
               order: int = 2) -> jax.Array:
    """LEAT's Normalized Gradient Ensemble: sum of w_k * g_k / (||g_k||_p + floor).

    Each victim gets an equal say whatever the scale of its latent, which a
    plain sum would hand to the network with the largest gradients; a weight
    scales that say after the normalisation (before it, the norm would cancel
    it). Weights of 1 are skipped, so the default stays bit-identical.

    ``order=1`` is the norm dual to the sign step's L-infinity ball: a sign
    step s gains victim k ``g_k . s`` to first order, at most ``||g_k||_1``, so
    sign(sum g_k / ||g_k||_1) maximises the sum of the victims' fractions of
    their own best step, where L2 favours victims whose gradient is dense.

    Args:
        grads: per victim, its input gradient.
        floor: added to each norm, so a vanishing gradient does not divide by zero.
        weights: per victim, its weight (None: all 1).
        order: 2 (the paper's) or 1.

    Returns:
        The ascent direction, shaped like each gradient.
    """
    def norm(g):
        return jnp.sum(jnp.abs(g)) if order == 1 else jnp.sqrt(jnp.sum(jnp.square(g)))

    units = [g / (norm(g) + floor) for g in grads]
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
