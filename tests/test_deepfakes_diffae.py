"""DiffAE editing pipeline: schedule, sampler, edit, converters and the whole
function on a small configuration (jit, vmap over attributes, gradients
through rematerialised loops).

The full-size UNet and classifier are checked against the official code in
tests/test_golden.py (golden folders ``diffae_unet`` and ``diffae_cls``);
here the sampler is also checked alone, fed the UNet outputs the official
loops recorded.
"""
from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from converters import diffae as converter
from converters.keymap import ConversionError
from leat_jax.checkpoints import flatten, unflatten
from leat_jax.deepfakes import diffae as dae
from leat_jax.models import diffae as model
from tests.golden_harness import GOLDEN_DIR, nchw_to_nhwc

# Two levels (down, up and lateral paths, attention at 8x8), one ResBlock per
# level on the way down: XLA's compile time on CPU grows with the block count.
SMALL = dae.DiffAEConfig(
    inversion_steps=3,
    render_steps=2,
    encoder=model.EncoderConfig(image_size=16, model_channels=32, out_channels=64, channel_mult=(1, 2),
                                num_res_blocks=1, attention_resolutions=(8,)),
    unet=model.UNetConfig(image_size=16, model_channels=32, embed_channels=64, channel_mult=(1, 2),
                          num_res_blocks=1, attention_resolutions=(8,)),
)


# --- schedule -------------------------------------------------------------------------

@pytest.mark.parametrize("count,stride", [(100, 10), (250, 4), (200, 5), (20, 50), (2, 500), (1000, 1)])
def test_respacing_keeps_the_official_steps(count, stride):
    kept = dae.space_timesteps(1000, count)
    assert len(kept) == count and kept[0] == 0 and kept[-1] == 1000 - stride
    np.testing.assert_array_equal(np.diff(kept), stride)


def test_respacing_refuses_counts_without_an_integer_stride():
    for count in (1, 700, 999):  # T=1 too, as the official sampler
        with pytest.raises(ValueError, match="integer stride"):
            dae.space_timesteps(1000, count)


def test_schedules():
    kept, abar = dae.spaced_alphas_cumprod(dae.DEFAULT, 100)
    base = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(abar, base[kept], rtol=1e-14)
    np.testing.assert_allclose(dae.spaced_alphas_cumprod(dae.DEFAULT, 2)[1], [0.9999, 0.0777967], rtol=1e-6)
    render, inv = dae.render_schedule(dae.DEFAULT), dae.inversion_schedule(dae.DEFAULT)
    assert list(render.t[:2]) == [990, 980] and render.t[-1] == 0 and len(render.t) == 100
    assert list(inv.t[:2]) == [0, 4] and inv.t[-1] == 996 and len(inv.t) == 250
    # render ends on alpha-bar 1 (the clamped x0), inversion on alpha-bar 0 (the re-derived eps)
    assert (render.to[-1], render.to_m1[-1]) == (1.0, 0.0) and (inv.to[-1], inv.to_m1[-1]) == (0.0, 1.0)
    np.testing.assert_allclose(render.to[:-1] ** 2, abar[::-1][1:], rtol=1e-12)


def test_timestep_embedding_is_cos_then_sin_of_the_raw_step():
    t = np.array([0, 500, 990])
    emb = np.asarray(model.timestep_embedding(jnp.asarray(t), 128))
    freqs = np.exp(-math.log(10000) * np.arange(64) / 64)
    want = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
    assert np.abs(emb - want).max() < 1e-4  # float32 phase of t * f up to 990
    np.testing.assert_array_equal(emb[0], np.r_[np.ones(64), np.zeros(64)])


def test_nearest_upsample_is_torch_interpolate():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="nearest").numpy()
    np.testing.assert_array_equal(np.asarray(model.upsample2(jnp.asarray(x.transpose(0, 2, 3, 1)))),
                                  want.transpose(0, 2, 3, 1))


# --- sampler alone, on the official loops' recorded UNet outputs ----------------------------

