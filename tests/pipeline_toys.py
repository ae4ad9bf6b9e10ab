"""Small victims for the pipeline's end-to-end tests, via ``LEAT_EXTRA_VICTIMS``.

``LEAT_EXTRA_VICTIMS=tests.pipeline_toys:victims`` makes ``toy_a`` and
``toy_b`` available to ``leat-jax immunize``. Their stand-in weights come
from numpy (no JAX initialiser to compile), so a child process starts fast.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np

from leat_jax.faces import align
from tests.toys import toy_victim

ENV = {"LEAT_EXTRA_VICTIMS": "tests.pipeline_toys:victims"}


def _numpy_init(template, name):
    def init(seed: int = 0):
        def leaf(path, spec):
            key = "/".join(str(getattr(p, "key", p)) for p in path)
            rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{key}".encode())])
            if key.endswith("bias"):
                return np.zeros(spec.shape, spec.dtype)
            fan_in = int(np.prod(spec.shape[:-1])) or 1
            return (rng.standard_normal(spec.shape) / np.sqrt(fan_in)).astype(spec.dtype)

        import jax

        return jax.tree_util.tree_map_with_path(leaf, template)

    return init


@functools.cache
def _toy(name: str, scale: float, size: int):
    v = toy_victim(name, scale, size)
    return dataclasses.replace(v, init_params=_numpy_init(v.template, name), template=v.template, crop_rule=align.FFHQ)


def victims():
    """Two victims of different input sizes and latent scales."""
    return {"toy_a": _toy("toy_a", 1.0, 32), "toy_b": _toy("toy_b", 30.0, 16)}
