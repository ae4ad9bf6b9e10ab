"""The research API of the attack: update rules (optax), per-victim losses and weights, the zero start, the
ensemble arms. Toy victims, tiny images."""
from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from leat_jax.attack import AttackConfig, clean_latents, ensemble_direction, image_key, prepared, run, updates
from leat_jax.attack.losses import cosine_distance
from leat_jax.attack.step import project
from tests.toys import toy_victim

WEAK = toy_victim("weak", 1.0)
STRONG = toy_victim("strong", 1000.0**0.5)
PARAMS = (WEAK.init_params(1), STRONG.init_params(2))
VICTIMS = (WEAK, STRONG)


def images(n=2, size=24, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-0.9, 0.9, (n, size, size, 3)), jnp.float32)


def ids(n):
    return jnp.arange(n, dtype=jnp.uint32)


def reference_pgd(victims, config, params, images, image_ids, seed):
    """The loop as it was before update rules existed: uniform start, ``eta + step * sign(g)``, project."""

    def one(x, key):
        ps = prepared(victims, config, params)
        clean = clean_latents(victims, config, ps, x)
        eta = project(x, jax.random.uniform(key, x.shape, jnp.float32, -config.eps, config.eps), config.eps)

        def body(_, e):
            g, _ = ensemble_direction(victims, config, ps, x, e, clean)
            return project(x, e + config.step * jnp.sign(g), config.eps)

        return x + jax.lax.fori_loop(0, config.iterations, body, eta)

    keys = jax.vmap(image_key, in_axes=(None, 0))(seed, image_ids)
    return jax.jit(jax.vmap(one))(images, keys)


def test_default_sign_rule_is_bit_identical_to_the_plain_sign_loop():
    config = AttackConfig(iterations=3)
    expected = reference_pgd(VICTIMS, config, PARAMS, images(), ids(2), 2)
    got = run(VICTIMS, config, PARAMS, images(), ids(2), 2).protected
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def distances(victim, params, x, protected, loss):
    """Each image's loss between the victim's latents of ``x`` and ``protected``, by hand."""
    return np.asarray([float(loss(victim.encode(params, p[None]), victim.encode(params, c[None])))
                       for c, p in zip(x, protected)])


@pytest.mark.parametrize("update", ["mifgsm", "adam"])
def test_named_rules_raise_the_distance_and_stay_in_the_bound_after_rounding(update):
    x = jnp.round((images() + 1) * 127.5) / 127.5 - 1  # on the 8-bit grid, as a decoded file is
    config = AttackConfig(iterations=6, update=update, eps=0.05, step=0.01)
    out = run(VICTIMS, config, PARAMS, x, ids(2), 1)
    assert np.all(np.asarray(out.dist_end) > 3 * np.asarray(out.dist_start))
    written = np.round((np.asarray(out.protected) + 1) * 127.5) / 127.5 - 1
    assert np.abs(written - np.asarray(x)).max() <= config.eps + 1e-6
    assert np.abs(np.asarray(out.protected) - np.asarray(x)).max() > 0.5 * config.eps
    if update == "adam":  # the rule's state is per image: the second image alone gets what it got in the batch
        alone = run(VICTIMS, config, PARAMS, x[1:], jnp.asarray([1], jnp.uint32), 1)
        np.testing.assert_allclose(alone.protected[0], out.protected[1], atol=1e-6)


def test_schedules_scale_each_sign_step():
    g = jnp.asarray([0.3, -2.0, 0.0])
    for schedule, rates in [("constant", [0.01] * 4), ("linear", [0.01, 0.0075, 0.005, 0.0025]),
                            ("cosine", [0.01 * (1 + np.cos(np.pi * i / 4)) / 2 for i in range(4)])]:
        rule = updates.transformation(AttackConfig(iterations=4, step_schedule=schedule))
        state, got = rule.init(g), []
        for _ in range(4):
            u, state = rule.update(g, state, g)
            got.append(np.asarray(u))
        np.testing.assert_allclose(np.stack(got), np.outer(rates, [1.0, -1.0, 0.0]), rtol=1e-5, atol=1e-9)


