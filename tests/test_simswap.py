"""SimSwap ports: converters (formats, safety, errors), preprocessing, and what
the golden cases exercise only gently (PReLU's negative side, the decoder)."""
from __future__ import annotations

import functools
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

import converters
from converters import simswap as conv
from converters import torch_io
from converters.keymap import ConversionError, convert_state_dict
from leat_jax import victims
from leat_jax.checkpoints import flatten
from leat_jax.models import simswap as models
from leat_jax.models.base import Functional
from leat_jax.victims import simswap as vs
from tests.golden_cases import simswap_G as gcase
from tests.golden_cases import simswap_id as idcase
from tests.golden_harness import GOLDEN_DIR, recipe


@functools.cache
def _layout(name):
    return json.loads((GOLDEN_DIR / name / "layout.json").read_text())


def _assert_same_params(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def _n_elements(layout):
    return sum(math.prod(s) for _, s, dt in layout if "int" not in dt)


@pytest.fixture(scope="module")
def arc_sd():
    return recipe().make_state_dict(_layout("simswap_id")["state_dict"], 3)


@pytest.fixture(scope="module")
def arc_params(arc_sd):
    return conv.identity_to_params(arc_sd, "recipe")


@pytest.fixture(scope="module")
def g_sd():
    return recipe().make_state_dict(_layout("simswap_G")["state_dict"], 3)


def _official_classes_gone():
    return "models.arcface_models" not in sys.modules and not hasattr(sys.modules.get("models"), "ResNet")


class _Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------
# Templates and registry


def test_templates_hold_exactly_the_official_tensors():
    # every float tensor of the official files (parameters and BN statistics) has a slot
    n_id = _n_elements(_layout("simswap_id")["state_dict"])
    assert sum(v.size for v in flatten(victims.get("simswap_id").template).values()) == n_id
    enc = _layout("simswap_G")["encoder_state_dict"]
    assert sum(v.size for v in flatten(victims.get("simswap_G").template).values()) == _n_elements(enc)
    n_g = _n_elements(_layout("simswap_G")["state_dict"])
    assert sum(v.size for v in flatten(vs.generator().template).values()) == n_g
    assert victims.get("simswap_id").input_size == victims.get("simswap_G").input_size == (224, 224)


# ----------------------------------------------------------------------------
# arcface_checkpoint.tar: both generations, both torch formats


SMALL = (1, 2, 1, 1)  # every kind of IR block, at a fraction of the file size


@pytest.fixture(scope="module")
def small_arc_sd():
    from benchmarks.reference import simswap as ref

    torch.manual_seed(0)
    return {k: v.numpy() for k, v in ref.ArcFaceResNet(SMALL).state_dict().items()}


@pytest.mark.parametrize(
    "legacy_dict,zip_format",
    [(False, True), (False, False), (True, True)],
    ids=["current-zip", "current-legacyformat", "legacydict-zip"],
)
def test_arcface_file_generations_and_formats(tmp_path, small_arc_sd, legacy_dict, zip_format):
    """Each generation of the file, in each torch format, yields the network's exact state_dict."""
    path = tmp_path / "arcface_checkpoint.tar"
    idcase.write_arcface_file(path, small_arc_sd, legacy_dict=legacy_dict, zip_format=zip_format, layers=SMALL)
    assert _official_classes_gone()  # so loading cannot import them
    ckpt = torch_io.load(path)
    if legacy_dict:
        assert {"epoch", "acc", "model", "metric_fc", "optimizer"} <= set(ckpt)
        assert torch_io.stub_class_name(ckpt["model"]).endswith("DataParallel")
        assert torch_io.stub_class_name(ckpt["model"]._modules["module"]) == "models.ResNet"
    else:
        assert torch_io.stub_class_name(ckpt) == "models.arcface_models.ResNet"
    sd = conv._network_state_dict(ckpt, str(path), "ArcFace")
    assert list(sd) == list(small_arc_sd)  # state_dict order, no prefix
    for k, v in small_arc_sd.items():
        np.testing.assert_array_equal(sd[k], v, err_msg=k)
    assert conv.arcface_block_counts(sd) == SMALL
    assert _official_classes_gone()


def test_arcface_legacy_release_end_to_end(tmp_path, arc_sd, arc_params):
    """The pre-2023 release: training dict, DataParallel, pickled SGD, pre-1.6 torch format, r101."""
    path = tmp_path / "arcface_checkpoint.tar"
    idcase.write_arcface_file(path, arc_sd, legacy_dict=True, zip_format=False)
    _assert_same_params(converters.to_params("simswap_id", path), arc_params)


def test_arcface_plain_state_dict_with_module_prefix(arc_sd, arc_params):
    prefixed = {"module." + k: v for k, v in arc_sd.items()}
    _assert_same_params(conv.identity_to_params(prefixed, "state_dict"), arc_params)
    _assert_same_params(conv.identity_to_params({"model": prefixed}, "state_dict"), arc_params)


def test_arcface_depth_is_counted_and_asserted(tmp_path, small_arc_sd):
    path = tmp_path / "arcface_checkpoint.tar"
    idcase.write_arcface_file(path, small_arc_sd, layers=SMALL)
    with pytest.raises(ConversionError, match=r"\[1, 2, 1, 1\].*\[3, 4, 23, 3\]"):
        converters.to_params("simswap_id", path)


def test_arcface_payload_is_refused_and_not_run(tmp_path, small_arc_sd):
    marker = tmp_path / "pwned"
    path = tmp_path / "arcface_checkpoint.tar"
    idcase.write_arcface_file(path, small_arc_sd, layers=SMALL,
                              attributes={"note": _Payload(marker)})
    with pytest.raises(torch_io.UnsafeCheckpointError, match="system"):
        converters.to_params("simswap_id", path)
    assert not marker.exists()


# ----------------------------------------------------------------------------
# latest_net_G.pth


def test_generator_file_legacy_format_module_prefix(tmp_path, g_sd):
    """(The zip format without prefix is the golden case's file.)"""
    path = tmp_path / "latest_net_G.pth"
    gcase.write_generator_file(path, g_sd, zip_format=False, prefix="module.")
    params = converters.to_params("simswap_G", path)
    # the encoder keeps its four stages, the identity blocks and decoder are ignored
    assert set(params) == {"first_layer", "down1", "down2", "down3"}
    np.testing.assert_array_equal(params["down2"][0]["kernel"], g_sd["down2.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["down3"][1]["var"], g_sd["down3.1.running_var"])
    full = conv.full_generator_to_params(torch_io.load(path), str(path))
    np.testing.assert_array_equal(full["BottleNeck"][8]["style2"]["linear"]["kernel"],
                                  g_sd["BottleNeck.8.style2.linear.weight"].T)


def test_generator_converter_names_missing_and_misshapen_keys(g_sd):
    sd = {k: v for k, v in g_sd.items() if k != "down2.0.weight"}
    with pytest.raises(ConversionError, match=r"missing parameters \[down2[./]0[./](weight|kernel)\]"):
        conv.generator_to_params(sd, "latest_net_G.pth")
    sd = dict(g_sd, **{"down1.1.running_var": np.ones(64, np.float32)})
    with pytest.raises(ConversionError, match=r"shape mismatch \[down1\.1\.running_var \(64,\)"):
        conv.generator_to_params(sd, "latest_net_G.pth")
    sd = dict(g_sd, **{"down4.0.weight": np.ones((512, 512, 3, 3), np.float32)})
    with pytest.raises(ConversionError, match=r"unexpected keys \[down4\.0\.weight\]"):
        conv.generator_to_params(sd, "latest_net_G.pth")
    # the encoder alone is enough for the victim, not for the whole generator
    enc = {k: v for k, v in g_sd.items() if k.startswith(gcase.ENCODER_PREFIXES)}
    conv.generator_to_params(enc, "encoder only")
    with pytest.raises(ConversionError, match=r"missing parameters \[BottleNeck[./]0[./]conv1[./]1[./]"):
        conv.full_generator_to_params(enc, "encoder only")


def test_generator_payload_is_refused_and_not_run(tmp_path, g_sd):
    marker = tmp_path / "pwned"
    path = tmp_path / "latest_net_G.pth"
    sd = {k: torch.from_numpy(v) for k, v in g_sd.items() if k.startswith(gcase.ENCODER_PREFIXES)}
    torch.save({**sd, "down1.0.bias": _Payload(marker)}, path)
    with pytest.raises(torch_io.UnsafeCheckpointError):
        converters.to_params("simswap_G", path)
    assert not marker.exists()


def test_wrong_file_for_converter_is_named(tmp_path, g_sd):
    with pytest.raises(ConversionError, match=r"IR blocks \[\] per stage"):
        conv.identity_to_params(g_sd, "latest_net_G.pth")
    with pytest.raises(ConversionError, match="neither"):
        conv.generator_to_params({"epoch": 3}, "x")


# ----------------------------------------------------------------------------
# Preprocessing and the fixed parts of the identity path


def test_preprocess_native_size_untouched_other_sizes_resized():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 224, 224, 3)), jnp.float32)
    unit = (x + 1) / 2
    np.testing.assert_array_equal(vs.generator_preprocess(x), unit)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_allclose(vs.identity_preprocess(x), (np.asarray(unit) - mean) / std, rtol=1e-6, atol=1e-6)
    # another size: resized to 224; a flat colour stays that colour
    flat = jnp.broadcast_to(jnp.asarray([0.2, -0.4, 0.6], jnp.float32), (1, 300, 256, 3))
    # 1e-5 on the [0, 1] crop; the identity path divides it by std, so its bound is 1e-5 / std per channel
    for pre, want, atol in ((vs.generator_preprocess, (np.array([0.2, -0.4, 0.6]) + 1) / 2, 1e-5),
                            (vs.identity_preprocess, ((np.array([0.2, -0.4, 0.6]) + 1) / 2 - mean) / std, 1e-5 / std)):
        y = np.asarray(pre(flat))
        assert y.shape == (1, 224, 224, 3)
        assert np.all(np.abs(y - np.broadcast_to(want, y.shape)) <= atol)


