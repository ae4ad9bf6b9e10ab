"""StyleGAN2 1024 generator from W+ (e4e's ``decoder``), its 256 pool, gradient w.r.t. W+.

Weights: the layout's stand-in rule applied exactly (recipe values, per-key
``v * float32(mult) + float32(add)`` from ``standin_weights.scale_rules``, the
FIR kernel buffers set to the constant). Written as ``e4e_ffhq_encode.pt``
is structured (``{'state_dict': {encoder.*, decoder.*}, 'latent_avg',
'opts'}``), except that the encoder part is a handful of decoy ``encoder.*``
entries instead of its 267 M parameters: the generator converter reads only
``decoder.*`` (the decoys check it ignores the rest), and a 1 GB file would
take much of the CI budget. Converted by ``converters.stylegan2.generator_to_params``,
run by ``leat_jax.deepfakes.styleclip.synthesize`` in float32.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tests.golden_cases.simswap_full import errors, grad_error

NAME = "stylegan2"
CHECKPOINT_NAME = "e4e_ffhq_encode.pt"
N_DECOY_ENCODER_KEYS = 12


def standin_state_dict(layout: dict, seed: int, prefix: str = "") -> dict[str, np.ndarray]:
    """The generator's stand-in weights as the layout's ``standin_weights`` rule defines them."""
    from tests.golden_harness import recipe

    sd = recipe().make_state_dict(layout["state_dict"], seed)
    for key, mult, add in layout["standin_weights"]["scale_rules"]:
        sd[key] = (sd[key] * np.float32(mult) + np.float32(add)).astype(np.float32)
    kernel = np.array(layout["buffers"]["kernel_values"], np.float32)
    for key in sd:
        if key.endswith(".kernel"):
            sd[key] = kernel.copy()
    return {prefix + k: v for k, v in sd.items()}


def e4e_file_object(decoder_sd: dict, seed: int) -> dict:
    """``e4e_ffhq_encode.pt``'s structure around ``decoder_sd`` (keys already ``decoder.*``)."""
    from tests.golden_cases import e4e as e4e_case
    from tests.golden_harness import GOLDEN_DIR, recipe

    e4e_layout = json.loads((GOLDEN_DIR / "e4e" / "layout.json").read_text())
    decoys = [entry for entry in e4e_layout["state_dict"] if np.prod(entry[1]) <= 65536][:N_DECOY_ENCODER_KEYS]
    sd = {"encoder." + k: v for k, v in recipe().make_state_dict(decoys, seed).items()}
    sd.update(decoder_sd)
    latent_avg = recipe().make_state_dict(e4e_layout["extra"], seed)["latent_avg"]
    return {"state_dict": sd, "latent_avg": latent_avg, "opts": dict(e4e_case.OPTS)}


def check(case_path, workdir) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from leat_jax.deepfakes import styleclip
    from leat_jax.models.stylegan2 import face_pool
    from tests.golden_cases.e4e import save_torch
    from tests.golden_harness import case_seed, convert_with_cli, nhwc_to_nchw

    case_path = Path(case_path)
    case = dict(np.load(case_path))
    layout = json.loads((case_path.parent / "layout.json").read_text())
    seed = case_seed(case_path)
    src = Path(workdir) / CHECKPOINT_NAME
    save_torch(e4e_file_object(standin_state_dict(layout, seed, "decoder."), seed), src)
    params = convert_with_cli(NAME, src, workdir)

    @jax.jit
    def out_and_grad(p, w, we):
        clean = jax.lax.stop_gradient(styleclip.synthesize(p, w, size=None))
        def loss(v):
            return jnp.mean((styleclip.synthesize(p, v, size=None) - clean) ** 2)
        return clean, face_pool(clean), jax.grad(loss)(we)

    w = jnp.asarray(case["w"])
    we = w + jnp.asarray(case["dw"])
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):  # no TF32 on GPU (golden README)
        out, out256, grad = jax.block_until_ready(out_and_grad(params, w, we))
    seconds = time.perf_counter() - t0
    return [
        {"what": "out_image (1024) / grad_w", "dtype": "float32",
         "out_err": errors(nhwc_to_nchw(out), case["out_image"]),
         "grad_err": grad_error(grad, case["grad_w"]), "seconds": seconds},
        {"what": "out_image_256 (face pool)", "dtype": "float32",
         "out_err": errors(nhwc_to_nchw(out256), case["out_image_256"]), "grad_err": None},
    ]
