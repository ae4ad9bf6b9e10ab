"""Whole deepfake pipelines against PyTorch references wired as the official inference scripts
(``benchmarks/reference/pipelines.py``), on stand-in (recipe) weights: SimSwap in both roles, ICface,
StyleCLIP (e4e, mapper, StyleGAN2) and DiffAE (encoder, DDIM inversion, classifier edit, DDIM render).

The golden cases check each network alone; these check what connects them: which latent feeds which
network, in which range, with which resize. Tolerance as the golden cases': outputs within
``1e-4 * max|reference|``, the port in float32 (measured: about 1e-5 for SimSwap, 2e-6 for ICface,
1.2e-6 for StyleCLIP, 3.2e-5 for DiffAE against a float64 reference).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from benchmarks.reference import diffae as diffae_ref  # noqa: E402
from benchmarks.reference import icface as icface_ref  # noqa: E402
from benchmarks.reference import pipelines  # noqa: E402
from benchmarks.reference import simswap as simswap_ref  # noqa: E402
from benchmarks.reference import stylegan2 as stylegan2_ref  # noqa: E402
from benchmarks.reference.e4e import build as build_e4e  # noqa: E402
from converters import diffae as diffae_conv  # noqa: E402
from converters import e4e as e4e_conv  # noqa: E402
from converters import icface as icface_conv  # noqa: E402
from converters import simswap as simswap_conv  # noqa: E402
from converters import stylegan2 as stylegan2_conv  # noqa: E402
from converters.keymap import convert_state_dict  # noqa: E402
from leat_jax.deepfakes import diffae, icface, simswap, styleclip  # noqa: E402
from leat_jax.models import diffae as diffae_model  # noqa: E402
from tests.golden_cases import diffae_cls as cls_case  # noqa: E402
from tests.golden_cases import e4e as e4e_case  # noqa: E402
from tests.golden_cases import styleclip_mapper as mapper_case  # noqa: E402
from tests.golden_cases import stylegan2 as stylegan2_case  # noqa: E402
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


def golden_layout(name: str) -> dict:
    return json.loads((GOLDEN_DIR / name / "layout.json").read_text())


def test_styleclip_matches_the_official_wiring():
    """Real sizes (e4e and StyleGAN2 1024 have no smaller configuration in the pipeline), one face, one mapper.

    ``e4e_ffhq_encode.pt`` as released (encoder, decoder, latent_avg) feeds both the e4e victim and the
    generator, as the pipeline's ``PARTS`` do; the mapper is a released mapper file (all three groups).
    Measured 1.2e-6; other wirings on the same weights are far off: no edit 0.26, no latent_avg 0.11,
    random noise maps 0.80, a bilinear resize to 256 instead of the pool 0.14."""
    ckpt = e4e_case.official_checkpoint(golden_layout("e4e"), 0)
    ckpt["state_dict"].update(stylegan2_case.standin_state_dict(golden_layout("stylegan2"), 0, "decoder."))
    mapper_sd = mapper_case.standin_mapper_state_dict(golden_layout("styleclip_mapper"), 0)
    params = {"e4e": e4e_conv.to_params(ckpt, "e4e_ffhq_encode.pt"),
              "generator": stylegan2_conv.generator_to_params(ckpt, "e4e_ffhq_encode.pt")}
    mapper = stylegan2_conv.mapper_to_params(mapper_case.mapper_file_object(mapper_sd, {}), "mapper.pt")
    x = nhwc(torch.from_numpy(recipe().make_input((1, 3, 256, 256), 23)))
    port = np.asarray(styleclip.DEEPFAKE.apply(params, jnp.asarray(x), mapper))
    del params
    sd = ckpt["state_dict"]
    e4e = build_e4e({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}, ckpt["latent_avg"])
    g = stylegan2_ref.load(stylegan2_ref.Generator(), {k[len("decoder."):]: v for k, v in sd.items()
                                                       if k.startswith("decoder.")})
    m = stylegan2_ref.load(stylegan2_ref.LevelsMapper(), mapper_sd)
    with torch.no_grad():
        ref = nhwc(pipelines.styleclip_edit(e4e, m, g, nchw(x)))
    assert port.shape == ref.shape == (1, 256, 256, 3)
    assert_close(port, ref, "styleclip, e4e -> mapper edit -> StyleGAN2 (stored noise) -> 256 pool")
    assert ref.std() > 0.1  # an image, not a constant


# DiffAE at 16x16, two levels, one ResBlock per level (as tests/test_deepfakes_diffae.py), T = 2 both ways;
# z_sem keeps the official width 512, so the golden classifier stand-in and the notebook's sqrt(512) apply.
DIFFAE_ENC = dict(image_size=16, model_channels=32, out_channels=512, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,))
DIFFAE_UNET = dict(image_size=16, model_channels=32, embed_channels=512, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(8,))
DIFFAE_T2 = diffae.DiffAEConfig(inversion_steps=2, render_steps=2, encoder=diffae_model.EncoderConfig(**DIFFAE_ENC),
                                unet=diffae_model.UNetConfig(**DIFFAE_UNET))
CELEBA_INDEX = {"Wavy_Hair": 33, "No_Beard": 24}  # the official dataset.py lines 351-361 (CelebAttrDataset)


def recipe_weights(net: torch.nn.Module, seed: int) -> dict:
    """Recipe values for ``net``'s own state_dict layout, loaded into it (float64)."""
    sd = recipe().make_state_dict([(k, v.shape, "float32") for k, v in net.state_dict().items()], seed)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    net.double().eval()
    return sd


