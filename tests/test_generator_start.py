"""The learning step of ``attack.universal`` with a generator as what is learned (``Form`` ``generator``,
``models.start_generator``): toy victims, tiny synthetic images."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from leat_jax.attack import AttackConfig, prepared
from leat_jax.attack.pgd import clean_latents, latent_distances
from leat_jax.attack.universal import LearnConfig, LearnState, generator, make_learning_step, rule_of
from leat_jax.models.base import Functional
from leat_jax.models.start_generator import GeneratorArch, StartGenerator
from leat_jax.pipeline import learn_start
from tests.test_universal_start import PARAMS, SIZE, VICTIMS, faces

ARCH = GeneratorArch(width=8, blocks=1, size=SIZE)


def learned_generator(config: AttackConfig, steps: int = 12):
    """(network, weights, (steps, K) minibatch losses) learned on 8 images with the pure step."""
    net = Functional(lambda rngs: StartGenerator(ARCH, rngs))
    learn = LearnConfig(steps=steps, batch=4, size=SIZE, rate=0.003, rule="adam")
    weights = net.init(0)
    state = LearnState(weights, rule_of(learn).init(weights))
    step = make_learning_step(VICTIMS, config, learn, form=generator(net.apply, config.eps, SIZE))
    params, data, history = prepared(VICTIMS, config, PARAMS), faces(8), []
    for i in range(steps):
        idx, w = learn_start.minibatch(8, learn.batch, learn.seed, i)
        state, losses = step(params, state, jnp.asarray(data[idx]), jnp.asarray(idx, jnp.uint32), jnp.asarray(w), i)
        history.append(np.asarray(losses))
    return net, state.u, np.stack(history)


def test_generator_learns_image_conditioned_starts_within_eps_that_beat_sign_noise():
    config = AttackConfig()
    net, weights, history = learned_generator(config)
    assert np.all(history[-3:].mean(0) > 1.5 * history[0])  # each victim's minibatch distortion rose
    form = generator(net.apply, config.eps, SIZE)
    held = jnp.asarray(faces(4, seed=5))
    etas = np.asarray(jax.vmap(lambda x: form.perturbation(weights, x))(held))
    assert np.abs(etas).max() <= config.eps + 1e-7
    assert np.abs(etas[0] - etas[1]).max() > 0  # one start per image, not one for all
    params = prepared(VICTIMS, config, PARAMS)
    signs = np.sign(np.random.default_rng(3).standard_normal(etas.shape)) * config.eps  # the strongest noise

    def distances(x, eta):
        return latent_distances(VICTIMS, config, params, x, eta, clean_latents(VICTIMS, config, params, x))

    ours, noise = (np.asarray(jax.vmap(distances)(held, jnp.asarray(e))) for e in (etas, signs))
    print(f"\nT=0 on held-out images, generator / sign noise: {(ours / noise).mean(0).round(1)}")
    assert np.all(ours > 2 * noise)
    # Another image size: the network sees the image at its own size, the start is resized back.
    big = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (40, 36, 3)), jnp.float32)
    assert form.perturbation(weights, big).shape == big.shape
    assert float(jnp.abs(form.perturbation(weights, big)).max()) <= config.eps + 1e-7
