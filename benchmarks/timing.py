"""Timing helpers: alternating runs, warm-up excluded, medians."""
from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

import jax


def _sync(out):
    jax.block_until_ready(out)
    # Only a run that loaded torch has torch work to wait for: the JAX-only benchmarks run without it installed.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def clock(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    _sync(fn())
    return time.perf_counter() - t0


def alternate(
    runners: dict[str, Callable[[], object] | None], repeats: int, warmup: int = 1
) -> dict[str, float | None]:
    """Median seconds of each runner, interleaved so drift hits all alike."""
    live = {k: f for k, f in runners.items() if f is not None}
    for _ in range(warmup):
        for f in live.values():
            clock(f)
    times: dict[str, list[float]] = {k: [] for k in live}
    for _ in range(repeats):
        for k, f in live.items():
            times[k].append(clock(f))
    return {k: (statistics.median(times[k]) if k in times else None) for k in runners}


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> dict:
    """Measured float32 matrix-multiply rate of this machine (JAX and torch; the best)."""
    import jax.numpy as jnp
    import numpy as np
    import torch

    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    _sync(mm(a))
    t_jax = min(clock(lambda: mm(a)) for _ in range(repeats))
    ta = torch.randn(n, n, device="cuda" if torch.cuda.is_available() else "cpu")
    _sync(ta @ ta)
    t_torch = min(clock(lambda: ta @ ta) for _ in range(repeats))
    flops = 2.0 * n**3
    return {"jax_flops_per_s": flops / t_jax, "torch_flops_per_s": flops / t_torch,
            "matmul_peak_flops": max(flops / t_jax, flops / t_torch), "n": n}
