"""A victim that sees its aligned crop of a photo region through a differentiable warp.

``warped(victim, border, supersample)`` is a ``Victim`` whose parameters are
``(network params, Warp)`` and whose input is a *region* of a photo: it
samples the victim's crop from the region (bilinear, as ``cv2.warpAffine``
and PIL's QUAD transform do), then applies the victim's own preprocessing
and network. Gradients flow through the bilinear weights to the region's
pixels, so an attack on the region is an attack on the photo's pixels, with
the eps bound holding on them as written.

Coordinates: pixel centres at integers, 0-based, (x = column, y = row). A
``Warp`` holds the affine map from output-crop (u, v) to *photo* (x, y), the
region's top-left corner in the photo, and the photo's size (for borders).
Borders (``leat_jax.faces.align``): ``constant`` reads black (-1) outside
the photo, as cv2's ``borderValue=0``; ``reflect`` mirrors about the edge
pixels (numpy's ``reflect`` padding, which the FFHQ script uses); ``edge``
repeats edge pixels. ``supersample`` s > 1 averages s x s bilinear samples
spread evenly over each output pixel (a box filter; antialiasing when a
large face is shrunk into the crop).

The warp's numbers are stored as int32 (the float32 bits of the affine map):
the attack casts every floating parameter to its compute dtype, and bfloat16
coordinates would be off by pixels.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from leat_jax.victims.base import Victim

BLACK = -1.0  # cv2's border value 0 in the [-1, 1] convention


class Warp(NamedTuple):
    """One crop's placement (all int32, see the module docstring).

    affine_bits: (2, 3) float32 bits of output (u, v, 1) -> photo (x, y).
    origin: (2,) the region's top-left pixel in the photo, (row, col).
    photo: (2,) the photo's (height, width).
    """

    affine_bits: jax.Array
    origin: jax.Array
    photo: jax.Array


def make_warp(affine, origin, photo_hw) -> Warp:
    """A ``Warp`` (numpy arrays) from a float affine map, the region's origin and the photo size."""
    bits = np.asarray(affine, np.float32).reshape(2, 3).view(np.int32)
    return Warp(bits.copy(), np.asarray(origin, np.int32).reshape(2), np.asarray(photo_hw, np.int32).reshape(2))


def affine_of(warp: Warp, xp=jnp):
    """The float32 affine map held by ``warp``."""
    if xp is np:
        return np.asarray(warp.affine_bits, np.int32).view(np.float32)
    return jax.lax.bitcast_convert_type(warp.affine_bits, jnp.float32)


def sample_grid(affine, size: tuple[int, int], supersample: int, xp=jnp):
    """Photo (x, y) of every sub-sample: arrays (H*s, W*s), float32."""
    h, w = size
    s = supersample
    # sub-sample i of output pixel u sits at u + (i + 0.5) / s - 0.5
    u = (xp.arange(w * s, dtype=xp.float32) + 0.5) / s - 0.5
    v = (xp.arange(h * s, dtype=xp.float32) + 0.5) / s - 0.5
    a = affine
    x = a[0, 0] * u[None, :] + a[0, 1] * v[:, None] + a[0, 2]
    y = a[1, 0] * u[None, :] + a[1, 1] * v[:, None] + a[1, 2]
    return x, y


def border_index(i, n, border: str, xp=jnp):
    """(index inside 0..n-1, valid) for integer pixel indices ``i`` along an axis of length ``n``.

    ``valid`` is False only for ``constant`` samples outside the photo.
    """
    if border == "constant":
        valid = (i >= 0) & (i <= n - 1)
        return xp.clip(i, 0, n - 1), valid
    if border == "edge":
        return xp.clip(i, 0, n - 1), xp.ones(i.shape, bool)
    if border == "reflect":
        period = xp.maximum(2 * (n - 1), 1)
        r = xp.mod(i, period)
        r = xp.where(r > n - 1, period - r, r)
        return xp.clip(r, 0, n - 1), xp.ones(i.shape, bool)
    raise ValueError(f"unknown border {border!r}")


def _neighbours(affine, photo, size, supersample, border, xp):
    """Per sub-sample: the four (row, col, weight, valid) bilinear taps, in photo coordinates."""
    x, y = sample_grid(affine, size, supersample, xp)
    x0, y0 = xp.floor(x), xp.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(xp.int32), y0.astype(xp.int32)
    taps = []
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            row, vr = border_index(y0 + dy, photo[0], border, xp)
            col, vc = border_index(x0 + dx, photo[1], border, xp)
            taps.append((row, col, wy * wx, vr & vc))
    return taps


def sample(region: jax.Array, warp: Warp, size: tuple[int, int], supersample: int = 1, border: str = "constant"):
    """The crop (N, h, w, C) of ``region`` (N, H, W, C) that ``warp`` places; differentiable in ``region``."""
    affine = affine_of(warp)
    taps = _neighbours(affine, warp.photo, size, supersample, border, jnp)
    hr, wr = region.shape[1], region.shape[2]
    dtype = region.dtype
    out = 0.0
    for row, col, weight, valid in taps:
        # photo -> region coordinates; the region covers every tap of its crops (clip: a guard)
        r = jnp.clip(row - warp.origin[0], 0, hr - 1)
        c = jnp.clip(col - warp.origin[1], 0, wr - 1)
        value = region[:, r, c, :]
        value = jnp.where(valid[None, :, :, None], value, jnp.asarray(BLACK, dtype))
        out = out + value.astype(jnp.float32) * weight[None, :, :, None]
    if supersample > 1:
        n, hs, ws, ch = out.shape
        s = supersample
        out = out.reshape(n, hs // s, s, ws // s, s, ch).mean(axis=(2, 4))
    return out.astype(dtype)


def footprint(affine, photo_hw: tuple[int, int], size: tuple[int, int], supersample: int = 1,
              border: str = "constant", margin: int = 1) -> np.ndarray:
    """(H, W) bool mask of the photo pixels a crop can read, dilated by ``margin`` pixels.

    Every pixel with a nonzero bilinear weight is inside (computed in float32
    like the sampler, and the margin absorbs any rounding difference), so a
    pixel outside the mask never changes the crop.
    """
    photo = np.asarray(photo_hw, np.int32)
    taps = _neighbours(np.asarray(affine, np.float32), photo, size, supersample, border, np)
    mask = np.zeros(tuple(int(v) for v in photo_hw), bool)
    for row, col, _, valid in taps:
        mask[row[valid], col[valid]] = True
    if margin:
        padded = np.pad(mask, margin)
        h, w = mask.shape
        grown = np.zeros_like(mask)
        for dy in range(2 * margin + 1):
            for dx in range(2 * margin + 1):
                grown |= padded[dy : dy + h, dx : dx + w]
        mask = grown
    return mask


@functools.cache
def warped(victim: Victim, border: str = "constant", supersample: int = 1) -> Victim:
    """``victim`` seen through a warp: params ``(victim params, Warp)``, input a photo region.

    Cached, so equal arguments give the same object (and the attack compiles once).
    """
    size = tuple(victim.input_size)

    def apply(params, region):
        net_params, warp = params
        crop = sample(region, warp, size, supersample, border)
        return victim.apply(net_params, victim.preprocess(crop))

    return Victim(
        name=victim.name,
        input_size=size,
        preprocess=lambda images: images,  # the region goes to ``apply`` whole
        apply=apply,
        init_params=victim.init_params,
        template=victim.template,
        prepare=lambda params: (victim.prepare(params[0]), params[1]),
    )
