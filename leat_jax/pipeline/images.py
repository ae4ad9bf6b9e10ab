"""Decoding and encoding images, so that only the perturbation changes.

An image is held as the integer samples its file stores (``levels``: 8 or
16 bits, grey or RGB) plus an untouched alpha channel. The attack sees RGB
floats in [-1, 1]; the protected result is brought back to the same integer
grid, and the L-inf bound is enforced and checked on those integers, after
rounding, on what is actually written.

Modes: grey comes back grey (the RGB perturbation averaged over channels,
which keeps the bound), palette comes back RGB (a palette cannot hold the
perturbation), RGBA and LA keep their alpha, 16-bit comes back 16-bit, the
EXIF orientation is applied (the output is stored upright, without EXIF,
which also drops location and camera data), and an ICC profile is kept.
"""
from __future__ import annotations

import dataclasses
import io
import math
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from leat_jax.pipeline import png16, tiff16

# Suffixes taken as images when walking a folder (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Pillow's names of the formats we read; MPO is how Pillow names many camera JPEGs.
READ_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF"}
OUTPUT_FORMATS = {"png": ".png", "jpeg": ".jpg"}

_ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """An input or output image problem, as one line (the caller names the file)."""


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One image as stored, upright.

    Attributes:
      levels: (H, W, C) uint8 or uint16 samples, C = 1 (grey) or 3 (RGB):
        what the perturbation moves.
      alpha: (H, W) samples of the same dtype, or None; written back as read.
      bits: 8 or 16.
      description: e.g. ``PNG RGBA 8-bit`` (for the report).
      icc_profile: the embedded colour profile, kept on output.
    """

    levels: np.ndarray
    alpha: np.ndarray | None
    bits: int
    description: str
    icc_profile: bytes | None = None

    @property
    def maxval(self) -> int:
        return (1 << self.bits) - 1

    @property
    def size(self) -> tuple[int, int]:
        return self.levels.shape[0], self.levels.shape[1]

    def model_input(self) -> np.ndarray:
        """(H, W, 3) float32 in [-1, 1], grey repeated over RGB."""
        x = self.levels.astype(np.float32) * np.float32(2.0 / self.maxval) - np.float32(1.0)
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        return x


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not lose the image
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(a: np.ndarray | None, orientation: int) -> np.ndarray | None:
    """Apply an EXIF orientation to (H, W, ...) samples, as ``ImageOps.exif_transpose``."""
    if a is None or orientation == 1:
        return a
    t = lambda b: np.swapaxes(b, 0, 1)  # noqa: E731  (transpose of the two image axes)
    ops = {
        2: lambda b: b[:, ::-1],
        3: lambda b: b[::-1, ::-1],
        4: lambda b: b[::-1],
        5: t,
        6: lambda b: t(b)[:, ::-1],
        7: lambda b: t(b)[::-1, ::-1],
        8: lambda b: t(b)[::-1],
    }
    return np.ascontiguousarray(ops[orientation](a))


def _split(samples: np.ndarray, has_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if samples.ndim == 2:
        samples = samples[..., None]
    if has_alpha:
        return np.ascontiguousarray(samples[..., :-1]), np.ascontiguousarray(samples[..., -1])
    return samples, None


def _pillow_samples(im: Image.Image) -> tuple[np.ndarray, bool, int, str]:
    """(samples, has alpha, bits, mode read) through Pillow, for every mode we accept."""
    mode = im.mode
    transparent = "transparency" in im.info
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16), False, 16, mode
    if mode == "I":
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError("32-bit integer samples outside 0..65535 are not supported")
        return a.astype(np.uint16), False, 16, mode
    if mode == "F":
        raise ImageError("floating-point images are not supported")
    if mode in ("1", "L") and not transparent:
        return np.asarray(im.convert("L")), False, 8, mode
    if mode in ("L", "LA", "La", "1"):
        return np.asarray(im.convert("LA")), True, 8, mode
    if mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and transparent):
        return np.asarray(im.convert("RGBA")), True, 8, mode
    # RGB, RGBX, P, CMYK, YCbCr, LAB, HSV: the colours as RGB
    return np.asarray(im.convert("RGB")), False, 8, mode


def decode(data: bytes, max_side: int) -> Decoded:
    """Decode an image file's bytes; raises ``ImageError`` with a one-line reason."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # size is checked below, before any pixel is decoded
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image (no known image format)") from None
    except Exception as e:
        raise ImageError(f"damaged or truncated image header ({_first_line(e)})") from None
    if im.format not in READ_FORMATS:
        raise ImageError(f"{im.format} images are not supported (JPEG, PNG, WebP, BMP and TIFF are)")
    width, height = im.size
    if max(width, height) > max_side:
        raise ImageError(f"{width}x{height} is larger than the limit of {max_side} pixels a side (--max-size)")
    if width == 0 or height == 0:
        raise ImageError(f"empty image ({width}x{height})")
    orientation = _orientation(im)
    icc = im.info.get("icc_profile") or None
    fmt = READ_FORMATS[im.format]
    try:
        if png16.bit_depth(data) == 16:
            samples, has_alpha, icc16 = png16.decode(data)
            bits, mode = 16, {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}[samples.shape[-1]]
            icc = icc16 or icc
        elif tiff16.is_deep_colour(im):
            samples, has_alpha = tiff16.decode(data)
            bits, mode = 16, "RGBA" if has_alpha else "RGB"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
            samples, has_alpha, bits, mode = _pillow_samples(im)
            if mode in ("CMYK", "LAB", "HSV"):
                icc = None  # a profile of those spaces does not describe the RGB written
    except ImageError:
        raise
    except (png16.PngError, tiff16.TiffError) as e:
        raise ImageError(str(e)) from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... on damaged files
        raise ImageError(f"damaged or truncated image data ({_first_line(e)})") from None
    levels, alpha = _split(samples, has_alpha)
    return Decoded(
        levels=_orient(levels, orientation),
        alpha=_orient(alpha, orientation),
        bits=bits,
        description=f"{fmt} {mode} {bits}-bit",
        icc_profile=icc,
    )


