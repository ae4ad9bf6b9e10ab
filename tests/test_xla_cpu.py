"""leat_jax.xla_cpu: the CLI's XLA CPU flag, added only where it applies and never over a user's choice."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from leat_jax import xla_cpu

REPO = Path(__file__).resolve().parents[1]


def _pinned(name: str) -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


def _conv_hlo() -> str:
    """The optimised HLO of a 3x3 convolution, as XLA's CPU backend compiles it in this process."""
    import jax
    import jax.numpy as jnp

    x, w = jnp.ones((1, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
    conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.jit(conv).lower(x, w).compile().as_text()


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


@pytest.mark.parametrize("name", ["jax", "jaxlib"])
def test_the_pins_allow_only_versions_the_flag_was_measured_on(name):
    spec = _pinned(name).specifier
    assert metadata.version(name) in spec  # the installed version is one the pins allow
    for v in ("0.9.9", "0.10.0", "0.10.2", "0.10.17", "0.11.0", "1.0.0"):
        assert (v in spec) == v.startswith(xla_cpu.MEASURED_JAXLIB), v


def test_the_flag_takes_ynnpack_off_convolutions_and_defaults_keep_it():
    """With this process's flags (conftest applies them as the CLI does) XLA accepts the flag and compiles
    the convolution itself; with its defaults it hands it to YNNPACK. If a jaxlib the pins allow stopped
    doing so, the flag would tune nothing and this fails."""
    assert xla_cpu.FLAG in os.environ.get("XLA_FLAGS", "")
    tuned = _conv_hlo()
    assert "__ynn_fusion" not in tuned and "convolution(" in tuned
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = "from tests.test_xla_cpu import _conv_hlo; print(_conv_hlo())"
    default = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                             check=True, timeout=120).stdout
    assert "__ynn_fusion" in default
