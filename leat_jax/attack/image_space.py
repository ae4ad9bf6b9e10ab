"""The image-space baseline ("Image Attack" of the LEAT paper): PGD on the outputs.

Instead of the victims' latents, the loss is the distortion of whole
pipelines' outputs over the attacker's *known* attributes:

    L(eta) = sum_k mean((out_k(params_k, x + eta) - out_k(params_k, x))**2)

with one ``out_k`` per (pipeline, known attribute) pair. The step is LEAT's:
same eps, step, iterations and start (``step.initial_perturbation``, keyed per image by
``pgd.image_key(seed, image id)``), the same update rule (``updates``: a sign step
by default; per-victim losses and weights have no victims here) and the same projection
(``step.project``: the eps-ball, then the [-1, 1] box). Everything is per
image (vmapped), so a batch gives exactly what each image gives alone.
``AttackConfig.compute_dtype`` applies as in LEAT (``step.compute_params``): with
``bfloat16`` the parameters (attributes included) and the pipelines' inputs
are cast, while the loss, the gradient and the perturbation stay float32.
``make_sharded_image_attack`` splits the batch over a 1-D device mesh
(``jax.shard_map``, parameters replicated), as ``parallel.sharded_attack``
does for LEAT.

This module knows nothing of deepfakes or files: callers give the output
functions, e.g. ``lambda p, x: deepfake.apply(p["net"], x, p["attribute"])``
with the attribute inside the params, so it is traced, not baked in.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from leat_jax.attack import updates
from leat_jax.attack.config import AttackConfig
from leat_jax.attack.pgd import image_key
from leat_jax.attack.step import compute_params, initial_perturbation, project

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


def output_loss(outputs: Sequence[OutputFn], params: Sequence, x, eta, clean, dtype=jnp.float32) -> jax.Array:
    """One image's summed output MSE at ``x + eta`` against the clean outputs (float32
    whatever ``dtype``, the one the pipelines compute in)."""
    xe = (x + eta)[None].astype(dtype)
    return sum(_output_mse(f(p, xe), c) for f, p, c in zip(outputs, params, clean))


def attack_image(outputs: Sequence[OutputFn], config: AttackConfig, params: Sequence, x, key) -> ImageAttackResult:
    """The baseline on one image ``x`` (H, W, C) in [-1, 1]."""
    dtype, params = compute_params(config, params)
    clean = [jax.lax.stop_gradient(f(p, x[None].astype(dtype))) for f, p in zip(outputs, params)]
    eta0 = initial_perturbation(config, key, x)
    loss = functools.partial(output_loss, outputs, params, x, clean=clean, dtype=dtype)

    rule = updates.transformation(config)

    def step(i, carry):
        eta, state, start = carry
        value, g = jax.value_and_grad(loss)(eta)
        increment, state = rule.update(g, state, eta)
        # The first step's loss is the start loss: no extra forward, and one copy of the
        # gradient program (compiling a whole pipeline's backward pass takes minutes).
        return project(x, eta + increment, config.eps), state, jnp.where(i == 0, value, start)

    if config.iterations:
        # The loss slot derives from x so that, under shard_map, it varies over devices as the loop's output does.
        eta, _, start = jax.lax.fori_loop(0, config.iterations, step,
                                          (eta0, rule.init(eta0), jnp.zeros_like(x[0, 0, 0])))
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


def make_sharded_image_attack(outputs: Sequence[OutputFn], config: AttackConfig, mesh: Mesh):
    """``attack(params, images, image_ids, seed) -> ImageAttackResult`` over a 1-D ``mesh``.

    Each device attacks its slice of the batch; ``params`` are replicated
    (put them there once with ``parallel.mesh.replicate``). A batch of any
    size is padded to a multiple of the device count with copies of its last
    image, dropped from the result, so results are those of one device (to
    float32 round-off). One compilation per batch shape.
    """
    if len(mesh.axis_names) != 1:
        raise ValueError(f"the image-space attack shards over a 1-D mesh, got axes {mesh.axis_names}")
    batch = P(mesh.axis_names[0])
    fn = jax.jit(jax.shard_map(make_image_attack(outputs, config), mesh=mesh, in_specs=(P(), batch, batch, P()),
                               out_specs=ImageAttackResult(batch, batch, batch)))
    sharding = NamedSharding(mesh, batch)
    n = mesh.devices.size

    def attack(params, images, image_ids, seed) -> ImageAttackResult:
        b = images.shape[0]
        pad = (-b) % n
        if pad:  # repeat the last image; its copies are dropped below
            images = jnp.concatenate([images, jnp.repeat(images[-1:], pad, axis=0)])
            image_ids = jnp.concatenate([image_ids, jnp.repeat(image_ids[-1:], pad, axis=0)])
        images = jax.device_put(jnp.asarray(images, jnp.float32), sharding)
        image_ids = jax.device_put(jnp.asarray(image_ids, jnp.uint32), sharding)
        out = fn(tuple(params), images, image_ids, jnp.uint32(seed))
        return jax.tree.map(lambda a: a[:b], out)

    return attack


__all__ = ["ImageAttackResult", "OutputFn", "attack_image", "make_image_attack", "make_sharded_image_attack",
           "output_loss"]
