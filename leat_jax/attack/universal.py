"""A learned start: one perturbation ``u`` for a whole distribution of images (or a network's weights
giving each image its own, ``Form``), learned by ascent.

``u`` (h, w, 3) is resized to each image and projected (``step.resized``,
``step.project``); each image contributes the attack's own ascent direction
there (``pgd.ensemble_direction``: the same victims, losses, ensemble and EOT
draws, keyed by ``pgd.image_key(seed, image id)`` and the step), carried back
to ``u`` through the resize. The minibatch's mean direction feeds an optax
rule (sign steps or Adam, ``updates``), then ``u`` goes back onto the eps
ball. ``learning_step`` is pure; ``make_learning_step`` jits it, optionally
with the minibatch split over a 1-D device mesh (``jax.shard_map``). The
clean latents E_k(x) do not depend on ``u``: ``make_clean_latents`` computes
them apart, so a caller can keep them and pass them to a ``cached`` step
(the same programs' numbers, without one forward per image and step).
What is learned is a ``Form``: ``universal`` (``u`` resized to each image)
or ``generator`` (a network's weights, ``models.start_generator``: each
image's perturbation is eps times its output), one learning step for both.
Loading images, minibatches, checkpoints and plots are the pipeline's
(``pipeline.learn_start``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from leat_jax.attack import updates
from leat_jax.attack.config import SCHEDULES, AttackConfig
from leat_jax.attack.pgd import clean_latents, ensemble_direction, eot_key, image_key
from leat_jax.attack.step import ZERO_START_SCALE, project, resized
from leat_jax.victims import Victim

RULES = ("sign", "adam")


@dataclasses.dataclass(frozen=True)
class LearnConfig:
    """How ``u`` is learned (the attack's settings come from an ``AttackConfig``).

    Attributes:
      steps: optimiser steps.
      batch: images per step (a minibatch drawn by (seed, step) alone).
      rate: step size: of each sign step, or Adam's learning rate.
      rule: ``sign`` (signed mean direction) or ``adam``.
      schedule: ``rate`` over the steps: ``cosine`` (default; fine steps at the end) ``linear`` or ``constant``.
      size: side of ``u`` (square, the reference size; images are resized to it for learning).
      seed: minibatches, EOT draws and the image keys.
    """

    steps: int = 300
    batch: int = 8
    rate: float = 0.004
    rule: str = "sign"
    schedule: str = "cosine"
    size: int = 256
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch", "size"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not self.rate > 0:
            raise ValueError(f"rate must be a positive number, got {self.rate!r}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if type(self.seed) is not int or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in 0..2**32-1, got {self.seed!r}")


class LearnState(NamedTuple):
    """What a learning run carries from step to step (and checkpoints): ``u`` (the learned parameters: the
    universal perturbation, or the generator's weights) and the rule's state."""

    u: jax.Array
    opt_state: optax.OptState


class Form(NamedTuple):
    """What is learned, as two pure functions of its parameters ``theta``.

    Attributes:
      perturbation: ``(theta, x) -> eta``, one image's perturbation, projected (differentiated in ``theta``).
      advance: ``(theta, increment) -> theta`` after a step of the rule (kept within its bounds).
    """

    perturbation: Callable
    advance: Callable


def universal_perturbation(eps: float, u, x):
    """``u`` resized to ``x`` and projected."""
    return project(x, resized(u, x.shape), eps)


def ball_step(eps: float, u, increment):
    """``u + increment`` back onto the eps ball."""
    return optax.projections.projection_linf_ball(u + increment, eps)


def universal(eps: float) -> Form:
    """One perturbation ``u`` for every image."""
    return Form(functools.partial(universal_perturbation, eps), functools.partial(ball_step, eps))


def generated_perturbation(apply: Callable, eps: float, size: int, weights, x):
    """``eps * G(x)`` (``x`` seen at ``size``, the output brought back to ``x``'s shape), projected."""
    seen = resized(x, (size, size, x.shape[-1]))
    return project(x, resized(eps * apply(weights, seen[None])[0], x.shape), eps)


def generator(apply: Callable, eps: float, size: int) -> Form:
    """A network ``apply(weights, images)`` with outputs in [-1, 1] (``models.start_generator``), its weights
    learned: each image's start is its own. ``size``: the side the network sees."""
    return Form(functools.partial(generated_perturbation, apply, eps, size), optax.apply_updates)


def rule_of(learn: LearnConfig) -> optax.GradientTransformation:
    """The ascent rule of ``learn`` (``updates``: its rate scheduled over ``learn.steps``)."""
    as_attack = AttackConfig(step=float(learn.rate), iterations=learn.steps, step_schedule=learn.schedule)
    rate = updates.step_size(as_attack)
    return updates.adam(rate) if learn.rule == "adam" else updates.sign(rate)


def init_state(config: AttackConfig, learn: LearnConfig) -> LearnState:
    """``u`` at the attack's zero start: keyed noise of ``step.ZERO_START_SCALE * eps`` (at exactly zero every
    latent residual, so every direction, is zero), and the rule's fresh state.
    """
    radius = config.eps * ZERO_START_SCALE
    u = jax.random.uniform(jax.random.key(learn.seed), (learn.size, learn.size, 3), jnp.float32, -radius, radius)
    return LearnState(u, rule_of(learn).init(u))


def image_direction(victims: Sequence[Victim], config: AttackConfig, params, u, x, image_id, seed, step,
                    clean=None, form: Form | None = None):
    """One image's ascent direction carried back to ``u``, and its (K,) latent losses at ``x + resize(u)``.

    Args:
      clean: ``clean_latents`` of ``x``, if known; None: computed here.
      form: what ``u`` is (``Form``); None: ``universal(config.eps)``.
    Returns:
        ``(direction shaped like u, losses (K,))``.
    """
    key = image_key(seed, image_id)
    clean = clean_latents(victims, config, params, x) if clean is None else clean
    form = form or universal(config.eps)
    eta, pull = jax.vjp(lambda v: form.perturbation(v, x), u)
    g, losses = ensemble_direction(victims, config, params, x, eta, clean,
                                   eot_key(key, step) if config.transforms else None)
    return pull(g)[0], losses


def minibatch_sums(victims, config: AttackConfig, params, u, images, image_ids, weights, seed, step, clean=None,
                   form: Form | None = None):
    """Weighted sums over a minibatch: of the directions, of the (K,) losses, and of the weights.

    ``weights`` (B,) are 1 for images and 0 for padding; sums (not means) so
    that shards add up (``jax.lax.psum``) before the division. ``clean``: the
    images' ``minibatch_clean`` latents, if known; None: computed here.
    ``form``: what ``u`` is; None: universal.
    """
    one = functools.partial(image_direction, victims, config, params, u, form=form)
    if clean is None:
        dirs, losses = jax.vmap(one, in_axes=(0, 0, None, None))(images, image_ids, seed, step)
    else:
        dirs, losses = jax.vmap(one, in_axes=(0, 0, None, None, 0))(images, image_ids, seed, step, clean)
    summed = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), dirs)
    return summed, weights @ losses, jnp.sum(weights)


def learning_step(victims, config: AttackConfig, rule, params, state: LearnState, images, image_ids, weights, seed,
                  step, sums=None, clean=None, form: Form | None = None):
    """One step: the minibatch's mean direction through ``rule``, then ``form.advance`` (universal: ``u``
    back onto the eps ball).

    Args:
      sums: ``minibatch_sums`` or a function of the same arguments (e.g. sharded); None: ``minibatch_sums``.
      clean: the images' ``minibatch_clean`` latents, handed to ``sums``; None: computed there.
      form: what ``u`` is; None: ``universal(config.eps)``.
    Returns:
      ``(next LearnState, (K,) mean latent losses of the minibatch at the current u)``.
    """
    form = form or universal(config.eps)
    sums = sums or functools.partial(minibatch_sums, victims, config, form=form)
    args = (params, state.u, images, image_ids, weights, seed, step)
    g, loss, n = sums(*args) if clean is None else sums(*args, clean)
    increment, opt_state = rule.update(jax.tree.map(lambda d: d / n, g), state.opt_state, state.u)
    return LearnState(form.advance(state.u, increment), opt_state), loss / n


def minibatch_clean(victims, config: AttackConfig, params, images) -> list:
    """The clean latents of a minibatch, per victim with a leading (B,) axis, image by image as
    ``image_direction`` computes them."""
    return jax.vmap(functools.partial(clean_latents, victims, config, params))(images)


def make_clean_latents(victims: Sequence[Victim], config: AttackConfig, mesh: Mesh | None = None):
    """``clean(params, images) -> minibatch_clean latents``, jitted; split over ``mesh`` as the step is."""
    fn = functools.partial(minibatch_clean, tuple(victims), config)
    if mesh is not None:
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(mesh.axis_names[0])), out_specs=P(mesh.axis_names[0]))
    return jax.jit(fn)


