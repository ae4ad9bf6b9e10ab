"""The attack core on small toy victims: bounds, direction, ensembles, per-image semantics."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from leat_jax.attack import AttackConfig, ensembles, latent_mse, run
from tests.toys import toy_victim

WEAK = toy_victim("weak", 1.0)
STRONG = toy_victim("strong", 1000.0**0.5)  # loss and gradient scale as scale**2: 1000x
PARAMS = (WEAK.init_params(1), STRONG.init_params(2))
VICTIMS = (WEAK, STRONG)


def images(n=4, size=32, seed=0, low=-0.9, high=0.9):
    return jnp.asarray(np.random.default_rng(seed).uniform(low, high, (n, size, size, 3)), jnp.float32)


def ids(n, start=0):
    return jnp.arange(start, start + n, dtype=jnp.uint32)


@pytest.fixture(scope="module")
def noise_distance():
    """Each victim's latent distance under uniform noise in [-eps, eps] (no step)."""
    return run(VICTIMS, AttackConfig(iterations=0), PARAMS, images(), ids(4), 0).dist_end


@pytest.mark.parametrize(
    "config",
    [
        AttackConfig(iterations=3, ensemble="normalized"),
        AttackConfig(iterations=3, ensemble="normalized_l1"),
        AttackConfig(iterations=3, ensemble="sum", eps=0.02, step=0.015),
        AttackConfig(iterations=3, ensemble="mean_loss", eps=0.1, step=0.03, random_start=False),
        AttackConfig(iterations=2, compute_dtype="bfloat16"),
    ],
    ids=["normalized", "normalized_l1", "sum", "mean_loss-no-start", "bf16"],
)
def test_perturbation_within_eps_and_pixels_in_range(config):
    # Saturated pixels exercise the clip to [-1, 1]; odd size exercises the resize.
    x = jnp.concatenate([images(2, 37, low=-1, high=1), jnp.full((1, 37, 37, 3), 1.0), jnp.full((1, 37, 37, 3), -1.0)])
    out = run(VICTIMS, config, PARAMS, x, ids(4), 7)
    eta = np.asarray(out.protected) - np.asarray(x)
    assert np.abs(eta).max() <= config.eps + 1e-6
    assert np.abs(eta).max() > 0.5 * config.eps  # it did move
    assert np.asarray(out.protected).min() >= -1.0 and np.asarray(out.protected).max() <= 1.0
    assert np.all(np.isfinite(out.dist_end))


def test_distances_rise_and_end_well_above_noise(noise_distance):
    config = AttackConfig(iterations=12, record_history=True)
    out = run(VICTIMS, config, PARAMS, images(), ids(4), 0)
    hist = np.asarray(out.history)  # (B, T, K)
    assert hist.shape == (4, 12, 2)
    np.testing.assert_allclose(hist[:, 0], out.dist_start, rtol=1e-6)
    # Ascent, not descent: every victim's distance grows over the run...
    assert np.all(out.dist_end > 3 * out.dist_start)
    assert np.all(hist[:, -1] > hist[:, 0])
    # ...and ends far above what random noise of the same budget does.
    assert np.all(np.asarray(out.dist_end) > 5 * np.asarray(noise_distance))


def test_normalized_ensemble_serves_both_victims_sum_only_the_strong(noise_distance):
    """The paper's argument for NGE, on gradients 1000x apart in scale.

    A sum of raw gradients takes the sign of the strong victim's gradient, so
    the weak victim sees what amounts to random sign noise (about 3x the
    energy of uniform noise: E[eta^2] = eps^2 against eps^2/3). Normalising
    each gradient first gives both an equal say.
    """
    config = AttackConfig(iterations=25)
    ratio = {
        ens: np.asarray(run(VICTIMS, dataclasses.replace(config, ensemble=ens), PARAMS, images(), ids(4), 0).dist_end)
        / np.asarray(noise_distance)
        for ens in ("normalized", "sum")
    }
    print(f"\nweak victim / noise: normalized {ratio['normalized'][:, 0].round(1)}, sum {ratio['sum'][:, 0].round(1)}")
    assert np.all(ratio["normalized"] > 6)  # both victims, well above noise
    assert np.all(ratio["sum"][:, 1] > 6)  # the strong one does fine either way
    assert np.all(ratio["sum"][:, 0] < 4.5)  # the weak one: sign-noise level
    assert np.all(ratio["sum"][:, 0] < 0.4 * ratio["normalized"][:, 0])


