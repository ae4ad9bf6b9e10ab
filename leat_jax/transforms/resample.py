"""Geometric transforms on one HWC image: resize down and back up, and the jitter of a face re-alignment.

Resizing follows Pillow's ``Image.resize(..., BICUBIC)`` (what platforms and our countermeasures use): Keys cubic
a = -0.5, the kernel widened by the scale when shrinking (antialiasing), taps outside the image dropped and the rest
renormalised. The reduced size ``round(factor * size)`` may be traced: both passes are dense (size x size) matrices
whose rows and columns past the reduced size are masked, so the shapes stay static.
"""

import dm_pix
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


def jitter(image, shift_y, shift_x, scale, angle_degrees):
    """Re-alignment jitter: rotation and scale about the image centre, then a translation (bilinear, edges
    replicated), as a re-detected face box cuts a slightly different crop.

    Args:
        image: HWC float array.
        shift_y, shift_x: translation of the content in pixels (may be traced).
        scale: zoom factor of the content, > 0 (may be traced).
        angle_degrees: counter-clockwise rotation of the content in degrees (may be traced).
    Returns:
        The warped image, same shape.
    """
    height, width = image.shape[:2]
    theta = jnp.deg2rad(angle_degrees)
    cos, sin = jnp.cos(theta) / scale, jnp.sin(theta) / scale
    # pull map: output (y, x) reads input centre + R(-theta)/scale @ ((y, x) - centre - shift)
    centre = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0])
    linear = jnp.array([[cos, sin], [-sin, cos]])
    offset = centre - linear @ (centre + jnp.stack([shift_y, shift_x]))
    matrix = jnp.zeros((3, 3)).at[:2, :2].set(linear).at[2, 2].set(1.0)
    return dm_pix.affine_transform(image, matrix, offset=jnp.append(offset, 0.0), order=1, mode="nearest")
