"""The convolution with a ready-made input-gradient kernel (models.conv) and ``Functional.prepare``."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from leat_jax.models import conv, layers
from leat_jax.models.base import Functional, Prepared

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax(x, w, s, pads):
    return lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=NHWC, precision="highest")


def _ours(x, w, s, pads, w_t=None):
    if w_t is None:
        return conv.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=NHWC, precision="highest")
    return conv.with_input_grad_kernel(w_t, x, w, (s, s), pads, dimension_numbers=NHWC, precision="highest")


@pytest.mark.parametrize("hw", [(9, 9), (10, 7)])
@pytest.mark.parametrize("k,s", [(1, 1), (1, 2), (3, 1), (3, 2), (4, 2), (7, 1), (3, 3)])
@pytest.mark.parametrize("pads", [((0, 0), (0, 0)), ((1, 1), (1, 1)), ((3, 3), (3, 3)), ((1, 2), (2, 0))])
def test_values_and_both_gradients_equal_lax(hw, k, s, pads):
    _check_against_lax(hw, k, s, pads, cin=6)


@pytest.mark.parametrize("k,s", [(1, 1), (3, 1), (3, 2), (4, 2), (7, 1), (3, 3)])
@pytest.mark.parametrize("pads", [((0, 0), (0, 0)), ((1, 1), (1, 1)), ((3, 3), (3, 3)), ((1, 2), (2, 0))])
def test_image_input_gradient_by_taps_equals_lax(k, s, pads):
    """Three input channels: the input gradient goes tap by tap (``_input_grad_by_taps``)."""
    assert 3 <= conv.SMALL_INPUT_CHANNELS
    _check_against_lax((10, 7), k, s, pads, cin=3)


def _check_against_lax(hw, k, s, pads, cin):
    rng = np.random.default_rng(k * 100 + s)
    x = jnp.asarray(rng.normal(size=(2, *hw, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, 5)), jnp.float32)
    y_ref, vjp_ref = jax.vjp(lambda a, b: _lax(a, b, s, pads), x, w)
    ct = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    dx_ref, dw_ref = vjp_ref(ct)
    for w_t in (None, conv.input_grad_kernel(w)):
        y, vjp = jax.vjp(lambda a, b: _ours(a, b, s, pads, w_t), x, w)
        dx, dw = vjp(ct)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("hw,k,s,pads", [
    ((1, 1), 3, 1, ((1, 1), (1, 1))), ((2, 2), 3, 1, ((1, 1), (1, 1))), ((2, 2), 3, 2, ((1, 1), (1, 1))),
    ((4, 4), 3, 2, ((1, 1), (1, 1))), ((3, 5), 3, 2, ((0, 1), (1, 0))), ((4, 2), 2, 2, ((0, 0), (0, 0))),
    ((5, 5), 4, 3, ((1, 2), (0, 1))), ((1, 1), 1, 1, ((0, 0), (0, 0)))])
def test_small_outputs_take_the_patch_product_and_equal_lax(hw, k, s, pads):
    """Outputs of at most 2x2 go through patches @ kernel (e4e's style heads): same values, both gradients."""
    assert np.prod(conv._out_hw(hw, (k, k), (s, s), pads)) <= conv.SMALL_OUTPUT
    rng = np.random.default_rng(sum(hw) * 10 + k)
    x = jnp.asarray(rng.normal(size=(3, *hw, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 4, 6)), jnp.float32)
    y_ref, vjp_ref = jax.vjp(lambda a, b: _lax(a, b, s, pads), x, w)
    ct = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    y, vjp = jax.vjp(lambda a, b: _ours(a, b, s, pads, conv.input_grad_kernel(w)), x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(ct), vjp_ref(ct)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    hlo = jax.jit(jax.grad(lambda a: jnp.sum(_ours(a, w, s, pads) ** 2))).lower(x).as_text()
    assert "convolution" not in hlo and "dot_general" in hlo


def test_string_padding_and_fallbacks():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 8, 8, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
    for pad in ("SAME", "VALID"):
        g_ref = jax.grad(lambda a: jnp.sum(jnp.sin(_lax(a, w, 2, pad))))(x)
        g = jax.grad(lambda a: jnp.sum(jnp.sin(_ours(a, w, 2, pad))))(x)
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)
    # Dilation and groups go to lax untouched.
    wg = jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)
    a = conv.conv_general_dilated(x, wg, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2)
    b = lax.conv_general_dilated(x, wg, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2)
    np.testing.assert_array_equal(a, b)


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.convs = nnx.List([layers.conv2d(3, 8, 3, 2, 1, rngs=rngs), layers.conv2d(8, 8, 3, 1, 1, rngs=rngs)])
        self.head = layers.conv2d(8, 4, 1, rngs=rngs)

    def __call__(self, x):
        for c in self.convs:
            x = jax.nn.relu(c(x))
        return self.head(x)