def test_mifgsm_accumulates_l1_normalised_directions():
    rule = updates.scale_by_l1_momentum(0.5)
    state = rule.init(jnp.zeros(2))
    m1, state = rule.update(jnp.asarray([1.0, -3.0]), state)
    m2, state = rule.update(jnp.asarray([-2.0, 0.0]), state)
    np.testing.assert_allclose(m1, [0.25, -0.75], rtol=1e-6)
    np.testing.assert_allclose(m2, [0.5 * 0.25 - 1.0, 0.5 * -0.75], rtol=1e-6)


def test_custom_rule_and_loss_plug_in_from_outside_the_package():
    x = images()
    # A rule built here (not by name) equal to the named default: the same protected images, bit for bit.
    own_sign = optax.chain(optax.scale_by_sign(), optax.scale(0.01))
    mine = run(VICTIMS, AttackConfig(iterations=3, update=own_sign), PARAMS, x, ids(2), 2).protected
    np.testing.assert_array_equal(mine, run(VICTIMS, AttackConfig(iterations=3), PARAMS, x, ids(2), 2).protected)

    def worst_element(latent, clean):  # a loss of our own: the largest latent change
        return jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in zip(jax.tree.leaves(latent),
                                                                           jax.tree.leaves(clean))]))

    config = AttackConfig(iterations=4, losses={"weak": worst_element})
    out = run(VICTIMS, config, PARAMS, x, ids(2), 2)
    np.testing.assert_allclose(out.dist_end[:, 0], distances(WEAK, PARAMS[0], x, out.protected, worst_element),
                               rtol=1e-4)
    assert np.all(np.asarray(out.dist_end[:, 0]) > 1.5 * np.asarray(out.dist_start[:, 0]))


def test_cosine_loss_by_name_and_weights_per_victim():
    x = images()
    out = run(VICTIMS, AttackConfig(iterations=4, losses={"strong": "cosine"}), PARAMS, x, ids(2), 0)
    cos = distances(STRONG, PARAMS[1], x, out.protected, cosine_distance)
    np.testing.assert_allclose(out.dist_end[:, 1], cos, rtol=1e-4)
    assert np.all(cos > 2 * np.asarray(out.dist_start[:, 1])) and np.all(cos < 2)
    # Weight 0 on the strong victim: the normalised ensemble follows the weak one alone.
    muted = run(VICTIMS, AttackConfig(iterations=3, victim_weights={"strong": 0.0}), PARAMS, x, ids(2), 2)
    alone = run((WEAK,), AttackConfig(iterations=3), PARAMS[:1], x, ids(2), 2)
    np.testing.assert_allclose(muted.protected, alone.protected, atol=1e-6)
    both = run(VICTIMS, AttackConfig(iterations=3), PARAMS, x, ids(2), 2)
    assert np.abs(np.asarray(both.protected) - np.asarray(alone.protected)).max() > 0.01
    # A positive weight counts after the normalisation (before it, the norm would cancel it): the weak
    # victim at weight 3 has the larger say, so its distance grows more than with equal weights.
    heavy = run(VICTIMS, AttackConfig(iterations=3, victim_weights={"weak": 3.0}), PARAMS, x, ids(2), 2)
    assert np.abs(np.asarray(heavy.protected) - np.asarray(both.protected)).max() > 0.01
    assert np.all(np.asarray(heavy.dist_end[:, 0]) > np.asarray(both.dist_end[:, 0]))


def test_zero_start_moves_with_one_victim():
    x = images()
    clean = clean_latents((WEAK,), AttackConfig(), PARAMS[:1], x[0])
    # Why a start at exactly zero cannot work: every residual, so every gradient, is exactly zero there.
    g, _ = ensemble_direction((WEAK,), AttackConfig(), PARAMS[:1], x[0], jnp.zeros_like(x[0]), clean)
    assert not np.any(np.asarray(g))
    config = AttackConfig(iterations=5, random_start=False)
    out = run((WEAK,), config, PARAMS[:1], x, ids(2), 0)
    eta = np.abs(np.asarray(out.protected) - np.asarray(x))
    assert eta.max() > 0.5 * config.eps and eta.max() <= config.eps + 1e-6
    assert np.all(np.asarray(out.dist_end) > 100 * np.asarray(out.dist_start))
    np.testing.assert_array_equal(out.protected, run((WEAK,), config, PARAMS[:1], x, ids(2), 0).protected)


