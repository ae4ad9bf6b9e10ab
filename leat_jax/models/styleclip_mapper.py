"""StyleCLIP's latent mapper (``mapper/latent_mappers.py::LevelsMapper``) in Flax NNX.

One text prompt = one trained mapper. It maps a W+ code [N, 18, 512] to a
residual; StyleCLIP's edit is ``w + 0.1 * mapper(w)`` (the 0.1 is a literal in
the official inference and training code).

``LevelsMapper`` runs three independent ``Mapper``s on the coarse (slots
0-3), medium (4-7) and fine (8-17) groups of slots; a group switched off by
``no_*_mapper`` gives zeros. A ``Mapper`` is PixelNorm then four
EqualLinear(512, 512, lr_mul 0.01) layers, each followed by the fused leaky
ReLU (the last one too). Official quirks kept: PixelNorm normalises over axis 1
of [N, slots, 512], i.e. over the group's *slots*, not the features, and the
bias is broadcast over the last axis. Names mirror the official modules,
including the coarse group's spelling ``course_mapping``.

A group that a checkpoint leaves out is represented by all-zero weights and
biases (the converter fills them): every layer then outputs exactly
``leaky_relu(0) = 0``, the official zeros, and every mapper has the same
parameter tree, so mappers stack and ``vmap`` over prompts.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from leat_jax.models.stylegan2 import EqualLinear, PixelNorm

GROUPS = (("course_mapping", 0, 4), ("medium_mapping", 4, 8), ("fine_mapping", 8, 18))
EDIT_STRENGTH = 0.1  # w_edit = w + 0.1 * mapper(w), hard-coded officially


class Mapper(nnx.Module):
    def __init__(self, latent_dim: int = 512, n_layers: int = 4, lr_mul: float = 0.01, *, rngs: nnx.Rngs):
        self.mapping = nnx.List([PixelNorm()] + [
            EqualLinear(latent_dim, latent_dim, lr_mul=lr_mul, activation=True, rngs=rngs) for _ in range(n_layers)
        ])

    def __call__(self, x):
        for layer in self.mapping:
            x = layer(x)
        return x


class LevelsMapper(nnx.Module):
    """W+ [N, 18, 512] -> the mapper's residual, same shape."""

    def __init__(self, latent_dim: int = 512, *, rngs: nnx.Rngs):
        for name, _, _ in GROUPS:
            setattr(self, name, Mapper(latent_dim, rngs=rngs))

    def __call__(self, w):
        if w.ndim != 3 or w.shape[1] != GROUPS[-1][2]:
            raise ValueError(f"expected W+ of shape [N, {GROUPS[-1][2]}, 512], got {w.shape}")
        return jnp.concatenate([getattr(self, name)(w[:, lo:hi]) for name, lo, hi in GROUPS], axis=1)


def edit(delta, w):
    """StyleCLIP's edit from the mapper's residual."""
    return w + EDIT_STRENGTH * delta


def levels_mapper(rngs: nnx.Rngs) -> LevelsMapper:
    return LevelsMapper(rngs=rngs)
