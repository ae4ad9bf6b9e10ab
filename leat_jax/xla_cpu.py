"""XLA's CPU settings for convolution-heavy attacks, applied by the CLI and the benchmark.

XLA (jaxlib 0.10) hands forward convolutions to YNNPACK by default; on these
networks Eigen's are faster (``benchmarks/RESULTS.md``, "Which library runs
the convolutions"), so YNNPACK fusions are turned off. XLA reads
``XLA_FLAGS`` once, when the first computation creates the CPU client, so
this must run before any JAX computation; it never overrides a choice
already in ``XLA_FLAGS``. An unknown flag aborts XLA at start-up, so it is
only added for the jaxlib versions it was measured on (the pins in
``pyproject.toml`` allow only those). ``LEAT_JAX_XLA_DEFAULTS=1`` keeps XLA's
own defaults.
"""
from __future__ import annotations

import os
from importlib import metadata

FLAG = "--xla_cpu_experimental_ynn_fusion_type="  # empty list: no YNNPACK fusions
MEASURED_JAXLIB = ("0.10.",)


def cpu_flags(environ=None) -> str | None:
    """Add the flag to ``environ['XLA_FLAGS']`` where it applies; returns the resulting flags."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("LEAT_JAX_XLA_DEFAULTS") == "1" or "xla_cpu_experimental_ynn_fusion_type" in flags:
        return flags
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return flags
    if not version.startswith(MEASURED_JAXLIB):
        return flags
    environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return environ["XLA_FLAGS"]
