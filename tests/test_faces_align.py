"""Face alignment rules (``leat_jax.faces.align``) and the differentiable warp (``leat_jax.victims.warped``)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from leat_jax.faces import align
from leat_jax.victims import warped as W
from tests.golden_harness import GOLDEN_DIR

# Constructed landmarks: eyes 40 px apart, mouth 50 px below their midpoint.
LM = np.array([[100.0, 100.0], [140.0, 100.0], [120.0, 125.0], [105.0, 150.0], [135.0, 150.0]])


def similarity(theta: float, scale: float, shift) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def apply(m, pts):
    return np.asarray(pts) @ m[:, :2].T + m[:, 2]


def compose(outer, inner):
    """outer after inner, both 2x3."""
    return np.concatenate([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], axis=1)


# -- FFHQ rule -------------------------------------------------------------

def test_ffhq_quad_by_hand():
    # eye_avg (120, 100), eye_to_eye (40, 0), eye_to_mouth (0, 50): x-hat = (40,0) - (-50,0) -> (1, 0);
    # half side max(2*40, 1.8*50) = 90; y = (0, 90); c = (120, 100) + 0.1*(0, 50) = (120, 105).
    quad = align.ffhq_quad(LM)
    np.testing.assert_allclose(quad, [[30, 15], [30, 195], [210, 195], [210, 15]], atol=1e-12)
    # The affine map puts the crop's outer pixel corners on the quad (PIL QUAD semantics).
    a = align.ffhq_affine(LM, 256)
    corners = [[-0.5, -0.5], [-0.5, 255.5], [255.5, 255.5], [255.5, -0.5]]
    np.testing.assert_allclose(apply(a, corners), quad, atol=1e-9)


def test_ffhq_rule_on_the_astronaut_matches_the_research_note():
    case = np.load(GOLDEN_DIR / "mtcnn" / "case_real.npz")
    c, x, _ = align.ffhq_frame(case["landmarks"][0])
    np.testing.assert_allclose(c, [225.65, 106.50], atol=5e-3)
    np.testing.assert_allclose(x, [83.47, 4.60], atol=5e-3)
    assert abs(2 * np.hypot(*x) - 167.2) < 0.05


@pytest.mark.parametrize("theta", [0.3, -1.1, 2.5])
def test_ffhq_and_simswap_rotate_with_the_face(theta):
    r = similarity(theta, 1.0, (37.0, -12.0))
    moved = apply(r, LM)
    np.testing.assert_allclose(align.ffhq_affine(moved, 256), compose(r, align.ffhq_affine(LM, 256)), atol=1e-9)
    np.testing.assert_allclose(align.simswap_affine(moved), compose(r, align.simswap_affine(LM)), atol=1e-9)


def test_simswap_maps_a_scaled_rotated_template_exactly_onto_it():
    template = align.SIMSWAP_TEMPLATES_112[2] * 2.0  # frontal, at 224
    m = similarity(0.35, 1.7, (310.0, 95.0))
    landmarks = apply(m, template)
    matrix, index = align.simswap_matrix(landmarks, 224)
    assert index == 2
    np.testing.assert_allclose(apply(matrix, landmarks), template, atol=1e-9)
    np.testing.assert_allclose(apply(align.simswap_affine(landmarks), template), landmarks, atol=1e-9)
    # A profile face picks the profile template.
    _, index = align.simswap_matrix(apply(m, align.SIMSWAP_TEMPLATES_112[0] * 2.0), 224)
    assert index == 0


def test_similarity_fit_is_the_least_squares_optimum():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(5, 2)) * 30
    dst = apply(similarity(0.7, 0.8, (5, 9)), src) + rng.normal(size=(5, 2))
    m = align.similarity_lstsq(src, dst)
    # the 4-parameter linear least squares [a -b tx; b a ty], solved independently
    rows = np.zeros((10, 4))
    rows[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)]
    rows[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(5), np.ones(5)]
    a, b, tx, ty = np.linalg.lstsq(rows, dst.reshape(-1), rcond=None)[0]
    np.testing.assert_allclose(m, [[a, -b, tx], [b, a, ty]], atol=1e-10)


def test_icface_box_follows_the_official_crop():
    # square of side (60 + 80) / 2 = 70 about (130, 90), enlarged 1.6x -> 112 from (74, 34)
    assert align.icface_box([100, 50, 160, 130], (300, 300)) == (74, 34, 186, 146)
    # top/left outside: moved back to 0, size kept
    assert align.icface_box([-10, -20, 50, 40], (300, 300)) == (0, 0, 96, 96)
    # bottom/right outside: cut at the photo's edge
    assert align.icface_box([60, 60, 100, 100], (100, 100)) == (48, 48, 100, 100)
    a = align.icface_affine([60, 60, 100, 100], (100, 100), (128, 128))
    # the crop's outer pixel corners are the rectangle's
    np.testing.assert_allclose(apply(a, [[-0.5, -0.5], [127.5, 127.5]]), [[47.5, 47.5], [99.5, 99.5]], atol=1e-12)


def test_supersampling_follows_each_official_pipeline():
    big = 5.0  # photo pixels per crop pixel
    assert align.supersample(align.SIMSWAP, big, (224, 224)) == 1  # cv2.warpAffine: no filter
    assert align.supersample(align.FFHQ, big, (256, 256)) == 8  # ceil(5) -> 8 (power of two)
    assert align.supersample(align.FFHQ_E4E, big, (256, 256)) == 2  # floor(5 / 2) = 2
    assert align.supersample(align.FFHQ_E4E, 3.9, (256, 256)) == 1  # e4e's script does not shrink below 4x
    assert align.supersample(align.FFHQ, 0.7, (256, 256)) == 1
    assert align.supersample(align.FFHQ, 100.0, (256, 256)) == align.MAX_SUPERSAMPLE


def test_degenerate_landmarks_are_refused():
    with pytest.raises(align.AlignError):
        align.ffhq_affine(np.zeros((5, 2)), 256)
    with pytest.raises(align.AlignError):
        align.crop("e4e", (256, 256), np.full((5, 2), np.nan), [0, 0, 1, 1], (10, 10), align.FFHQ_E4E)


def test_a_victim_without_a_crop_rule_is_refused_not_given_the_ffhq_crop():
    lm = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]])
    with pytest.raises(align.AlignError, match="victim toy declares no crop rule"):
        align.crop("toy", (64, 64), lm, [20, 20, 80, 100], (120, 120))
    ok = align.crop("toy", (64, 64), lm, [20, 20, 80, 100], (120, 120), align.FFHQ)
    np.testing.assert_allclose(ok.affine, align.ffhq_affine(lm, 64))


# -- the warp --------------------------------------------------------------

def reference_sample(photo, affine, size, s, border):
    """Bilinear sampling written independently: pad the photo, then plain bilinear, in float64."""
    pad = 64
    mode = {"constant": ("constant", {"constant_values": -1.0}), "reflect": ("reflect", {}), "edge": ("edge", {})}
    name, kw = mode[border]
    padded = np.pad(photo.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode=name, **kw)
    h, w = size
    out = np.zeros((h, w, photo.shape[2]))
    for v in range(h):
        for u in range(w):
            acc = 0.0
            for j in range(s):
                for i in range(s):
                    uu, vv = u + (i + 0.5) / s - 0.5, v + (j + 0.5) / s - 0.5
                    x = affine[0, 0] * uu + affine[0, 1] * vv + affine[0, 2] + pad
                    y = affine[1, 0] * uu + affine[1, 1] * vv + affine[1, 2] + pad
                    x0, y0 = int(np.floor(x)), int(np.floor(y))
                    fx, fy = x - x0, y - y0
                    acc = acc + ((1 - fy) * ((1 - fx) * padded[y0, x0] + fx * padded[y0, x0 + 1])
                                 + fy * ((1 - fx) * padded[y0 + 1, x0] + fx * padded[y0 + 1, x0 + 1]))
            out[v, u] = acc / (s * s)
    return out


SAMPLE = jax.jit(W.sample, static_argnums=(2, 3, 4))  # eager dispatch of the many small ops is slow


def jax_warp(affine, origin, photo_hw):
    return jax.tree.map(jnp.asarray, W.make_warp(affine, origin, photo_hw))


@pytest.mark.parametrize("border,s", [("constant", 1), ("reflect", 2), ("edge", 1), ("constant", 4)])
def test_bilinear_sampling_equals_a_numpy_reference(border, s):
    rng = np.random.default_rng(1)
    photo = rng.uniform(-1, 1, (40, 50, 3)).astype(np.float32)
    # rotated and scaled, running off the top-left of the photo
    affine = np.concatenate([similarity(0.4, 1.3, (0, 0))[:, :2], [[-6.0], [-4.0]]], axis=1)
    ours = SAMPLE(jnp.asarray(photo)[None], jax_warp(affine, (0, 0), photo.shape[:2]), (20, 24), s, border)[0]
    ref = reference_sample(photo, affine.astype(np.float32).astype(np.float64), (20, 24), s, border)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=2e-5)


def test_region_offset_changes_nothing():
    rng = np.random.default_rng(2)
    photo = rng.uniform(-1, 1, (60, 70, 3)).astype(np.float32)
    affine = np.array([[0.9, 0.2, 20.0], [-0.2, 0.9, 15.0]])
    whole = SAMPLE(jnp.asarray(photo)[None], jax_warp(affine, (0, 0), (60, 70)), (16, 16), 2, "reflect")
    region = jnp.asarray(photo[10:50, 12:60])[None]
    part = SAMPLE(region, jax_warp(affine, (10, 12), (60, 70)), (16, 16), 2, "reflect")
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(part))


def test_identity_warp_returns_the_region():
    rng = np.random.default_rng(3)
    region = rng.uniform(-1, 1, (1, 17, 23, 3)).astype(np.float32)
    identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    for border in align.BORDERS:
        out = SAMPLE(jnp.asarray(region), jax_warp(identity, (0, 0), (17, 23)), (17, 23), 1, border)
        np.testing.assert_array_equal(np.asarray(out), region)


def test_ffhq_crop_matches_pil_quad_transform():
    case = np.load(GOLDEN_DIR / "mtcnn" / "case_real.npz")
    image, lm = case["image"], case["landmarks"][0]
    quad = align.ffhq_quad(lm)
    ref = np.stack([
        np.asarray(Image.fromarray(image[..., k].astype(np.float32), "F").transform(
            (64, 64), Image.QUAD, tuple((quad + 0.5).reshape(-1)), Image.BILINEAR))
        for k in range(3)
    ], axis=-1)
    ours = SAMPLE(jnp.asarray(image, jnp.float32)[None], jax_warp(align.ffhq_affine(lm, 64), (0, 0), image.shape[:2]),
                    (64, 64), 1, "reflect")[0]
    assert np.abs(np.asarray(ours) - ref).max() < 0.01  # of 255


@pytest.mark.parametrize("border", ["constant", "reflect"])
def test_gradients_reach_exactly_the_footprint(border):
    rng = np.random.default_rng(4)
    hw = (48, 64)
    photo = rng.uniform(-1, 1, (*hw, 3)).astype(np.float32)
    # a rotated crop partly outside the photo (right edge)
    affine = np.array([[1.1, 0.35, 50.0], [-0.35, 1.1, 10.0]])
    weights = jnp.asarray(rng.normal(size=(1, 16, 16, 3)), jnp.float32)
    warp = jax_warp(affine, (0, 0), hw)
    grad = jax.grad(lambda r: jnp.sum(W.sample(r, warp, (16, 16), 2, border) * weights))(jnp.asarray(photo)[None])
    touched = np.abs(np.asarray(grad[0])).max(axis=-1) > 0
    inside = W.footprint(affine, hw, (16, 16), 2, border, margin=0)
    guarded = W.footprint(affine, hw, (16, 16), 2, border)
    assert touched.sum() > 100
    assert not np.any(touched & ~guarded), "gradient outside the footprint"
    assert (touched & inside).sum() / inside.sum() > 0.9  # nearly every tap has a nonzero weight
    assert touched[:, :30].sum() == 0 and not guarded[:, :30].any()  # far pixels: exactly zero
