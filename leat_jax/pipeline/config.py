"""Settings of an immunize run: one frozen dataclass, from defaults, a TOML file and flags.

Precedence: the defaults here (the attack's from ``AttackConfig``), then
``--config FILE.toml``, then flags. The TOML file::

    seed = 0                  # top level: the run's settings (fields below)
    batch_size = 4
    format = "png"
    faces = "aligned"         # or "detect": inputs are photos

    [attack]                  # any AttackConfig field
    eps = 0.05
    iterations = 50
    transforms = "robust"     # EOT (--robust), or a spec: "jpeg:quality=50-95,round8"; "none": plain
                              # (jpeg:...,gradient=cubic: JPEG's rounding surrogate, square|cubic|identity)
    eot_samples = 1
    update = "sign"           # or "mifgsm", "adam"
    losses = { simswap_id = "cosine" }     # per victim: mse (default), cosine, l1
    victim_weights = { e4e = 2.0 }         # per victim (default 1)
    start = "starts/u"        # random (default), zero, or a learned start (learn-start's OUT or its .npy)

    [victims]                 # name = converted checkpoint folder, or "stand-in"
    e4e = "ckpt/e4e"          # relative to the TOML file's folder
    simswap_G = "stand-in"
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Mapping

from leat_jax.attack import AttackConfig
from leat_jax.attack.config import STARTS
from leat_jax.errors import SetupError
from leat_jax.parallel import DistributedConfig
from leat_jax.pipeline.images import OUTPUT_FORMATS
from leat_jax.pipeline.start_file import load_start
from leat_jax.pipeline.victimset import VictimSpec

# Victims of the demo on stand-in weights when none are named: the issue's
# example pair, which together fit a few minutes on two CPU cores.
DEMO_VICTIMS = (VictimSpec("diffae"), VictimSpec("simswap_G"))
# What the inputs are: aligned face crops (each image is one face), or photos
# in which faces are detected and each victim's official crop is placed.
FACE_MODES = ("aligned", "detect")
# Who runs the job's stages: this process over its local devices, or a Ray cluster (``leat_jax.engines``).
ENGINES = ("inprocess", "ray")


@dataclasses.dataclass(frozen=True)
class ImmunizeConfig:
    """Everything an immunize run needs.

    Attributes:
      src: folder, image or list of paths; None: the bundled sample faces.
      dst: output folder (created).
      victims: what to attack; empty with ``stand_in_weights``: ``DEMO_VICTIMS``.
      attack: the attack's settings (eps, step, iterations, ensemble, ...).
      seed: the attack's seed; with the image's path it keys its random start.
      stand_in_weights: allow bare victim names (stand-in weights; no protection).
      batch_size: images per device handed to the devices at once; None: the
        microbatch. Does not change results.
      microbatch: images per device per compiled step (the batch is padded to
        fill whole steps); None: 1 on CPU (XLA gains nothing from batching
        there), 8 on accelerators. Results are identical, bit for bit, for
        the same microbatch and platform; another microbatch may move them in
        the last bits (it is part of the settings hash).
      devices: local devices to use; None: all.
      format: ``png`` (lossless) or ``jpeg`` (weakens the protection).
      jpeg_quality: quality of ``jpeg`` output.
      max_size: largest accepted image side in pixels; larger ones are refused.
      workers: threads decoding, encoding and writing while devices compute.
      force: redo images the manifest has as done.
      quiet: no progress bar or summary (errors are still printed).
      distributed: join a ``jax.distributed`` job with these settings; None: single process.
      extra_victims: ``module:function`` entries adding victims (``LEAT_EXTRA_VICTIMS``).
      contact_sheet: images shown on the contact sheet (0: none).
      faces: ``aligned`` (default: every input is an aligned face crop,
        attacked whole) or ``detect`` (inputs are photos: faces are detected,
        each victim attacked through its official crop of each face, only
        those pixels change; see ``leat_jax.pipeline.photos``).
      compile_cache: JAX's persistent compilation cache: True (default) under
        the user's cache folder, a folder, or False (off).
      verify: a rerun checks done images by hashing input and output (default:
        by size and modification time; shards with a valid done marker are skipped).
      engine: ``inprocess`` (default: this process, every local device) or
        ``ray`` (Ray Data over a cluster; ``leat_jax.engines.ray_engine``).
      ray_address: the Ray cluster to join (``HOST:PORT``); None: start a local one.
      ray_actors: attack actors, ``N`` or ``MIN-MAX`` (the pool autoscales in
        between); None: one per GPU of the cluster, one without GPUs.
    """

    src: str | None
    dst: str
    victims: tuple[VictimSpec, ...] = ()
    attack: AttackConfig = AttackConfig()
    seed: int = 0
    stand_in_weights: bool = False
    batch_size: int | None = None
    microbatch: int | None = None
    devices: int | None = None
    format: str = "png"
    jpeg_quality: int = 95
    max_size: int = 2048
    workers: int = 4
    force: bool = False
    quiet: bool = False
    distributed: DistributedConfig | None = None
    extra_victims: tuple[str, ...] = ()
    contact_sheet: int = 4
    faces: str = "aligned"
    compile_cache: bool | str = True
    verify: bool = False
    engine: str = "inprocess"
    ray_address: str | None = None
    ray_actors: str | None = None

    def __post_init__(self):
        # Values may come from a TOML file: check types, not just ranges.
        if not isinstance(self.format, str) or self.format not in OUTPUT_FORMATS:
            raise SetupError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}")
        if not isinstance(self.engine, str) or self.engine not in ENGINES:
            raise SetupError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not isinstance(self.faces, str) or self.faces not in FACE_MODES:
            raise SetupError(f"faces must be one of {', '.join(FACE_MODES)}, got {self.faces!r}")
        for name, path in (("SRC", self.src), ("DST", self.dst)):
            if self.engine != "ray" and "://" in str(path or ""):  # else taken for a local folder "s3:/bucket"
                raise SetupError(f"{path}: {name} is a URL; object storage needs --engine ray")
        for name in ("batch_size", "microbatch", "devices", "max_size", "workers"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise SetupError(f"{name} must be a positive integer, got {value!r}")
        if type(self.jpeg_quality) is not int or not 1 <= self.jpeg_quality <= 100:
            raise SetupError(f"jpeg_quality must be an integer within 1..100, got {self.jpeg_quality!r}")
        if type(self.contact_sheet) is not int or self.contact_sheet < 0:
            raise SetupError(f"contact_sheet must be a non-negative integer, got {self.contact_sheet!r}")
        if type(self.seed) is not int or not 0 <= self.seed < 2**32:
            raise SetupError(f"seed must be an integer in 0..2**32-1, got {self.seed!r}")
        if not isinstance(self.compile_cache, (bool, str)) or self.compile_cache == "":
            raise SetupError(f"compile_cache must be true, false or a folder, got {self.compile_cache!r}")
        for name in ("stand_in_weights", "force", "quiet", "verify"):
            if type(getattr(self, name)) is not bool:
                raise SetupError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def victim_specs(self) -> tuple[VictimSpec, ...]:
        if not self.victims and self.stand_in_weights:
            return DEMO_VICTIMS
        return self.victims


_RUN_KEYS = {f.name for f in dataclasses.fields(ImmunizeConfig)} - {
    "src", "dst", "victims", "attack", "distributed", "extra_victims"}
_ATTACK_KEYS = {f.name for f in dataclasses.fields(AttackConfig)}


def load_toml(path) -> dict[str, Any]:
    """The parsed TOML file at ``path``; a one-line ``SetupError`` when unreadable or invalid."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SetupError(f"{path}: cannot read ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SetupError(f"{path}: not valid TOML ({e})") from None


