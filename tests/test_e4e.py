"""e4e unit tests: what the golden case exercises only gently, and the converter.

The full 267 M-parameter network runs only in the golden test; here each
building block is checked against the PyTorch reference (benchmarks/reference/
e4e.py, itself checked against the official outputs by the golden torch test)
on small shapes, with weights far from the recipe's (PReLU slopes near 0.25
and negative, non-trivial BN statistics), through the converter's key map.
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks.reference import e4e as ref
from converters import torch_io
from converters.e4e import convert
from converters.keymap import ConversionError, convert_state_dict
from leat_jax.checkpoints import flatten
from leat_jax.models import e4e as model
from tests.golden_cases import e4e as golden_e4e
from tests.golden_harness import GOLDEN_DIR

RNG = np.random.default_rng(1234)


def _randomize(module: torch.nn.Module) -> dict:
    """Weights unlike the recipe's: PReLU slopes in [-0.3, 0.5], skewed BN statistics."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.from_numpy(RNG.uniform(0.3, 2.0, t.shape).astype(np.float32)))
            elif isinstance(_owner(module, name), torch.nn.PReLU):
                t.copy_(torch.from_numpy(RNG.uniform(-0.3, 0.5, t.shape).astype(np.float32)))
            else:
                scale = 1.0 / np.sqrt(max(1, int(np.prod(t.shape[1:])))) if t.ndim > 1 else 0.3
                t.copy_(torch.from_numpy(RNG.normal(0.0, scale, t.shape).astype(np.float32)))
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _owner(module, key):
    return module.get_submodule(key.rsplit(".", 1)[0]) if "." in key else module


def _nnx_apply(factory, state_dict):
    """Build an NNX module abstractly, fill it through the converter's key map, return a pure apply."""
    abstract = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = convert_state_dict(state_dict, nnx.to_pure_dict(state), source="test")
    return lambda p, x: nnx.merge(graphdef, p)(x), params


def _compare(torch_mod, jax_apply, params, x_nchw, out_to_nchw=True):
    """Outputs and input gradients of sum(out * probe) agree between torch and JAX."""
    torch_mod.eval()
    xt = torch.from_numpy(x_nchw).requires_grad_(True)
    out_t = torch_mod(xt)
    probe = RNG.normal(size=tuple(out_t.shape)).astype(np.float32)
    (grad_t,) = torch.autograd.grad((out_t * torch.from_numpy(probe)).sum(), xt)
    x = jnp.asarray(np.transpose(x_nchw, (0, 2, 3, 1)))
    to_nchw = (lambda a: jnp.transpose(a, (0, 3, 1, 2))) if out_to_nchw else (lambda a: a)
    out_j, vjp = jax.vjp(lambda z: to_nchw(jax_apply(params, z)), x)
    (grad_j,) = vjp(jnp.asarray(probe))
    out_t = out_t.detach().numpy()
    np.testing.assert_allclose(np.asarray(out_j), out_t, rtol=0, atol=1e-5 * np.abs(out_t).max())
    grad_t = grad_t.numpy()
    grad_j = np.transpose(np.asarray(grad_j), (0, 3, 1, 2))
    assert np.linalg.norm(grad_j - grad_t) <= 1e-5 * np.linalg.norm(grad_t)


# --- building blocks against the torch reference --------------------------------------


@pytest.mark.parametrize(
    "cin,depth,stride,size",
    [(16, 32, 2, 12), (32, 32, 2, 10), (32, 32, 1, 9)],
    ids=["conv-shortcut-s2", "maxpool-shortcut-s2", "identity-shortcut-s1"],
)
def test_bottleneck_matches_torch(cin, depth, stride, size):
    """IR-SE unit: PReLU's negative side (slopes < 0 too), SE gates, both shortcuts, (1,1) padding at stride 2."""
    torch_unit = ref.Unit(cin, depth, stride)
    sd = _randomize(torch_unit)
    apply, params = _nnx_apply(lambda rngs: model.BottleneckIRSE(cin, depth, stride, rngs=rngs), sd)
    x = RNG.normal(size=(2, cin, size, size)).astype(np.float32)
    _compare(torch_unit, apply, params, x)


def test_prelu_negative_side_is_per_channel():
    p = model.PReLU(3)
    p.weight[...] = jnp.asarray([0.25, -0.5, 2.0])
    x = jnp.asarray([[-2.0, -2.0, -2.0], [3.0, 3.0, 3.0]])
    np.testing.assert_allclose(np.asarray(p(x)), [[-0.5, 1.0, -4.0], [3.0, 3.0, 3.0]])


