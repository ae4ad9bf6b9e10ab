"""Applying a chain of transforms to one image: every parameter drawn from the chain's key, kinds in order."""

import jax
import jax.numpy as jnp

from leat_jax.transforms import jpeg, pixel, resample


def uniform(key, transform, parameter: str, shape=()):
    """Draws a parameter of ``transform`` uniformly from its range (exactly lo when lo == hi)."""
    lo, hi = transform.range(parameter)
    return jax.random.uniform(key, shape, jnp.float32, lo, hi) if hi > lo else jnp.full(shape, lo, jnp.float32)


def apply_jpeg(transform, key, image):
    """JPEG at an integer quality drawn uniformly from the range, both ends included; the quantisation
    rounding's gradient is the transform's ``gradient`` surrogate."""
    lo, hi = transform.range("quality")
    quality = jax.random.randint(key, (), int(lo), int(hi) + 1).astype(jnp.float32)
    return jpeg.jpeg(image, quality, transform.word("gradient"))


def apply_resize(transform, key, image):
    """Down by a drawn factor and back up (Pillow's bicubic)."""
    return resample.resize_down_up(image, uniform(key, transform, "factor"))


def apply_blur(transform, key, image):
    """Gaussian blur of a drawn sigma; the kernel is sized for the range's top."""
    return pixel.blur(image, uniform(key, transform, "sigma"), transform.range("sigma")[1])


def apply_jitter(transform, key, image):
    """Re-alignment jitter: vertical and horizontal shift, scale and angle drawn independently."""
    k_shift, k_scale, k_angle = jax.random.split(key, 3)
    shift = uniform(k_shift, transform, "shift", (2,))
    scale = uniform(k_scale, transform, "scale")
    return resample.jitter(image, shift[0], shift[1], scale, uniform(k_angle, transform, "angle"))


def apply_noise(transform, key, image):
    """Gaussian noise of a drawn standard deviation."""
    k_std, k_noise = jax.random.split(key)
    return pixel.add_noise(image, k_noise, uniform(k_std, transform, "std"))


APPLY = {
    "identity": lambda transform, key, image: image,
    "round8": lambda transform, key, image: pixel.round8(image),
    "jpeg": apply_jpeg,
    "resize": apply_resize,
    "blur": apply_blur,
    "jitter": apply_jitter,
    "noise": apply_noise,
}


def apply_chain(chain, key, image):
    """Applies the transforms of ``chain`` in order to one image, each with parameters drawn from its own share
    of ``key`` (``jax.random.split`` per transform), so a draw depends on the key alone.

    Differentiable w.r.t. the image (roundings pass surrogate gradients), jittable and vmappable (the chain is
    static; vmap over keys and images).

    Args:
        chain: sequence of ``Transform`` (static).
        key: PRNG key of this image's draw.
        image: one HWC float32 image in [-1, 1], any height and width.
    Returns:
        The transformed image, same shape, in [-1, 1].
    """
    if not chain:
        return image
    for transform, k in zip(chain, jax.random.split(key, len(chain))):
        image = APPLY[transform.name](transform, k, image)
    return jnp.clip(image, -1.0, 1.0)
