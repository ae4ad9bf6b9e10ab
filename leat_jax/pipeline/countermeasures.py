"""Real countermeasures a protected photo meets once posted: re-encoding, resizing, blurring (Pillow).

Each is named: ``jpeg95``, ``jpeg75``, ``jpeg50`` (Pillow's JPEG at that
quality, its default 4:2:0 chroma subsampling), ``webp80`` (lossy WebP at
quality 80), ``half`` (bicubic down to half size and back up) and ``blur``
(Gaussian, radius 1). ``a+b`` applies ``a`` then ``b``. They work on 8-bit
RGB, what a platform re-encodes; ``leat-jax robustness`` and ``leat-jax
evaluate --countermeasure`` read the protected images through them.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from leat_jax.errors import SetupError
from leat_jax.pipeline import images


def _encoded(fmt: str, quality: int) -> Callable[[Image.Image], Image.Image]:
    def run(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, fmt, quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return run


def _half(im: Image.Image) -> Image.Image:
    w, h = im.size
    small = im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BICUBIC)
    return small.resize((w, h), Image.Resampling.BICUBIC)


def _blur(im: Image.Image) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(radius=1.0))


BASE: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg95": _encoded("JPEG", 95),
    "jpeg75": _encoded("JPEG", 75),
    "jpeg50": _encoded("JPEG", 50),
    "webp80": _encoded("WEBP", 80),
    "half": _half,
    "blur": _blur,
}
# JPEG qualities of the report's plot (retention against quality), highest first.
JPEG_QUALITIES = (95, 75, 50)
# What ``leat-jax robustness`` applies by default: each alone, then each
# geometric change followed by each re-encoding, then both geometric changes.
DEFAULT = (
    *BASE,
    *(f"{g}+{c}" for g in ("half", "blur") for c in ("jpeg95", "jpeg75", "jpeg50", "webp80")),
    "half+blur",
)


def check(name: str) -> tuple[str, ...]:
    """The base steps of ``name`` (``a+b``); a one-line ``SetupError`` naming the unknown part."""
    steps = tuple(s.strip() for s in str(name).split("+"))
    for s in steps:
        if s not in BASE:
            raise SetupError(f"unknown countermeasure {s!r} in {name!r}; known: {', '.join(BASE)} (joined by +)")
    return steps


def parse_list(text: str) -> tuple[str, ...]:
    """``jpeg75,half+jpeg75`` -> checked names (in order, no repeats)."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise SetupError("no countermeasure named")
    for n in names:
        check(n)
    return names


def apply(name: str, rgb: np.ndarray) -> np.ndarray:
    """Countermeasure ``name`` on one (H, W, 3) uint8 RGB image; returns the same shape and dtype.

    Args:
      name: a base name or ``a+b`` (see the module docstring).
      rgb: the image's 8-bit RGB samples.
    Returns:
      What a viewer downloads after the countermeasure, as 8-bit RGB.
    """
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    for step in check(name):
        im = BASE[step](im)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def apply_decoded(name: str, image: images.Decoded) -> images.Decoded:
    """``apply`` on a decoded image: its 8-bit RGB (alpha dropped, as a re-encoding platform does)."""
    out = apply(name, images.rgb8(image))
    return images.Decoded(levels=out, alpha=None, bits=8, description=f"{image.description}, after {name}")
