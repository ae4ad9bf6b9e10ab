"""Benchmarks: a torch reference of the LEAT attack and the harness comparing it with leat-jax."""
