"""The victims of a run: names, their weights, and what identifies those weights.

``--victims e4e=DIR,diffae=DIR`` loads converted checkpoints; a bare name
(``--victims diffae,simswap_G``) takes stand-in weights of the real
architecture, allowed only with ``--stand-in-weights``: they protect against
nothing and exist to show the whole job working.

Extra victims (tests, experiments) come from ``LEAT_EXTRA_VICTIMS``: a
comma-separated list of ``module:function`` entries, each function returning
a mapping of name -> ``Victim``. The CLI reads the variable once and passes it
here; extra names may not shadow the registry's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
from pathlib import Path
from typing import Mapping, Sequence

from leat_jax import checkpoints
from leat_jax import victims as registry
from leat_jax.errors import SetupError
from leat_jax.victims import Victim

EXTRA_VICTIMS_ENV = "LEAT_EXTRA_VICTIMS"
# Stand-in weights are drawn from this seed, so runs on them are repeatable.
STAND_IN_SEED = 0


@dataclasses.dataclass(frozen=True)
class VictimSpec:
    """A victim to attack: its name and converted checkpoint (None: stand-in weights).

    ``source``: the settings file that named it, or None (a flag); errors about the name name that file.
    """

    name: str
    checkpoint: str | None = None
    source: str | None = dataclasses.field(default=None, compare=False)

    def __str__(self):
        return self.name if self.checkpoint is None else f"{self.name}={self.checkpoint}"


@dataclasses.dataclass(frozen=True)
class Loaded:
    """Victims ready for the attack, in the order given."""

    victims: tuple[Victim, ...]
    params: tuple
    identities: tuple[str, ...]  # per victim: which weights (checkpoint hash or stand-in seed)
    stand_in: tuple[str, ...]  # names running on stand-in weights

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.victims)


def parse(text: str, base: Path | None = None) -> tuple[VictimSpec, ...]:
    """``name=DIR,name,...`` -> specs (DIR relative to ``base`` when given)."""
    specs = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, directory = part.partition("=")
        name, directory = name.strip(), directory.strip()
        if sep and not directory:
            raise SetupError(f"--victims: {name}= names no checkpoint folder")
        if directory and base is not None and not Path(directory).is_absolute():
            directory = str(base / directory)
        specs.append(VictimSpec(name, directory or None))
    return tuple(specs)


def load_extras(entries: Sequence[str], env_name: str, reserved: Sequence[str], what: str) -> dict:
    """``{name: object}`` from ``module:function`` entries, none shadowing ``reserved``."""
    found: dict = {}
    for entry in entries:
        module, _, fn = entry.partition(":")
        try:
            mapping = getattr(importlib.import_module(module.strip()), fn.strip())()
        except Exception as e:
            raise SetupError(f"{env_name}: cannot load {entry!r} ({type(e).__name__}: {e})") from None
        if not isinstance(mapping, Mapping):
            raise SetupError(f"{env_name}: {entry!r} did not return a mapping of name -> {what}")
        for name, obj in mapping.items():
            if name in reserved:
                raise SetupError(f"{env_name}: {entry!r} would shadow the registry's {name!r}")
            found[name] = obj
    return found


def extra_victims(entries: Sequence[str]) -> dict[str, Victim]:
    """Victims from ``module:function`` entries (see the module docstring)."""
    return load_extras(entries, EXTRA_VICTIMS_ENV, registry.NAMES, "Victim")


def _where(spec: VictimSpec) -> str:
    return f"{spec.source}: [victims]: " if spec.source else ""


def _victim(spec: VictimSpec, extra: Mapping[str, Victim]) -> Victim:
    name = spec.name
    if name in extra:
        return extra[name]
    try:
        return registry.get(name)
    except registry.UnknownVictimError:
        known = ", ".join((*registry.NAMES, *extra))
        raise SetupError(f"{_where(spec)}unknown victim {name!r}; known: {known}") from None
    except Exception as e:  # a victim module that fails to import or build
        raise SetupError(f"victim {name}: cannot be built ({type(e).__name__}: {e})") from None


def _checkpoint_identity(directory: str) -> str:
    meta = checkpoints.read_meta(directory)
    if meta.get("source_sha256"):
        return f"checkpoint:{meta['source_sha256']}:converter-{meta.get('converter_version')}"
    raw = (Path(directory) / checkpoints.META).read_bytes()
    return f"checkpoint-meta:{hashlib.sha256(raw).hexdigest()}"


def _check_structure(spec: VictimSpec, victim: Victim) -> None:
    """The checks of a load that read no weight: ``meta.json``, the model's name, the parameters' shapes."""
    shapes, meta = checkpoints.read_shapes(spec.checkpoint)
    if meta.get("model") != spec.name:
        raise checkpoints.CheckpointError(
            f"{spec.checkpoint}: holds converted weights of {meta.get('model')!r}, not {spec.name!r}"
        )
    checkpoints.check_against_template(shapes, victim.template, spec.checkpoint)


def _stand_in_params(victim: Victim):
    import jax

    # One compiled program initialises the whole network: much faster than
    # the layer-by-layer eager initialisation of a large model.
    return jax.jit(victim.init_params, static_argnums=0)(STAND_IN_SEED)


def load(specs: Sequence[VictimSpec], stand_in_weights: bool, extra_entries: Sequence[str] = (),
         weights: bool = True) -> Loaded:
    """Resolve and load every victim; ``SetupError`` (one line) on any problem.

    ``weights=False``: the identities only, params None (for a driver that
    attacks nothing: its workers load the weights); a checkpoint's structure
    is checked all the same, so most damage shows before any worker starts.
    """
    if not specs:
        raise SetupError(
            "no victims: give --victims NAME=DIR,... or --config FILE.toml "
            "(or --stand-in-weights for a demo that protects against nothing)"
        )
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SetupError(f"victim {dup[0]!r} is named twice")
    extra = extra_victims(extra_entries)
    out_v, out_p, ids, stand_in = [], [], [], []
    for spec in specs:
        victim = _victim(spec, extra)  # unknown names fail before any weight is read
        if spec.checkpoint is None:
            if not stand_in_weights:
                raise SetupError(
                    f"{_where(spec)}victim {spec.name} has no checkpoint: give {spec.name}=DIR (converted with "
                    "`leat-jax convert`), or --stand-in-weights for a demo that protects against nothing"
                )
            params = _stand_in_params(victim) if weights else None
            ids.append(f"stand-in:{STAND_IN_SEED}")
            stand_in.append(spec.name)
        else:
            try:
                ids.append(_checkpoint_identity(spec.checkpoint))
                if not weights:
                    _check_structure(spec, victim)
                    params = None
                elif spec.name in extra:
                    params, meta = checkpoints.load_params(spec.checkpoint)
                    if meta.get("model") != spec.name:
                        raise checkpoints.CheckpointError(
                            f"{spec.checkpoint}: holds converted weights of {meta.get('model')!r}, not {spec.name!r}"
                        )
                    checkpoints.check_against_template(params, victim.template, spec.checkpoint)
                else:
                    _, params = registry.load(spec.name, spec.checkpoint)
            except checkpoints.CheckpointError as e:
                raise SetupError(f"checkpoint of {spec.name}: {e}") from None
            except OSError as e:
                raise SetupError(f"checkpoint of {spec.name}: {spec.checkpoint}: {e.strerror or e}") from None
        out_v.append(victim)
        out_p.append(params)
    return Loaded(tuple(out_v), tuple(out_p), tuple(ids), tuple(stand_in))