@pytest.mark.parametrize("h,w", [(224, 224), (512, 512), (100, 131), (57, 224)])
def test_nearest_resize_is_torch_legacy_nearest(h, w):
    x = np.random.default_rng(1).normal(size=(1, 3, h, w)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x), size=(112, 112)).numpy()
    got = models.nearest_resize_torch(jnp.asarray(x.transpose(0, 2, 3, 1)), (112, 112))
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), want)
    if h == w == 224:  # SimSwap's 224 -> 112 is every second pixel
        np.testing.assert_array_equal(want, x[:, :, ::2, ::2])


def test_l2_normalize_is_torch_normalize():
    v = np.random.default_rng(2).normal(size=(3, 512)).astype(np.float32) * 1e4
    v[2] = 0.0  # F.normalize divides by max(norm, 1e-12): a zero vector stays zero
    np.testing.assert_allclose(models.l2_normalize(jnp.asarray(v)), F.normalize(torch.from_numpy(v), dim=1).numpy(),
                               rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# Against the torch reference (itself checked on the golden cases), where the
# golden weights are mild: PReLU slopes far from 1 (the recipe's are ~1)


def _torch_vs_jax(net, flax_fn, params, *inputs, rtol=2e-4):
    with torch.no_grad():
        want = net(*[torch.from_numpy(a) for a in inputs]).numpy()
    nhwc = [a.transpose(0, 2, 3, 1) if a.ndim == 4 else a for a in inputs]
    got = np.asarray(jax.jit(flax_fn)(params, *map(jnp.asarray, nhwc)))
    if got.ndim == 4:
        got = got.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.abs(want).max())
    return want