def attack_table(path: Path, value) -> dict[str, Any]:
    """A TOML file's ``[attack]`` table as AttackConfig fields; a learned start's path made relative to the file.

    Raises:
      SetupError: (one line) not a table, or a key AttackConfig does not have.
    """
    if not isinstance(value, dict) or set(value) - _ATTACK_KEYS:
        bad = sorted(set(value) - _ATTACK_KEYS) if isinstance(value, dict) else value
        raise SetupError(f"{path}: unknown [attack] settings {bad}; known: {', '.join(sorted(_ATTACK_KEYS))}")
    out = dict(value)
    if isinstance(value.get("start"), str) and value["start"] not in STARTS:
        out["start"] = str(path.parent / value["start"])  # relative to the TOML file
    return out


def read_toml(path) -> dict[str, Any]:
    """A TOML settings file -> overrides for ``build`` (one-line ``SetupError`` when wrong)."""
    path = Path(path)
    data = load_toml(path)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "attack":
            out["attack"] = attack_table(path, value)
        elif key == "victims":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise SetupError(f'{path}: [victims] must map names to checkpoint folders or "stand-in"')
            out["victims"] = tuple(
                VictimSpec(n, None if d == "stand-in" else str(path.parent / d), source=str(path))
                for n, d in value.items()
            )
        elif key in _RUN_KEYS:
            out[key] = value
        else:
            raise SetupError(f"{path}: unknown setting {key!r}; known: attack, victims, {', '.join(sorted(_RUN_KEYS))}")
    return _checked_alone(path, out)