def test_style_head_matches_torch():
    """GradualStyleBlock: stride-2 convs with LeakyReLU 0.01 (negative side), EqualLinear's runtime 1/sqrt(in)."""
    torch_head = ref.StyleHead(32, 8)
    sd = _randomize(torch_head)
    apply, params = _nnx_apply(lambda rngs: model.GradualStyleBlock(32, 32, 8, rngs=rngs), sd)
    x = RNG.normal(size=(3, 32, 8, 8)).astype(np.float32)
    _compare(torch_head, apply, params, x, out_to_nchw=False)
    # The heads reduce to 1x1 only at the native size: anything else is refused, not reshaped across the batch.
    with pytest.raises(ValueError, match="256x256"):
        apply(params, jnp.zeros((1, 16, 16, 32)))


def test_equal_linear_scale_is_applied_at_run_time():
    lin = model.EqualLinear(4, 2, rngs=nnx.Rngs(0))
    lin.kernel[...] = jnp.ones((4, 2))
    lin.bias[...] = jnp.asarray([0.5, -0.5])
    np.testing.assert_allclose(np.asarray(lin(jnp.ones((1, 4)))), [[1.0 * 4 / 2 + 0.5, 2.0 - 0.5]], rtol=1e-6)


@pytest.mark.parametrize("src,dst", [((16, 16), (32, 32)), ((32, 32), (64, 64)), ((5, 7), (9, 13)), ((1, 3), (4, 8))])
def test_upsample_is_bilinear_align_corners(src, dst):
    """Matches F.interpolate(..., align_corners=True), values and gradients; jax.image.resize does not."""
    x = RNG.normal(size=(2, 3, *src)).astype(np.float32)

    class Up(torch.nn.Module):
        def forward(self, t):
            return torch.nn.functional.interpolate(t, size=dst, mode="bilinear", align_corners=True)

    _compare(Up(), lambda p, z: model.upsample_bilinear_align_corners(z, dst), None, x)
    if src[0] > 1:
        half_pixel = jax.image.resize(jnp.asarray(np.transpose(x, (0, 2, 3, 1))), (2, *dst, 3), "linear")
        ours = model.upsample_bilinear_align_corners(jnp.asarray(np.transpose(x, (0, 2, 3, 1))), dst)
        assert np.abs(np.asarray(half_pixel - ours)).max() > 1e-2


# --- the victim --------------------------------------------------------------------------


def test_victim_template_matches_official_layout():
    """Every official encoder tensor has its place (BN counters aside), plus latent_avg [18, 512]."""
    from leat_jax.victims import get

    v = get("e4e")
    layout = json.loads((GOLDEN_DIR / "e4e" / "layout.json").read_text())
    flat = flatten(v.template)
    assert v.name == "e4e" and v.input_size == (256, 256)
    assert flat["latent_avg"].shape == (18, 512)
    official = sum(int(np.prod(s)) for k, s, _ in layout["state_dict"] if not k.endswith("num_batches_tracked"))
    assert sum(int(np.prod(a.shape)) for k, a in flat.items() if k != "latent_avg") == official
    assert len(flat) - 1 == sum(not k.endswith("num_batches_tracked") for k, _, _ in layout["state_dict"])


def test_preprocess_keeps_native_size_and_resizes_others():
    from leat_jax.victims.e4e import preprocess

    native = jnp.asarray(RNG.uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32))
    assert preprocess(native) is native
    for shape in [(2, 128, 96, 3), (1, 512, 512, 3)]:
        img = jnp.full(shape, 0.3, jnp.float32)
        out = preprocess(img)
        assert out.shape == (shape[0], 256, 256, 3)
        np.testing.assert_allclose(np.asarray(out), 0.3, atol=1e-6)  # [-1, 1] kept, no renormalisation
    g = jax.grad(lambda z: jnp.sum(preprocess(z) ** 2))(jnp.ones((1, 100, 80, 3)))
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


# --- converter ---------------------------------------------------------------------------

SMALL_KEYS = (
    "encoder.input_layer.", "encoder.body.3.", "encoder.latlayer1.", "encoder.latlayer2.", "encoder.styles.1."
)


def _small_template():
    """The victim's template restricted to a few official submodules (keeps converter tests small)."""
    from leat_jax.victims import get

    t = get("e4e").template["encoder"]
    return {
        "encoder": {
            "input_layer": t["input_layer"], "body": {3: t["body"][3]}, "latlayer1": t["latlayer1"],
            "latlayer2": t["latlayer2"], "styles": {1: t["styles"][1]},
        },
        "latent_avg": get("e4e").template["latent_avg"],
    }


def _small_checkpoint(seed=0, decoder=True):
    """The released file's structure with the encoder restricted to SMALL_KEYS (recipe values)."""
    layout = json.loads((GOLDEN_DIR / "e4e" / "layout.json").read_text())
    small = dict(layout, state_dict=[e for e in layout["state_dict"] if ("encoder." + e[0]).startswith(SMALL_KEYS)])
    dec = json.loads((GOLDEN_DIR / "e4e" / "layout_decoder.json").read_text())["state_dict"][:6] if decoder else None
    return golden_e4e.official_checkpoint(small, seed, dec)


