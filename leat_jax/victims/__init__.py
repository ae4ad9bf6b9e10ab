"""The registry of victims: name -> ``Victim``, and loading converted weights.

Names are the golden folders' names. Each family's module is imported only
when one of its victims is asked for, so importing the registry is cheap.
"""
from __future__ import annotations

import functools
import importlib

from leat_jax.victims.base import Params, Victim, imagenet_normalize, resize, to_unit

# name -> (module, factory function returning a Victim)
_REGISTRY: dict[str, tuple[str, str]] = {
    "e4e": ("leat_jax.victims.e4e", "victim"),
    "diffae": ("leat_jax.victims.diffae", "victim"),
    "simswap_id": ("leat_jax.victims.simswap", "identity_victim"),
    "simswap_G": ("leat_jax.victims.simswap", "generator_victim"),
    "icface": ("leat_jax.victims.icface", "victim"),
}

NAMES: tuple[str, ...] = tuple(_REGISTRY)


class UnknownVictimError(ValueError):
    pass


@functools.cache
def get(name: str) -> Victim:
    """The victim registered under ``name``."""
    if name not in _REGISTRY:
        raise UnknownVictimError(f"unknown victim {name!r}; known: {', '.join(NAMES)}")
    module, attr = _REGISTRY[name]
    return getattr(importlib.import_module(module), attr)()


def load(name: str, directory) -> tuple[Victim, Params]:
    """The victim ``name`` and its parameters converted into ``directory``."""
    from leat_jax import checkpoints

    params, meta = checkpoints.load_params(directory)
    if meta.get("model") != name:
        raise checkpoints.CheckpointError(
            f"{directory}: holds converted weights of {meta.get('model')!r}, not {name!r}"
        )
    victim = get(name)
    checkpoints.check_against_template(params, victim.template, str(directory))
    return victim, params


__all__ = ["NAMES", "Params", "Victim", "get", "load", "resize", "to_unit", "imagenet_normalize"]
