"""The torch reference attack and leat-jax attack alike, on the same weights.

Two of the real architectures (the lighter ones) on recipe weights, one face:
from the same random start the first ensemble direction agrees (cosine >
0.999), and after T iterations each victim's latent distance agrees within a
few percent (sign steps let single pixels diverge; distances should not).
"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import pairs
from benchmarks.run import crosscheck
from leat_jax.attack import AttackConfig


@pytest.fixture(scope="module")
def light_pairs():
    return [pairs.build("simswap_G"), pairs.build("icface")]


def test_torch_and_jax_attack_alike(light_pairs):
    res = crosscheck(light_pairs, 4, AttackConfig())
    print(f"\ncosine {res['first_direction_cosine']:.6f}, distance diff {res['dist_end_rel_diff']}")
    assert res["first_direction_cosine"] > 0.999
    for name, d in res["dist_end_rel_diff"].items():
        assert d < 0.05, (name, res)
    # And the attack did something: both distances far above zero.
    assert all(v > 0 for v in res["dist_end_jax"].values())


def test_pairs_share_weights(light_pairs):
    import jax.numpy as jnp
    import torch

    x = np.random.default_rng(1).uniform(-1, 1, (1, 150, 150, 3)).astype(np.float32)  # off-size: resize too
    for p in light_pairs:
        ours = np.asarray(p.victim.encode(p.params, jnp.asarray(x)))
        with torch.no_grad():
            ref = p.torch_encoder(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * np.abs(ref).max(), err_msg=p.name)


def test_ensemble_measurement_counts_what_an_attack_runs(light_pairs):
    """The harness's whole-attack figure: prepared weights, T iterations plus two forwards, both frameworks."""
    from benchmarks.run import ensemble

    r = ensemble(light_pairs[:1], batch=1, iterations=2, repeats=1, config=AttackConfig(), with_compile=False)
    it, fwd = r["flops_per_image_iteration"], r["forward_flops_per_image"]
    assert 0 < fwd < it  # a forward is cheaper than forward + input gradient
    assert r["flops_per_image_attack"] == 2 * it + 2 * fwd
    assert r["jax_images_per_s"] > 0 and r["torch_eager_images_per_s"] > 0 and r["torch_compile_images_per_s"] is None
    assert r["jax_prepare_s"] >= 0 and r["jax_compile_s"] > 0
    assert r["dist_end_rel_diff"]["simswap_G"] < 0.05
