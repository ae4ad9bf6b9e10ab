"""Every ported network against what the official code computes.

For each module in ``tests/golden_cases`` and each ``case_<seed>.npz`` in its
folder under ``$LEAT_GOLDEN_DIR`` (default ``../shared/golden``): recipe
weights written as the official checkpoint file, converted by our converter,
run by our port in float32 (float64 where the README asks), outputs and input
gradients compared with the README's tolerances. A ported network whose
folder is missing or empty fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import golden_cases
from tests.golden_harness import GOLDEN_DIR, GRAD_TOL, OUT_TOL, REPO, run_case, run_torch_reference


def _params():
    out = []
    for name in golden_cases.ported():
        cases = sorted((GOLDEN_DIR / name).glob("case_*.npz"))
        if not cases:
            out.append(pytest.param(name, None, id=f"{name}-NO-CASES"))
        out.extend(pytest.param(name, c, id=f"{name}-{c.stem}") for c in cases)
    return out


def _x64_in_subprocess(name, case):
    """float64 (asserted) and float32 (reported) in a process with JAX's x64 mode."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.golden_harness", name, str(case), "float64,float32"],
        cwd=REPO, env={**os.environ, "JAX_ENABLE_X64": "1"}, capture_output=True, text=True, timeout=1800,
    )
    line = [out for out in proc.stdout.splitlines() if out.startswith("GOLDEN_RESULT ")]
    assert proc.returncode == 0 and line, f"float64 run failed:\n{proc.stderr[-3000:]}"
    return json.loads(line[-1].split(" ", 1)[1])


@pytest.mark.parametrize("name,case", _params())
def test_golden_case(name, case, tmp_path, record_property):
    assert case is not None, f"{name} is ported but {GOLDEN_DIR / name} holds no case_*.npz"
    sup = golden_cases.support(name)
    if hasattr(sup, "check"):  # pipelines: their own inputs, outputs and gradients
        results = sup.check(case, tmp_path)
        assert results, f"{name}: check() compared nothing"
        for r in results:
            out_tol, grad_tol = r.get("out_tol", OUT_TOL), r.get("grad_tol", GRAD_TOL)
            print(f"\n[golden] {name} {case.name} {r['what']} {r['dtype']}: out {r['out_err']:.2e} (tol {out_tol:g})"
                  + ("" if r.get("grad_err") is None else f", grad {r['grad_err']:.2e} (tol {grad_tol:g})"))
        for r in results:
            assert r["out_err"] <= r.get("out_tol", OUT_TOL), r
            assert r.get("grad_err") is None or r["grad_err"] <= r.get("grad_tol", GRAD_TOL), r
        return
    if getattr(sup, "X64", False):
        res, f32 = _x64_in_subprocess(name, case)
        print(f"\n[golden] {name} {case.name} float32 (reported, not asserted): "
              f"out {f32['out_err']:.2e} grad {f32['grad_err']:.2e}")
    else:
        (res,) = run_case(name, case, workdir=tmp_path)
    print(f"\n[golden] {name} {case.name} {res['dtype']}: out {res['out_err']:.2e} (tol {OUT_TOL:g}), "
          f"grad {res['grad_err']:.2e} (tol {GRAD_TOL:g})")
    record_property("golden", res)
    assert res["out_err"] <= OUT_TOL, res
    assert res["grad_err"] <= GRAD_TOL, res


@pytest.mark.parametrize(
    "name,case",
    [p for p in _params() if p.values[1] is not None and not hasattr(golden_cases.support(p.values[0]), "check")],
)
def test_golden_torch_reference(name, case):
    """The torch reference in benchmarks/ computes the same victim network."""
    res = run_torch_reference(name, case)
    if res is None:
        pytest.fail(f"{name}: tests/golden_cases/{name}.py has no torch_forward (benchmarks reference missing)")
    print(f"\n[golden-torch] {name} {case.name}: out {res['out_err']:.2e}, grad {res['grad_err']:.2e}")
    assert res["out_err"] <= OUT_TOL, res
    assert res["grad_err"] <= GRAD_TOL, res


def test_golden_dir_exists():
    assert GOLDEN_DIR.is_dir(), f"golden cases not found at {GOLDEN_DIR}; set LEAT_GOLDEN_DIR"
    unported = sorted(p.name for p in GOLDEN_DIR.iterdir() if p.is_dir() and p.name not in golden_cases.ported())
    print(f"\n[golden] ported: {', '.join(golden_cases.ported()) or 'none'}; not yet ported: {', '.join(unported)}")