@pytest.fixture(scope="module")
def unet_case():
    return dict(np.load(GOLDEN_DIR / "diffae_unet" / "case_0.npz"))


def _replay(case, kind, **kw):
    """The official T-step loop with the UNet replaced by the eps it returned at each step."""
    ts = case[f"aux_{kind}_t"]
    table = jnp.asarray(case[f"aux_{kind}_eps"].transpose(0, 1, 3, 4, 2))  # (T, N, H, W, C), in call order

    def eps_fn(x, t, cond):
        return table[jnp.argmax(jnp.asarray(ts) == t[0])]

    steps = (dae.render_schedule if kind == "ddim" else dae.inversion_schedule)(steps=len(ts))
    np.testing.assert_array_equal(steps.t, ts)
    out = dae.ddim_loop(eps_fn, jnp.asarray(nchw_to_nhwc(case["x_t"])), None, steps, **kw)
    return np.asarray(out).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("kind,golden", [("ddim", "ddim_x0"), ("inv", "ddim_xT")])
def test_sampler_reproduces_the_official_loops(unet_case, kind, golden):
    want = unet_case[golden].astype(np.float64)
    err = np.abs(_replay(unet_case, kind) - want).max() / np.abs(want).max()
    # Without the clamp of x0 (and eps re-derived from it) the loops go elsewhere.
    err_unclipped = np.abs(_replay(unet_case, kind, clip_denoised=False) - want).max() / np.abs(want).max()
    print(f"\n[diffae sampler] {kind}: {err:.1e} (unclipped {err_unclipped:.1e})")
    assert err < 2e-6, err
    assert err_unclipped > 1e-2


# --- the classifier edit ----------------------------------------------------------------

def test_attribute_vectors():
    v = dae.attribute("Wavy_Hair")
    assert v.shape == (40,) and v[33] == np.float32(0.3) and np.count_nonzero(v) == 1
    beard = dae.attribute("Beard", 0.4)  # predict.py: Beard -> No_Beard, amplitude negated
    assert beard[model.CELEBA_ATTRIBUTES.index("No_Beard")] == np.float32(-0.4) == beard[24]
    np.testing.assert_array_equal(dae.attribute(5, -0.2), dae.attribute("Bangs", -0.2))
    with pytest.raises(ValueError, match="unknown CelebA attribute"):
        dae.attribute("Purple_Hair")


def test_edit_is_the_notebook_formula():
    rng = np.random.default_rng(0)
    p = {"conds_mean": rng.normal(0, 0.1, (1, 512)), "conds_std": rng.uniform(0.3, 0.7, (1, 512)),
         "classifier": {"kernel": rng.normal(0, 0.05, (512, 40)), "bias": rng.normal(0, 0.1, 40)},
         "ema_classifier": {"kernel": rng.normal(0, 0.05, (512, 40)), "bias": rng.normal(0, 0.1, 40)}}
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    z = rng.normal(0, 0.5, (3, 512)).astype(np.float32)
    mean, std = np.asarray(p["conds_mean"], np.float64), np.asarray(p["conds_std"], np.float64)
    w = np.asarray(p["classifier"]["kernel"], np.float64).T  # torch's (40, 512) weight
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    edited = np.asarray(dae.edit_latent(p, jnp.asarray(z), dae.attribute(31, 0.3)))
    np.testing.assert_allclose(edited, z + 0.3 * math.sqrt(512) * std * unit[31], atol=2e-6)
    # several attributes add their steps; per-image strengths are honoured
    s = np.zeros((3, 40), np.float32)
    s[0, 2], s[1, 2], s[1, 20] = 0.5, -0.25, 0.1
    edited = np.asarray(dae.edit_latent(p, jnp.asarray(z), s))
    want = z + math.sqrt(512) * std * (s.astype(np.float64) @ unit)
    np.testing.assert_allclose(edited, want, atol=2e-6)
    np.testing.assert_allclose(edited[2], z[2], atol=1e-6)  # zero strengths: the normalise round trip only
    logits = np.asarray(dae.classifier_logits(p, jnp.asarray(z)))
    np.testing.assert_allclose(logits, ((z - mean) / std) @ w.T + np.asarray(p["classifier"]["bias"]), atol=1e-4)


