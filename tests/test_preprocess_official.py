"""Every victim's preprocessing against its official transform, on random images.

The official loaders work on PIL images: torchvision's ``Resize`` on a PIL
image is PIL's ``resize`` with ``BILINEAR``, ``CenterCrop`` cuts
``int(round((h - th) / 2))`` from the top; ICface's loader is PIL
``resize((128, 128), BICUBIC)``; then ``ToTensor`` (/255) and ``Normalize``.
Each is rebuilt here from PIL and torch (torchvision is not installed):

- on float images (PIL mode "F"): the same filter as ours, within FLOAT_TOL
  (float32 sample positions; 1e-5 measured);
- on 8-bit RGB images as the official code reads a photo: ours within one
  8-bit step for bilinear, 1.5 for bicubic (PIL rounds each of its two passes
  to 8 bits; bicubic's second pass sums the first one's rounding with
  weights whose magnitudes add up to more than 1).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from leat_jax.models.simswap import nearest_resize_torch
from leat_jax.victims import diffae, e4e, icface, simswap

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's
STEP = 2 / 255  # one 8-bit step in [-1, 1]
FLOAT_TOL = 5e-5


def random_u8(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def pil_resize(u8, size_hw, resample, eight_bit: bool):
    """PIL's resize of an (H, W, 3) uint8 image to ``size_hw``, as [0, 1] floats.

    ``eight_bit``: on the RGB image itself (the official path). Otherwise the
    filter alone, channel by channel on mode "F" images, in PIL's two passes
    (each clamped to [0, 1] as PIL's 8-bit passes are; the height first when
    it shrinks more than the width, as PIL orders them).
    """
    (h, w), (out_h, out_w) = u8.shape[:2], size_hw
    if eight_bit:
        return np.asarray(Image.fromarray(u8, "RGB").resize((out_w, out_h), resample), np.float64) / 255
    steps = [(out_h, w), (out_h, out_w)] if h / out_h > max(1.0, w / out_w) else [(h, out_w), (out_h, out_w)]

    def passes(a):
        for size in steps:
            if size != a.shape:
                a = np.clip(np.asarray(Image.fromarray(a, "F").resize(size[::-1], resample)), 0.0, 1.0)
        return a

    return np.stack([passes(u8[..., c].astype(np.float32) / 255) for c in range(3)], -1).astype(np.float64)


def torchvision_resize_short_side(h, w, size):
    """(new_h, new_w) of torchvision's ``Resize(size)``: the shorter side to ``size``, the longer truncated."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def center_crop(a, size):
    """torchvision's ``CenterCrop(size)`` of an (H, W, C) array."""
    top, left = int(round((a.shape[0] - size) / 2.0)), int(round((a.shape[1] - size) / 2.0))
    return a[top:top + size, left:left + size]


def ours(preprocess, u8):
    """Our preprocessing of one 8-bit image, read as our convention: [-1, 1] float32 NHWC."""
    x = jnp.asarray(u8[None].astype(np.float32) / 127.5 - 1.0)
    return np.asarray(preprocess(x)[0], np.float64)


SIZES = [(300, 200), (181, 257), (97, 131), (200, 90)]  # portrait, landscape, enlarged, one side each way


@pytest.mark.parametrize("hw", SIZES)
def test_e4e_resize_256_bilinear_normalize_half(hw):
    u8 = random_u8((*hw, 3), seed=hw[0])
    got = ours(e4e.preprocess, u8)
    for eight_bit, tol in ((False, FLOAT_TOL), (True, STEP)):
        official = (pil_resize(u8, (256, 256), Image.BILINEAR, eight_bit) - 0.5) / 0.5
        assert got.shape == official.shape == (256, 256, 3)
        assert np.abs(got - official).max() <= tol, eight_bit


@pytest.mark.parametrize("hw", SIZES)
def test_diffae_resize_short_side_center_crop_normalize_half(hw):
    u8 = random_u8((*hw, 3), seed=hw[1])
    got = ours(diffae.preprocess, u8)
    for eight_bit, tol in ((False, FLOAT_TOL), (True, STEP)):
        resized = pil_resize(u8, torchvision_resize_short_side(*hw, 256), Image.BILINEAR, eight_bit)
        official = (center_crop(resized, 256) - 0.5) / 0.5
        assert got.shape == official.shape == (256, 256, 3)
        assert np.abs(got - official).max() <= tol, eight_bit


@pytest.mark.parametrize("hw", SIZES)
def test_icface_resize_128_bicubic_normalize_half(hw):
    u8 = random_u8((*hw, 3), seed=hw[0] + hw[1])
    got = ours(icface.preprocess, u8)
    for eight_bit, tol in ((False, FLOAT_TOL), (True, 1.5 * STEP)):
        official = (pil_resize(u8, (128, 128), Image.BICUBIC, eight_bit) - 0.5) / 0.5
        assert got.shape == official.shape == (128, 128, 3)
        assert np.abs(got - official).max() <= tol, eight_bit
    # bilinear would not do: the two filters differ by far more than the bound
    bilinear = (pil_resize(u8, (128, 128), Image.BILINEAR, False) - 0.5) / 0.5
    assert np.abs(bilinear - official).max() > 20 * STEP


def test_icface_native_size_untouched():
    u8 = random_u8((128, 128, 3), seed=3)
    np.testing.assert_array_equal(ours(icface.preprocess, u8), u8.astype(np.float32) / 127.5 - 1.0)


def test_simswap_identity_imagenet_normalize_and_nearest_112():
    """224 crop: ``ToTensor`` then ImageNet ``Normalize``; ArcFace's 224 -> 112 is ``F.interpolate`` nearest."""
    u8 = random_u8((224, 224, 3), seed=7)
    t = torch.from_numpy(u8).permute(2, 0, 1)[None].double() / 255
    official = (t - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    got = ours(simswap.identity_preprocess, u8)
    np.testing.assert_allclose(got, official[0].permute(1, 2, 0).numpy(), rtol=0, atol=2e-6)
    x = torch.from_numpy(got.transpose(2, 0, 1)[None].astype(np.float32))
    official112 = F.interpolate(x, size=(112, 112))  # SimSwap's call, default mode: nearest
    got112 = nearest_resize_torch(jnp.asarray(got[None], jnp.float32), (112, 112))
    np.testing.assert_array_equal(np.asarray(got112)[0], official112[0].permute(1, 2, 0).numpy())


def test_simswap_generator_to_tensor_only():
    """The generator's target: ``ToTensor`` alone ([0, 1], no mean/std)."""
    u8 = random_u8((224, 224, 3), seed=8)
    got = ours(simswap.generator_preprocess, u8)
    np.testing.assert_allclose(got, u8 / 255, rtol=0, atol=1e-6)
