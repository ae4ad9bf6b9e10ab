"""Geometric transforms on one HWC image: resize down and back up, and the jitter of a face re-alignment.

Resizing follows Pillow's ``Image.resize(..., BICUBIC)`` (what platforms and our countermeasures use): Keys cubic
a = -0.5, the kernel widened by the scale when shrinking (antialiasing), taps outside the image dropped and the rest
renormalised. The reduced size ``round(factor * size)`` may be traced: both passes are dense (size x size) matrices
whose rows and columns past the reduced size are masked, so the shapes stay static.
The jitter samples bilinearly with its own gathers (dm-pix's affine_transform interpolates across the channel axis
too: the same values, several times slower here).
"""

import jax.numpy as jnp

SUPPORT = 2.0  # the cubic kernel's half-width in input pixels at scale 1


def cubic(x, a: float = -0.5):
    """Keys' cubic convolution kernel (Pillow's bicubic, a = -0.5)."""
    x = jnp.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = a * (((x - 5.0) * x + 8.0) * x - 4.0)
    return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def resize_matrix(size: int, n_in, n_out):
    """The (size, size) matrix resizing the first ``n_in`` of ``size`` samples to the first ``n_out`` of them.

    Args:
        size: static length of the axis.
        n_in: number of valid input samples (may be traced), <= size.
        n_out: number of output samples (may be traced), <= size; rows past it are zero.
    Returns:
        float32 matrix M with ``out = M @ in`` along the axis.
    """
    scale = n_in / n_out
    stretch = jnp.maximum(scale, 1.0)  # antialiasing: widen the kernel when shrinking
    centres = (jnp.arange(size) + 0.5) * scale
    offsets = (jnp.arange(size)[None, :] + 0.5 - centres[:, None]) / stretch
    weights = cubic(offsets) * (jnp.arange(size)[None, :] < n_in) * (jnp.abs(offsets) < SUPPORT)
    total = jnp.sum(weights, axis=1, keepdims=True)
    valid = (jnp.arange(size)[:, None] < n_out) & (total > 0.0)  # rows past n_out may have no tap at all
    return jnp.where(valid, weights / jnp.where(valid, total, 1.0), 0.0)


def resize_down_up(image, factor):
    """Resizes to ``round(factor * size)`` per side and back to the original size, bicubic as Pillow does.

    Args:
        image: HWC float array in [-1, 1].
        factor: size ratio in (0, 1] (may be traced).
    Returns:
        The image, same shape, clipped to [-1, 1] (the cubic kernel overshoots at edges).
    """
    height, width = image.shape[:2]
    n_h = jnp.maximum(jnp.round(factor * height), 1.0)
    n_w = jnp.maximum(jnp.round(factor * width), 1.0)
    rows = resize_matrix(height, n_h, height) @ resize_matrix(height, height, n_h)
    cols = resize_matrix(width, n_w, width) @ resize_matrix(width, width, n_w)
    out = jnp.einsum("hk,kwc->hwc", rows, image)
    out = jnp.einsum("wk,hkc->hwc", cols, out)
    return jnp.clip(out, -1.0, 1.0)


def bilinear(image, ys, xs):
    """Samples an HWC image at fractional (ys, xs) positions, bilinearly, edges replicated.

    Args:
        image: (H, W, C) array.
        ys, xs: (h, w) arrays of row and column positions (pixel centres at integers).
    Returns:
        (h, w, C) samples; differentiable w.r.t. the image and the positions.
    """
    height, width, channels = image.shape
    ys, xs = jnp.clip(ys, 0.0, height - 1.0), jnp.clip(xs, 0.0, width - 1.0)
    y0, x0 = jnp.floor(ys), jnp.floor(xs)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, height - 1), jnp.minimum(x0 + 1, width - 1)
    rows = image.reshape(height * width, channels)  # one gather reads a pixel's channels together
    top = rows[y0 * width + x0] * (1.0 - fx) + rows[y0 * width + x1] * fx
    bottom = rows[y1 * width + x0] * (1.0 - fx) + rows[y1 * width + x1] * fx
    return top * (1.0 - fy) + bottom * fy


def jitter(image, shift_y, shift_x, scale, angle_degrees):
    """Re-alignment jitter: rotation and scale about the image centre, then a translation (bilinear, edges
    replicated), as a re-detected face box cuts a slightly different crop.

    Args:
        image: HWC float array.
        shift_y, shift_x: translation of the content in pixels (may be traced).
        scale: zoom factor of the content, > 0 (may be traced).
        angle_degrees: rotation of the content in degrees (may be traced).
    Returns:
        The warped image, same shape.
    """
    height, width = image.shape[:2]
    theta = jnp.deg2rad(angle_degrees)
    cos, sin = jnp.cos(theta) / scale, jnp.sin(theta) / scale
    centre_y, centre_x = (height - 1) / 2.0, (width - 1) / 2.0
    # pull map: output pixel p reads input centre + R(-theta) (p - centre - shift) / scale
    dy, dx = jnp.meshgrid(jnp.arange(height) - centre_y - shift_y, jnp.arange(width) - centre_x - shift_x,
                          indexing="ij")
    return bilinear(image, centre_y + cos * dy + sin * dx, centre_x - sin * dy + cos * dx)
