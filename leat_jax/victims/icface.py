"""ICface's neutralizer as a victim: the neutral face is the latent LEAT moves.

ICface first maps the source face, with a fixed "neutral" attribute vector,
to a neutral face (``netGN``), then animates that face with a driving frame's
attributes (``netG``). Only the neutral face does not depend on the
deepfaker's choice of driving video, so it is the encoding attacked.

Input: 128 x 128 RGB in [-1, 1] (the official loader's Normalize(0.5, 0.5)),
which is already our image convention, so preprocessing is only the resize.
Output: the neutral face, NHWC (N, 128, 128, 3), tanh range.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from leat_jax.models.base import Functional
from leat_jax.models.icface import icface_generator
from leat_jax.victims.base import Victim, resize

INPUT_SIZE = (128, 128)

# Attribute order of the 20 planes (OpenFace 2.x names): head pose, then AU intensities.
ATTRIBUTES = (
    "pose_Rx", "pose_Ry", "pose_Rz",
    "AU01_r", "AU02_r", "AU04_r", "AU05_r", "AU06_r", "AU07_r", "AU09_r", "AU10_r",
    "AU12_r", "AU14_r", "AU15_r", "AU17_r", "AU20_r", "AU23_r", "AU25_r", "AU26_r", "AU45_r",
)

# The neutral vector: frontal pose ((0 rad + 0.7) / 1.4 = 0.5), no action units.
# The official test loop uses the driving frame's normalised vector * 1e-5 with
# the pose overwritten by 0.5, i.e. this vector plus a frame-dependent AU leak
# below 1e-5 that moves outputs at float32 rounding level; the exact vector
# makes the latent independent of any driving video, as LEAT intends.
NEUTRAL_ATTR = np.array([0.5, 0.5, 0.5] + [0.0] * 17, np.float32)
NEUTRAL_ATTR.setflags(write=False)


@functools.cache
def network() -> Functional:
    """``ResnetGenerator(23, 3, ngf=128, 6 blocks)``, shared by netGN and netG."""
    return Functional(icface_generator)


def preprocess(images):
    """[-1, 1] NHWC images, any size -> the official 128 x 128 input (same range).

    As the official loader: PIL ``resize((128, 128), BICUBIC)`` (aspect not
    kept), which on an 8-bit image resamples one axis, then the other, and
    clamps each pass's overshoot (bicubic's negative lobes) to the pixel range.
    PIL shrinks the height first when it shrinks more than the width (measured
    on Pillow 13, ``tests/test_preprocess_official.py``), else the width.
    """
    h, w = images.shape[1:3]
    out_h, out_w = INPUT_SIZE
    if (h, w) == INPUT_SIZE:
        return images
    first = (out_h, w) if h / out_h > max(1.0, w / out_w) else (h, out_w)
    one_axis = jnp.clip(resize(images, first, method="cubic"), -1.0, 1.0)
    return jnp.clip(resize(one_axis, INPUT_SIZE, method="cubic"), -1.0, 1.0)


def apply(params, x, attr=NEUTRAL_ATTR):
    """The neutral face ``netGN(cat[x, attr planes])``, NHWC.

    ``attr``: shape (20,) or (N, 20); the neutral vector unless told otherwise.
    """
    return network().apply(params, x, attr)


def victim() -> Victim:
    fn = network()
    return Victim.of(fn, name="icface", input_size=INPUT_SIZE, preprocess=preprocess, apply=apply)


def reenact(params_g, neutral, attr):
    """The reenactment generator ``netG(cat[neutral, attr planes])`` (for evaluation):
    ``attr`` are the driving frame's 20 normalised values, (20,) or (N, 20)."""
    return network().apply(params_g, neutral, attr)
