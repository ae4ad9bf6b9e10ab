"""Tests run with the XLA CPU settings the CLI uses (``leat_jax.xla_cpu``), so they check what users run."""
from leat_jax import xla_cpu

xla_cpu.cpu_flags()
