"""GroupNorm with product-form statistics (models.norms) against torch's group_norm."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from leat_jax.models import norms


def _torch(x, scale, bias, groups, eps):
    xt = torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2)).requires_grad_(True)
    st = torch.from_numpy(np.asarray(scale, np.float64)).requires_grad_(True)
    bt = torch.from_numpy(np.asarray(bias, np.float64)).requires_grad_(True)
    y = torch.nn.functional.group_norm(xt, groups, st, bt, eps)
    return y, (xt, st, bt)


@pytest.mark.parametrize("shape,groups",
                         [((2, 8, 8, 64), 32), ((1, 5, 7, 12), 3), ((3, 4, 4, 32), 32), ((1, 1, 1, 8), 2)])
def test_values_and_all_gradients_equal_torch(shape, groups):
    rng = np.random.default_rng(shape[-1] + groups)
    # A large mean, where a one-pass E[x^2] - E[x]^2 variance would lose digits.
    x = (rng.normal(size=shape) * 0.5 + 30.0).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    bias = rng.normal(size=shape[-1]).astype(np.float32)
    ct = rng.normal(size=shape).astype(np.float32)
    y_t, leaves = _torch(x, scale, bias, groups, 1e-5)
    grads_t = torch.autograd.grad((y_t * torch.from_numpy(ct.transpose(0, 3, 1, 2).astype(np.float64))).sum(), leaves)
    y, vjp = jax.vjp(lambda a, s, b: norms.group_norm(a, s, b, groups, 1e-5), jnp.asarray(x), scale, bias)
    np.testing.assert_allclose(y, y_t.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=2e-4)
    dx, ds, db = vjp(jnp.asarray(ct))
    want_dx, want_ds, want_db = (g.numpy() for g in grads_t)
    np.testing.assert_allclose(dx, want_dx.transpose(0, 2, 3, 1), rtol=1e-3, atol=5e-3 * np.abs(want_dx).max())
    np.testing.assert_allclose(ds, want_ds, rtol=1e-3, atol=1e-3 * np.abs(want_ds).max())
    np.testing.assert_allclose(db, want_db, rtol=1e-4, atol=1e-4)


def test_module_matches_flax_groupnorm_and_keeps_its_parameter_names():
    ours = norms.GroupNorm(64, 32, 1e-5, rngs=nnx.Rngs(0))
    flax = nnx.GroupNorm(64, num_groups=32, epsilon=1e-5, use_fast_variance=False, rngs=nnx.Rngs(0))
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(ours))) == jax.tree.map(
        jnp.shape, nnx.to_pure_dict(nnx.state(flax)))
    rng = np.random.default_rng(1)
    for m in (ours, flax):
        m.scale[...] = jnp.linspace(0.5, 2.0, 64)
        m.bias[...] = jnp.linspace(-1.0, 1.0, 64)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 64)) * 3 + 2, jnp.float32)
    np.testing.assert_allclose(ours(x), flax(x), rtol=1e-5, atol=1e-5)
    g = lambda m: jax.grad(lambda a: jnp.sum(jnp.sin(m(a))))(x)  # noqa: E731
    np.testing.assert_allclose(g(ours), g(flax), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="do not split"):
        norms.GroupNorm(10, 4)


def test_bfloat16_keeps_float32_statistics():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(1, 8, 8, 32)) + 50.0).astype(np.float32)
    ones, zeros = np.ones(32, np.float32), np.zeros(32, np.float32)
    ref = norms.group_norm(jnp.asarray(x), ones, zeros, 8, 1e-5)
    y = norms.group_norm(jnp.asarray(x, jnp.bfloat16), ones.astype(jnp.bfloat16), zeros.astype(jnp.bfloat16), 8, 1e-5)
    assert y.dtype == jnp.bfloat16
    # bf16 rounds x itself (~0.2 at 50), so only the normalised scale is checked.
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.5)
    assert abs(float(jnp.std(y.astype(jnp.float32))) - 1.0) < 0.05


def test_float32_statistics_of_a_256_map_stay_near_float64():
    """DiffAE's 256x256 maps: the normalised values within 2e-6 of float64 (one product over all
    65536 positions was 2e-5 off; a T=2 DDIM render multiplies such errors by 3.4)."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(1, 256, 256, 64)) + 3.0 * rng.normal(size=(1, 1, 1, 64))).astype(np.float32)
    got = np.asarray(jax.jit(lambda x: norms.normalize(x, 32, 1e-5))(jnp.asarray(x)), np.float64)
    xg = x.astype(np.float64).reshape(1, 256, 256, 32, 2)
    d = xg - xg.mean(axis=(1, 2, 4), keepdims=True)
    want = (d / np.sqrt((d * d).mean(axis=(1, 2, 4), keepdims=True) + 1e-5)).reshape(x.shape)
    assert np.abs(got - want).max() < 2e-6, np.abs(got - want).max()
