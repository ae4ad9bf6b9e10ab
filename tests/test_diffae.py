"""DiffAE semantic encoder: converter, preprocessing and what the golden case
exercises only gently (GroupNorm eps on small activations, multi-head legacy
qkv order, odd sizes at the pooling), checked on a small configuration
against the torch reference of benchmarks/.

The golden case itself runs in tests/test_golden.py.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import converters
from benchmarks.reference import diffae as reference
from converters import diffae as diffae_converter
from converters import torch_io
from converters.keymap import ConversionError, convert_state_dict
from leat_jax import victims
from leat_jax.checkpoints import flatten
from leat_jax.models import diffae as model
from leat_jax.models.base import Functional
from leat_jax.victims import diffae as diffae_victim
from tests.golden_cases import diffae as golden_case
from tests.golden_harness import GOLDEN_DIR, recipe


@pytest.fixture(scope="module")
def layout():
    return json.loads((GOLDEN_DIR / "diffae" / "layout.json").read_text())


@pytest.fixture(scope="module")
def encoder_sd(layout):
    """Recipe weights of the full-size encoder, bare official keys."""
    return recipe().make_state_dict(layout["state_dict"], 5)


def _lightning_in_memory(encoder_sd):
    return {"epoch": 1, "state_dict": {"x_T": np.zeros((1, 3, 4, 4), np.float32),
                                       **{"ema_model.encoder." + k: v for k, v in encoder_sd.items()}}}


# --- the victim ---------------------------------------------------------------

def test_victim_matches_the_official_layout(layout):
    v = victims.get("diffae")
    assert v.name == "diffae" and v.input_size == (256, 256)
    flat = flatten(v.template)
    assert len(flat) == len(layout["state_dict"]) == 116
    assert sum(int(np.prod(a.shape)) for a in flat.values()) == layout["num_parameters"] == 30_150_400


# --- converter ------------------------------------------------------------------

@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_converter_reads_the_lightning_file(tmp_path, encoder_sd, zip_format):
    """The whole Lightning dict loads inertly; only ema_model.encoder.* is taken."""
    path = tmp_path / "last.ckpt"
    golden_case.save_lightning(path, encoder_sd, seed=1, zip_format=zip_format)

    ckpt = torch_io.load(path)  # the foreign modules (pytorch_lightning, choices, config) are gone now
    (callback,) = ckpt["callbacks"]  # keyed by the callback class itself: an inert stand-in class
    assert issubclass(callback, torch_io.Stub)
    assert callback._stub_name == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert torch_io.stub_class_name(ckpt["hyper_parameters"]["train_mode"]) == "choices.TrainMode"
    assert torch_io.stub_class_name(ckpt["hyper_parameters"]["pretrain"]) == "config.PretrainConfig"

    params = converters.to_params("diffae", path)
    # EMA weights, not the (negated) model.encoder.* copy nor the UNet's input_blocks.0.0.
    np.testing.assert_array_equal(params["input_blocks"][0][0]["kernel"],
                                  encoder_sd["input_blocks.0.0.weight"].transpose(2, 3, 1, 0))
    w = encoder_sd["input_blocks.13.1.qkv.weight"]
    np.testing.assert_array_equal(params["input_blocks"][13][1]["qkv"]["kernel"], w[:, :, 0].T)
    np.testing.assert_array_equal(params["middle_block"][1]["proj_out"]["bias"],
                                  encoder_sd["middle_block.1.proj_out.bias"])
    np.testing.assert_array_equal(params["out"][0]["scale"], encoder_sd["out.0.weight"])
    np.testing.assert_array_equal(params["input_blocks"][7][0]["skip_connection"]["kernel"][0, 0],
                                  encoder_sd["input_blocks.7.0.skip_connection.weight"][:, :, 0, 0].T)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, zip_format):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "last.ckpt"
    tiny = {"input_blocks.0.0.weight": np.zeros((128, 3, 3, 3), np.float32)}
    with golden_case.foreign_classes() as cls:
        ckpt = golden_case.lightning_checkpoint(tiny, 0, cls)
        ckpt["hyper_parameters"]["evil"] = Payload()
        torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(torch_io.UnsafeCheckpointError, match="os|posix"):
        converters.to_params("diffae", path)
    assert not marker.exists()


def test_converter_names_missing_unexpected_and_misshapen_keys(encoder_sd):
    ckpt = _lightning_in_memory(encoder_sd)
    sd = ckpt["state_dict"]
    del sd["ema_model.encoder.input_blocks.13.1.qkv.bias"]
    # A conditioned ResBlock's second half does not exist in the encoder.
    sd["ema_model.encoder.input_blocks.1.0.out_layers.3.weight"] = np.zeros((128, 128, 3, 3), np.float32)
    sd["ema_model.encoder.out.3.weight"] = np.zeros((512, 256, 1, 1), np.float32)
    sd["ema_model.encoder.middle_block.1.qkv.weight"] = np.zeros((1536, 512), np.float32)  # 2-D, not Conv1d
    with pytest.raises(ConversionError) as err:
        diffae_converter.to_params(ckpt, "last.ckpt")
    msg = str(err.value)
    assert "input_blocks.13.1.qkv.bias" in msg  # missing
    assert "input_blocks.1.0.out_layers.3.weight" in msg  # unexpected
    assert "out.3.weight (512, 256, 1, 1)" in msg  # shape
    assert "middle_block.1.qkv.weight (1536, 512)" in msg
    assert "last.ckpt" in msg


def test_converter_needs_the_ema_encoder(encoder_sd):
    non_ema = {"state_dict": {"model.encoder." + k: v for k, v in encoder_sd.items()}}
    with pytest.raises(ConversionError, match=r"ema_model\.encoder.*non-EMA"):
        diffae_converter.to_params(non_ema, "x.ckpt")
    with pytest.raises(ConversionError, match="no 'state_dict'"):
        diffae_converter.to_params({"epoch": 3}, "x.ckpt")
    # A bare LitModel.state_dict() (no Lightning wrapper) is accepted.
    params = diffae_converter.to_params(_lightning_in_memory(encoder_sd)["state_dict"], "sd.pt")
    np.testing.assert_array_equal(params["out"][3]["bias"], encoder_sd["out.3.bias"])


# --- numerics on a small configuration, against the torch reference ---------------

SMALL = dict(image_size=16, model_channels=32, out_channels=48, channel_mult=(1, 2), attention_resolutions=(8,))


def _small_pair(eps_scale=1.0, seed=0):
    """Torch reference and our port of one small encoder (2 heads), same random weights."""
    torch.manual_seed(seed)
    ref = reference.SemanticEncoder(reference.EncoderConfig(**SMALL, num_heads=2)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 1:  # norms' affine and biases: away from the 1/0 defaults
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            else:  # proj_out is zero-initialised officially; make attention matter
                p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel()))
        ref.input_blocks[0][0].weight.mul_(eps_scale)
        ref.input_blocks[0][0].bias.mul_(eps_scale)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    f = Functional(lambda rngs: model.SemanticEncoder(model.EncoderConfig(**SMALL, num_heads=2), rngs=rngs))
    params = convert_state_dict(sd, f.template, rules=diffae_converter.RULES)
    return ref, f, jax.tree.map(jnp.asarray, params)


def _compare(ref, f, params, x_nchw):
    xt = torch.from_numpy(x_nchw).double().requires_grad_(True)
    ref_d = ref.double()
    out_t = ref_d(xt)
    (g_t,) = torch.autograd.grad((out_t ** 2).sum(), xt)
    ref.float()
    x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
    out, g = _out_and_grad(f, params, x)
    out_t, g_t = out_t.detach().numpy(), g_t.numpy().transpose(0, 2, 3, 1)
    return (np.abs(np.asarray(out) - out_t).max() / np.abs(out_t).max(),
            np.linalg.norm(np.asarray(g) - g_t) / np.linalg.norm(g_t))


def _out_and_grad(f, params, x):
    @jax.jit  # one compilation: eager dispatch of this many small ops is slower
    def run(p, z):
        return f.apply(p, z), jax.grad(lambda z: jnp.sum(f.apply(p, z) ** 2))(z)

    return run(params, x)


def test_small_config_with_two_heads_and_odd_sizes_matches_reference():
    ref, f, params = _small_pair()
    rng = np.random.default_rng(0)
    # 18x14: the pooled level is 9x7, so the odd row/column dropping is exercised.
    x = rng.uniform(-1, 1, (2, 3, 18, 14)).astype(np.float32)
    out_err, grad_err = _compare(ref, f, params, x)
    print(f"\n[diffae small] out {out_err:.1e} grad {grad_err:.1e}")
    assert out_err < 1e-5 and grad_err < 1e-4, (out_err, grad_err)


def test_group_norm_eps_on_small_activations():
    """Activations of std ~1e-3: eps 1e-5 (torch) vs Flax's 1e-6 changes the output."""
    ref, f, params = _small_pair(eps_scale=1e-3, seed=1)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    wrong = Functional(
        lambda rngs: _with_eps(model.SemanticEncoder(model.EncoderConfig(**SMALL, num_heads=2), rngs=rngs), 1e-6)
    )
    ours, with_flax_eps = jax.jit(lambda p, z: (f.apply(p, z), wrong.apply(p, z)))(
        params, jnp.asarray(x.transpose(0, 2, 3, 1))
    )
    with torch.no_grad():
        want = ref.double()(torch.from_numpy(x).double()).numpy()
    scale = np.abs(want).max()
    err, err_flax_eps = (
        np.abs(np.asarray(ours) - want).max() / scale,
        np.abs(np.asarray(with_flax_eps) - want).max() / scale,
    )
    print(f"\n[diffae small eps] eps 1e-5: {err:.1e}; eps 1e-6: {err_flax_eps:.1e}")
    assert err < 1e-5, err
    assert err_flax_eps > 1e-3  # the check has teeth