def test_prepared_params_give_the_same_outputs_and_input_gradients():
    f = Functional(_Net)
    params = f.init(0)
    prepared = f.prepare(params)
    assert isinstance(prepared, Prepared)
    assert set(prepared.input_grad_kernels) == {"convs/0", "convs/1", "head"}
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 12, 12, 3)), jnp.float32)
    loss = lambda p, a: jnp.sum(f.apply(p, a) ** 2)  # noqa: E731
    np.testing.assert_allclose(f.apply(prepared, x), f.apply(params, x), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss, 1)(prepared, x), jax.grad(loss, 1)(params, x), rtol=1e-5, atol=1e-6)
    # Weight gradients stay right through the plain path, and prepare is idempotent.
    assert f.prepare(prepared) is prepared
    assert float(jnp.abs(jax.grad(loss)(params, x)["convs"][0]["kernel"]).sum()) > 0


def test_attack_loop_holds_no_kernel_flip():
    """The point of ``prepare``: the while loop's body runs convolutions, not weight shuffles."""
    from leat_jax.attack import AttackConfig, make_attack
    from leat_jax.victims import Victim

    f = Functional(_Net)
    v = Victim.of(f, name="net", input_size=(12, 12), preprocess=lambda a: a)
    attack = jax.jit(make_attack((v,), AttackConfig(iterations=3)))
    x = jnp.zeros((1, 12, 12, 3))
    hlo = attack.lower((f.init(0),), x, jnp.zeros(1, jnp.uint32), 0).compile().as_text()
    body = [line for line in hlo.splitlines() if "while/body" in line]
    assert any("conv_general_dilated" in line for line in body), "expected the convolutions in a while loop"
    assert not [line for line in body if " reverse(" in line or "/rev" in line]
    assert any(" reverse(" in line for line in hlo.splitlines())  # the flip is there, once, before the loop


def test_parameters_prepared_once_pass_through_the_attack():
    """``attack.prepared`` (once per run): the attack then does no weight work at all, same results."""
    from leat_jax.attack import AttackConfig, make_attack, prepared
    from leat_jax.victims import Victim

    f = Functional(_Net)
    v = Victim.of(f, name="net", input_size=(12, 12), preprocess=lambda a: a)
    config = AttackConfig(iterations=2)
    raw = (f.init(0),)
    ready = prepared((v,), config, raw)
    assert isinstance(ready[0], Prepared)
    assert ready[0].params["convs"][1]["kernel"] is raw[0]["convs"][1]["kernel"]  # the weights, not copies
    attack = jax.jit(make_attack((v,), config))
    x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 12, 12, 3)), jnp.float32)
    ids = jnp.arange(2, dtype=jnp.uint32)
    hlo = attack.lower(ready, x, ids, 0).compile().as_text()
    assert not [line for line in hlo.splitlines() if " reverse(" in line]
    a, b = attack(raw, x, ids, 0), attack(ready, x, ids, 0)
    np.testing.assert_array_equal(a.protected, b.protected)
    np.testing.assert_array_equal(a.dist_end, b.dist_end)
