"""MTCNN's three networks (P-Net, R-Net, O-Net) in Flax NNX, NHWC.

The networks of facenet-pytorch 2.6.0 (Zhang et al. 2016, through
davidsandberg/facenet's TF port), attribute for attribute as the official
modules name them (``conv1``, ``prelu1``, ..., ``dense4``, ``dense5_1``), so
the three state_dicts map onto these trees by name.

Official numerics kept: every conv is stride 1, unpadded, with a bias; every
max-pool uses torch's ``ceil_mode=True`` (the last window may hang over the
edge); PReLU has one slope per channel; the class softmax runs over the two
logits. R-Net and O-Net flatten their last feature map in (W, H, C) order,
because the official forward permutes NCHW to (N, W, H, C) first (a relic of
the TF weights, trained on transposed images); an ordinary NHWC flatten
would give plausible but wrong outputs.

Outputs keep the official order: P-Net ``(reg, prob)`` as maps (N, H', W', 4)
and (N, H', W', 2); R-Net ``(reg, prob)``; O-Net ``(reg, landmarks, prob)``.
Channel 1 of ``prob`` is "face". Inputs are the normalised images
``(v - 127.5) / 128`` of raw RGB values.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from leat_jax.models.base import Functional
from leat_jax.models.layers import PReLU, conv2d

PNET_CELL, PNET_STRIDE = 12, 2  # each P-Net output cell sees a 12 x 12 window, stride 2
RNET_SIZE, ONET_SIZE = 24, 48


def max_pool_ceil(x: jax.Array, k: int, s: int) -> jax.Array:
    """``nn.MaxPool2d(k, s, ceil_mode=True)`` on NHWC.

    out = ceil((in - k) / s) + 1; the last window may run past the edge, which
    torch treats as missing values: pad right/bottom with -inf.
    """

    def extra(n):
        out = math.ceil((n - k) / s) + 1
        return (out - 1) * s + k - n

    pads = ((0, 0), (0, extra(x.shape[1])), (0, extra(x.shape[2])), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), pads)


def wh_flatten(x: jax.Array) -> jax.Array:
    """Flatten NHWC features in the official (W, H, C) order (``permute(0, 3, 2, 1)``)."""
    n, h, w, c = x.shape
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(n, w * h * c)  # explicit: an empty batch has no -1


class PNet(nnx.Module):
    """Proposal net, fully convolutional: any input of at least 12 x 12."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1, self.prelu1 = conv2d(3, 10, 3, rngs=rngs), PReLU(10)
        self.conv2, self.prelu2 = conv2d(10, 16, 3, rngs=rngs), PReLU(16)
        self.conv3, self.prelu3 = conv2d(16, 32, 3, rngs=rngs), PReLU(32)
        self.conv4_1 = conv2d(32, 2, 1, rngs=rngs)
        self.conv4_2 = conv2d(32, 4, 1, rngs=rngs)

    def __call__(self, x):
        x = max_pool_ceil(self.prelu1(self.conv1(x)), 2, 2)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), jax.nn.softmax(self.conv4_1(x), axis=-1)


class RNet(nnx.Module):
    """Refinement net on 24 x 24 crops."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1, self.prelu1 = conv2d(3, 28, 3, rngs=rngs), PReLU(28)
        self.conv2, self.prelu2 = conv2d(28, 48, 3, rngs=rngs), PReLU(48)
        self.conv3, self.prelu3 = conv2d(48, 64, 2, rngs=rngs), PReLU(64)
        self.dense4, self.prelu4 = nnx.Linear(576, 128, rngs=rngs), PReLU(128)
        self.dense5_1 = nnx.Linear(128, 2, rngs=rngs)
        self.dense5_2 = nnx.Linear(128, 4, rngs=rngs)

    def __call__(self, x):
        x = max_pool_ceil(self.prelu1(self.conv1(x)), 3, 2)
        x = max_pool_ceil(self.prelu2(self.conv2(x)), 3, 2)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(wh_flatten(x)))
        return self.dense5_2(x), jax.nn.softmax(self.dense5_1(x), axis=-1)


class ONet(nnx.Module):
    """Output net on 48 x 48 crops: box offsets, 5 landmarks, face probability."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1, self.prelu1 = conv2d(3, 32, 3, rngs=rngs), PReLU(32)
        self.conv2, self.prelu2 = conv2d(32, 64, 3, rngs=rngs), PReLU(64)
        self.conv3, self.prelu3 = conv2d(64, 64, 3, rngs=rngs), PReLU(64)
        self.conv4, self.prelu4 = conv2d(64, 128, 2, rngs=rngs), PReLU(128)
        self.dense5, self.prelu5 = nnx.Linear(1152, 256, rngs=rngs), PReLU(256)
        self.dense6_1 = nnx.Linear(256, 2, rngs=rngs)
        self.dense6_2 = nnx.Linear(256, 4, rngs=rngs)
        self.dense6_3 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        x = max_pool_ceil(self.prelu1(self.conv1(x)), 3, 2)
        x = max_pool_ceil(self.prelu2(self.conv2(x)), 3, 2)
        x = max_pool_ceil(self.prelu3(self.conv3(x)), 2, 2)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(wh_flatten(x)))
        return self.dense6_2(x), self.dense6_3(x), jax.nn.softmax(self.dense6_1(x), axis=-1)


class MTCNN(nnx.Module):
    """The three nets side by side: the tree a converted MTCNN checkpoint has."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.pnet, self.rnet, self.onet = PNet(rngs=rngs), RNet(rngs=rngs), ONet(rngs=rngs)


@functools.cache
def pnet() -> Functional:
    return Functional(lambda rngs: PNet(rngs=rngs))


@functools.cache
def rnet() -> Functional:
    return Functional(lambda rngs: RNet(rngs=rngs))


@functools.cache
def onet() -> Functional:
    return Functional(lambda rngs: ONet(rngs=rngs))


@functools.cache
def mtcnn() -> Functional:
    """All three: ``template`` is ``{"pnet": ..., "rnet": ..., "onet": ...}``."""
    return Functional(lambda rngs: MTCNN(rngs=rngs))
