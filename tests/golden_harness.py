"""Run one golden case end to end: recipe weights -> official file -> our
converter -> our port, compared with what the official code computed.

Also runnable as ``python -m tests.golden_harness NAME CASE [DTYPES]`` (prints
JSON), which the float64 cases use to get a process of their own.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("LEAT_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
OUT_TOL = 1e-4   # max|port - golden| <= OUT_TOL * max|golden|
GRAD_TOL = 5e-3  # ||port - golden||_2 <= GRAD_TOL * ||golden||_2


def recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("golden_recipe", GOLDEN_DIR / "recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def case_seed(case_path: Path) -> int:
    m = re.fullmatch(r"case_(\d+)\.npz", case_path.name)
    if not m:
        raise ValueError(f"{case_path}: golden case names are case_<seed>.npz")
    return int(m.group(1))


def nchw_to_nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


def nhwc_to_nchw(a):
    return np.transpose(np.asarray(a), (0, 3, 1, 2))


@contextlib.contextmanager
def float64_convolutions_as_products():
    """Inside: ``lax.conv_general_dilated`` on float64 NHWC/HWIO is a sum of per-tap matrix products.

    XLA's CPU backend has no fast float64 convolution (a naive loop, measured
    150x slower than float32), while its float64 matrix products are Eigen's.
    Same arithmetic (each output a sum of input x weight products, the
    patches side by side in one product), any
    stride, padding and input dilation (what the backward passes use); other
    convolutions go to the original.
    """
    import jax.numpy as jnp
    from jax import lax

    original = lax.conv_general_dilated
    nhwc = ("NHWC", "HWIO", "NHWC")

    def by_products(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                    dimension_numbers=None, feature_group_count=1, batch_group_count=1, **kwargs):
        plain = (lhs.dtype == jnp.float64 and lhs.ndim == 4 and dimension_numbers is not None
                 and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
                 == lax.conv_dimension_numbers(lhs.shape, rhs.shape, nhwc)
                 and feature_group_count == 1 and batch_group_count == 1
                 and all(d == 1 for d in (rhs_dilation or (1, 1))))
        if not plain:
            return original(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                            feature_group_count, batch_group_count, **kwargs)
        dil = tuple(lhs_dilation or (1, 1))
        dilated = tuple((n - 1) * d + 1 for n, d in zip(lhs.shape[1:3], dil))
        pads = lax.padtype_to_pads(dilated, rhs.shape[:2], window_strides, padding) if isinstance(
            padding, str) else padding
        x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
                    [(0, 0, 0), (pads[0][0], pads[0][1], dil[0] - 1), (pads[1][0], pads[1][1], dil[1] - 1), (0, 0, 0)])
        (kh, kw), (sh, sw) = rhs.shape[:2], window_strides
        oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
        taps = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]
        kernel = rhs.reshape(kh * kw * rhs.shape[2], rhs.shape[3])  # HWIO: rows in the taps' (i, j, c) order
        return jnp.matmul(jnp.concatenate(taps, axis=-1), kernel, precision=lax.Precision.HIGHEST)

    lax.conv_general_dilated = by_products
    try:
        yield
    finally:
        lax.conv_general_dilated = original


def convert_with_cli(name: str, src, workdir) -> dict:
    """``leat-jax convert NAME SRC DST`` (the converter, its template check, the orbax write), read back.

    Returns the parameters as a pipeline loads them from the converted folder.
    """
    import converters
    from leat_jax import checkpoints, cli

    dst = Path(workdir) / f"{Path(src).name}-converted"
    rc = cli.main(["convert", name, str(src), str(dst)])
    assert rc == 0, f"leat-jax convert {name} {src} {dst}: exit {rc}"
    params, meta = checkpoints.load_params(dst)
    assert meta["model"] == name and meta["source_sha256"] == converters.sha256(src), meta
    return params


def run_case(name: str, case_path, workdir=None, dtypes=("float32",)) -> list[dict]:
    """Errors of our port on one case, per dtype: [{'out_err', 'grad_err', ...}].

    The file is written and converted once; each dtype in ``dtypes`` is then
    compared (float64 needs JAX's x64 mode, switched on here).
    """
    import jax
    import jax.numpy as jnp

    import converters
    from leat_jax import victims
    from leat_jax.models.base import cast_floating
    from tests import golden_cases

    if "float64" in dtypes:
        jax.config.update("jax_enable_x64", True)
    sup = golden_cases.support(name)
    case_path = Path(case_path)
    case = dict(np.load(case_path))
    layout = json.loads((case_path.parent / "layout.json").read_text())
    seed = case_seed(case_path)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src = Path(tmp) / sup.CHECKPOINT_NAME
        sup.write_checkpoint(src, layout, seed, case)
        converters.convert(name, src, Path(tmp) / "flax")
        victim, params0 = victims.load(name, Path(tmp) / "flax")

    apply = getattr(sup, "apply", None)
    to_golden = getattr(sup, "to_golden", lambda z: np.asarray(z))

    def forward(p, x):
        return apply(victim, p, x, case) if apply else victim.apply(p, x)

    @jax.jit
    def out_and_grad(p, x, xe):
        clean = jax.lax.stop_gradient(forward(p, x))

        def loss(z):
            diff = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), forward(p, z), clean)
            n = sum(np.size(a) for a in jax.tree.leaves(clean))
            return sum(jax.tree.leaves(diff)) / n

        return clean, jax.grad(loss)(xe)

    golden_out = case[f"out_{sup.OUTPUT}"].astype(np.float64)
    golden_grad = case[f"grad_{sup.OUTPUT}"].astype(np.float64)
    results = []
    for dtype_name in dtypes:
        dtype = jnp.dtype(dtype_name)
        params = cast_floating(params0, dtype)
        # x + eta formed in the compute precision, as the official float64 run did.
        x = jnp.asarray(nchw_to_nhwc(case["x"]).astype(dtype_name))
        xe = x + jnp.asarray(nchw_to_nhwc(case["eta"]).astype(dtype_name))
        t0 = time.perf_counter()
        out, grad = jax.block_until_ready(out_and_grad(params, x, xe))
        seconds = time.perf_counter() - t0
        ours_out = np.asarray(to_golden(out), np.float64)
        ours_grad = nhwc_to_nchw(grad).astype(np.float64)
        if ours_out.shape != golden_out.shape:
            raise AssertionError(f"{name}: output shape {ours_out.shape}, golden {golden_out.shape}")
        results.append({
            "name": name,
            "case": case_path.name,
            "dtype": dtype_name,
            "out_err": float(np.max(np.abs(ours_out - golden_out)) / np.max(np.abs(golden_out))),
            "grad_err": float(np.linalg.norm(ours_grad - golden_grad) / np.linalg.norm(golden_grad)),
            "seconds_compile_and_run": seconds,
        })
    return results


def run_torch_reference(name: str, case_path) -> dict | None:
    """Errors of the torch reference in ``benchmarks/`` on the same case, if it has one."""
    import torch

    from tests import golden_cases

    sup = golden_cases.support(name)
    if not hasattr(sup, "torch_forward"):
        return None
    case_path = Path(case_path)
    case = dict(np.load(case_path))
    layout = json.loads((case_path.parent / "layout.json").read_text())
    seed = case_seed(case_path)
    sd = recipe().make_state_dict(layout["state_dict"], seed)
    dtype = torch.float64 if getattr(sup, "X64", False) else torch.float32
    x = torch.from_numpy(case["x"]).to(dtype)
    xe = (x + torch.from_numpy(case["eta"]).to(dtype)).requires_grad_(True)
    with torch.no_grad():
        clean = sup.torch_forward(sd, x, case)
    out = sup.torch_forward(sd, xe, case)
    loss = ((out - clean) ** 2).mean()
    (g,) = torch.autograd.grad(loss, xe)
    golden_out = case[f"out_{sup.OUTPUT}"].astype(np.float64)
    golden_grad = case[f"grad_{sup.OUTPUT}"].astype(np.float64)
    return {
        "name": name,
        "case": case_path.name,
        "out_err": float(np.max(np.abs(clean.double().numpy() - golden_out)) / np.max(np.abs(golden_out))),
        "grad_err": float(np.linalg.norm(g.double().numpy() - golden_grad) / np.linalg.norm(golden_grad)),
    }


if __name__ == "__main__":
    name, case = sys.argv[1], sys.argv[2]
    dtypes = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("float32",)
    print("GOLDEN_RESULT " + json.dumps(run_case(name, case, dtypes=dtypes)))
