"""A small image-to-perturbation network: a learned start conditioned on the image (issue 20).

Two stride-2 convolutions down to a quarter of the side, residual blocks
there, and two nearest-neighbour upsamplings each followed by a convolution,
then ``tanh``: the output lies in (-1, 1) per entry, the attack scales it by
eps. Fully convolutional, so any side divisible by 4 works; NHWC, images in
[-1, 1]. What it is trained for is the attack's (``attack.universal``).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class GeneratorArch:
    """The generator's shape (part of a learned start's identity).

    Attributes:
      width: channels after the first convolution (twice that at the quarter side).
      blocks: residual blocks at the quarter side.
    """

    width: int = 32
    blocks: int = 2

    def __post_init__(self):
        for name in ("width", "blocks"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= 256:
                raise ValueError(f"generator {name} must be an integer within 1..256, got {value!r}")


def _conv(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (3, 3), strides=(stride, stride), padding="SAME", rngs=rngs)


class Residual(nnx.Module):
    """``x + conv(relu(conv(relu(x))))`` at one width."""

    def __init__(self, width: int, rngs: nnx.Rngs):
        self.a = _conv(width, width, 1, rngs)
        self.b = _conv(width, width, 1, rngs)

    def __call__(self, x):
        return x + self.b(nnx.relu(self.a(nnx.relu(x))))


def upsampled(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, 2H, 2W, C), each pixel repeated."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class StartGenerator(nnx.Module):
    """x (B, H, W, 3) in [-1, 1] -> (B, H, W, 3) in (-1, 1): the start's shape, before eps."""

    def __init__(self, arch: GeneratorArch, rngs: nnx.Rngs):
        w = arch.width
        self.down1 = _conv(3, w, 2, rngs)
        self.down2 = _conv(w, 2 * w, 2, rngs)
        self.blocks = nnx.List([Residual(2 * w, rngs) for _ in range(arch.blocks)])
        self.up1 = _conv(2 * w, w, 1, rngs)
        self.up2 = _conv(w, 3, 1, rngs)

    def __call__(self, x):
        h = self.down2(nnx.relu(self.down1(x)))
        for block in self.blocks:
            h = block(h)
        h = nnx.relu(self.up1(upsampled(nnx.relu(h))))
        return jnp.tanh(self.up2(upsampled(h)))