def test_diffae_t2_matches_the_official_wiring():
    """The reference runs in float64: on these weights torch's own float32 is 4e-5 off it (the t=0 step divides
    by sqrt(1/abar - 1) = 0.01), the port 3e-5; encoding x_T from the edited z_sem instead is 2.0 off."""
    enc = diffae_ref.SemanticEncoder(diffae_ref.EncoderConfig(**DIFFAE_ENC))
    unet = diffae_ref.ConditionalUNet(diffae_ref.UNetConfig(**DIFFAE_UNET))
    sd_e, sd_u = recipe_weights(enc, 20), recipe_weights(unet, 21)
    cls_case_0 = dict(np.load(GOLDEN_DIR / "diffae_cls" / "case_0.npz"))  # conds_mean / conds_std live there
    sd_c = cls_case.official_state_dict(golden_layout("diffae_cls"), 0, cls_case_0)
    params = {
        "encoder": convert_state_dict(sd_e, diffae.encoder_functional(DIFFAE_T2.encoder).template,
                                      rules=diffae_conv.RULES),
        "unet": diffae_conv.unet_to_params({"state_dict": {"ema_model." + k: v for k, v in sd_u.items()}},
                                           template=diffae.unet_functional(DIFFAE_T2.unet).template),
        "classifier": diffae_conv.classifier_to_params({"state_dict": sd_c}),
    }
    x = nhwc(torch.from_numpy(recipe().make_input((2, 3, 16, 16), 22)))
    section = {"known": ["Wavy_Hair:0.3"], "unknown": ["Beard:0.5"]}  # Beard: No_Beard at -0.5, as predict.py
    deepfake = diffae.at_config(DIFFAE_T2)
    known, unknown = deepfake.attributes(section, None, None, [], 0)
    strengths = jnp.stack([known[0].value, unknown[0].value])
    port = np.asarray(deepfake.over_attributes(params, jnp.asarray(x), strengths))
    cls = {k: torch.from_numpy(np.asarray(sd_c[k], np.float64))
           for k in ("conds_mean", "conds_std", "classifier.weight")}
    with torch.no_grad():
        ref = [nhwc(pipelines.diffae_edit(enc, unet, cls, nchw(x).double(), CELEBA_INDEX[name], alpha, 2, 2))
               for name, alpha in (("Wavy_Hair", 0.3), ("No_Beard", -0.5))]
    assert_close(port[0], ref[0], "diffae T=2, Wavy_Hair +0.3")
    assert_close(port[1], ref[1], "diffae T=2, Beard +0.5 (No_Beard -0.5)")
    saturated = np.mean(np.abs(ref[0]) >= 1)
    print(f"diffae: {saturated:.0%} of the render at the clamp, edits differ by {np.abs(ref[0] - ref[1]).mean():.3f}")
    assert saturated < 0.5 and np.abs(ref[0] - ref[1]).mean() > 1e-2  # the edit reaches a render not all clamped