def test_converter_maps_keys_and_ignores_decoder_and_opts():
    ckpt = _small_checkpoint()
    assert any(k.startswith("decoder.") for k in ckpt["state_dict"])
    params = convert(ckpt, _small_template(), "test")
    sd = ckpt["state_dict"]
    flat = flatten(params)
    np.testing.assert_array_equal(flat["encoder/body/3/res_layer/1/kernel"],
                                  sd["encoder.body.3.res_layer.1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["encoder/body/3/res_layer/2/weight"], sd["encoder.body.3.res_layer.2.weight"])
    np.testing.assert_array_equal(flat["encoder/body/3/shortcut_layer/1/var"],
                                  sd["encoder.body.3.shortcut_layer.1.running_var"])
    np.testing.assert_array_equal(flat["encoder/styles/1/linear/kernel"], sd["encoder.styles.1.linear.weight"].T)
    np.testing.assert_array_equal(flat["latent_avg"], ckpt["latent_avg"])


def test_converter_names_missing_key_and_wrong_shape():
    ckpt = _small_checkpoint(decoder=False)
    del ckpt["state_dict"]["encoder.latlayer2.bias"]
    ckpt["state_dict"]["encoder.body.3.res_layer.5.fc1.weight"] = np.zeros((9, 128, 1, 1), np.float32)
    with pytest.raises(ConversionError) as err:
        convert(ckpt, _small_template(), "e4e_ffhq_encode.pt")
    msg = str(err.value)
    assert "encoder.latlayer2.bias" in msg and "missing" in msg
    assert "shape mismatch [encoder.body.3.res_layer.5.fc1.weight" in msg
    ckpt = _small_checkpoint(decoder=False)
    ckpt["state_dict"]["encoder.styles.1.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match=r"unexpected keys \[encoder\.styles\.1\.extra\.weight\]"):
        convert(ckpt, _small_template(), "test")


@pytest.mark.parametrize("shape", [(512,), (1, 512), (18, 512)])
def test_converter_broadcasts_latent_avg(shape):
    ckpt = _small_checkpoint(decoder=False)
    ckpt["latent_avg"] = RNG.normal(size=shape).astype(np.float32)
    got = convert(ckpt, _small_template(), "test")["latent_avg"]
    np.testing.assert_array_equal(got, np.broadcast_to(ckpt["latent_avg"], (18, 512)))


def test_converter_refuses_what_would_give_wrong_codes():
    ckpt = _small_checkpoint(decoder=False)
    bad = dict(ckpt, latent_avg=np.zeros((17, 512), np.float32))
    with pytest.raises(ConversionError, match="latent_avg has shape"):
        convert(bad, _small_template(), "test")
    with pytest.raises(ConversionError, match="no 'latent_avg'"):
        convert({k: v for k, v in ckpt.items() if k != "latent_avg"}, _small_template(), "test")
    # pSp checkpoints share e4e's keys but not its forward pass.
    psp = dict(ckpt, opts=dict(ckpt["opts"], encoder_type="GradualStyleEncoder"))
    with pytest.raises(ConversionError, match="GradualStyleEncoder"):
        convert(psp, _small_template(), "test")
    with pytest.raises(ConversionError, match="no key starts with 'encoder.'"):
        convert(dict(ckpt, state_dict={"decoder.style.1.weight": np.zeros((512, 512), np.float32)}),
                _small_template(), "test")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_converter_reads_both_torch_formats_and_module_prefix(tmp_path, zip_format):
    """Zip and legacy torch files, a Namespace-pickled opts, and a DataParallel 'module.' prefix give the same params."""  # noqa: E501
    ckpt = _small_checkpoint()
    want = flatten(convert(ckpt, _small_template(), "test"))
    variant = dict(ckpt)
    variant["state_dict"] = {"module." + k: v for k, v in ckpt["state_dict"].items()}
    # opts as a pickled argparse.Namespace rather than a dict: read as an inert stand-in.
    variant["opts"] = argparse.Namespace(**ckpt["opts"])
    path = tmp_path / "e4e_ffhq_encode.pt"
    golden_e4e.save_torch(variant, path, zip_format=zip_format)
    loaded = torch_io.load(path)
    got = flatten(convert(loaded, _small_template(), str(path)))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    loaded["opts"].__dict__["encoder_type"] = "GradualStyleEncoder"
    with pytest.raises(ConversionError, match="GradualStyleEncoder"):
        convert(loaded, _small_template(), str(path))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_converter_refuses_pickled_code(tmp_path, zip_format):
    """An e4e-structured file whose opts carry a reduce to os.system: refused, nothing runs."""
    import converters

    marker = tmp_path / "pwned"
    ckpt = _small_checkpoint(decoder=False)
    ckpt["opts"] = _Payload(marker)
    path = tmp_path / "e4e_ffhq_encode.pt"
    golden_e4e.save_torch(ckpt, path, zip_format=zip_format)
    with pytest.raises(torch_io.UnsafeCheckpointError, match="os|posix"):
        converters.convert("e4e", path, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
