"""ICface neutralizer: converter safety and formats, transposed convs, the
attribute planes the golden case leaves at zero, preprocessing."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import converters
from benchmarks.reference.icface import ResnetGenerator as TorchGenerator
from converters import icface as icface_conv
from converters.keymap import ConversionError
from converters.torch_io import UnsafeCheckpointError
from leat_jax.checkpoints import flatten
from leat_jax.models.base import Functional
from leat_jax.models.icface import ConvTranspose2d, ResnetGenerator
from leat_jax.victims import icface as icface_victim
from tests.golden_cases.icface import official_file_object
from tests.golden_harness import GOLDEN_DIR, recipe

FOLDER = GOLDEN_DIR / "icface"


@pytest.fixture(scope="module")
def layout():
    return json.loads((FOLDER / "layout.json").read_text())


@pytest.fixture(scope="module")
def recipe_sd(layout):
    return recipe().make_state_dict(layout["state_dict"], 3)


# ---------------------------------------------------------------- the victim


def test_neutral_vector_is_the_golden_attr(layout):
    case = np.load(FOLDER / "case_0.npz")
    np.testing.assert_array_equal(icface_victim.NEUTRAL_ATTR, case["attr"])
    np.testing.assert_array_equal(icface_victim.NEUTRAL_ATTR, layout["input"]["attr"]["neutral_vector_golden"])
    assert list(icface_victim.ATTRIBUTES) == layout["input"]["attr"]["order"]


def test_preprocess_native_size_untouched_other_sizes_resized():
    from leat_jax import victims

    v = victims.get("icface")
    assert v.input_size == (128, 128)
    x = jax.random.uniform(jax.random.key(0), (2, 128, 128, 3), minval=-1, maxval=1)
    np.testing.assert_array_equal(v.preprocess(x), x)
    for shape in [(1, 256, 256, 3), (2, 100, 160, 3)]:
        y = v.preprocess(jnp.full(shape, 0.3))
        assert y.shape == (shape[0], 128, 128, 3)
        np.testing.assert_allclose(y, 0.3, atol=1e-6)  # range untouched: already the official [-1, 1]
    out = jax.eval_shape(v.encode, v.template, jax.ShapeDtypeStruct((2, 200, 160, 3), jnp.float32))
    assert out.shape == (2, 128, 128, 3)
    out = jax.eval_shape(lambda p, x: v.apply(p, x, jnp.zeros((2, 20))), v.template,
                         jax.ShapeDtypeStruct((2, 128, 128, 3), jnp.float32))
    assert out.shape == (2, 128, 128, 3)


# ------------------------------------------------------ transposed convolution


@pytest.mark.parametrize("k,s,p,op,hw", [
    (3, 2, 1, 1, (5, 7)), (4, 2, 1, 0, (6, 4)), (3, 1, 0, 0, (4, 5)), (5, 3, 2, 2, (3, 4))])
def test_conv_transpose_matches_torch(k, s, p, op, hw):
    torch.manual_seed(k * 10 + s)
    ref = torch.nn.ConvTranspose2d(3, 5, k, stride=s, padding=p, output_padding=op, bias=True).double()
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    want = ref(x).detach().numpy()
    ours = Functional(
        lambda rngs: ConvTranspose2d(3, 5, k, stride=s, padding=p, output_padding=op, bias=True, rngs=rngs))
    params = {"kernel": icface_conv.conv_transpose_kernel(ref.weight.detach().float().numpy()),
              "bias": ref.bias.detach().float().numpy()}
    got = np.asarray(jax.jit(ours.apply)(params, jnp.asarray(x.permute(0, 2, 3, 1).float().numpy())))
    assert got.shape == want.transpose(0, 2, 3, 1).shape
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-5)


# ------------------- a small generator end to end against the torch reference


def test_small_generator_file_to_flax_matches_torch_with_nonzero_attributes(tmp_path):
    """The golden attr leaves the 17 AU planes at zero, so their kernel slices
    go unchecked there; here every attribute plane is nonzero and per sample,
    BatchNorm statistics are far from identity, and the input is not square."""
    torch.manual_seed(0)
    net = TorchGenerator(input_nc=23, output_nc=3, ngf=4, n_blocks=2, use_dropout=True)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.3, 2.0)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.normal_(0.0, 0.3)
            elif name.endswith("weight") and t.ndim == 1:
                t.uniform_(0.5, 1.5)
    net.eval()
    path = tmp_path / "small_net_GN.pth"
    sd = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)

    small = Functional(
        lambda rngs: ResnetGenerator(input_nc=23, output_nc=3, ngf=4, n_blocks=2, use_dropout=True, rngs=rngs))
    params = icface_conv.state_dict_to_params(
        icface_conv.extract_state_dict(converters.torch_io.load(path)), small.template, n_blocks=2)

    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, (2, 3, 20, 28)).astype(np.float32)
    attr = rng.uniform(0, 1, (2, 20)).astype(np.float32)
    weights = rng.normal(size=(2, 3, 20, 28)).astype(np.float32)
    x_t = torch.from_numpy(image).requires_grad_(True)
    out_t = net(x_t, torch.from_numpy(attr))
    (grad_t,) = torch.autograd.grad((out_t * torch.from_numpy(weights)).sum(), x_t)

    def to_nhwc(a):
        return jnp.asarray(np.transpose(a, (0, 2, 3, 1)))

    @jax.jit  # one compilation for both paths
    def run(p, x, w):
        def fast(x, a):
            return small.apply(p, x, a)

        def full(x, a):
            planes = jnp.broadcast_to(a[:, None, None, :], (*x.shape[:3], 20))
            return small.apply(p, jnp.concatenate([x, planes], axis=-1))

        results = []
        for f in (fast, full):
            out, vjp = jax.vjp(lambda x: f(x, attr), x)
            results += [out, vjp(w)[0]]
        return results, fast(x, jnp.zeros_like(attr))

    (out_fast, grad_fast, out_full, grad_full), out_zero = run(params, to_nhwc(image), to_nhwc(weights))
    for out, grad in [(out_fast, grad_fast), (out_full, grad_full)]:
        np.testing.assert_allclose(out, to_nhwc(out_t.detach().numpy()), atol=2e-5)
        np.testing.assert_allclose(grad, to_nhwc(grad_t.numpy()), atol=2e-4 * np.abs(grad_t.numpy()).max())
    assert np.abs(out_zero - out_fast).max() > 1e-3  # the attributes do reach the output


# ------------------------------------------------------------ converter: files


def _expected_leaves(sd):
    return {
        "model/1/kernel": sd["model.1.weight"].transpose(2, 3, 1, 0),
        "model/2/mean": sd["model.2.running_mean"],
        "model/2/scale": sd["model.2.weight"],
        "model/15/conv_block/6/kernel": sd["model.15.conv_block.6.weight"].transpose(2, 3, 1, 0),
        "model/16/kernel": sd["model.16.weight"][:, :, ::-1, ::-1].transpose(2, 3, 0, 1),
        "model/19/kernel": sd["model.19.weight"][:, :, ::-1, ::-1].transpose(2, 3, 0, 1),
        "model/23/bias": sd["model.23.bias"],
    }


@pytest.mark.parametrize("legacy,prefix,variant", [
    (True, "module.", "released"),       # the golden harness writes this one too
    (False, "module.", "released"),
    (True, "", "released"),
    (False, "", "released"),
    (True, "module.", "no_num_batches_tracked"),  # torch 0.4.0 wrote none
    (False, "", "bare_state_dict"),      # the old code variant / re-saved copies
])
def test_converter_reads_every_file_variant(tmp_path, layout, recipe_sd, legacy, prefix, variant):
    obj = official_file_object(layout["state_dict"], 3, prefix=prefix)
    if variant == "no_num_batches_tracked":
        obj["state_dict"] = {k: v for k, v in obj["state_dict"].items() if not k.endswith("num_batches_tracked")}
    elif variant == "bare_state_dict":
        obj = obj["state_dict"]
    path = tmp_path / "latest_net_GN.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    with open(path, "rb") as f:  # the two formats really differ: zip magic or pickle protocol
        assert (f.read(2) == b"PK") == (not legacy)
    params = flatten(converters.to_params("icface", path))
    for key, want in _expected_leaves(recipe_sd).items():
        np.testing.assert_array_equal(params[key], want, err_msg=key)
    assert len(params) == len([k for k in recipe_sd if not k.endswith("num_batches_tracked")])


def test_generator_file_converts_with_the_same_table(tmp_path, layout):
    sd = recipe().make_state_dict(layout["generator_state_dict"], 5)
    path = tmp_path / "latest_net_G.pth"
    torch.save(official_file_object(layout["generator_state_dict"], 5), path, _use_new_zipfile_serialization=False)
    params = flatten(icface_conv.generator_to_params(converters.torch_io.load(path), str(path)))
    for key, want in _expected_leaves(sd).items():
        np.testing.assert_array_equal(params[key], want, err_msg=key)


@pytest.mark.parametrize("legacy", [True, False])
def test_pickled_payload_is_refused_and_nothing_runs(tmp_path, recipe_sd, legacy):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    sd = {"module." + k: torch.from_numpy(v) for k, v in list(recipe_sd.items())[:6]}
    path = tmp_path / "latest_net_GN.pth"
    torch.save({"state_dict": sd, "optimizer": {"state": {0: Payload()}, "param_groups": []}}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        converters.to_params("icface", path)
    assert not marker.exists()


# ----------------------------------------------------------- converter: errors


def _convert(sd):
    return icface_conv.to_params({"state_dict": sd, "optimizer": {}}, "latest_net_GN.pth")


def test_missing_key_is_named(recipe_sd):
    sd = {"module." + k: v for k, v in recipe_sd.items() if k != "model.23.bias"}
    with pytest.raises(ConversionError, match=r"missing parameters \[model.23.bias\]"):
        _convert(sd)


def test_wrong_shapes_are_named(recipe_sd):
    sd = dict(recipe_sd)
    sd["model.4.weight"] = np.zeros((256, 128, 1, 1), np.float32)
    with pytest.raises(ConversionError, match=r"shape mismatch \[model\.4\.weight"):
        _convert(sd)
    sd = dict(recipe_sd)
    sd["model.16.weight"] = sd["model.16.weight"].transpose(1, 0, 2, 3)  # (out, in): a Conv2d's layout
    with pytest.raises(ConversionError, match=r"model\.16\.weight"):
        _convert(sd)


def test_mismatching_key_sets_are_errors_not_partial_loads(recipe_sd):
    with pytest.raises(ConversionError, match=r"unexpected keys \[model\.25\.weight\]"):
        _convert({**recipe_sd, "model.25.weight": np.zeros(3, np.float32)})
    # another wrapper's prefix: the official strict=False load would load nothing, silently
    with pytest.raises(ConversionError, match="unexpected keys.*missing parameters"):
        _convert({"netGN." + k: v for k, v in recipe_sd.items()})
    with pytest.raises(ConversionError, match="prefix"):
        _convert({("module." + k if i % 2 else k): v for i, (k, v) in enumerate(recipe_sd.items())})
    with pytest.raises(ConversionError, match="state_dict"):
        icface_conv.to_params({"net": recipe_sd, "epoch": 3}, "x.pth")
