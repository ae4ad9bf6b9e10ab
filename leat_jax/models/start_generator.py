"""A small image-to-perturbation network: a learned start conditioned on the image (issue 20).

Two stride-2 convolutions down to a quarter of the side, residual blocks
there, two nearest-neighbour upsamplings each followed by a convolution,
plus a learned position map, then ``tanh`` of that scaled to a fixed root
mean square (``bounded``): outputs in [-1, 1], which the attack scales by
eps. Images NHWC in [-1, 1]. It is trained as the universal start is
(``attack.universal``, ``Form`` ``generator``) and measured against it by
``benchmarks.generator_start`` (it lost there: benchmarks/RESULTS.md).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class GeneratorArch:
    """The generator's shape.

    Attributes:
      width: channels after the first convolution (twice that at the quarter side).
      blocks: residual blocks at the quarter side.
      size: the side of the images it sees, and of its position map (a multiple of 4).
    """

    width: int = 32
    blocks: int = 2
    size: int = 256

    def __post_init__(self):
        for name in ("width", "blocks", "size"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= 4096:
                raise ValueError(f"generator {name} must be an integer within 1..4096, got {value!r}")
        if self.size % 4:
            raise ValueError(f"generator size must be a multiple of 4, got {self.size}")


def _conv(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (3, 3), strides=(stride, stride), padding="SAME", rngs=rngs)


class Residual(nnx.Module):
    """``x + conv(relu(conv(relu(x))))`` at one width."""

    def __init__(self, width: int, rngs: nnx.Rngs):
        self.a = _conv(width, width, 1, rngs)
        self.b = _conv(width, width, 1, rngs)

    def __call__(self, x):
        return x + self.b(nnx.relu(self.a(nnx.relu(x))))


# The pre-bound map is scaled to unit root mean square per image and then by this gain: its scale is not
# learned, so the ascent cannot drive every output into tanh's flat tails (outputs at +-1, no derivative
# left), which it did within a few Adam steps without it; at 3 a Gaussian map has 60 % of its outputs beyond 0.9.
GAIN = 3.0


def bounded(z: jax.Array) -> jax.Array:
    """``tanh(GAIN * z / rms(z))`` per image of (B, H, W, C) ``z``."""
    rms = jnp.sqrt(jnp.mean(jnp.square(z), axis=(1, 2, 3), keepdims=True) + 1e-12)
    return jnp.tanh(GAIN * z / rms)


def upsampled(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, 2H, 2W, C), each pixel repeated."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# The position map is used as this multiple of its weights: Adam moves every weight by about its rate a step,
# and one rate then suits both the convolutions' weights (small) and the map (in units of the output).
POSITION_SCALE = 100.0


class StartGenerator(nnx.Module):
    """x (B, size, size, 3) in [-1, 1] -> (B, size, size, 3) in [-1, 1]: the start's shape, before eps.

    The convolutions see the image; a learned (size, size, 3) position map,
    added before the bound, gives what they cannot (they are the same at
    every place): with the network's output at zero it is a universal start.
    """

    def __init__(self, arch: GeneratorArch, rngs: nnx.Rngs):
        w = arch.width
        self.position = nnx.Param(jnp.zeros((arch.size, arch.size, 3), jnp.float32))
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
        return bounded(self.up2(upsampled(h)) + POSITION_SCALE * self.position[...])
