"""Pixel-wise transforms on one HWC image in [-1, 1]: 8-bit rounding, additive noise, Gaussian blur."""

import math

import dm_pix
import jax
import jax.numpy as jnp

LEVELS = 127.5  # [-1, 1] spans 255 levels of an 8-bit file


def straight_through(hard, soft):
    """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass."""
    return soft + jax.lax.stop_gradient(hard - soft)


def round8(image):
    """Rounds to the 256 levels of an 8-bit file; straight-through gradient (identity).

    Args:
        image: float array in [-1, 1].
    Returns:
        The rounded image, same shape, in [-1, 1].
    """
    levels = jnp.round((jnp.clip(image, -1.0, 1.0) + 1.0) * LEVELS)
    return straight_through(levels / LEVELS - 1.0, image)


def add_noise(image, key, std):
    """Adds Gaussian noise of standard deviation ``std`` levels of 255 (sensor noise, re-encoding dither).

    Args:
        image: HWC float array in [-1, 1].
        key: PRNG key of the noise.
        std: standard deviation in levels of 255 (may be traced).
    Returns:
        The noisy image clipped to [-1, 1].
    """
    noise = jax.random.normal(key, image.shape, image.dtype) * (std / LEVELS)
    return jnp.clip(image + noise, -1.0, 1.0)


def blur(image, sigma, max_sigma: float):
    """Gaussian blur (dm-pix), the border extended by edge replication as image libraries do.

    Args:
        image: HWC float array in [-1, 1].
        sigma: standard deviation in pixels (may be traced); 0 leaves the image unchanged.
        max_sigma: the largest sigma this call may get (static): it fixes the kernel's radius, 3 sigma.
    Returns:
        The blurred image, same shape.
    """
    radius = max(1, math.ceil(3.0 * max_sigma))
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    # dm-pix divides by sigma**2: a tiny floor keeps sigma = 0 an exact identity instead of NaN
    return dm_pix.gaussian_blur(padded, jnp.maximum(sigma, 1e-3), 2 * radius + 1, padding="VALID")
