"""SimSwap's two encodings: the photo as identity source, and as swap target.

* ``simswap_id``: ``L2norm(netArc(nearest_112(imagenet_norm(x224))))``, the
  ``latent_id`` SimSwap injects, [N, 512].
* ``simswap_G``: the generator's target features before the first
  identity-conditioned block, ``down3(down2(down1(first_layer(x01))))``,
  [N, 28, 28, 512] (NHWC) for a 224 crop.

Official inputs are 224x224 aligned crops: ImageNet mean/std for the identity
path, plain [0, 1] for the generator.
"""
from __future__ import annotations

import functools

from leat_jax.models.base import Functional
from leat_jax.models.simswap import ArcFaceResNet, Generator, GeneratorEncoder, l2_normalize, nearest_resize_torch
from leat_jax.victims.base import Victim, imagenet_normalize, resize, to_unit

INPUT_SIZE = (224, 224)
ARCFACE_SIZE = (112, 112)


@functools.cache
def arcface() -> Functional:
    return Functional(lambda rngs: ArcFaceResNet(rngs=rngs))


@functools.cache
def generator_encoder() -> Functional:
    return Functional(lambda rngs: GeneratorEncoder(rngs=rngs))


@functools.cache
def generator() -> Functional:
    """The whole 224 generator, ``apply(params, x01, latent_id)`` (for evaluation, not a victim)."""
    return Functional(lambda rngs: Generator(rngs=rngs))


def identity_preprocess(images):
    """[-1, 1] NHWC, any size -> the 224 ImageNet-normalised crop (``img_id``)."""
    return imagenet_normalize(to_unit(resize(images, INPUT_SIZE)))


def identity_apply(params, x):
    """``img_id`` [N, 224, 224, 3] -> unit identity embedding [N, 512].

    The 224 -> 112 step is torch's legacy nearest resize (every second pixel),
    not a filtered one: it is part of what the official pipeline computes.
    """
    x112 = nearest_resize_torch(x, ARCFACE_SIZE)
    return l2_normalize(arcface().apply(params, x112))


def identity_victim() -> Victim:
    f = arcface()
    return Victim.of(f, name="simswap_id", input_size=INPUT_SIZE, preprocess=identity_preprocess, apply=identity_apply)


def generator_preprocess(images):
    """[-1, 1] NHWC, any size -> the 224 [0, 1] target crop (no mean/std)."""
    return to_unit(resize(images, INPUT_SIZE))


def generator_apply(params, x):
    """Target crop [N, 224, 224, 3] in [0, 1] -> encoder features [N, 28, 28, 512]."""
    return generator_encoder().apply(params, x)


def generator_victim() -> Victim:
    f = generator_encoder()
    return Victim.of(f, name="simswap_G", input_size=INPUT_SIZE, preprocess=generator_preprocess, apply=generator_apply)