def _checked_alone(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings``, read from the file at ``path``, checked on their own, so that a bad value's one-line
    ``SetupError`` names the file (``build`` checks them again beside the flags; a start is read there).

    Returns:
      ``settings`` unchanged.
    """
    attack = {k: v for k, v in settings.get("attack", {}).items() if k != "start"}
    try:
        ImmunizeConfig(src=None, dst=str(path.parent), attack=AttackConfig(**attack),
                       **{k: v for k, v in settings.items() if k in _RUN_KEYS})
    except SetupError as e:
        raise SetupError(f"{path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise SetupError(f"{path}: [attack]: {e}") from None
    return settings


def build(src, dst, toml: Mapping[str, Any] | None = None, **flags) -> ImmunizeConfig:
    """Defaults < ``toml`` (from ``read_toml``) < ``flags`` (None means not given).

    Attack settings among ``flags`` are the ``AttackConfig`` field names.
    """
    toml = dict(toml or {})
    flags = {k: v for k, v in flags.items() if v is not None}
    attack = {**toml.pop("attack", {}), **{k: flags.pop(k) for k in list(flags) if k in _ATTACK_KEYS}}
    if isinstance(attack.get("start"), str) and attack["start"] not in STARTS:
        attack["start"] = load_start(attack["start"], attack.get("eps", AttackConfig.eps))
    try:
        attack_config = AttackConfig(**attack)
    except (TypeError, ValueError) as e:
        raise SetupError(f"attack settings: {e}") from None
    values = {**toml, **flags}
    unknown = set(values) - _RUN_KEYS - {"victims", "distributed", "extra_victims"}
    if unknown:
        raise SetupError(f"unknown settings {sorted(unknown)}")
    cfg = ImmunizeConfig(src=src, dst=dst, attack=attack_config, **values)
    try:
        attack_config.check_victims([spec.name for spec in cfg.victim_specs()])
    except ValueError as e:
        raise SetupError(f"attack settings: {e}") from None
    return cfg


def parse_pairs(text: str, flag: str, convert=str) -> dict[str, Any]:
    """``NAME=VALUE,...`` (``--loss``, ``--victim-weights``) -> {name: convert(value)}; one-line ``SetupError``."""
    out: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name or not value or name in out:
            raise SetupError(f"{flag}: expected NAME=VALUE,... with distinct names, got {item!r}")
        try:
            out[name] = convert(value)
        except ValueError:
            raise SetupError(f"{flag}: {name}: not a valid value: {value!r}") from None
    return out