@functools.cache
def _arcface_far_from_recipe(bn_shift: float = 0.0):
    """A small ArcFace (every kind of block) with PReLU slopes far from 1 (one negative), mild BatchNorms
    whose shifts are moved by ``bn_shift`` (negative: the PReLUs see mostly negative inputs).

    Returns (torch net, Functional, params, the share of negative inputs each PReLU saw, filled per forward).
    """
    from benchmarks.reference import simswap as ref

    torch.manual_seed(0)
    layers = (1, 2, 1, 1)  # every kind of block: plain, projected (stride 2), SE, shared PReLU
    net = ref.ArcFaceResNet(layers).eval()
    negatives = []
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.fill_(-0.3 if "se" in name else 0.2)  # slopes far from 1, one negative
                m.register_forward_pre_hook(lambda mod, inp: negatives.append(float((inp[0] < 0).float().mean())))
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(bn_shift - 0.2, bn_shift + 0.2)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    f = Functional(lambda rngs: models.ArcFaceResNet(layers, rngs=rngs))
    return net, f, convert_state_dict(sd, f.template), negatives


def test_arcface_prelu_negative_side():
    """Outputs and the input gradient through PReLUs fed mostly negative values, against torch's autograd."""
    net, f, params, negatives = _arcface_far_from_recipe(bn_shift=-1.0)
    negatives.clear()
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 112, 112)).astype(np.float32)
    w = rng.normal(size=(2, 512)).astype(np.float32)  # a fixed linear read-out: its gradient is exactly the VJP
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = net(xt)
    (want,) = torch.autograd.grad((out_t * torch.from_numpy(w)).sum(), xt)
    out_t, want = out_t.detach().numpy(), want.numpy()

    @jax.jit
    def out_and_grad(p, z):
        out, vjp = jax.vjp(lambda z: f.apply(p, z), z)
        return out, vjp(jnp.asarray(w))[0]

    out, got = out_and_grad(params, jnp.asarray(x.transpose(0, 2, 3, 1)))
    got = np.asarray(got).transpose(0, 3, 1, 2)
    print(f"\nshare of negative PReLU inputs: {np.round(negatives, 2)}")
    assert np.median(negatives) > 0.6 and min(negatives) > 0.3, negatives
    np.testing.assert_allclose(np.asarray(out), out_t, rtol=0, atol=2e-4 * np.abs(out_t).max())
    assert np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want), np.linalg.norm(got - want) / np.linalg.norm(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(want).max())


