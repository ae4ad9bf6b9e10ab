"""leat_jax.xla_cpu: the CLI's XLA CPU flag, added only where it applies and never over a user's choice."""
from __future__ import annotations

from importlib import metadata

from leat_jax import xla_cpu


def test_added_once_beside_existing_flags(monkeypatch):
    monkeypatch.setattr(metadata, "version", lambda name: "0.10.2")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_cpu.cpu_flags(env) == "--xla_force_host_platform_device_count=4 " + xla_cpu.FLAG
    assert xla_cpu.cpu_flags(env) == env["XLA_FLAGS"]  # idempotent
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_users_choice_opt_out_and_unmeasured_versions_are_left_alone(monkeypatch):
    monkeypatch.setattr(metadata, "version", lambda name: "0.10.2")
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"}
    assert xla_cpu.cpu_flags(mine) == "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
    opted_out = {"LEAT_JAX_XLA_DEFAULTS": "1"}
    xla_cpu.cpu_flags(opted_out)
    assert "XLA_FLAGS" not in opted_out
    monkeypatch.setattr(metadata, "version", lambda name: "0.9.0")  # flag unknown there: XLA would abort
    old = {}
    xla_cpu.cpu_flags(old)
    assert "XLA_FLAGS" not in old


def test_this_process_runs_with_it():
    """conftest applies it, as the CLI does; and XLA accepted it (a computation ran)."""
    import os

    import jax.numpy as jnp

    if metadata.version("jaxlib").startswith(xla_cpu.MEASURED_JAXLIB):
        assert xla_cpu.FLAG in os.environ.get("XLA_FLAGS", "") or os.environ.get("LEAT_JAX_XLA_DEFAULTS") == "1"
    assert float(jnp.ones(3).sum()) == 3.0
