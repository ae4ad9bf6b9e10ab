"""SimSwap's whole 224 generator, through the deepfake pipeline ``leat_jax.deepfakes.simswap``.

Recipe weights (seed = case seed) written as ``latest_net_G.pth`` (a plain
state_dict, as ``BaseModel.save_network`` writes it), converted by
``converters.simswap.full_generator_to_params``, run by ``deepfakes.simswap.swap``
in float32. The golden works in G's own [0, 1] units: the target goes in as
``2x - 1`` (the pipeline maps it back) and the output is compared as
``(swap + 1) / 2``; the gradient is taken w.r.t. the [0, 1] target, as stored.

Tolerances: the README's float32 rule for this case (gradient 2e-2; a correct
float32 port lands near 5e-3 because of the encoder's float32 backward).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

NAME = "simswap_full"
CHECKPOINT_NAME = "latest_net_G.pth"
GRAD_TOL_FLOAT32 = 2e-2  # golden README, simswap_full


def errors(ours, golden) -> float:
    ours, golden = np.asarray(ours, np.float64), np.asarray(golden, np.float64)
    assert ours.shape == golden.shape, (ours.shape, golden.shape)
    return float(np.max(np.abs(ours - golden)) / np.max(np.abs(golden)))


def grad_error(ours, golden) -> float:
    ours, golden = np.asarray(ours, np.float64), np.asarray(golden, np.float64)
    assert ours.shape == golden.shape, (ours.shape, golden.shape)
    return float(np.linalg.norm(ours - golden) / np.linalg.norm(golden))


def check(case_path, workdir) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from converters import simswap as conv
    from converters import torch_io
    from leat_jax.deepfakes import simswap
    from tests.golden_cases.simswap_G import write_generator_file
    from tests.golden_harness import case_seed, nchw_to_nhwc, nhwc_to_nchw, recipe

    case_path = Path(case_path)
    case = dict(np.load(case_path))
    layout = json.loads((case_path.parent / "layout.json").read_text())
    src = Path(workdir) / CHECKPOINT_NAME
    write_generator_file(src, recipe().make_state_dict(layout["state_dict"], case_seed(case_path)))
    params = conv.full_generator_to_params(torch_io.load(src), str(src))

    def g01(p, x01, latent_id):  # the pipeline, seen in G's [0, 1] units
        return (simswap.swap(p, x01 * 2.0 - 1.0, latent_id) + 1.0) * 0.5

    @jax.jit
    def out_and_grad(p, x01, xe01, latent_id):
        clean = jax.lax.stop_gradient(g01(p, x01, latent_id))
        loss = lambda z: jnp.mean((g01(p, z, latent_id) - clean) ** 2)
        return clean, jax.grad(loss)(xe01)

    x = jnp.asarray(nchw_to_nhwc(case["x"]))
    xe = x + jnp.asarray(nchw_to_nhwc(case["eta"]))
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):  # no TF32 on GPU (golden README)
        out, grad = jax.block_until_ready(out_and_grad(params, x, xe, jnp.asarray(case["latent_id"])))
    return [{
        "what": "out_swap / grad_x (whole generator)",
        "dtype": "float32",
        "out_err": errors(nhwc_to_nchw(out), case["out_swap"]),
        "grad_err": grad_error(nhwc_to_nchw(grad), case["grad_x"]),
        "grad_tol": GRAD_TOL_FLOAT32,
        "seconds": time.perf_counter() - t0,
    }]
