"""The image-space baseline ("Image Attack" of the LEAT paper): PGD on the outputs.

Instead of the victims' latents, the loss is the distortion of whole
pipelines' outputs over the attacker's *known* attributes:

    L(eta) = sum_k mean((out_k(params_k, x + eta) - out_k(params_k, x))**2)

with one ``out_k`` per (pipeline, known attribute) pair. The step is LEAT's:
same eps, step, iterations and random start (keyed per image by
``pgd.image_key(seed, image id)``), a sign step and the same projection
(``pgd._project``: the eps-ball, then the [-1, 1] box). Everything is per
image (vmapped), so a batch gives exactly what each image gives alone.
Computation is float32 (``AttackConfig.compute_dtype`` is not applied here).

This module knows nothing of deepfakes or files: callers give the output
functions, e.g. ``lambda p, x: deepfake.apply(p["net"], x, p["attribute"])``
with the attribute inside the params, so it is traced, not baked in.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from leat_jax.attack.config import AttackConfig
from leat_jax.attack.pgd import _project, image_key

OutputFn = Callable[[Any, jax.Array], Any]  # (params_k, images [1, H, W, C]) -> output pytree


class ImageAttackResult(NamedTuple):
    """protected: x + eta in [-1, 1]; loss_start / loss_end: (B,) summed output MSE at the
    random start and after the last step."""

    protected: jax.Array
    loss_start: jax.Array
    loss_end: jax.Array


def _output_mse(a, b) -> jax.Array:
    sq = jax.tree.map(lambda u, v: jnp.sum(jnp.square(u.astype(jnp.float32) - v.astype(jnp.float32))), a, b)
    return sum(jax.tree.leaves(sq)) / sum(v.size for v in jax.tree.leaves(b))


def output_loss(outputs: Sequence[OutputFn], params: Sequence, x, eta, clean) -> jax.Array:
    """One image's summed output MSE at ``x + eta`` against the clean outputs."""
    xe = (x + eta)[None]
    return sum(_output_mse(f(p, xe), c) for f, p, c in zip(outputs, params, clean))


def attack_image(outputs: Sequence[OutputFn], config: AttackConfig, params: Sequence, x, key) -> ImageAttackResult:
    """The baseline on one image ``x`` (H, W, C) in [-1, 1]."""
    clean = [jax.lax.stop_gradient(f(p, x[None])) for f, p in zip(outputs, params)]
    if config.random_start:
        eta0 = jax.random.uniform(key, x.shape, jnp.float32, -config.eps, config.eps)
    else:
        eta0 = jnp.zeros_like(x)
    eta0 = _project(x, eta0, config.eps)
    loss = functools.partial(output_loss, outputs, params, x, clean=clean)

    def step(eta):
        value, g = jax.value_and_grad(loss)(eta)
        return _project(x, eta + config.step * jnp.sign(g), config.eps), value

    if config.iterations:
        eta, start = step(eta0)
        eta = jax.lax.fori_loop(1, config.iterations, lambda _, e: step(e)[0], eta)
    else:
        eta, start = eta0, loss(eta0)
    return ImageAttackResult(x + eta, start, loss(eta))


def make_image_attack(outputs: Sequence[OutputFn], config: AttackConfig):
    """``attack(params, images, image_ids, seed) -> ImageAttackResult``, pure (jit it).

    ``params``: one pytree per output function; ``images``: (B, H, W, C) in
    [-1, 1]; ``image_ids``: (B,) uint32, as for LEAT.
    """
    outputs = tuple(outputs)
    if not outputs:
        raise ValueError("the image-space attack needs at least one output function")

    def attack(params, images, image_ids, seed):
        keys = jax.vmap(image_key, in_axes=(None, 0))(seed, image_ids)
        one = functools.partial(attack_image, outputs, config)
        return jax.vmap(one, in_axes=(None, 0, 0))(tuple(params), images, keys)

    return attack


__all__ = ["ImageAttackResult", "OutputFn", "attack_image", "make_image_attack", "output_loss"]
