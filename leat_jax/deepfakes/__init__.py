"""Whole deepfake pipelines, for evaluating protection: what the attacker runs.

LEAT attacks latent encoders; its claims are about what comes out of the
complete deepfake models. Each pipeline here is one pure function

    ``apply(params, images, attribute) -> images``

with images in the project convention (float32, NHWC, [-1, 1], any input
size: each pipeline resizes to its official input size), ``params`` a plain
pytree of converted weights and ``attribute`` the attacker's choice of edit
(a StyleCLIP mapper, a SimSwap source identity, ICface driving values). The
functions are jitted and map over a stack of attributes with
``jax.vmap(apply, in_axes=(None, None, 0))`` (``over_attributes`` in each
module). An unbatched attribute applies to every image of the batch.

Each pipeline is declared once, by its module's ``DEEPFAKE``: the pure
functions above and what evaluation needs of it (``load``, ``attributes``,
``configure``, ``parts``: its sub-folders and the ``leat-jax convert`` name of
each). The registry below maps names to those modules (``CONTRIBUTING.md``).

This room may use ``leat_jax.models`` and ``leat_jax.victims`` (the encoders
are the pipelines' first stages), never the attack or the pipeline rooms.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Mapping

# name -> (module, attribute holding its ``Deepfake``)
REGISTRY: dict[str, tuple[str, str]] = {
    "styleclip": ("leat_jax.deepfakes.styleclip", "DEEPFAKE"),
    "simswap": ("leat_jax.deepfakes.simswap", "DEEPFAKE"),
    "simswap_source": ("leat_jax.deepfakes.simswap", "SOURCE"),
    "icface": ("leat_jax.deepfakes.icface", "DEEPFAKE"),
    "diffae": ("leat_jax.deepfakes.diffae", "DEEPFAKE"),
}

NAMES: tuple[str, ...] = tuple(REGISTRY)


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One target attribute: a name for reports and its value (a pytree the pipeline takes)."""

    name: str
    value: Any


@dataclasses.dataclass(frozen=True)
class Deepfake:
    """One deepfake pipeline: its pure functions and what evaluation needs of it.

    Attributes:
      name: registry name.
      apply: ``(params, images, attribute) -> images``, jitted.
      over_attributes: ``(params, images, attributes) -> [A, N, H, W, 3]``,
        ``apply`` vmapped over the leading axis of a stacked attribute pytree.
      output_size: (height, width) of the output images.
      attribute: what the attribute is, in words (for reports).
      load: ``(folder or None, seed) -> params`` for evaluation; None: stand-in
        weights of the real architecture.
      attributes: ``(section, folder or None, params, clean images, seed) ->
        (known, unknown)`` lists of ``Attribute``; ``section`` is the
        pipeline's TOML table (possibly empty), ``clean images`` the (H, W, 3)
        [-1, 1] arrays of the folder in sorted order.
      configure: ``section -> (apply, over_attributes)`` to evaluate with
        instead of ``apply`` / ``over_attributes`` (step counts, or params
        holding more than ``apply`` takes); None: those two.
      parts: sub-folder of the pipeline's folder -> the ``leat-jax convert``
        model name that writes it (``<...>``: one folder per attribute).
      check: ``(section, folder or None, clean image names) -> note or None``:
        the section's settings checked against the folder listing alone (no
        weights, no network; ``SetupError``), run before anything is loaded;
        the note says which defaults were taken. None: nothing to check.
      settings: the keys its TOML table may hold; any other key (a typo would
        silently leave a default in place) is refused before anything is
        loaded. None: not checked.
    """

    name: str
    apply: Callable[[Any, Any, Any], Any]
    over_attributes: Callable[[Any, Any, Any], Any]
    output_size: tuple[int, int]
    attribute: str
    load: Callable[[str | None, int], Any] | None = None
    attributes: Callable[..., tuple[list[Attribute], list[Attribute]]] | None = None
    configure: Callable[[Mapping], tuple[Callable, Callable]] | None = None
    parts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    check: Callable[[Mapping, str | None, Any], str | None] | None = None
    settings: tuple[str, ...] | None = None

    def functions(self, section: Mapping) -> tuple[Callable, Callable]:
        """(apply, over_attributes) for this TOML section's settings."""
        if self.configure is not None:
            return self.configure(section)
        return self.apply, self.over_attributes


def vmap_over_attributes(apply: Callable) -> Callable:
    """``apply`` mapped over a stacked attribute pytree (leading axis), jitted."""
    import jax

    return jax.jit(jax.vmap(apply, in_axes=(None, None, 0)))


class UnknownDeepfakeError(ValueError):
    pass


@functools.cache
def get(name: str) -> Deepfake:
    """The pipeline registered under ``name``."""
    if name not in REGISTRY:
        raise UnknownDeepfakeError(f"unknown deepfake pipeline {name!r}; known: {', '.join(NAMES)}")
    module, attr = REGISTRY[name]
    return getattr(importlib.import_module(module), attr)


__all__ = ["Attribute", "Deepfake", "NAMES", "REGISTRY", "UnknownDeepfakeError", "get", "vmap_over_attributes"]