def make_learning_step(victims: Sequence[Victim], config: AttackConfig, learn: LearnConfig, mesh: Mesh | None = None,
                       cached: bool = False, form: Form | None = None):
    """``step(params, state, images, image_ids, weights, step) -> (state, losses)``, jitted.

    With a 1-D ``mesh`` the minibatch (its size a multiple of the device
    count) is split over the devices and the sums added up there; ``params``
    and ``u`` are replicated. ``cached``: the step takes the images' clean
    latents last (``make_clean_latents``) instead of computing them.
    ``form``: what is learned; None: ``universal(config.eps)``.
    """
    victims = tuple(victims)
    config.check_victims([v.name for v in victims])
    form = form or universal(config.eps)
    sums = plain = functools.partial(minibatch_sums, victims, config, form=form)
    if mesh is not None:
        batch = P(mesh.axis_names[0])

        def local(params, u, images, image_ids, weights, seed, step, *clean):
            # u varies over devices from here on: else its cotangent would be summed over the devices
            # inside each image's pullback (the transpose of the implicit cast), before the sum below.
            u = jax.tree.map(lambda leaf: jax.lax.pcast(leaf, mesh.axis_names[0], to="varying"), u)
            return jax.lax.psum(plain(params, u, images, image_ids, weights, seed, step, *clean), mesh.axis_names[0])

        specs = (P(), P(), batch, batch, batch, P(), P()) + ((batch,) if cached else ())
        sums = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(P(), P(), P()))
    rule = rule_of(learn)

    def step(params, state, images, image_ids, weights, i, clean=None):
        return learning_step(victims, config, rule, params, state, images, image_ids, weights,
                             jnp.uint32(learn.seed), i, sums, clean, form)

    return jax.jit(step)