# --- converters ----------------------------------------------------------------------

def _torch_layout(template):
    """The torch state_dict shapes of a port's template (inverse of the key map), in order."""
    out = {}
    for path, leaf in flatten(template).items():
        *mods, name = path.split("/")
        shape = tuple(leaf.shape)
        if name == "kernel":
            if len(shape) == 4:
                shape = (shape[3], shape[2], shape[0], shape[1])
            elif mods[-1] in ("qkv", "proj_out"):
                shape = (shape[1], shape[0], 1)
            else:
                shape = (shape[1], shape[0])
            name = "weight"
        elif name == "scale":
            name = "weight"
        out[".".join([*mods, name])] = shape
    return out


@pytest.fixture(scope="module")
def small_unet_sd():
    template = dae.unet_functional(SMALL.unet).template
    rng = np.random.default_rng(0)
    return template, {k: rng.normal(size=s).astype(np.float32) for k, s in _torch_layout(template).items()}


def test_unet_layout_is_the_official_one():
    """Keys and shapes of the ffhq256 UNet, against the official layout (590 tensors, 138,341,891 parameters)."""
    layout = json.loads((GOLDEN_DIR / "diffae_unet" / "layout.json").read_text())
    ours = _torch_layout(dae.unet_functional().template)
    assert sorted(ours.items()) == sorted((k, tuple(s)) for k, s, _ in layout["state_dict"])
    assert sum(math.prod(s) for s in ours.values()) == layout["num_parameters"] == 138_341_891


