"""Small Flax encoders standing in for the real victims in attack tests."""
from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import nnx

from leat_jax.models.base import Functional
from leat_jax.models.layers import conv2d
from leat_jax.victims import Victim, resize


class ToyEncoder(nnx.Module):
    """Two strided convolutions and a tanh: nonlinear, cheap, per image."""

    def __init__(self, scale: float, *, rngs: nnx.Rngs):
        self.conv1 = conv2d(3, 8, 3, stride=2, padding=1, rngs=rngs)
        self.conv2 = conv2d(8, 16, 3, stride=2, padding=1, rngs=rngs)
        self.scale = scale

    def __call__(self, x):
        h = jnp.tanh(self.conv1(x))
        return {"features": self.scale * self.conv2(h), "pooled": self.scale * jnp.mean(h, axis=(1, 2))}


@functools.cache
def toy_victim(name: str = "toy", scale: float = 1.0, size: int = 32) -> Victim:
    fn = Functional(lambda rngs: ToyEncoder(scale, rngs=rngs))
    return Victim.of(fn, name=name, input_size=(size, size), preprocess=lambda images: resize(images, (size, size)))
