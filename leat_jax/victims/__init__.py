"""The registry of victims: name -> ``Victim``, and loading converted weights.

Each victim is declared once, by its line in ``REGISTRY``: where its
``Victim`` is built and how ``--faces detect`` crops a photo for it. Names are
the golden folders' names; rooms outside the package that need more of a
victim keep one table keyed by these names (``converters.CONVERTERS``,
``benchmarks.pairs.REFERENCES``), and ``tests/test_registries.py`` fails when
a name is missing from any of them (``CONTRIBUTING.md``). Each family's module
is imported only when one of its victims is asked for, so importing the
registry is cheap.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib

from leat_jax.faces import align
from leat_jax.victims.base import Params, Victim, imagenet_normalize, resize, to_unit


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered victim.

    factory: ``"module:function"`` returning its ``Victim`` (imported on first use).
    crop_rule: its official alignment, the ``Victim.crop_rule`` it gets.
    """

    factory: str
    crop_rule: align.Rule


REGISTRY: dict[str, Entry] = {
    "e4e": Entry("leat_jax.victims.e4e:victim", align.FFHQ_E4E),
    "diffae": Entry("leat_jax.victims.diffae:victim", align.FFHQ),
    "simswap_id": Entry("leat_jax.victims.simswap:identity_victim", align.SIMSWAP),
    "simswap_G": Entry("leat_jax.victims.simswap:generator_victim", align.SIMSWAP),
    "icface": Entry("leat_jax.victims.icface:victim", align.ICFACE),
}

NAMES: tuple[str, ...] = tuple(REGISTRY)


class UnknownVictimError(ValueError):
    pass


@functools.cache
def get(name: str) -> Victim:
    """The victim registered under ``name``."""
    if name not in REGISTRY:
        raise UnknownVictimError(f"unknown victim {name!r}; known: {', '.join(NAMES)}")
    entry = REGISTRY[name]
    module, attr = entry.factory.split(":")
    return dataclasses.replace(getattr(importlib.import_module(module), attr)(), crop_rule=entry.crop_rule)


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


__all__ = ["Entry", "NAMES", "Params", "REGISTRY", "Victim", "get", "load", "resize", "to_unit", "imagenet_normalize"]
