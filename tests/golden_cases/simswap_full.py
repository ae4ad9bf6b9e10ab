"""SimSwap's whole 224 generator, through the deepfake pipeline ``leat_jax.deepfakes.simswap``.

Recipe weights (seed = case seed) written as ``latest_net_G.pth`` (a plain
state_dict, as ``BaseModel.save_network`` writes it), converted by
``converters.simswap.full_generator_to_params``, run by ``deepfakes.simswap.swap``.
The golden works in G's own [0, 1] units: the target goes in as ``2x - 1``
(the pipeline maps it back) and the output is compared as ``(swap + 1) / 2``;
the gradient is taken w.r.t. the [0, 1] target, as stored.

Tolerances (golden README, simswap_full): float64 with the default rule
(gradient 5e-3), run in a process of its own with JAX's x64 mode
(``python -m tests.golden_cases.simswap_full CASE CONVERTED``; its float64
convolutions as matrix products, ``golden_harness.float64_convolutions_as_products``);
float32 beside it at
its own allowance (gradient 2e-2: the encoder's float32 backward lands a
correct port near 5e-3).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


def write_and_convert(case_path, workdir) -> Path:
    """Recipe weights written as ``latest_net_G.pth``, through ``leat-jax convert``: the converted folder."""
    from tests.golden_cases.simswap_G import write_generator_file
    from tests.golden_harness import case_seed, convert_with_cli, recipe

    case_path = Path(case_path)
    layout = json.loads((case_path.parent / "layout.json").read_text())
    src = Path(workdir) / CHECKPOINT_NAME
    write_generator_file(src, recipe().make_state_dict(layout["state_dict"], case_seed(case_path)))
    convert_with_cli(NAME, src, workdir)
    return Path(workdir) / f"{CHECKPOINT_NAME}-converted"


def measure(case_path, converted, dtype: str) -> dict:
    """Errors of the pipeline in ``dtype`` on one case (float64 needs the x64 mode on)."""
    import jax
    import jax.numpy as jnp

    from leat_jax import checkpoints
    from leat_jax.deepfakes import simswap
    from leat_jax.models.base import cast_floating
    from tests.golden_harness import nchw_to_nhwc, nhwc_to_nchw

    case = dict(np.load(case_path))
    params = cast_floating(checkpoints.load_params(converted)[0], dtype)

    def g01(p, x01, latent_id):  # the pipeline, seen in G's [0, 1] units
        return (simswap.swap(p, x01 * 2.0 - 1.0, latent_id) + 1.0) * 0.5

    @jax.jit
    def out_and_grad(p, x01, xe01, latent_id):
        clean = jax.lax.stop_gradient(g01(p, x01, latent_id))

        def loss(z):
            return jnp.mean((g01(p, z, latent_id) - clean) ** 2)

        return clean, jax.grad(loss)(xe01)

    x = jnp.asarray(nchw_to_nhwc(case["x"]), dtype)  # x + eta formed in the compute precision
    xe = x + jnp.asarray(nchw_to_nhwc(case["eta"]), dtype)
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):  # no TF32 on GPU (golden README)
        out, grad = jax.block_until_ready(out_and_grad(params, x, xe, jnp.asarray(case["latent_id"], dtype)))
    assert out.dtype == jnp.dtype(dtype), out.dtype
    return {
        "what": f"out_swap / grad_x (whole generator, {time.perf_counter() - t0:.0f} s with compile)",
        "dtype": dtype,
        "out_err": errors(nhwc_to_nchw(out), case["out_swap"]),
        "grad_err": grad_error(nhwc_to_nchw(grad), case["grad_x"]),
    }


def float64_in_subprocess(case_path, converted) -> dict:
    """``measure`` in float64, in a process with JAX's x64 mode (this one stays float32)."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.golden_cases.simswap_full", str(case_path), str(converted)],
                          cwd=repo, env={**os.environ, "JAX_ENABLE_X64": "1"}, capture_output=True, text=True,
                          timeout=1800)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("GOLDEN_RESULT ")]
    assert proc.returncode == 0 and line, f"float64 run failed:\n{proc.stderr[-3000:]}"
    return json.loads(line[-1].split(" ", 1)[1])


def check(case_path, workdir) -> list[dict]:
    converted = write_and_convert(case_path, workdir)
    return [float64_in_subprocess(case_path, converted),
            {**measure(case_path, converted, "float32"), "grad_tol": GRAD_TOL_FLOAT32}]


if __name__ == "__main__":
    from leat_jax.xla_cpu import cpu_flags

    cpu_flags()
    from tests.golden_harness import float64_convolutions_as_products

    with float64_convolutions_as_products():
        print("GOLDEN_RESULT " + json.dumps(measure(sys.argv[1], sys.argv[2], "float64")))