def test_l1_normalisation_maximises_the_victims_summed_share_of_their_best_sign_step():
    """A sign step s gains victim k ``g_k . s`` to first order, at most ``||g_k||_1``.

    With a dense gradient beside sparse ones, L2 normalisation hands the sign
    to the dense victim; L1 normalisation maximises the sum of the shares
    ``g_k . s / ||g_k||_1`` over every sign vector.
    """
    rng = np.random.default_rng(0)
    n = 4096
    dense = rng.normal(size=n)
    sparse = [np.where(rng.random(n) < 0.02, rng.normal(size=n), rng.normal(size=n) * 0.05) for _ in range(2)]
    grads = [jnp.asarray(g, jnp.float32) for g in (dense, *sparse)]

    def shares(direction):
        s = np.sign(np.asarray(direction, np.float64))
        return np.array([float(np.asarray(g, np.float64) @ s) / float(np.abs(np.asarray(g)).sum()) for g in grads])

    l1, l2 = shares(ensembles.normalized(grads, 1e-12, order=1)), shares(ensembles.normalized(grads, 1e-12))
    print(f"\nshares of the best sign step (dense, sparse, sparse): L1 {l1.round(2)}, L2 {l2.round(2)}")
    assert l1.sum() > l2.sum()
    assert l1[1:].min() > l2[1:].max()  # the sparse victims gain the step L2 gave the dense one
    for _ in range(50):  # no other sign vector does better in sum
        assert shares(rng.normal(size=n)).sum() < l1.sum()


def test_batch_equals_images_one_by_one():
    config = AttackConfig(iterations=4)
    x = images(3)
    batch = run(VICTIMS, config, PARAMS, x, ids(3, 10), 5)
    for i in range(3):
        one = run(VICTIMS, config, PARAMS, x[i : i + 1], ids(1, 10 + i), 5)
        np.testing.assert_allclose(one.protected[0], batch.protected[i], atol=1e-6)
        np.testing.assert_allclose(one.dist_end[0], batch.dist_end[i], rtol=1e-4)


def test_result_keyed_by_seed_and_image_id_only():
    config = AttackConfig(iterations=2)
    x = images(3)
    a = run(VICTIMS, config, PARAMS, x, ids(3), 1)
    b = run(VICTIMS, config, PARAMS, x, ids(3), 1)
    np.testing.assert_array_equal(a.protected, b.protected)
    # Reordering the batch reorders the results, nothing else.
    perm = jnp.asarray([2, 0, 1])
    c = run(VICTIMS, config, PARAMS, x[perm], ids(3)[perm], 1)
    np.testing.assert_allclose(c.protected, a.protected[perm], atol=1e-6)
    # Another seed gives another start.
    d = run(VICTIMS, config, PARAMS, x, ids(3), 2)
    assert not np.allclose(d.protected, a.protected)


def test_bf16_compute_stays_close_to_float32():
    x = images(2)
    f32 = run(VICTIMS, AttackConfig(iterations=0), PARAMS, x, ids(2), 0)
    bf16 = run(VICTIMS, AttackConfig(iterations=0, compute_dtype="bfloat16"), PARAMS, x, ids(2), 0)
    np.testing.assert_array_equal(f32.protected, bf16.protected)  # same start
    np.testing.assert_allclose(bf16.dist_end, f32.dist_end, rtol=0.1)


def test_latent_mse_averages_over_every_element_of_a_pytree():
    a = {"u": jnp.ones((1, 2)), "v": jnp.zeros((1, 6))}
    b = {"u": jnp.zeros((1, 2)), "v": jnp.full((1, 6), 2.0)}
    assert float(latent_mse(a, b)) == pytest.approx((2 * 1 + 6 * 4) / 8)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"eps": 0}, "eps"), ({"step": -1}, "step"), ({"iterations": 1.5}, "iterations"),
     ({"ensemble": "max"}, "ensemble"), ({"compute_dtype": "float16"}, "compute_dtype")],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackConfig(**kwargs)


def test_config_digest_tracks_result_changing_settings():
    base = AttackConfig()
    assert base.digest() == AttackConfig().digest()
    assert base.digest() != AttackConfig(eps=0.04).digest()
    assert base.digest() == AttackConfig(record_history=True).digest()
