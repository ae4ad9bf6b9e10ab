"""DiffAE's float32 numerics where the DDIM render amplifies them.

The T=2 render ends with ``x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps`` at
t=500 (eps times 3.44), so the UNet's eps must be close to float64's; the
timestep embedding is the part of it that float32 rounding moved most (the
phase ``t f`` rounded to float32 is off by up to 3e-5 at t=999).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from leat_jax.models import diffae as model


def exact_embedding(t, dim):
    """float64 ``[cos(t f), sin(t f)]`` with the float32 frequencies (the golden's reference numerics)."""
    half = dim // 2
    exponent = np.float32(-math.log(10000)) * np.arange(half, dtype=np.float32) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32).astype(np.float64)
    phase = np.asarray(t, np.float64)[:, None] * freqs[None]
    return np.concatenate([np.cos(phase), np.sin(phase)], axis=1)


def test_timestep_embedding_keeps_the_phase_exact_in_float32():
    t = np.arange(1000)
    got = np.asarray(jax.jit(lambda t: model.timestep_embedding(t, 128, jnp.float32))(jnp.asarray(t, jnp.int32)))
    assert got.dtype == np.float32
    err = np.abs(got - exact_embedding(t, 128)).max()
    # float32 rounding of cos and sin themselves (6e-8 each) ...
    assert err < 2e-7, err
    # ... where the phase rounded to float32 (torch's float32 code) would cost 2e-5
    freqs = np.exp(np.float32(-math.log(10000)) * np.arange(64, dtype=np.float32) / np.float32(64))
    phase32 = (t[:, None].astype(np.float32) * freqs.astype(np.float32)[None]).astype(np.float64)
    rounded = np.concatenate([np.cos(phase32), np.sin(phase32)], axis=1)
    assert np.abs(rounded - exact_embedding(t, 128)).max() > 1e-5


def test_two_product_is_exact():
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.integers(0, 1 << 16, 1000).astype(np.float32))
    b = jnp.asarray(rng.uniform(1e-4, 1.0, 1000).astype(np.float32))
    p, e = jax.jit(model.two_product)(a, b)
    exact = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    np.testing.assert_array_equal(np.asarray(p, np.float64) + np.asarray(e, np.float64), exact)