def rgb8(image: Decoded) -> np.ndarray:
    """8-bit RGB of an image's colour samples (16-bit scaled down, grey repeated, alpha dropped)."""
    levels = image.levels
    if image.bits == 16:
        levels = (levels >> 8).astype(np.uint8)
    if levels.shape[-1] == 1:
        levels = np.repeat(levels, 3, axis=-1)
    return levels


def level_step(eps: float, bits: int) -> int:
    """The largest change of an integer sample whose size in [-1, 1] is at most ``eps``."""
    scale = ((1 << bits) - 1) / 2.0
    return int(math.floor(eps * scale * (1 + 1e-12)))


def quantize(image: Decoded, protected: np.ndarray, eps: float) -> np.ndarray:
    """The protected image (H, W, 3) in [-1, 1] on the image's own integer grid.

    The perturbation is measured against exactly what the attack saw, rounded
    to whole levels and clipped to the bound, so rounding can never push a
    sample past eps.
    """
    x = image.model_input().astype(np.float64)
    eta = np.asarray(protected, np.float64) - x
    if image.levels.shape[-1] == 1:
        eta = eta.mean(axis=-1, keepdims=True)  # a mean of perturbations within eps is within eps
    step = level_step(eps, image.bits)
    delta = np.clip(np.rint(eta * (image.maxval / 2.0)), -step, step).astype(np.int64)
    out = np.clip(image.levels.astype(np.int64) + delta, 0, image.maxval)
    return out.astype(image.levels.dtype)


def linf(before: np.ndarray, after: np.ndarray, bits: int) -> float:
    """Largest sample difference, in the [-1, 1] convention."""
    if before.shape != after.shape:
        raise ImageError(f"written image has shape {after.shape}, expected {before.shape}")
    d = np.abs(before.astype(np.int64) - after.astype(np.int64)).max(initial=0)
    return float(d) * 2.0 / ((1 << bits) - 1)


def encode(image: Decoded, levels: np.ndarray, fmt: str, jpeg_quality: int = 95) -> bytes:
    """The file bytes of ``levels`` (with the image's alpha and profile) as ``png`` or ``jpeg``."""
    alpha = image.alpha
    if image.bits == 16:
        if fmt != "png":
            raise ImageError("JPEG cannot hold 16-bit samples; use --format png")
        samples = levels if alpha is None else np.concatenate([levels, alpha[..., None]], axis=-1)
        return png16.encode(samples, image.icc_profile)
    grey = levels.shape[-1] == 1
    if alpha is not None:
        if fmt != "png":
            raise ImageError("JPEG cannot hold an alpha channel; use --format png")
        arr, mode = np.concatenate([levels, alpha[..., None]], axis=-1), "LA" if grey else "RGBA"
    else:
        arr, mode = (levels[..., 0], "L") if grey else (levels, "RGB")
    im = Image.fromarray(np.ascontiguousarray(arr), mode)
    buf = io.BytesIO()
    extra = {"icc_profile": image.icc_profile} if image.icc_profile else {}
    if fmt == "png":
        im.save(buf, "PNG", compress_level=6, **extra)
    elif fmt == "jpeg":
        im.save(buf, "JPEG", quality=jpeg_quality, subsampling=0, **extra)
    else:
        raise ImageError(f"unknown output format {fmt!r}")
    return buf.getvalue()


def decode_written(data: bytes, like: Decoded) -> np.ndarray:
    """The levels of a file this module wrote, to check what is on disk."""
    out = decode(data, max_side=1 << 30)
    if out.bits != like.bits:
        raise ImageError(f"written image is {out.bits}-bit, expected {like.bits}-bit")
    return out.levels
