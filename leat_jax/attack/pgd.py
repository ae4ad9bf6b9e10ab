"""The LEAT PGD loop as one pure function of (params, images, ids, seed).

Everything is written for one image and vmapped over the batch: no norm or
statistic ever spans two images. The random start of an image is keyed by
(seed, image id), and ``run`` calls one program of a fixed number of images
(the microbatch) step by step, so an image's result, bit for bit, depends on
neither the batch it came in nor its place there; only on the microbatch and
the platform.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from leat_jax import transforms
from leat_jax.attack import ensembles, updates
from leat_jax.attack.config import AttackConfig
from leat_jax.attack.step import compute_params, initial_perturbation, project
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
    _, params = compute_params(config, params)
    return tuple(v.prepare(p) for v, p in zip(victims, params))


def clean_latents(victims: Sequence[Victim], config: AttackConfig, params: Sequence, x: jax.Array):
    """E_k(x) for every victim, held constant through the attack."""
    dtype, params = compute_params(config, params)
    return [jax.lax.stop_gradient(_encode(v, p, x, dtype)) for v, p in zip(victims, params)]


# Folded into an image's key to separate the transform draws from its random start.
_EOT_STREAM = 0x454F54


def eot_key(key, iteration) -> jax.Array:
    """The transform draws of one image at one iteration: keyed by (image key, iteration), nothing else.

    A stream apart from the random start's (which uses the image key itself).
    """
    return jax.random.fold_in(jax.random.fold_in(key, _EOT_STREAM), iteration)


def transformed_views(config: AttackConfig, x, key) -> list:
    """The ``config.eot_samples`` draws of ``config.transforms`` applied to one image ``x`` (H, W, C).

    With ``config.eot_untransformed``, ``x`` itself comes first.
    """
    keys = jax.random.split(key, config.eot_samples)
    draws = [transforms.apply_chain(config.transforms, keys[s], x) for s in range(config.eot_samples)]
    return [x, *draws] if config.eot_untransformed else draws


def ensemble_direction(victims: Sequence[Victim], config: AttackConfig, params: Sequence, x, eta, clean, key=None):
    """One image's ascent direction at ``x + eta`` and the (K,) losses there.

    This is one attack iteration's work: a forward and an input gradient per
    victim, combined as ``config.ensemble`` says, each victim with its own
    loss and weight (``config.loss_of``, ``config.weight_of``). With
    ``config.transforms``, ``key`` (``eot_key``) draws them: each victim's loss
    is its mean over the draws of ``T(x + eta)``, so its gradient is the mean
    of the per-draw gradients, and the ensemble (normalisation included) is
    taken after that mean: averaging first keeps one direction per victim, the
    argument of the Normalized Gradient Ensemble, instead of weighting draws
    by their norm.
    """
    dtype, params = compute_params(config, params)
    weights = [config.weight_of(v.name) for v in victims]

    def loss(k, e):
        return config.loss_of(victims[k].name)(_encode(victims[k], params[k], x + e, dtype), clean[k])

    def view_loss(k, views):
        lose = config.loss_of(victims[k].name)
        return sum(lose(_encode(victims[k], params[k], v, dtype), clean[k]) for v in views) / len(views)

    if config.ensemble == "mean_loss":
        scales = [config.loss_of(v.name)(jax.tree.map(jnp.zeros_like, c), c) for v, c in zip(victims, clean)]

        def mean_loss(e):
            views = transformed_views(config, x + e, key) if config.transforms else None
            ls = jnp.stack([view_loss(k, views) if views else loss(k, e) for k in range(len(victims))])
            return ensembles.scaled_mean_loss(ls, scales, weights, config.norm_floor), ls

        (_, losses), g = jax.value_and_grad(mean_loss, has_aux=True)(eta)
        return g, losses
    if config.transforms:
        values, grads = _shared_view_gradients(config, x, eta, key, view_loss, len(victims))
    else:
        values, grads = zip(*(jax.value_and_grad(functools.partial(loss, k))(eta) for k in range(len(victims))))
    if config.ensemble in ("normalized", "normalized_l1"):
        order = 1 if config.ensemble == "normalized_l1" else 2
        return ensembles.normalized(grads, config.norm_floor, weights, order), jnp.stack(values)
    return ensembles.summed(ensembles.weighted(grads, weights)), jnp.stack(values)


def _shared_view_gradients(config: AttackConfig, x, eta, key, view_loss, n_victims: int):
    """Per victim, its loss on the views and its gradient with respect to ``eta``.

    The views are drawn and transformed once for all victims; each victim's
    gradient on them is carried back through the transforms by one batched
    pullback, so the transforms cost the same whatever the victim count.
    """
    views, pull = jax.vjp(lambda e: transformed_views(config, x + e, key), eta)
    values, view_grads = zip(*(jax.value_and_grad(functools.partial(view_loss, k))(views) for k in range(n_victims)))
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *view_grads)
    grads = jax.vmap(lambda g: pull(g)[0])(stacked)
    return values, [grads[k] for k in range(n_victims)]


def latent_distances(victims: Sequence[Victim], config: AttackConfig, params: Sequence, x, eta, clean):
    """(K,) latent distance of each victim at ``x + eta`` (its loss, ``config.loss_of``)."""
    dtype, params = compute_params(config, params)
    latents = [_encode(v, p, x + eta, dtype) for v, p in zip(victims, params)]
    return jnp.stack([config.loss_of(v.name)(z, c) for v, z, c in zip(victims, latents, clean)])


def attack_image(
    victims: Sequence[Victim],
    config: AttackConfig,
    params: Sequence,
    x: jax.Array,
    key: jax.Array,
):
    """LEAT on one image ``x`` (H, W, C) in [-1, 1]; see ``AttackResult``.

    With ``config.transforms`` (EOT) the start and end distances are read on
    the untransformed image; the history holds each step's mean over its draws.
    """
    params = prepared(victims, config, params)
    clean = clean_latents(victims, config, params, x)
    eta0 = initial_perturbation(config, key, x)
    rule = updates.transformation(config)

    def step(i, carry):
        # The update rule's state rides along with eta (per image, as this function is vmapped).
        eta, state = carry
        g, losses = ensemble_direction(
            victims, config, params, x, eta, clean, eot_key(key, i) if config.transforms else None)
        increment, state = rule.update(g, state, eta)
        return (project(x, eta + increment, config.eps), state), losses

    def start_distances(first_losses):
        # With transforms the step's losses were read on transformed images.
        if config.transforms:
            return latent_distances(victims, config, params, x, eta0, clean)
        return first_losses

    carry0 = (eta0, rule.init(eta0))
    if config.record_history:
        steps = jnp.arange(config.iterations)
        (eta, _), history = jax.lax.scan(lambda c, i: step(i, c), carry0, steps)
        dist_start = start_distances(history[0]) if config.iterations else latent_distances(
            victims, config, params, x, eta0, clean)
    elif config.iterations:
        # The first step's losses are the start distances: no extra forward.
        carry, dist_start = step(0, carry0)
        dist_start = start_distances(dist_start)
        eta, _ = jax.lax.fori_loop(1, config.iterations, lambda i, c: step(i, c)[0], carry)
        history = None
    else:
        eta, history = eta0, None
        dist_start = latent_distances(victims, config, params, x, eta0, clean)
    return x + eta, dist_start, latent_distances(victims, config, params, x, eta, clean), history


# Images per compiled step when none is asked for: XLA's CPU code gains
# nothing from batching these networks; accelerators need a batch to fill.
DEFAULT_MICROBATCH = {"cpu": 1}
ACCELERATOR_MICROBATCH = 8


def default_microbatch(platform: str | None = None) -> int:
    """Images per compiled step on ``platform`` (None: JAX's default backend): 1 on CPU, 8 elsewhere."""
    return DEFAULT_MICROBATCH.get(platform or jax.default_backend(), ACCELERATOR_MICROBATCH)


def make_attack(victims: Sequence[Victim], config: AttackConfig):
    """``attack(params, images, image_ids, seed) -> AttackResult``, pure (jit it, or shard it).

    ``params`` is a tuple with one parameter tree per victim; ``images`` is
    (B, H, W, C) float32 in [-1, 1]; ``image_ids`` is (B,) uint32; ``seed`` an
    integer. Each B is its own program, and XLA's choices for it can move an
    image's result in the last bits, which sign steps make whole steps:
    ``run`` and ``parallel.sharded_attack`` therefore call one B only.
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


def in_steps(fn, step: int, images, image_ids) -> AttackResult:
    """``fn`` over the batch ``step`` images at a time, the last step padded; the B results in order.

    Every call of ``fn`` sees the same shapes, so one compiled program serves
    any B and an image's result does not depend on B (nor on its place).
    Args:
      fn: ``(images, image_ids) -> AttackResult`` for ``step`` images.
      step: images per call.
      images, image_ids: (B, H, W, C) and (B,).
    Returns:
      The ``AttackResult`` of the B images (padding dropped).
    """
    xp = jnp if isinstance(images, jax.Array) else np  # host arrays are cut on the host
    b = images.shape[0]
    pad = (-b) % step
    if pad:  # repeat the last image; its copies are dropped below
        images = xp.concatenate([images, xp.repeat(images[-1:], pad, axis=0)])
        image_ids = xp.concatenate([image_ids, xp.repeat(image_ids[-1:], pad, axis=0)])
    parts = [fn(images[i:i + step], image_ids[i:i + step]) for i in range(0, b + pad, step)]
    if len(parts) == 1:
        return jax.tree.map(lambda a: a[:b], parts[0])
    return jax.tree.map(lambda *a: jnp.concatenate(a)[:b], *parts)


@functools.cache
def _jitted(victims: tuple[Victim, ...], config: AttackConfig):
    return jax.jit(make_attack(victims, config))


def run(
    victims: Sequence[Victim], config: AttackConfig, params, images, image_ids, seed, microbatch: int | None = None
) -> AttackResult:
    """Jitted single-device attack, ``microbatch`` images per call (``in_steps``).

    One compilation per victims, config, microbatch and image size. An
    image's result is the same, bit for bit, in any batch, for the same
    microbatch and platform. ``microbatch`` None: ``default_microbatch()``.
    """
    microbatch = default_microbatch() if microbatch is None else microbatch
    if type(microbatch) is not int or microbatch < 1:
        raise ValueError(f"microbatch must be a positive integer, got {microbatch!r}")
    fn = _jitted(tuple(victims), config)
    params = tuple(params)
    return in_steps(lambda x, ids: fn(params, x, ids, seed), microbatch, jnp.asarray(images),
                    jnp.asarray(image_ids, jnp.uint32))
