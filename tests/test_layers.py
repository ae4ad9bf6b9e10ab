"""The shared pieces of models.layers that keep a port's parameter tree the official one."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leat_jax.models.base import Functional
from leat_jax.models.layers import Buffer, Slot, identity, reflection_pad_slot


class _Seq(nnx.Module):
    """Linear, ReLU, Dropout, Linear as an official nn.Sequential, plus a stored buffer."""

    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), Slot(jax.nn.relu), Slot(identity, "Dropout"),
                                nnx.Linear(4, 2, rngs=rngs)])
        self.stat = Buffer(jnp.full((2,), 0.5))

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x * self.stat[...]


def test_slots_hold_their_index_and_add_no_parameters():
    f = Functional(_Seq)
    assert sorted(f.template["layers"]) == [0, 3]  # torch's keys layers.0.*, layers.3.*
    assert f.template["stat"].shape == (2,)
    p = f.init(0)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    h = np.maximum(x @ np.asarray(p["layers"][0]["kernel"]) + np.asarray(p["layers"][0]["bias"]), 0)
    want = (h @ np.asarray(p["layers"][3]["kernel"]) + np.asarray(p["layers"][3]["bias"])) * 0.5
    np.testing.assert_allclose(f.apply(p, x), want, rtol=1e-5, atol=1e-6)
    assert repr(Slot(identity, "Dropout")) == "Slot(Dropout)" and repr(Slot(jax.nn.relu)) == "Slot(relu)"


def test_reflection_pad_slot_is_torch_reflection():
    x = jnp.arange(12.0).reshape(1, 3, 4, 1)
    got = np.asarray(reflection_pad_slot(2)(x))[0, :, :, 0]
    assert got.shape == (7, 8)
    np.testing.assert_array_equal(got[2], [2, 1, 0, 1, 2, 3, 2, 1])  # edge not repeated, as ReflectionPad2d
    np.testing.assert_array_equal(got[:, 2], [8, 4, 0, 4, 8, 4, 0])