def test_prelu_layer_gradients_on_its_negative_side():
    """``layers.PReLU`` alone: outputs, input and slope gradients vs ``torch.nn.PReLU`` (slopes -0.3..1.2)."""
    from leat_jax.models import layers

    rng = np.random.default_rng(5)
    x = (rng.normal(size=(4, 6, 5, 7)) - 1.0).astype(np.float32)  # NHWC, ~84% negative
    slopes = np.linspace(-0.3, 1.2, 7).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    tp = torch.nn.PReLU(7)
    with torch.no_grad():
        tp.weight.copy_(torch.from_numpy(slopes))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    out_t = tp(xt)
    gx_t, gw_t = torch.autograd.grad(out_t, (xt, tp.weight), torch.from_numpy(g.transpose(0, 3, 1, 2).copy()))
    layer = layers.PReLU(7)
    layer.weight[...] = jnp.asarray(slopes)
    graphdef, state = nnx.split(layer)

    def f(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x) * g)

    gs, gx = jax.jit(jax.grad(f, argnums=(0, 1)))(state, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(nnx.merge(graphdef, state)(jnp.asarray(x))),
                               out_t.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gx), gx_t.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gs["weight"][...]), gw_t.numpy(), rtol=1e-5, atol=1e-5)


def test_whole_generator_against_reference_small():
    """The decoder (AdaIN blocks, InstanceNorm eps, bilinear x2, tanh head) on a 32x32 crop."""
    from benchmarks.reference import simswap as ref

    torch.manual_seed(1)
    net = ref.Generator().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    params = conv.full_generator_to_params(sd, "reference")
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    latent = rng.normal(size=(2, 512)).astype(np.float32)
    latent /= np.linalg.norm(latent, axis=1, keepdims=True)
    out = _torch_vs_jax(net, vs.generator().apply, params, x, latent, rtol=1e-4)
    assert 0 < out.min() and out.max() < 1
