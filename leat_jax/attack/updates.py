"""Update rules: what a PGD iteration adds to the perturbation, as optax transformations.

The loop (``pgd.attack_image``) feeds each image's ensemble direction ``g``
to a ``optax.GradientTransformation`` and adds the update it returns to the
perturbation (ascent: updates are not negated), then projects. The rules
named in ``AttackConfig.update`` are built here from ``step``, ``momentum``
and ``step_schedule``; a transformation given in their place is used as it
is. State lives per image (the loop is vmapped), so batches stay independent.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from leat_jax.attack.config import AttackConfig


def step_size(config: AttackConfig):
    """``config.step`` as an optax learning rate: a float, or a schedule decaying to 0 over the iterations."""
    if config.step_schedule == "cosine":
        return optax.cosine_decay_schedule(config.step, max(config.iterations, 1))
    if config.step_schedule == "linear":
        return optax.linear_schedule(config.step, 0.0, max(config.iterations, 1))
    return config.step


def ascent(rate) -> optax.GradientTransformation:
    """Multiply by the step size (a float or a schedule), keeping the sign: PGD climbs the loss."""
    return optax.scale_by_learning_rate(rate, flip_sign=False)


def scale_by_l1_momentum(decay: float, floor: float = 1e-12) -> optax.GradientTransformation:
    """MI-FGSM's accumulator (Dong et al. 2018): ``m <- decay * m + g / (||g||_1 + floor)``, returned as the update.

    Args:
        decay: mu, the weight of past directions.
        floor: added to the L1 norm, so a zero direction stays zero.
    """

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(updates, state, params=None):
        del params
        l1 = sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(updates)) + floor
        state = jax.tree.map(lambda m, g: decay * m + g / l1, state, updates)
        return state, state

    return optax.GradientTransformation(init, update)


def sign(rate) -> optax.GradientTransformation:
    """PGD's sign step ``rate * sign(g)`` (``optax.sign_sgd`` without its descent flip)."""
    return optax.chain(optax.scale_by_sign(), ascent(rate))


def mifgsm(rate, decay: float = 1.0) -> optax.GradientTransformation:
    """Momentum sign steps: L1-normalised directions accumulated with ``decay``, then ``rate * sign``."""
    return optax.chain(scale_by_l1_momentum(decay), optax.scale_by_sign(), ascent(rate))


def adam(rate) -> optax.GradientTransformation:
    """Adam on the perturbation (the projection follows in the loop)."""
    return optax.chain(optax.scale_by_adam(), ascent(rate))


def transformation(config: AttackConfig) -> optax.GradientTransformation:
    """The update rule ``config.update`` names, or the transformation it holds.

    Returns:
        An ``optax.GradientTransformation`` mapping a direction to the perturbation's increment.
    """
    if not isinstance(config.update, str):
        return config.update
    rate = step_size(config)
    if config.update == "mifgsm":
        return mifgsm(rate, config.momentum)
    if config.update == "adam":
        return adam(rate)
    return sign(rate)