def test_unet_converter_reads_the_ema_decoder(small_unet_sd):
    template, sd = small_unet_sd
    ckpt = {"epoch": 3, "state_dict": {
        "x_T": np.zeros((2, 3, 16, 16), np.float32),
        **{"model." + k: -v for k, v in sd.items()},
        **{"ema_model." + k: v for k, v in sd.items()},
        # the encoder shares relative names (input_blocks.0.0.weight) with the UNet
        "ema_model.encoder.input_blocks.0.0.weight": np.ones((32, 3, 3, 3), np.float32),
        "ema_model.encoder.out.3.bias": np.ones(64, np.float32),
    }}
    params = converter.unet_to_params(ckpt, "last.ckpt", template=template)
    np.testing.assert_array_equal(params["input_blocks"][0][0]["kernel"],
                                  sd["input_blocks.0.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["time_embed"]["time_embed"][2]["kernel"],
                                  sd["time_embed.time_embed.2.weight"].T)
    np.testing.assert_array_equal(params["output_blocks"][1][2]["cond_emb_layers"][1]["bias"],
                                  sd["output_blocks.1.2.cond_emb_layers.1.bias"])  # the up-ResBlock (after attention)
    np.testing.assert_array_equal(params["middle_block"][1]["qkv"]["kernel"],
                                  sd["middle_block.1.qkv.weight"][:, :, 0].T)
    np.testing.assert_array_equal(params["input_blocks"][1][0]["out_layers"][0]["scale"],
                                  sd["input_blocks.1.0.out_layers.0.weight"])

    non_ema = {"state_dict": {"model." + k: v for k, v in sd.items()}}
    with pytest.raises(ConversionError, match=r"no EMA decoder.*non-EMA"):
        converter.unet_to_params(non_ema, "x.ckpt", template=template)
    dropped = "output_blocks.3.0.skip_connection.bias"
    broken = {"state_dict": {"ema_model." + k: v for k, v in sd.items() if k != dropped}}
    broken["state_dict"]["ema_model.out.2.weight"] = np.zeros((3, 64, 3, 3), np.float32)
    with pytest.raises(ConversionError) as err:
        converter.unet_to_params(broken, "x.ckpt", template=template)
    assert dropped in str(err.value) and "out.2.weight (3, 64, 3, 3)" in str(err.value)


def test_classifier_converter():
    rng = np.random.default_rng(1)
    sd = {"conds_mean": rng.normal(size=(1, 512)), "conds_std": rng.uniform(0.3, 0.7, (1, 512)),
          "classifier.weight": rng.normal(size=(40, 512)), "classifier.bias": rng.normal(size=40),
          "ema_classifier.weight": rng.normal(size=(40, 512)), "ema_classifier.bias": rng.normal(size=40)}
    sd = {k: v.astype(np.float32) for k, v in sd.items()}
    params = converter.classifier_to_params({"state_dict": sd, "global_step": 1}, "cls.ckpt")
    np.testing.assert_array_equal(params["classifier"]["kernel"], sd["classifier.weight"].T)
    np.testing.assert_array_equal(params["conds_std"], sd["conds_std"])
    with pytest.raises(ConversionError, match="not a DiffAE classifier"):
        converter.classifier_to_params({"state_dict": {"x_T": sd["conds_mean"]}}, "last.ckpt")
    with pytest.raises(ConversionError, match="missing parameters.*conds_mean"):
        converter.classifier_to_params({k: v for k, v in sd.items() if k != "conds_mean"}, "cls.ckpt")


# --- gradients through a DDIM loop -------------------------------------------------------

def test_ddim_loop_gradient_matches_finite_differences():
    """Both inputs of a loop (x and the condition) carry the gradient; remat leaves it unchanged."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.uniform(-0.5, 0.5, (1, 4, 4, 3)), jnp.float32)
    cond = jnp.asarray(rng.normal(size=(1, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(1, 4, 4, 3)), jnp.float32)

    def eps_fn(x, t, c):  # smooth, depends on all three
        return jnp.tanh(0.7 * x + 0.3 * c[:, None, None, :] + t[:, None, None, None] / 1000.0)

    def loss(x, c, steps, remat=True):
        out = dae.ddim_loop(eps_fn, x, c, steps, clip_denoised=False, remat=remat)
        return jnp.sum(w * out)

    for steps in (dae.render_schedule(steps=4), dae.inversion_schedule(steps=4)):
        gx, gc = jax.grad(loss, argnums=(0, 1))(x, cond, steps)
        gx0, gc0 = jax.grad(lambda x, c: loss(x, c, steps, remat=False), argnums=(0, 1))(x, cond)
        np.testing.assert_allclose(np.asarray(gx), np.asarray(gx0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(gc), np.asarray(gc0), rtol=1e-6, atol=1e-7)
        for arg, g in ((0, gx), (1, gc)):
            d = jnp.asarray(rng.normal(size=g.shape), jnp.float32)
            h = 1e-2
            plus = loss(*[(a + h * d) if i == arg else a for i, a in enumerate((x, cond))], steps)
            minus = loss(*[(a - h * d) if i == arg else a for i, a in enumerate((x, cond))], steps)
            fd, ad = float(plus - minus) / (2 * h), float(jnp.vdot(g, d))
            assert abs(fd - ad) <= 1e-2 * abs(ad) + 1e-3, (arg, fd, ad)


# --- the whole pipeline, small ------------------------------------------------------------

def _random_params(template, seed):
    """Stand-in weights straight from numpy (jitted initialisers take long to compile here)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, leaf in flatten(template).items():
        name = key.rsplit("/", 1)[-1]
        if name == "kernel":
            value = rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
        elif name in ("scale", "conds_std"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = rng.normal(0, 0.1, leaf.shape)
        out[key] = jnp.asarray(value, jnp.float32)
    return unflatten(out)


@pytest.fixture(scope="module")
def small_params():
    return {"encoder": _random_params(dae.encoder_functional(SMALL.encoder).template, 0),
            "unet": _random_params(dae.unet_functional(SMALL.unet).template, 1),
            "classifier": _random_params(dae.classifier_functional(64).template, 2)}


@pytest.fixture(scope="module")
def small_images():
    from tests.golden_harness import recipe

    return jnp.asarray(nchw_to_nhwc(recipe().make_input((2, 3, 16, 16), 3)))


def test_pipeline_jit_and_vmap_over_attributes(small_params, small_images):
    strengths = np.stack([dae.attribute("Smiling", 0.5), dae.attribute("Male", -0.5), np.zeros(40, np.float32)])
    stacked = dae.over_attributes_for(SMALL)(small_params, small_images, jnp.asarray(strengths))
    assert stacked.shape == (3, 2, 16, 16, 3)
    assert float(jnp.abs(stacked).max()) <= 1.0  # the last render step returns the clamped x0
    single = dae.pipeline(SMALL)(small_params, small_images, strengths[1])
    # Batched and single products sum in different orders; a DDIM chain carries that roundoff.
    np.testing.assert_allclose(np.asarray(stacked[1]), np.asarray(single), atol=5e-5)
    assert float(jnp.abs(stacked[0] - stacked[2]).max()) > 1e-2  # the attribute matters


def _eqns(jaxpr):
    """Every equation of a jaxpr, nested ones (jit, scan, checkpoint bodies) included."""
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for j in v if isinstance(v, (list, tuple)) else [v]:
                if hasattr(j, "eqns"):
                    yield from _eqns(j)
                elif hasattr(getattr(j, "jaxpr", None), "eqns"):
                    yield from _eqns(j.jaxpr)


def test_vmap_runs_the_inversion_once(small_params, small_images):
    """Encoding and inversion do not depend on the attribute: vmap leaves their loop unbatched."""
    strengths = jnp.zeros((5, 40))
    jaxpr = jax.make_jaxpr(jax.vmap(lambda s: dae._edit(small_params, small_images, s, SMALL)))(strengths)
    carries = [tuple(e.outvars[0].aval.shape) for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "scan"]
    assert sorted(carries) == [(2, 16, 16, 3), (5, 2, 16, 16, 3)], carries


def test_gradient_through_the_whole_edit(small_params, small_images):
    """What the image-space baseline differentiates: encoder, inversion and render, each step rematerialised."""
    strengths = jnp.asarray(dae.attribute("Young", 0.3))
    clean = dae.pipeline(SMALL)(small_params, small_images, strengths)

    def loss(x):
        return jnp.mean((dae._edit(small_params, x, strengths, SMALL) - clean) ** 2)

    # Memory: the forward loops keep one image per step for the backward pass,
    # nothing of the UNet (without remat: 213 activation stacks per loop here).
    jaxpr = jax.make_jaxpr(jax.grad(loss))(small_images)
    kept = [[tuple(v.aval.shape) for v in e.outvars[e.params["num_carry"]:]]
            for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "scan" and not e.params["reverse"]]
    assert sorted(kept) == [[(2, 2, 16, 16, 3)], [(3, 2, 16, 16, 3)]], kept  # render 2 steps, inversion 3
    x = small_images + 1e-3 * jnp.sign(jnp.sin(jnp.arange(small_images.size).reshape(small_images.shape)))
    g = np.asarray(jax.jit(jax.grad(loss))(x))
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_precision_setting_reaches_the_convolutions(small_params, small_images):
    highest = dataclasses.replace(SMALL, matmul_precision="highest")
    jaxpr = jax.make_jaxpr(lambda x: dae._edit(small_params, x, jnp.zeros(40), highest))(small_images)
    convs = [e for e in _eqns(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
    assert convs and all(str(e.params["precision"]).count("HIGHEST") == 2 for e in convs)


def test_preprocess_sizes():
    with pytest.raises(ValueError, match="resize them first"):
        dae.preprocess(jnp.zeros((1, 20, 20, 3)), SMALL)
    assert dae.preprocess(jnp.zeros((1, 300, 300, 3))).shape == (1, 256, 256, 3)  # the official loader
