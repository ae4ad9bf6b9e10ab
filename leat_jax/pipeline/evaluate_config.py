"""Settings of an evaluate run: the frozen ``EvaluateConfig``, from defaults, a TOML file and flags.

``parse_pipelines`` reads ``--pipelines``, ``read_toml`` the ``--config`` file,
``build`` merges defaults < TOML < flags, and ``build_samples`` is
``evaluate --samples``: the bundled sample faces against the demo's output,
every pipeline on stand-in weights at its cheapest settings
(``SAMPLES_SECTIONS``). The job itself: ``pipeline.evaluate``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from leat_jax import deepfakes
from leat_jax.attack import AttackConfig
from leat_jax.attack.config import STARTS
from leat_jax.attack.start import LearnedStart
from leat_jax.errors import SetupError
from leat_jax.pipeline import countermeasures, identity, metrics
from leat_jax.pipeline.config import attack_table, load_toml
from leat_jax.pipeline.immunize import SAMPLES
from leat_jax.pipeline.start_file import load_start


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    name: str
    folder: str | None = None  # None: stand-in weights


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Settings of an evaluation.

    Attributes:
      clean, protected, out: the three folders.
      pipelines: what to run (``--pipelines``; bare names need ``stand_in_weights``).
      sections: per pipeline, its TOML table (attributes; see ``pipeline.attributes``).
      stand_in_weights: allow bare pipeline names (random weights; numbers mean nothing).
      baseline: also run and evaluate the image-space attack.
      attack: the baseline's settings; None: LEAT's, from the immunize report
        in ``protected`` (``AttackConfig()`` defaults when there is none). A learned
        start there is read again from the file the report names, if its digest still matches.
      start: the baseline's start, over ``attack``'s or the report's: ``random``, ``zero``
        or a ``LearnedStart`` (``start_file.load_start``); None: theirs.
      seed: the baseline's random starts (with each image's relative path), the
        stand-in weights and sampled attributes; None: the immunize report's seed, else 0.
      threshold: the disruption threshold on MSE (0.05).
      identity_threshold: a pair is identity-disrupted when the ArcFace cosine of its outputs is below it
        (``identity.IDENTITY_THRESHOLD``, 0.3: why there).
      arcface: ArcFace weights of the identity check when no SimSwap pipeline has a folder: a converted
        ``simswap_id`` folder, or ``"stand-in"`` (needs ``stand_in_weights``); None: no identity check.
      figure_rows: images shown in the figure (0: no figure).
      max_size: largest accepted image side.
      devices: the baseline runs on the first N local devices (None: all).
      extra_pipelines: ``module:function`` entries (``LEAT_EXTRA_DEEPFAKES``).
      quiet: no progress lines.
      countermeasure: applied to every protected image as it is read (e.g.
        ``jpeg75``; ``pipeline.countermeasures``): the disruption after an upload.
    """

    clean: str
    protected: str
    out: str
    pipelines: tuple[PipelineSpec, ...] = ()
    sections: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    stand_in_weights: bool = False
    baseline: bool = False
    attack: AttackConfig | None = None
    start: Any = None
    seed: int | None = None
    threshold: float = metrics.THRESHOLD
    identity_threshold: float = identity.IDENTITY_THRESHOLD
    arcface: str | None = None
    figure_rows: int = 4
    max_size: int = 2048
    devices: int | None = None
    extra_pipelines: tuple[str, ...] = ()
    quiet: bool = False
    countermeasure: str | None = None

    def __post_init__(self):
        if self.countermeasure is not None:
            countermeasures.check(self.countermeasure)
        if type(self.figure_rows) is not int or self.figure_rows < 0:
            raise SetupError(f"figure_rows must be a non-negative integer, got {self.figure_rows!r}")
        if not isinstance(self.threshold, (int, float)) or not self.threshold >= 0:
            raise SetupError(f"threshold must be a non-negative number, got {self.threshold!r}")
        t = self.identity_threshold
        if type(t) not in (int, float) or not -1 <= t <= 1:
            raise SetupError(f"identity_threshold must be a cosine in [-1, 1], got {t!r}")
        if self.arcface is not None and not isinstance(self.arcface, str):
            raise SetupError(f'arcface must be a folder or "stand-in", got {self.arcface!r}')
        if self.seed is not None and (type(self.seed) is not int or not 0 <= self.seed < 2**32):
            raise SetupError(f"seed must be an integer in 0..2**32-1, got {self.seed!r}")
        if not (self.start is None or self.start in STARTS or isinstance(self.start, LearnedStart)):
            raise SetupError(f"start must be random, zero or a learned start's file, got {self.start!r}")
        if self.devices is not None and (type(self.devices) is not int or self.devices < 1):
            raise SetupError(f"devices must be a positive integer, got {self.devices!r}")
        for name in ("stand_in_weights", "baseline", "quiet"):
            if type(getattr(self, name)) is not bool:
                raise SetupError(f"{name} must be true or false, got {getattr(self, name)!r}")


