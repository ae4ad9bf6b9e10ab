"""Deepfake pipelines StyleCLIP, SimSwap, ICface: the pieces the golden cases
test only as a whole (FIR filters, the upsampling modulated conv, PixelNorm
over slots), the converters' refusals, and the pipelines under jit and vmap
over attributes."""
from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from converters import stylegan2 as conv
from converters.keymap import ConversionError
from leat_jax import deepfakes
from leat_jax.checkpoints import flatten
from leat_jax.deepfakes import icface, simswap, styleclip
from leat_jax.errors import SetupError
from leat_jax.models import stylegan2 as sg
from leat_jax.models.base import Functional
from leat_jax.models.styleclip_mapper import EDIT_STRENGTH, GROUPS
from leat_jax.victims import icface as icface_victim
from leat_jax.victims.simswap import generator as simswap_generator
from tests.golden_cases import styleclip_mapper as mapper_case
from tests.golden_cases import stylegan2 as sg_case
from tests.golden_harness import GOLDEN_DIR

K4 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0 * 4.0


@functools.cache
def _layout(name):
    return json.loads((GOLDEN_DIR / name / "layout.json").read_text())


def upfirdn2d_ref(x, kernel, up=1, down=1, pad=(0, 0)):
    """upfirdn2d by its definition, NHWC, float64: zero-insert, pad (negative crops),
    true 2-D convolution (kernel flipped) in valid mode, keep every ``down``-th sample."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    u = np.zeros((n, h * up, w * up, c))
    u[:, ::up, ::up] = x
    p0, p1 = pad
    u = np.pad(u, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)))
    u = u[:, max(-p0, 0):u.shape[1] - max(-p1, 0), max(-p0, 0):u.shape[2] - max(-p1, 0)]
    kf = np.asarray(kernel, np.float64)[::-1, ::-1]
    kh, kw = kf.shape
    oh, ow = u.shape[1] - kh + 1, u.shape[2] - kw + 1
    out = np.zeros((n, oh, ow, c))
    for a in range(kh):
        for b in range(kw):
            out += kf[a, b] * u[:, a:a + oh, b:b + ow]
    return out[:, ::down, ::down]


# ---------------------------------------------------------------- FIR filters


def test_upsample_2x_is_upfirdn2d_up2_pad_2_1():
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
    ours = np.asarray(sg.upsample_2x(jnp.asarray(x)))
    ref = upfirdn2d_ref(x, K4, up=2, pad=(2, 1))
    assert ours.shape == ref.shape == (2, 10, 14, 3)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    # zero padding at the border, not bilinear's edge clamp: a constant image darkens at the edge
    ones = np.asarray(sg.upsample_2x(jnp.ones((1, 4, 4, 1))))[0, :, :, 0]
    assert ones[0, 0] == pytest.approx(0.75 * 0.75) and ones[3, 3] == pytest.approx(1.0)


@pytest.mark.parametrize("pad", [(1, 1), (2, 1), (2, 2)])
def test_blur_is_upfirdn2d_with_pad(pad):
    x = np.random.default_rng(1).normal(size=(1, 9, 6, 2)).astype(np.float32)
    ours = np.asarray(sg.blur(jnp.asarray(x), pad))
    ref = upfirdn2d_ref(x, K4, pad=pad)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


# ------------------------------------------------------ modulated convolution


def _modconv_ref(x, weight, style, up: bool, demod: bool):
    """The official per-sample (fused) form, by definition, float64.

    weight [O, I, k, k] (torch), style [N, I]: W' = W * s / sqrt(I k k),
    demodulated per (sample, output channel); plain conv with padding k // 2,
    or conv_transpose2d(stride 2) as a scatter then the FIR blur with pad (1, 1).
    """
    x, weight, style = (np.asarray(a, np.float64) for a in (x, weight, style))
    o, i, k, _ = weight.shape
    w = weight[None] * style[:, None, :, None, None] / math.sqrt(i * k * k)  # [N, O, I, k, k]
    if demod:
        w = w / np.sqrt(np.sum(w * w, axis=(2, 3, 4), keepdims=True) + 1e-8)
    n, h, wd, _ = x.shape
    if not up:
        p = k // 2
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        out = np.zeros((n, h, wd, o))
        for a in range(k):
            for b in range(k):
                out += np.einsum("nhwi,noi->nhwo", xp[:, a:a + h, b:b + wd], w[:, :, :, a, b])
        return out
    out = np.zeros((n, 2 * h + k - 2, 2 * wd + k - 2, o))
    for a in range(k):
        for b in range(k):
            out[:, a:a + 2 * h:2, b:b + 2 * wd:2] += np.einsum("nhwi,noi->nhwo", x, w[:, :, :, a, b])
    return upfirdn2d_ref(out, K4, pad=(1, 1))


@pytest.mark.parametrize("up,demod", [(True, True), (False, True), (False, False)])
def test_modulated_conv_against_per_sample_definition(up, demod):
    rng = np.random.default_rng(2)
    n, cin, cout, k, sd = 2, 5, 4, 3 if demod else 1, 8
    f = Functional(lambda rngs: sg.ModulatedConv2d(cin, cout, k, sd, demodulate=demod, upsample=up, rngs=rngs))
    weight = rng.normal(size=(cout, cin, k, k)).astype(np.float32)
    mod_w = rng.normal(size=(cin, sd)).astype(np.float32)
    mod_b = (1 + 0.1 * rng.normal(size=cin)).astype(np.float32)
    params = {"kernel": conv._modulated_kernel(weight[None]), "modulation": {"kernel": mod_w.T, "bias": mod_b}}
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, f.template)
    x = rng.normal(size=(n, 6, 5, cin)).astype(np.float32)
    wlat = rng.normal(size=(n, sd)).astype(np.float32)
    ours = np.asarray(jax.jit(f.apply)(params, jnp.asarray(x), jnp.asarray(wlat)))
    style = wlat.astype(np.float64) @ mod_w.T.astype(np.float64) / math.sqrt(sd) + mod_b
    ref = _modconv_ref(x, weight, style, up, demod)
    assert ours.shape == ref.shape == ((n, 12, 10, cout) if up else (n, 6, 5, cout))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


# ------------------------------------------------------ generator and mapper


def test_generator_config_matches_the_official_layout():
    cfg = sg.GeneratorConfig()
    assert cfg.n_latent == 18
    layout = dict((k, s) for k, s, _ in _layout("stylegan2")["state_dict"])
    for i in range(cfg.n_latent - 1):
        assert layout[f"noises.noise_{i}"] == [1, 1, cfg.noise_size(i), cfg.noise_size(i)]
    for j in range(16):
        assert layout[f"convs.{j}.activate.bias"] == [cfg.channels(2 ** (j // 2 + 3))]


def test_pixel_norm_normalises_axis_1_the_mapper_slots():
    x = np.random.default_rng(3).normal(size=(2, 4, 16)).astype(np.float32)
    ours = np.asarray(sg.PixelNorm()(jnp.asarray(x)))
    ref = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    wrong = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=2, keepdims=True) + 1e-8)
    assert np.abs(ours - wrong).max() > 0.1  # the feature-axis norm would be another function


def _stack(*trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


@pytest.fixture(scope="module")
def mapper_sd():
    return mapper_case.standin_mapper_state_dict(_layout("styleclip_mapper"), 5)


def _mapper_file(sd, **opts):
    return {"state_dict": {"mapper." + k: v for k, v in sd.items()}, "opts": {**mapper_case.OPTS, **opts}}


def test_mapper_without_fine_group_zero_residual_and_stacks_with_full(mapper_sd):
    full = conv.mapper_to_params(_mapper_file(mapper_sd), "full")
    no_fine_sd = {k: v for k, v in mapper_sd.items() if not k.startswith("fine_mapping.")}
    no_fine = conv.mapper_to_params(_mapper_file(no_fine_sd, no_fine_mapper=True), "no_fine")
    w = jnp.asarray(np.random.default_rng(4).normal(size=(2, 18, 512)).astype(np.float32))
    d_full, d_nf = (np.asarray(styleclip.mapper().apply(p, w)) for p in (full, no_fine))
    assert np.all(d_nf[:, 8:] == 0.0) and np.abs(d_full[:, 8:]).max() > 0.1
    np.testing.assert_array_equal(d_nf[:, :8], d_full[:, :8])
    # one tree structure: prompts stack and map under vmap
    stacked = jax.vmap(styleclip.edit_latent, in_axes=(0, None))(_stack(full, no_fine), w)
    np.testing.assert_allclose(stacked[0], w + EDIT_STRENGTH * d_full, rtol=0, atol=1e-6)
    np.testing.assert_allclose(stacked[1], w + EDIT_STRENGTH * d_nf, rtol=0, atol=1e-6)


def test_mapper_groups_are_independent(mapper_sd):
    p = conv.mapper_to_params(_mapper_file(mapper_sd), "full")
    w = np.random.default_rng(6).normal(size=(1, 18, 512)).astype(np.float32)
    w2 = w.copy()
    w2[:, 5] += 1.0  # a medium slot
    d1, d2 = (np.asarray(styleclip.mapper().apply(p, jnp.asarray(a))) for a in (w, w2))
    changed = [name for name, lo, hi in GROUPS if np.abs(d1[:, lo:hi] - d2[:, lo:hi]).max() > 0]
    assert changed == ["medium_mapping"]


@pytest.mark.parametrize("change,match", [
    (lambda sd, o: o.update(no_fine_mapper=True), "no_fine_mapper"),
    (lambda sd, o: sd.pop("fine_mapping.mapping.3.bias"), "missing"),
    (lambda sd, o: o.update(mapper_type="SingleMapper"), "LevelsMapper"),
    (lambda sd, o: o.update(work_in_stylespace=True), "StyleSpace"),
])
def test_mapper_converter_refuses(mapper_sd, change, match):
    sd, opts = dict(mapper_sd), {}
    change(sd, opts)
    with pytest.raises(ConversionError, match=match):
        conv.mapper_to_params(_mapper_file(sd, **opts), "bad")


def test_generator_converter_reads_every_file_kind_and_checks_the_fir():
    sd = sg_case.standin_state_dict(_layout("stylegan2"), 1)
    from_rosinality = conv.generator_to_params({"g_ema": sd, "g": {k: -v for k, v in sd.items()},
                                                "latent_avg": np.zeros(512, np.float32)}, "rosinality")
    dec = {"decoder." + k: v for k, v in sd.items()}
    from_mapper = conv.generator_to_params({"state_dict": {"mapper.x.weight": np.zeros((2, 2), np.float32), **dec}})
    a, b = flatten(from_rosinality), flatten(from_mapper)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(a["convs/3/conv/kernel"], sd["convs.3.conv.weight"][0].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(a["noises/noise_5"][0, :, :, 0], sd["noises.noise_5"][0, 0])
    bad = dict(sd)
    bad["convs.4.conv.blur.kernel"] = np.full((4, 4), 0.25, np.float32)
    with pytest.raises(ConversionError, match="blur.kernel"):
        conv.generator_to_params({"g_ema": bad}, "bad")
    with pytest.raises(ConversionError, match="no StyleGAN2 generator"):
        conv.generator_to_params({"state_dict": {"encoder.a": np.zeros(2, np.float32)}}, "e4e without decoder")


# ------------------------------------------------------ pipelines: jit, vmap


def _abstract_stack(template, k):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((k, *s.shape), s.dtype), template)


def test_registry():
    assert set(deepfakes.NAMES) >= {"styleclip", "simswap", "icface"}
    assert deepfakes.get("styleclip").output_size == (256, 256)
    assert deepfakes.get("simswap").output_size == (224, 224)
    assert deepfakes.get("icface").output_size == (128, 128)
    with pytest.raises(deepfakes.UnknownDeepfakeError):
        deepfakes.get("faceapp")


def test_pipeline_shapes_over_attributes():
    from leat_jax import victims

    images = jax.ShapeDtypeStruct((2, 300, 280, 3), jnp.float32)
    sc_params = {"e4e": victims.get("e4e").template, "generator": styleclip.generator().template}
    out = jax.eval_shape(styleclip.over_attributes, sc_params, images, _abstract_stack(styleclip.mapper().template, 3))
    assert out.shape == (3, 2, 256, 256, 3) and out.dtype == jnp.float32

    g_template = simswap_generator().template
    ids = jax.ShapeDtypeStruct((4, 512), jnp.float32)
    assert jax.eval_shape(simswap.over_attributes, g_template, images, ids).shape == (4, 2, 224, 224, 3)
    per_image_ids = jax.ShapeDtypeStruct((4, 2, 512), jnp.float32)
    assert jax.eval_shape(simswap.over_attributes, g_template, images, per_image_ids).shape == (4, 2, 224, 224, 3)

    ic_params = {"neutralizer": icface_victim.network().template, "generator": icface_victim.network().template}
    attrs = jax.ShapeDtypeStruct((5, 20), jnp.float32)
    assert jax.eval_shape(icface.over_attributes, ic_params, images, attrs).shape == (5, 2, 128, 128, 3)
    per_image = jax.ShapeDtypeStruct((5, 2, 20), jnp.float32)
    assert jax.eval_shape(icface.over_attributes, ic_params, images, per_image).shape == (5, 2, 128, 128, 3)


def test_simswap_vmap_over_identities_equals_one_call_per_identity():
    from converters.simswap import full_generator_to_params
    from tests.golden_harness import recipe

    # recipe weights: numpy, seconds (the jitted module init of 55 M parameters takes ~25 s here)
    params = full_generator_to_params(recipe().make_state_dict(_layout("simswap_full")["state_dict"], 4), "recipe")
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32))
    ids = rng.normal(size=(2, 512))
    ids = jnp.asarray((ids / np.linalg.norm(ids, axis=1, keepdims=True)).astype(np.float32))
    over = np.asarray(simswap.over_attributes(params, x, ids))  # [2 identities, 1 image]
    one = np.asarray(simswap.swap(params, x, ids[1]))  # an unbatched identity applies to the batch
    assert over.shape == (2, 1, 224, 224, 3)
    np.testing.assert_allclose(over[1], one, rtol=0, atol=1e-5)
    assert np.abs(over).max() <= 1.0
    assert np.abs(over[0] - over[1]).mean() > 1e-3  # the identity reaches the output


def test_icface_driving_vector_units():
    np.testing.assert_array_equal(icface.driving_vector([0, 0, 0], [0] * 17), icface_victim.NEUTRAL_ATTR)
    v = icface.driving_vector([0.7, -0.7, 0.14], [5] + [2.5] * 16)
    np.testing.assert_allclose(v[:4], [1.0, 0.0, 0.6, 1.0], rtol=1e-6)
    assert v.dtype == np.float32 and v.shape == (20,)
    with pytest.raises(ValueError):
        icface.driving_vector([0, 0], [0] * 17)


def test_icface_samples_realistic_driving_and_reads_openface_csvs(tmp_path):
    v = icface.driving_vectors(400, 0)
    assert np.all(np.abs(v[:, :3] - 0.5) <= 0.28 / 1.4 + 1e-6)  # pose within +-0.28 rad
    au = v[:, 3:]
    assert au.max() <= 0.6 + 1e-6 and 0.2 < np.mean(au > 0) < 0.4  # sparse, at most intensity 3 of 5
    # An OpenFace CSV: other columns around, names padded with spaces, found by name.
    names = ["frame", " timestamp", *[f" {a}" for a in icface.ATTRIBUTES[3:]], " confidence",
             " pose_Tx", *[f" {a}" for a in icface.ATTRIBUTES[:3]]]
    rng = np.random.default_rng(1)
    rows = [[str(i), "0.0", *map(str, rng.uniform(0, 5, 17)), "0.98", "1.0", *map(str, rng.uniform(-0.5, 0.5, 3))]
            for i in range(25)]
    path = tmp_path / "drive.csv"
    path.write_text("\n".join(",".join(r) for r in [names, *rows]) + "\n")
    frames = icface.read_openface(path)
    pose, aus = [[float(x) for x in r[-3:]] for r in rows], [[float(x) for x in r[2:19]] for r in rows]
    want = icface.driving_vector(pose, aus)
    np.testing.assert_array_equal(frames, want)
    known, unknown = icface.attributes({"driving": str(path), "known": 2, "unknown": 1}, None, None, [], 0)
    assert [a.name for a in known + unknown] == ["drive.csv frame 0", "drive.csv frame 10", "drive.csv frame 20"]
    np.testing.assert_array_equal(unknown[0].value, want[20])
    with pytest.raises(SetupError, match="the CSVs give 3"):
        icface.attributes({"driving": [str(path)], "known": 4}, None, None, [], 0)
    (tmp_path / "bad.csv").write_text("frame, AU01_r\n0, 1\n")
    with pytest.raises(SetupError, match="bad.csv: not an OpenFace CSV"):
        icface.read_openface(tmp_path / "bad.csv")
