"""The pipelines an evaluation runs: resolved by name, with their weights and attributes.

``--pipelines NAME=DIR,...`` names a folder per pipeline holding its
converted networks (each made by ``leat-jax convert``) in sub-folders; a bare
name takes stand-in weights of the real architecture (allowed only with
``--stand-in-weights``; the numbers then mean nothing about protection).

Each pipeline declares, in its own module ``leat_jax/deepfakes/NAME.py``,
its sub-folders and the converter of each (``PARTS``), its loader, and its
attributes with their defaults (``attributes``: a ``[NAME]`` table of the
``--config`` TOML file, ``known`` and ``unknown``: the paper's gray-box
split, where the image-space baseline may use only ``known``).

Extra pipelines (tests, experiments) come from ``LEAT_EXTRA_DEEPFAKES``: a
comma-separated list of ``module:function`` entries, each function returning
a mapping of name -> ``Deepfake`` (declaring ``load`` and ``attributes``) or
``EvalPipeline``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from leat_jax import deepfakes
from leat_jax.deepfakes import Attribute, Deepfake
from leat_jax.deepfakes.parts import require_parts
from leat_jax.errors import SetupError
from leat_jax.pipeline.victimset import load_extras

EXTRA_DEEPFAKES_ENV = "LEAT_EXTRA_DEEPFAKES"


@dataclasses.dataclass(frozen=True)
class EvalPipeline:
    """What evaluation needs of a pipeline (``EvalPipeline.of`` its ``Deepfake`` declaration).

    Attributes:
      deepfake: the pure pipeline (``apply``, ``over_attributes``, ``output_size``).
      load, attributes, configure: as ``Deepfake``'s fields of those names.
      check: ``(section, folder or None, clean image names) -> note or None``:
        every check of the settings that needs no weights and builds no
        network (raises ``SetupError``), run for all pipelines before any is
        loaded; the note says which defaults were taken. None: none.
    """

    deepfake: Any
    load: Callable[[str | None, int], Any]
    attributes: Callable[..., tuple[list[Attribute], list[Attribute]]]
    configure: Callable[[Mapping], tuple[Callable, Callable]] | None = None
    check: Callable[[Mapping, str | None, Sequence[str]], str | None] | None = None

    @classmethod
    def of(cls, fake: Deepfake) -> "EvalPipeline":
        """The evaluation view of a declaration; ``SetupError`` when it lacks a loader or attributes."""
        if fake.load is None or fake.attributes is None:
            raise SetupError(f"pipeline {fake.name}: its Deepfake declares no load or attributes function")

        def check(section, folder, names):
            stray = sorted(set(section) - set(fake.settings)) if fake.settings is not None else []
            if stray:
                raise SetupError(f"the --config file's [{fake.name}] table: unknown setting {stray[0]!r}; "
                                 f"known: {', '.join(fake.settings)}")
            require_parts(folder, fake.parts)
            return fake.check(section, folder, names) if fake.check is not None else None

        return cls(fake, fake.load, fake.attributes, fake.configure, check)

    def functions(self, section: Mapping) -> tuple[Callable, Callable]:
        """(apply, over_attributes) for this section's settings."""
        if self.configure is not None:
            return self.configure(section)
        return self.deepfake.apply, self.deepfake.over_attributes


def diffae_pipeline(config=None, load=None, name: str = "diffae") -> EvalPipeline:
    """DiffAE for evaluation at ``config``'s model sizes (None: the registry's ``diffae``).

    ``load``: ``(folder, seed) -> params`` instead of converted folders and
    stand-in initialisers (e.g. small test models); ``name``: the report's.
    """
    if config is None:
        return EvalPipeline.of(deepfakes.get("diffae"))
    from leat_jax.deepfakes import diffae  # the pipeline module, as the registry loads it

    return EvalPipeline.of(diffae.at_config(config, load, name))


def _builtin(name: str) -> EvalPipeline:
    try:
        fake = deepfakes.get(name)
    except deepfakes.UnknownDeepfakeError:
        raise
    except Exception as e:  # a pipeline module that fails to import
        raise SetupError(f"pipeline {name}: cannot be built ({type(e).__name__}: {e})") from None
    return EvalPipeline.of(fake)


def extra_pipelines(entries: Sequence[str]) -> dict[str, EvalPipeline]:
    """Pipelines from ``module:function`` entries (see the module docstring)."""
    found = load_extras(entries, EXTRA_DEEPFAKES_ENV, deepfakes.NAMES, "Deepfake or EvalPipeline")
    return {name: EvalPipeline.of(p) if isinstance(p, Deepfake) else p for name, p in found.items()}


def resolve(name: str, extra: Mapping[str, EvalPipeline]) -> EvalPipeline:
    """The pipeline ``name``: an extra one, else the registry's; ``SetupError`` when unknown."""
    if name in extra:
        return extra[name]
    try:
        return _builtin(name)
    except deepfakes.UnknownDeepfakeError:
        raise SetupError(f"unknown pipeline {name!r}; known: {', '.join((*deepfakes.NAMES, *extra))}") from None


__all__ = ["Attribute", "EXTRA_DEEPFAKES_ENV", "EvalPipeline", "diffae_pipeline", "extra_pipelines", "resolve"]
