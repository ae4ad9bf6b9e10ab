"""The in-process JAX benchmarks time their runs without torch installed (``benchmarks.timing``)."""
from __future__ import annotations

import subprocess
import sys

from tests.golden_harness import REPO

CODE = """
import sys; sys.modules['torch'] = None  # as if torch were not installed: importing it fails
import jax.numpy as jnp
import benchmarks.robust, benchmarks.warm_start
from benchmarks.timing import alternate, clock
x = jnp.ones((64, 64))
times = alternate({'matmul': lambda: x @ x, 'absent': None}, repeats=2)
print(times['matmul'] > 0, times['absent'] is None, clock(lambda: x + 1) > 0)
"""


def test_jax_benchmarks_time_without_torch():
    out = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True"]
