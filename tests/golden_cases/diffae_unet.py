"""Golden support for the DiffAE decoder UNet and its DDIM loops (``ffhq256_autoenc/last.ckpt``).

Stand-in weights: the recipe over the whole ``BeatGANsAutoencModel`` layout
(``../diffae/layout_full.json``, encoder included), written as the
``ema_model.*`` copy of a Lightning checkpoint with ``x_T`` and a partial,
negated ``model.*`` copy (a converter reading the non-EMA weights fails).
Compared in float32 (README rule): one UNet call (eps, and the gradients of
``mean(eps**2)`` w.r.t. x_t and z_sem), and the T=2 DDIM render and inversion
from the case's x_t, both loops through one compiled ``ddim_loop``.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

NAME = "diffae_unet"
CHECKPOINT_NAME = "last.ckpt"


def official_state_dict(seed: int, full_layout) -> OrderedDict:
    """``state_dict`` of ``last.ckpt`` (numpy): x_T, part of ``model.*``, all of ``ema_model.*``."""
    from tests.golden_harness import recipe

    ema = recipe().make_state_dict(full_layout, seed)  # bare BeatGANsAutoencModel keys, official order
    rng = np.random.default_rng([seed, 99])
    sd = OrderedDict(x_T=rng.standard_normal((32, 3, 256, 256), dtype=np.float32))
    # The non-EMA training copy holds different values; keep the file small:
    # only the time MLP, the stem and the head (what a wrong converter would need first).
    sd.update(("model." + k, -v) for k, v in ema.items() if k.startswith(("time_embed.", "input_blocks.0.", "out.")))
    sd.update(("ema_model." + k, v) for k, v in ema.items())
    return sd


def write_checkpoint(path, seed: int, full_layout) -> None:
    """The Lightning dict around ``official_state_dict``, saved with torch."""
    import torch

    from tests.golden_cases.diffae import foreign_classes, lightning_checkpoint

    sd = official_state_dict(seed, full_layout)
    with foreign_classes() as cls:
        ckpt = lightning_checkpoint({}, seed, cls)  # the file's other entries (optimizer, callbacks, ...)
        ckpt["state_dict"] = OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in sd.items())
        torch.save(ckpt, path)


def _rel_max(ours, golden) -> float:
    golden = np.asarray(golden, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - golden)) / np.max(np.abs(golden)))


def _rel_l2(ours, golden) -> float:
    golden = np.asarray(golden, np.float64)
    return float(np.linalg.norm(np.asarray(ours, np.float64) - golden) / np.linalg.norm(golden))


def check(case_path, workdir) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from leat_jax.deepfakes import diffae as pipeline
    from tests.golden_harness import GOLDEN_DIR, case_seed, convert_with_cli, nchw_to_nhwc, nhwc_to_nchw

    case_path = Path(case_path)
    case = dict(np.load(case_path))
    seed = case_seed(case_path)
    full_layout = json.loads((GOLDEN_DIR / "diffae" / "layout_full.json").read_text())["state_dict"]
    src = Path(workdir) / CHECKPOINT_NAME
    write_checkpoint(src, seed, full_layout)
    params = jax.tree.map(jnp.asarray, convert_with_cli(NAME, src, workdir))
    src.unlink()

    unet = pipeline.unet_functional()
    x = jnp.asarray(nchw_to_nhwc(case["x_t"]))
    t = jnp.asarray(case["t"], jnp.int32)
    cond = jnp.asarray(case["cond"])

    # One UNet call: eps and the gradients of mean(eps**2) (one backward, as the golden).
    @jax.jit
    def eps_and_grads(p, x, c):
        with jax.default_matmul_precision("highest"):  # TF32 would dominate on GPU
            def loss(x, c):
                eps = unet.apply(p, x, t, c)
                return jnp.mean(eps ** 2), eps

            (_, eps), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, c)
        return eps, grads

    t0 = time.perf_counter()
    eps, (gx, gc) = jax.block_until_ready(eps_and_grads(params, x, cond))
    t_call = time.perf_counter() - t0

    # T=2 render and inversion: the same scan, the tables as arguments (one compilation).
    @jax.jit
    def loop(p, x, c, steps):
        with jax.default_matmul_precision("highest"):
            return pipeline.ddim_loop(lambda x, t, c: unet.apply(p, x, t, c), x, c, steps)

    steps = len(case["aux_ddim_t"])  # T=2 in case_0: the smallest the official sampler accepts
    render = pipeline.render_schedule(steps=steps)
    invert = pipeline.inversion_schedule(steps=steps)
    assert list(render.t) == list(case["aux_ddim_t"]) and list(invert.t) == list(case["aux_inv_t"])
    t0 = time.perf_counter()
    x0 = jax.block_until_ready(loop(params, x, cond, render))
    xT = jax.block_until_ready(loop(params, x, cond, invert))
    t_loops = time.perf_counter() - t0

    timing = f"{t_call:.0f} s with compile"
    return [
        {"what": f"unet eps, grad_x ({timing})", "dtype": "float32",
         "out_err": _rel_max(nhwc_to_nchw(eps), case["out_eps"]),
         "grad_err": _rel_l2(nhwc_to_nchw(gx), case["grad_x"])},
        {"what": "unet loss mean(eps**2), grad_cond", "dtype": "float32",
         "out_err": _rel_max(jnp.mean(eps ** 2), np.mean(case["out_eps"].astype(np.float64) ** 2)),
         "grad_err": _rel_l2(gc, case["grad_cond"])},
        {"what": f"ddim render T={steps} ({t_loops:.0f} s for both loops with compile)", "dtype": "float32",
         "out_err": _rel_max(nhwc_to_nchw(x0), case["ddim_x0"]), "grad_err": None},
        {"what": f"ddim inversion T={steps}", "dtype": "float32",
         "out_err": _rel_max(nhwc_to_nchw(xT), case["ddim_xT"]), "grad_err": None},
    ]
