"""DiffAE (ffhq256_autoenc) semantic encoder as a victim: image -> z_sem (N, 512).

The official inference path is ``LitModel.encode(x) = ema_model.encoder(x)``
on 256x256 RGB in [-1, 1]; z_sem is the raw encoder output (not normalised).
"""
from __future__ import annotations

import functools

import jax

from leat_jax.models.base import Functional
from leat_jax.models.diffae import FFHQ256_ENCODER, SemanticEncoder
from leat_jax.victims.base import Victim, resize

NAME = "diffae"
INPUT_SIZE = (FFHQ256_ENCODER.image_size, FFHQ256_ENCODER.image_size)


@functools.cache
def _functional() -> Functional:
    return Functional(lambda rngs: SemanticEncoder(FFHQ256_ENCODER, rngs=rngs))


def preprocess(images: jax.Array) -> jax.Array:
    """[-1, 1] NHWC, any size -> the official 256x256 input in [-1, 1].

    As the official loader (torchvision ``Resize(256)`` then
    ``CenterCrop(256)``): the shorter side is scaled to 256 keeping the aspect
    ratio, then the centre is cropped. A square image is just resized and one
    already at 256x256 passes untouched. The value range needs no change:
    the official ``Normalize(0.5, 0.5)`` maps [0, 1] to [-1, 1].
    """
    size = INPUT_SIZE[0]
    h, w = images.shape[1:3]
    # torchvision: the longer side becomes int(size * long / short).
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    images = resize(images, (new_h, new_w))
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return images[:, top : top + size, left : left + size, :]


def victim() -> Victim:
    f = _functional()
    return Victim.of(f, name=NAME, input_size=INPUT_SIZE, preprocess=preprocess)
