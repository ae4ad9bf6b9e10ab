"""Whole deepfake pipelines against PyTorch references wired as the official inference scripts
(``benchmarks/reference/pipelines.py``), on stand-in (recipe) weights: SimSwap in both roles, ICface.

The golden cases check each network alone; these check what connects them: which latent feeds which
network, in which range, with which resize. Tolerance as the golden cases': outputs within
``1e-4 * max|reference|``, both in float32 (measured: about 1e-5 for SimSwap, 2e-6 for ICface).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from benchmarks.reference import icface as icface_ref  # noqa: E402
from benchmarks.reference import pipelines  # noqa: E402
from benchmarks.reference import simswap as simswap_ref  # noqa: E402
from converters import icface as icface_conv  # noqa: E402
from converters import simswap as simswap_conv  # noqa: E402
from leat_jax.deepfakes import icface, simswap  # noqa: E402
from tests.golden_harness import GOLDEN_DIR, recipe  # noqa: E402


def state_dict(name: str, seed: int) -> dict:
    layout = json.loads((GOLDEN_DIR / name / "layout.json").read_text())
    return recipe().make_state_dict(layout["state_dict"], seed)


def torch_net(net, sd):
    return simswap_ref.load(net, sd)


def nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def assert_close(port, ref, what):
    err = np.abs(np.asarray(port, np.float64) - ref).max() / np.abs(ref).max()
    print(f"\n{what}: max error {err:.2e} of max|reference|")
    assert err <= 1e-4, what


def faces(n, size, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def conditioned_arcface(sd: dict) -> dict:
    """The recipe ArcFace with its BatchNorm scales halved. Plain, its activations grow to ~1e5 and float32
    itself loses the identity (cosine 0.96 to float64, torch as much as JAX); halved, float32 and float64
    embeddings agree to 1e-8, so a wiring error cannot hide in round-off."""
    return {k: v * 0.5 if (".bn" in k or k.startswith("bn")) and k.endswith("weight") else v for k, v in sd.items()}


@pytest.fixture(scope="module")
def simswap_nets():
    sd_g, sd_a = state_dict("simswap_full", 4), conditioned_arcface(state_dict("simswap_id", 5))
    params = {"generator": simswap_conv.full_generator_to_params(sd_g, "recipe"),
              "arcface": simswap_conv.identity_to_params(sd_a, "recipe")}
    return params, torch_net(simswap_ref.Generator(), sd_g), torch_net(simswap_ref.ArcFaceResNet(), sd_a)


def test_simswap_both_roles_match_the_official_wiring(simswap_nets):
    params, g, arc = simswap_nets
    photos = faces(2, 224, 0)  # the protected photos, aligned 224 crops
    other = [faces(1, 224, 1)[0]]  # the folder's first image: an identity (target role), a face (source role)
    section = {"known": 1, "unknown": 0}
    with torch.no_grad():
        # Target role: the other's identity onto each photo (evaluation's attributes and functions).
        known, _ = simswap.DEEPFAKE.attributes(section, None, params, other, 0)
        _, over = simswap.DEEPFAKE.functions({})
        port = np.asarray(over(params, jnp.asarray(photos), jnp.stack([known[0].value])))[0]
        ref = nhwc(pipelines.simswap_swap(g, arc, nchw(np.stack(other * 2)), nchw(photos)))
        assert_close(port, ref, "simswap, photo as target")
        # Source role: each photo's identity onto the other's face.
        known, _ = simswap.SOURCE.attributes(section, None, params, other, 0)
        port = np.asarray(simswap.SOURCE.over_attributes(params, jnp.asarray(photos), jnp.stack([known[0].value])))[0]
        ref = nhwc(pipelines.simswap_swap(g, arc, nchw(photos), nchw(np.stack(other * 2))))
        assert_close(port, ref, "simswap_source, photo as source")
        assert np.abs(port[0] - port[1]).mean() > 1e-3  # each photo's own identity reaches the swap


def test_icface_matches_the_official_wiring():
    layout = json.loads((GOLDEN_DIR / "icface_full" / "layout.json").read_text())
    sd_n = state_dict("icface", 0)
    sd_g = state_dict("icface_full", int(layout.get("weight_seed", {}).get("case_0", 100)))
    params = {"neutralizer": icface_conv.to_params({"state_dict": sd_n}, "recipe"),
              "generator": icface_conv.generator_to_params({"state_dict": sd_g}, "recipe")}
    gn = torch_net(icface_ref.icface_generator(), sd_n)
    g = torch_net(icface_ref.icface_generator(), sd_g)
    x = faces(1, 128, 2)
    drive = icface.driving_vectors(1, 0)
    with torch.no_grad():
        port = np.asarray(icface.DEEPFAKE.over_attributes(params, jnp.asarray(x), jnp.asarray(drive)))
        ref = [nhwc(pipelines.icface_reenact(gn, g, nchw(x), torch.from_numpy(d[None]))) for d in drive]
    assert_close(port[:, 0], np.concatenate(ref), "icface, neutralise then reenact")
