"""StyleCLIP's latent mapper: residual and edited W+, with and without the fine mapper.

Weights: recipe values with the layout's ``standin_weights`` rule (lr_mul 0.01
weights rescaled), written as a released mapper ``<edit>.pt`` is structured:
``{'state_dict': {mapper.*, decoder.*}, 'opts'}`` with a whole stand-in
StyleGAN2 under ``decoder.*`` (as every released mapper carries one). Two
files: all three sub-mappers, and ``no_fine_mapper=True`` without any
``fine_mapping.*`` key (how afro, bobcut, ... ship). Converted by
``converters.stylegan2.mapper_to_params``, run by
``leat_jax.deepfakes.styleclip.edit_latent`` in float32.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tests.golden_cases.simswap_full import errors, grad_error

NAME = "styleclip_mapper"
CHECKPOINT_NAME = "mapper.pt"

# vars() of the training Namespace, as a released mapper stores it (the loader reads the mapper switches).
OPTS = {
    "exp_dir": "results/mapper",
    "mapper_type": "LevelsMapper",
    "no_coarse_mapper": False,
    "no_medium_mapper": False,
    "no_fine_mapper": False,
    "work_in_stylespace": False,
    "latents_train_path": "train_faces.pt",
    "latents_test_path": "test_faces.pt",
    "description": "a stand-in edit",
    "stylegan_size": 1024,
    "batch_size": 2,
    "clip_lambda": 1.0,
    "latent_l2_lambda": 0.8,
    "id_lambda": 0.1,
    "learning_rate": 0.5,
    "checkpoint_path": None,
}


def standin_mapper_state_dict(layout: dict, seed: int) -> dict[str, np.ndarray]:
    from tests.golden_harness import recipe

    sd = recipe().make_state_dict(layout["state_dict"], seed)
    for key, mult, add in layout["standin_weights"]["scale_rules"]:
        sd[key] = (sd[key] * np.float32(mult) + np.float32(add)).astype(np.float32)
    return sd


def mapper_file_object(mapper_sd: dict, decoder_sd: dict, no_fine: bool = False) -> dict:
    """A released mapper file: ``mapper.*`` (fine group dropped when ``no_fine``) + ``decoder.*``, opts."""
    sd = {"mapper." + k: v for k, v in mapper_sd.items() if not (no_fine and k.startswith("fine_mapping."))}
    sd.update(decoder_sd)
    return {"state_dict": sd, "opts": {**OPTS, "no_fine_mapper": no_fine}}


def check(case_path, workdir) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from leat_jax.deepfakes import styleclip
    from tests.golden_cases.e4e import save_torch
    from tests.golden_cases.stylegan2 import standin_state_dict
    from tests.golden_harness import GOLDEN_DIR, case_seed, convert_with_cli

    case_path = Path(case_path)
    case = dict(np.load(case_path))
    layout = json.loads((case_path.parent / "layout.json").read_text())
    seed = case_seed(case_path)
    g_layout = json.loads((GOLDEN_DIR / "stylegan2" / "layout.json").read_text())
    decoder = standin_state_dict(g_layout, seed, "decoder.")
    mapper_sd = standin_mapper_state_dict(layout, seed)
    params = {}
    for no_fine in (False, True):
        src = Path(workdir) / (f"no_fine_{CHECKPOINT_NAME}" if no_fine else CHECKPOINT_NAME)
        save_torch(mapper_file_object(mapper_sd, decoder, no_fine), src)
        params[no_fine] = convert_with_cli(NAME, src, workdir)
        src.unlink()

    @jax.jit
    def run(p_full, p_no_fine, w, we):
        delta = styleclip.mapper().apply(p_full, w)
        clean = jax.lax.stop_gradient(styleclip.edit_latent(p_full, w))
        def loss(v):
            return jnp.mean((styleclip.edit_latent(p_full, v) - clean) ** 2)
        delta_nf = styleclip.mapper().apply(p_no_fine, w)
        return delta, clean, jax.grad(loss)(we), delta_nf, styleclip.edit_latent(p_no_fine, w)

    w = jnp.asarray(case["w"])
    we = w + jnp.asarray(case["dw"])
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):  # no TF32 on GPU (golden README)
        delta, w_edit, grad, delta_nf, w_edit_nf = jax.block_until_ready(run(params[False], params[True], w, we))
    seconds = time.perf_counter() - t0
    return [
        {"what": "out_w_edit / grad_w_edit (all sub-mappers)", "dtype": "float32",
         "out_err": errors(w_edit, case["out_w_edit"]), "grad_err": grad_error(grad, case["grad_w_edit"]),
         "seconds": seconds},
        {"what": "out_delta (all sub-mappers)", "dtype": "float32",
         "out_err": errors(delta, case["out_delta"]), "grad_err": None},
        {"what": "out_delta_no_fine (no_fine_mapper file)", "dtype": "float32",
         "out_err": errors(delta_nf, case["out_delta_no_fine"]), "grad_err": None},
        {"what": "out_w_edit_no_fine (no_fine_mapper file)", "dtype": "float32",
         "out_err": errors(w_edit_nf, case["out_w_edit_no_fine"]), "grad_err": None},
    ]
