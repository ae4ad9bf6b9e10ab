"""The LEAT PGD loop as one pure function of (params, images, ids, seed).

Everything is written for one image and vmapped over the batch, so a batch
gives exactly what each image gives alone: no norm or statistic ever spans
two images. The random start of an image is keyed by (seed, image id), so a
result does not depend on batch composition, device count or resumption.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp

from leat_jax.attack import ensembles, updates
from leat_jax.attack.config import AttackConfig
from leat_jax.attack.step import compute_params as _compute
from leat_jax.attack.step import initial_perturbation
from leat_jax.attack.step import project as _project
from leat_jax.victims import Victim


class AttackResult(NamedTuple):
    """Per-image outputs of an attack (leading axis: the batch).

    protected: x + eta, in [-1, 1], ``|eta|_inf <= eps``.
    dist_start: (B, K) latent distance of each victim at the random start.
    dist_end: (B, K) latent distance after the last step.
    history: (B, T, K) distance before each step, or None.
    """

    protected: jax.Array
    dist_start: jax.Array
    dist_end: jax.Array
    history: jax.Array | None


def image_key(seed, image_id) -> jax.Array:
    """The PRNG key of one image: (seed, stable image id), nothing else."""
    return jax.random.fold_in(jax.random.key(seed), image_id)


def _encode(victim: Victim, params, image, dtype):
    """One image's latent, float32 whatever the compute dtype."""
    latent = victim.encode(params, image[None].astype(dtype))
    return jax.tree.map(lambda a: a.astype(jnp.float32), latent)


def prepared(victims: Sequence[Victim], config: AttackConfig, params: Sequence) -> tuple:
    """Weights in the compute dtype, with each victim's weight-only work done (``Victim.prepare``).

    XLA would otherwise redo that work in every iteration; the attack does it
    once per call, and a run calls this once so every batch's call gets
    prepared parameters, which pass through untouched (e4e: about 1 GB of
    kernel copies per call saved, seconds on a CPU). Op by op, not jitted:
    the weights stay the caller's arrays (a jitted function would return
    copies of all of them) and nothing is compiled. Costs the extra kernels'
    memory (as large as the convolution weights) for the run.

    Returns:
        One parameter tree per victim, prepared, as a tuple.
    """
    _, params = _compute(config, params)
    return tuple(v.prepare(p) for v, p in zip(victims, params))


def clean_latents(victims: Sequence[Victim], config: AttackConfig, params: Sequence, x: jax.Array):
    """E_k(x) for every victim, held constant through the attack."""
    dtype, params = _compute(config, params)
    return [jax.lax.stop_gradient(_encode(v, p, x, dtype)) for v, p in zip(victims, params)]


def ensemble_direction(victims: Sequence[Victim], config: AttackConfig, params: Sequence, x, eta, clean):
    """One image's ascent direction at ``x + eta`` and the (K,) losses there.

    This is one attack iteration's work: a forward and an input gradient per
    victim, combined as ``config.ensemble`` says, each victim with its own
    loss and weight (``config.loss_of``, ``config.weight_of``).
    """
    dtype, params = _compute(config, params)
    weights = [config.weight_of(v.name) for v in victims]

    def loss(k, e):
        return config.loss_of(victims[k].name)(_encode(victims[k], params[k], x + e, dtype), clean[k])

    if config.ensemble == "mean_loss":
        scales = [config.loss_of(v.name)(jax.tree.map(jnp.zeros_like, c), c) for v, c in zip(victims, clean)]

        def mean_loss(e):
            ls = jnp.stack([loss(k, e) for k in range(len(victims))])
            return ensembles.scaled_mean_loss(ls, scales, weights, config.norm_floor), ls

        (_, losses), g = jax.value_and_grad(mean_loss, has_aux=True)(eta)
        return g, losses
    values, grads = zip(*(jax.value_and_grad(functools.partial(loss, k))(eta) for k in range(len(victims))))
    grads = ensembles.weighted(grads, weights)
    if config.ensemble == "normalized":
        return ensembles.normalized(grads, config.norm_floor), jnp.stack(values)
    return ensembles.summed(grads), jnp.stack(values)


def latent_distances(victims: Sequence[Victim], config: AttackConfig, params: Sequence, x, eta, clean):
    """(K,) latent distance of each victim at ``x + eta`` (its loss, ``config.loss_of``)."""
    dtype, params = _compute(config, params)
    latents = [_encode(v, p, x + eta, dtype) for v, p in zip(victims, params)]
    return jnp.stack([config.loss_of(v.name)(z, c) for v, z, c in zip(victims, latents, clean)])


def attack_image(
    victims: Sequence[Victim],
    config: AttackConfig,
    params: Sequence,
    x: jax.Array,
    key: jax.Array,
):
    """LEAT on one image ``x`` (H, W, C) in [-1, 1]; see ``AttackResult``."""
    params = prepared(victims, config, params)
    clean = clean_latents(victims, config, params, x)
    eta0 = initial_perturbation(config, key, x)
    rule = updates.transformation(config)

    def step(carry):
        # The update rule's state rides along with eta (per image, as this function is vmapped).
        eta, state = carry
        g, losses = ensemble_direction(victims, config, params, x, eta, clean)
        increment, state = rule.update(g, state, eta)
        return (_project(x, eta + increment, config.eps), state), losses

    carry0 = (eta0, rule.init(eta0))
    if config.record_history:
        (eta, _), history = jax.lax.scan(lambda c, _: step(c), carry0, None, length=config.iterations)
        dist_start = history[0] if config.iterations else latent_distances(victims, config, params, x, eta0, clean)
    elif config.iterations:
        # The first step's losses are the start distances: no extra forward.
        carry, dist_start = step(carry0)
        eta, _ = jax.lax.fori_loop(1, config.iterations, lambda _, c: step(c)[0], carry)
        history = None
    else:
        eta, history = eta0, None
        dist_start = latent_distances(victims, config, params, x, eta0, clean)
    return x + eta, dist_start, latent_distances(victims, config, params, x, eta, clean), history


def make_attack(victims: Sequence[Victim], config: AttackConfig):
    """``attack(params, images, image_ids, seed) -> AttackResult``, pure and jitted.

    ``params`` is a tuple with one parameter tree per victim; ``images`` is
    (B, H, W, C) float32 in [-1, 1]; ``image_ids`` is (B,) uint32; ``seed`` an
    integer. One compilation per (batch shape, configuration).
    """
    victims = tuple(victims)
    config.check_victims([v.name for v in victims])

    def attack(params, images, image_ids, seed):
        # Shape mistakes caught at trace time, with the names of the arguments.
        chex.assert_rank(images, 4)
        chex.assert_shape(image_ids, (images.shape[0],))
        chex.assert_equal(len(params), len(victims))
        keys = jax.vmap(image_key, in_axes=(None, 0))(seed, image_ids)
        one = functools.partial(attack_image, victims, config)
        protected, d0, d1, hist = jax.vmap(one, in_axes=(None, 0, 0))(tuple(params), images, keys)
        return AttackResult(protected, d0, d1, hist)

    return attack


@functools.cache
def _jitted(victims: tuple[Victim, ...], config: AttackConfig):
    return jax.jit(make_attack(victims, config))


def run(victims: Sequence[Victim], config: AttackConfig, params, images, image_ids, seed) -> AttackResult:
    """Jitted single-device attack (compiled once per victims, config and shape)."""
    return _jitted(tuple(victims), config)(tuple(params), images, image_ids, seed)