def parse_pipelines(text: str) -> tuple[PipelineSpec, ...]:
    """``name=DIR,name,...`` -> specs."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, folder = (s.strip() for s in part.partition("="))
        if sep and not folder:
            raise SetupError(f"--pipelines: {name}= names no folder")
        out.append(PipelineSpec(name, folder or None))
    return tuple(out)


_TOP = {"baseline", "seed", "threshold", "figure_rows", "max_size", "stand_in_weights", "devices", "countermeasure",
        "identity_threshold", "arcface"}


def read_toml(path) -> dict[str, Any]:
    """The ``--config`` file -> settings for ``build``::

        threshold = 0.05
        identity_threshold = 0.3
        arcface = "weights/simswap_id"   # relative to the file, or "stand-in"
        [attack]            # the baseline's AttackConfig fields
        iterations = 50
        [pipelines]         # name = folder (relative to the file) or "stand-in"
        simswap = "ckpt/simswap"
        [simswap]           # attributes: see leat_jax.pipeline.attributes
        known = 2
        unknown = 2
    """
    path = Path(path)
    data = load_toml(path)
    out: dict[str, Any] = {"sections": {}}
    for key, value in data.items():
        if key == "attack":
            out["attack"] = attack_table(path, value)
        elif key == "pipelines":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise SetupError(f'{path}: [pipelines] must map names to folders or "stand-in"')
            out["pipelines"] = tuple(
                PipelineSpec(n, None if d == "stand-in" else str(path.parent / d)) for n, d in value.items())
        elif isinstance(value, dict):
            out["sections"][key] = dict(value)
        elif key == "arcface" and isinstance(value, str) and value != identity.STAND_IN:
            out[key] = str(path.parent / value)
        elif key in _TOP:
            out[key] = value
        else:
            raise SetupError(f"{path}: unknown setting {key!r}; known: attack, pipelines, [NAME] tables, "
                             f"{', '.join(sorted(_TOP))}")
    return _checked_alone(path, out)


def _checked_alone(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` from the file at ``path`` checked on their own, so that a bad value's error names the file
    (``build`` checks them again beside the flags; a start is read there, the [NAME] tables by each pipeline)."""
    attack = {k: v for k, v in settings.get("attack", {}).items() if k != "start"}
    try:
        EvaluateConfig(clean="", protected="", out="", attack=AttackConfig(**attack) if attack else None,
                       **{k: v for k, v in settings.items() if k in _TOP})
    except SetupError as e:
        raise SetupError(f"{path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise SetupError(f"{path}: [attack]: {e}") from None
    return settings


# --samples: the cheapest settings that still split known / unknown (README: minutes per pipeline on a CPU)
SAMPLES_SECTIONS = {
    "styleclip": {"known": 1, "unknown": 1},
    "diffae": {"known": ["Smiling:0.3"], "unknown": ["Young:-0.3"], "inversion_steps": 2, "render_steps": 2},
    "icface": {"known": 1, "unknown": 1},
}


SAMPLES_OUT = "evaluation"  # --samples: the report's default folder, inside the demo's output


def build_samples(protected, out=None, toml: Mapping[str, Any] | None = None, **flags) -> EvaluateConfig:
    """``--samples``: the bundled sample faces against ``protected`` (what ``immunize --samples`` wrote).

    Args:
      protected: the demo's output folder.
      out: where the report goes (None: ``protected/evaluation``).
      toml: ``read_toml``'s settings: they update every pipeline on stand-in weights at ``SAMPLES_SECTIONS``.
      flags: as ``build``'s.
    Returns:
      the config.
    """
    toml = dict(toml or {})
    sections = {n: dict(v) for n, v in SAMPLES_SECTIONS.items()}
    for name, table in toml.pop("sections", {}).items():
        sections[name] = {**sections.get(name, {}), **table}
    settings = {"pipelines": tuple(PipelineSpec(n) for n in deepfakes.NAMES), "stand_in_weights": True,
                **toml, "sections": sections}
    out = Path(protected) / SAMPLES_OUT if out is None else out
    return build(SAMPLES, protected, out, settings, **flags)


def build(clean, protected, out, toml: Mapping[str, Any] | None = None, **flags) -> EvaluateConfig:
    """Defaults < ``toml`` < ``flags`` (None: not given)."""
    values = {**dict(toml or {}), **{k: v for k, v in flags.items() if v is not None}}
    attack = values.pop("attack", None)
    if isinstance(values.get("start"), str) and values["start"] not in STARTS:
        values["start"] = load_start(values["start"])  # checked against eps once the attack is known
    if attack is not None:
        if isinstance(attack.get("start"), str) and attack["start"] not in STARTS:
            attack = {**attack, "start": load_start(attack["start"], attack.get("eps", AttackConfig.eps))}
        try:
            values["attack"] = AttackConfig(**attack)
        except (TypeError, ValueError) as e:
            raise SetupError(f"attack settings: {e}") from None
    return EvaluateConfig(clean=str(clean), protected=str(protected), out=str(out), **values)