def test_mean_loss_is_a_third_arm_serving_the_weak_victim_unlike_sum():
    """With losses scaled by each clean latent, 1000x apart in scale, mean_loss no longer follows the strong
    victim alone: it takes other steps than ``sum`` and moves the weak victim far beyond what ``sum`` does."""
    x = images(2, 32)
    noise = np.asarray(run(VICTIMS, AttackConfig(iterations=0), PARAMS, x, ids(2), 0).dist_end)
    ratio = {ens: np.asarray(run(VICTIMS, AttackConfig(iterations=12, ensemble=ens), PARAMS, x, ids(2), 0).dist_end)
             / noise for ens in ("mean_loss", "sum")}
    print(f"\nweak victim / noise: mean_loss {ratio['mean_loss'][:, 0].round(1)}, sum {ratio['sum'][:, 0].round(1)}")
    assert np.all(ratio["mean_loss"] > 4)  # both victims well above noise
    assert np.all(ratio["mean_loss"][:, 0] > 2 * ratio["sum"][:, 0])


def old_digest(config: AttackConfig) -> str:
    """The digest as manifests written before update rules hold it."""
    d = {k: getattr(config, k) for k in ("eps", "step", "iterations", "ensemble", "norm_floor", "random_start",
                                         "compute_dtype")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def test_digest_unchanged_at_defaults_and_covers_every_new_field():
    for cfg in (AttackConfig(), AttackConfig(eps=0.03, iterations=7, ensemble="sum", compute_dtype="bfloat16")):
        assert cfg.digest() == old_digest(cfg)
    # Arms whose results changed meaning no longer match their old manifests.
    assert AttackConfig(ensemble="mean_loss").digest() != old_digest(AttackConfig(ensemble="mean_loss"))
    assert AttackConfig(random_start=False).digest() != old_digest(AttackConfig(random_start=False))
    changed = [AttackConfig(update="adam"), AttackConfig(update="mifgsm"), AttackConfig(momentum=0.9),
               AttackConfig(step_schedule="cosine"), AttackConfig(losses={"a": "cosine"}),
               AttackConfig(losses={"a": "l1"}), AttackConfig(victim_weights={"a": 2}),
               AttackConfig(update=optax.chain(optax.scale_by_sign(), optax.scale(0.01)))]
    digests = {c.digest() for c in changed} | {AttackConfig().digest()}
    assert len(digests) == len(changed) + 1
    # Hashable and frozen; dicts become sorted pairs; JSON round trip of named settings.
    cfg = AttackConfig(update="mifgsm", losses={"b": "l1", "a": "cosine"}, victim_weights=[["a", 2]])
    assert cfg.losses == (("a", "cosine"), ("b", "l1")) and cfg.victim_weights == (("a", 2.0),)
    assert hash(cfg) == hash(AttackConfig(**json.loads(json.dumps(cfg.to_dict()))))
    assert AttackConfig(**json.loads(json.dumps(cfg.to_dict()))).digest() == cfg.digest()
    # Naming a victim with its default loss or weight 1 attacks as not naming it: same digest, no redone images.
    assert AttackConfig(victim_weights={"a": 1}, losses={"a": "mse"}).digest() == AttackConfig().digest()
    assert AttackConfig(victim_weights={"a": 1, "b": 2}).digest() == AttackConfig(victim_weights={"b": 2}).digest()


@pytest.mark.parametrize("kwargs,match", [
    ({"update": "rmsprop"}, "update must be one of sign, mifgsm, adam"),
    ({"losses": {"a": "huber"}}, "unknown loss 'huber' for a"),
    ({"victim_weights": {"a": -1}}, "weight of a"), ({"victim_weights": {"a": "x"}}, "weight of a"),
    ({"losses": "cosine"}, "losses must map"), ({"step_schedule": "step"}, "step_schedule"),
    ({"momentum": -0.5}, "momentum"),
])
def test_bad_names_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        AttackConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_losses_and_weights_must_name_attacked_victims():
    with pytest.raises(ValueError, match="victim_weights names nobody, not attacked"):
        run(VICTIMS, AttackConfig(iterations=1, victim_weights={"nobody": 2.0}), PARAMS, images(), ids(2), 0)
