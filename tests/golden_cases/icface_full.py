"""ICface's reenactment generator ``netG``, through ``leat_jax.deepfakes.icface.reenact``.

Recipe weights with the layout's ``weight_seed`` of the case (not the case
seed: netG's stand-in weights must differ from the neutralizer's, which share
its key list), written as ``latest_net_G.pth`` (``{"state_dict": module.*,
"optimizer"}``, legacy serialisation, as ICface saves it), converted by
``converters.icface.generator_to_params``, run in float32 with the case's
driving attributes; gradient w.r.t. the neutral face.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tests.golden_cases.simswap_full import errors, grad_error

NAME = "icface_full"
CHECKPOINT_NAME = "latest_net_G.pth"


def weight_seed(layout: dict, case_path: Path) -> int:
    """The layout's ``weight_seed`` of the case; if it lists none, its stated rule, case seed + 100."""
    from tests.golden_harness import case_seed

    return int(layout.get("weight_seed", {}).get(case_path.stem, case_seed(case_path) + 100))


def check(case_path, workdir) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import torch

    from leat_jax.deepfakes import icface
    from tests.golden_cases.icface import official_file_object
    from tests.golden_harness import convert_with_cli, nchw_to_nhwc, nhwc_to_nchw

    case_path = Path(case_path)
    case = dict(np.load(case_path))
    layout = json.loads((case_path.parent / "layout.json").read_text())
    src = Path(workdir) / CHECKPOINT_NAME
    obj = official_file_object(layout["state_dict"], weight_seed(layout, case_path))
    torch.save(obj, src, _use_new_zipfile_serialization=False)
    params = convert_with_cli(NAME, src, workdir)

    @jax.jit
    def out_and_grad(p, n, ne, attr):
        clean = jax.lax.stop_gradient(icface.reenact(p, n, attr))
        def loss(z):
            return jnp.mean((icface.reenact(p, z, attr) - clean) ** 2)
        return clean, jax.grad(loss)(ne)

    n = jnp.asarray(nchw_to_nhwc(case["neutral"]))
    ne = n + jnp.asarray(nchw_to_nhwc(case["eta"]))
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):  # no TF32 on GPU (golden README)
        out, grad = jax.block_until_ready(out_and_grad(params, n, ne, jnp.asarray(case["attr"])))
    return [{
        "what": "out_reenact / grad_neutral (netG, per-sample driving attributes)",
        "dtype": "float32",
        "out_err": errors(nhwc_to_nchw(out), case["out_reenact"]),
        "grad_err": grad_error(nhwc_to_nchw(grad), case["grad_neutral"]),
        "seconds": time.perf_counter() - t0,
    }]
