"""The e4e victim: StyleCLIP's inversion of a face into StyleGAN2's W+ space.

Every StyleCLIP edit (latent optimisation, mapper, global directions) starts
from this W+ code, so moving E(x + eta) away from E(x) spoils them all.
"""
from __future__ import annotations

import functools

from leat_jax.models.base import Functional
from leat_jax.models.e4e import E4E, INPUT_SIZE
from leat_jax.victims.base import Victim, resize


@functools.cache
def _functional() -> Functional:
    return Functional(lambda rngs: E4E(rngs=rngs))


def preprocess(images):
    """[-1, 1] NHWC of any size -> the official 256x256 [-1, 1] input.

    The official transform (Resize(256) bilinear, ToTensor, Normalize(0.5, 0.5))
    maps [0, 1] pixels to [-1, 1], our image convention already: only the size
    changes (untouched when it is 256x256 already).
    """
    return resize(images, (INPUT_SIZE, INPUT_SIZE))


def apply(params, x):
    """(params, (N, 256, 256, 3) official input) -> W+ (N, 18, 512)."""
    return _functional().apply(params, x)


def victim() -> Victim:
    fn = _functional()
    return Victim.of(fn, name="e4e", input_size=(INPUT_SIZE, INPUT_SIZE), preprocess=preprocess, apply=apply)