def _with_eps(module, eps):
    from flax import nnx

    from leat_jax.models import norms

    for _, m in nnx.iter_modules(module):
        if isinstance(m, norms.GroupNorm):
            m.epsilon = eps
    return module


# --- preprocessing ------------------------------------------------------------

def test_preprocess_native_size_untouched():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 256, 256, 3)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(diffae_victim.preprocess(x)), np.asarray(x))


def test_preprocess_resizes_other_sizes():
    v = victims.get("diffae")
    x = jnp.full((1, 512, 512, 3), 0.25, jnp.float32)
    y = v.preprocess(x)
    assert y.shape == (1, 256, 256, 3)
    np.testing.assert_allclose(np.asarray(y), 0.25, atol=1e-6)
    small = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 100, 100, 3)), jnp.float32)
    assert v.preprocess(small).shape == (1, 256, 256, 3)
    g = jax.grad(lambda z: jnp.sum(v.preprocess(z) ** 2))(small)  # differentiable for the attack
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


def test_preprocess_centre_crops_like_torchvision():
    """Resize(256) keeps the aspect ratio (shorter side 256), CenterCrop(256) takes the middle."""
    x = np.ones((1, 256, 512, 3), np.float32)
    x[:, :, 128:384] = -1.0  # the central square
    y = np.asarray(diffae_victim.preprocess(jnp.asarray(x)))
    assert y.shape == (1, 256, 256, 3) and (y == -1.0).all()
    tall = np.ones((1, 600, 300, 3), np.float32)
    tall[:, 150:450] = -1.0  # central square of a 2:1 portrait, scaled by 256/300
    y = np.asarray(diffae_victim.preprocess(jnp.asarray(tall)))
    assert y.shape == (1, 256, 256, 3)
    assert np.abs(y[:, 2:-2] + 1.0).max() < 1e-5  # all inside the square (bilinear edges aside)
