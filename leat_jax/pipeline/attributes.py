"""The pipelines an evaluation runs, their weights, and their known / unknown attributes.

``--pipelines NAME=DIR,...`` names a folder per pipeline holding its
converted networks (each made by ``leat-jax convert``), in sub-folders:

* ``styleclip``: ``e4e/``, ``stylegan2/``, ``mappers/<prompt>/`` (one
  ``styleclip_mapper`` per text prompt);
* ``simswap``: ``simswap_full/`` (the generator), ``simswap_id/`` (ArcFace);
* ``icface``: ``icface/`` (the neutralizer), ``icface_full/`` (the generator);
* ``diffae``: ``encoder/``, ``unet/``, ``classifier/``.

A bare name takes stand-in weights of the real architecture (allowed only
with ``--stand-in-weights``; the numbers then mean nothing about protection).

Attributes, per pipeline (a ``[NAME]`` table of the ``--config`` TOML file,
``known`` and ``unknown``: the paper's gray-box split, where the image-space
baseline may use only ``known``). Defaults:

* ``styleclip``: mapper prompt names (sub-folders of ``mappers/``); default:
  every mapper found, sorted, the first half (rounded up) known. On stand-in
  weights: ``known = 2``, ``unknown = 2`` stand-in mappers (seeds 1, 2, ...).
* ``diffae``: ``"Attribute:strength"`` entries (``Smiling:0.3``, signed),
  default known ``Smiling:0.3, Blond_Hair:0.3``, unknown ``Eyeglasses:0.3,
  Young:-0.3``; ``inversion_steps`` / ``render_steps`` override the DDIM
  step counts (official 250 / 100).
* ``simswap``: counts of source identities: the ArcFace identities of the
  first clean images of the folder, in sorted order (known first). Default:
  one per *other* image of the folder (at least one, at most ``known = 2``,
  ``unknown = 2``), known rounded up: 2 images give 1 known, 3 give 1 + 1.
  An image that is itself a source is swapped with its own identity for that
  attribute (documented, not excluded); a folder of one image is swapped
  with itself.
* ``icface``: counts of driving vectors, default ``known = 2``, ``unknown =
  2``, sampled with ``seed`` (default 0): head pose uniform in [-0.7, 0.7] rad
  per angle (the whole normalised range [0, 1]), each of the 17 AU
  intensities active with probability 0.3 and then uniform in [0, 5].

Extra pipelines (tests, experiments) come from ``LEAT_EXTRA_DEEPFAKES``: a
comma-separated list of ``module:function`` entries, each function returning
a mapping of name -> ``EvalPipeline``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from leat_jax.pipeline.victimset import SetupError

EXTRA_DEEPFAKES_ENV = "LEAT_EXTRA_DEEPFAKES"
STAND_IN_SEED = 0


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One target attribute: a name for reports and its value (a pytree the pipeline takes)."""

    name: str
    value: Any


@dataclasses.dataclass(frozen=True)
class EvalPipeline:
    """What evaluation needs of a pipeline.

    Attributes:
      deepfake: the pure pipeline (``apply``, ``over_attributes``, ``output_size``).
      load: ``(folder or None, seed) -> params``; None: stand-in weights.
      attributes: ``(section, folder or None, params, clean images, seed) ->
        (known, unknown)`` lists of ``Attribute``; ``section`` is the TOML
        table of the pipeline (possibly empty), ``clean images`` the (H, W, 3)
        [-1, 1] arrays of the folder in sorted order.
      configure: ``section -> (apply, over_attributes)`` to use instead of the
        deepfake's (e.g. DiffAE step counts, or params holding more than the
        pipeline's own); None: the deepfake's.
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

    def functions(self, section: Mapping) -> tuple[Callable, Callable]:
        """(apply, over_attributes) for this section's settings."""
        if self.configure is not None:
            return self.configure(section)
        return self.deepfake.apply, self.deepfake.over_attributes


def _count(section: Mapping, key: str, default: int, name: str) -> int:
    v = section.get(key, default)
    if type(v) is not int or v < 0:
        raise SetupError(f"[{name}] {key} must be a non-negative integer (a count), got {v!r}")
    return v


def _sub(folder: str | None, name: str):
    from leat_jax import checkpoints

    path = Path(folder) / name
    try:
        params, _ = checkpoints.load_params(path)
    except checkpoints.CheckpointError as e:
        raise SetupError(f"{path}: {e}") from None
    except OSError as e:
        raise SetupError(f"{path}: {e.strerror or e}") from None
    return params


def _need(folder: str | None, *subs: str) -> None:
    """A converted pipeline folder must hold these sub-folders (checked before anything is loaded)."""
    missing = [n for n in subs if folder is not None and not (Path(folder) / n).is_dir()]
    if missing:
        raise SetupError(f"{folder}: no {', '.join(n + '/' for n in missing)} (each made by `leat-jax convert`)")


# ---------------------------------------------------------------- StyleCLIP

def _styleclip_load(folder, seed):
    from leat_jax.deepfakes import styleclip
    from leat_jax.victims import e4e

    if folder is None:
        return {"e4e": e4e.victim().init_params(seed), "generator": styleclip.generator().init(seed)}
    return {"e4e": _sub(folder, "e4e"), "generator": _sub(folder, "stylegan2")}


def _styleclip_choice(section, folder):
    """(known, unknown): counts of stand-in mappers, or mapper names found in ``folder``."""
    if folder is None:
        return _count(section, "known", 2, "styleclip"), _count(section, "unknown", 2, "styleclip")
    found = sorted(p.name for p in (Path(folder) / "mappers").glob("*") if p.is_dir())
    known = section.get("known")
    unknown = section.get("unknown")
    for key, v in (("known", known), ("unknown", unknown)):
        if v is not None and not (isinstance(v, list) and all(isinstance(n, str) for n in v)):
            raise SetupError(f"[styleclip] {key} must list mapper names (sub-folders of {Path(folder) / 'mappers'}), "
                             f"got {v!r}")
    if known is None:
        half = (len(found) + 1) // 2
        known, unknown = found[:half], found[half:] if unknown is None else unknown
    unknown = unknown or []
    for n in [*known, *unknown]:
        if n not in found:
            raise SetupError(f"[styleclip] no mapper {n!r} in {Path(folder) / 'mappers'}; found: {', '.join(found)}")
    return known, unknown


def _styleclip_check(section, folder, names):
    _need(folder, "e4e", "stylegan2")
    _styleclip_choice(section, folder)


def _styleclip_attributes(section, folder, params, images, seed):
    from leat_jax.deepfakes import styleclip

    known, unknown = _styleclip_choice(section, folder)
    if folder is None:
        mk = lambda i: Attribute(f"stand-in mapper {i}", styleclip.mapper().init(seed + 1 + i))  # noqa: E731
        return [mk(i) for i in range(known)], [mk(known + i) for i in range(unknown)]
    mk = lambda n: Attribute(n, _sub(Path(folder) / "mappers", n))  # noqa: E731
    return [mk(n) for n in known], [mk(n) for n in unknown]


# ---------------------------------------------------------------- SimSwap

def _simswap_load(folder, seed):
    from leat_jax.victims import simswap as sv

    if folder is None:
        return {"generator": sv.generator().init(seed), "arcface": sv.identity_victim().init_params(seed)}
    return {"generator": _sub(folder, "simswap_full"), "arcface": _sub(folder, "simswap_id")}


SIMSWAP_MOST_IDENTITIES = 4  # the default's cap: known 2 + unknown 2


def simswap_identity_counts(section: Mapping, images: int) -> tuple[int, int]:
    """(known, unknown) source identities for a folder of ``images`` clean images (module docstring)."""
    room = max(1, min(SIMSWAP_MOST_IDENTITIES, images - 1))
    k = _count(section, "known", (room + 1) // 2, "simswap")
    u = _count(section, "unknown", max(0, room - k), "simswap")
    if k + u > images:
        raise SetupError(f"[simswap] {k + u} source identities asked for (known {k} + unknown {u}), but the folder "
                         f"has {images} image(s): lower known / unknown in the --config file's [simswap] table")
    if k + u == 0:
        raise SetupError("[simswap] known and unknown are both 0: no source identity to swap in")
    return k, u


def _simswap_check(section, folder, names):
    _need(folder, "simswap_full", "simswap_id")
    k, u = simswap_identity_counts(section, len(names))
    which = f"{', '.join(names[:k])} (known)" + (f", {', '.join(names[k:k + u])} (unknown)" if u else "")
    how = ("as set in [simswap]" if {"known", "unknown"} & set(section) else
           "default: one per other image of the folder, at most 2 + 2; [simswap] known / unknown in --config")
    return f"[simswap] source identities: the faces of {which} ({how})"


def _simswap_attributes(section, folder, params, images, seed):
    from leat_jax.deepfakes import simswap

    k, u = simswap_identity_counts(section, len(images))
    ids = [np.asarray(simswap.source_identity(params["arcface"], np.asarray(im)[None]))[0] for im in images[:k + u]]
    attrs = [Attribute(f"identity of image {i}", v) for i, v in enumerate(ids)]
    return attrs[:k], attrs[k:]


def _simswap_configure(section):
    from leat_jax.deepfakes import simswap, vmap_over_attributes

    def apply(params, images, latent_id):
        return simswap._swap(params["generator"], images, latent_id)

    import jax

    return jax.jit(apply), vmap_over_attributes(apply)


# ---------------------------------------------------------------- ICface

def _icface_load(folder, seed):
    from leat_jax.victims import icface as iv

    if folder is None:
        return {"neutralizer": iv.network().init(seed), "generator": iv.network().init(seed + 1)}
    return {"neutralizer": _sub(folder, "icface"), "generator": _sub(folder, "icface_full")}


def driving_vectors(count: int, seed: int) -> np.ndarray:
    """``count`` ICface driving vectors (count, 20) sampled as the module docstring says."""
    from leat_jax.deepfakes import icface

    rng = np.random.default_rng(seed)
    pose = rng.uniform(-0.7, 0.7, (count, 3))
    au = rng.uniform(0.0, 5.0, (count, 17)) * (rng.random((count, 17)) < 0.3)
    return icface.driving_vector(pose, au)


def _icface_check(section, folder, names):
    _need(folder, "icface", "icface_full")
    _icface_attributes(section, folder, None, [], 0)  # numpy only: the settings' errors, no network


def _icface_attributes(section, folder, params, images, seed):
    k, u = _count(section, "known", 2, "icface"), _count(section, "unknown", 2, "icface")
    s = section.get("seed", seed)
    if type(s) is not int:
        raise SetupError(f"[icface] seed must be an integer, got {s!r}")
    v = driving_vectors(k + u, s)
    attrs = [Attribute(f"driving vector {i} (seed {s})", v[i]) for i in range(k + u)]
    return attrs[:k], attrs[k:]


# ---------------------------------------------------------------- DiffAE

DIFFAE_KNOWN = ("Smiling:0.3", "Blond_Hair:0.3")
DIFFAE_UNKNOWN = ("Eyeglasses:0.3", "Young:-0.3")


def _diffae_load(folder, seed, config=None):
    from leat_jax.deepfakes import diffae

    config = config or diffae.DEFAULT
    if folder is None:
        return {"encoder": diffae.encoder_functional(config.encoder).init(seed),
                "unet": diffae.unet_functional(config.unet).init(seed + 1),
                "classifier": diffae.classifier_functional(config.unet.embed_channels).init(seed + 2)}
    return {k: _sub(folder, k) for k in ("encoder", "unet", "classifier")}


def _diffae_attributes(section, folder, params, images, seed):
    from leat_jax.deepfakes import diffae

    def parse(entry):
        name, _, strength = str(entry).partition(":")
        try:
            return Attribute(entry, diffae.attribute(name.strip(), float(strength) if strength else 0.3))
        except ValueError as e:
            raise SetupError(f"[diffae] {entry!r}: {e}") from None

    lists = {k: section.get(k, default) for k, default in (("known", DIFFAE_KNOWN), ("unknown", DIFFAE_UNKNOWN))}
    for key, v in lists.items():
        if not (isinstance(v, (list, tuple)) and all(isinstance(e, str) for e in v)):
            raise SetupError(f'[diffae] {key} must list "Attribute:strength" entries, got {v!r}')
    return [parse(e) for e in lists["known"]], [parse(e) for e in lists["unknown"]]


def _diffae_check(section, folder, names, base=None):
    _need(folder, "encoder", "unet", "classifier")
    _diffae_configure(section, base)  # builds nothing: the jitted functions compile on first call
    _diffae_attributes(section, folder, None, [], 0)


def _diffae_configure(section, base=None):
    """The edit at ``base`` (None: the official ffhq256 settings) with the section's step counts."""
    from leat_jax.deepfakes import diffae

    base = base or diffae.DEFAULT
    steps = {k: section[k] for k in ("inversion_steps", "render_steps") if k in section}
    for key, n in steps.items():
        try:
            if type(n) is not int:
                raise ValueError("not an integer")
            diffae.space_timesteps(base.num_train_steps, n)
        except ValueError:
            raise SetupError(f"[diffae] {key} must be a DDIM step count (an integer from 2 to "
                             f"{base.num_train_steps} giving an integer stride), got {n!r}") from None
    config = dataclasses.replace(base, **steps) if steps else base
    return diffae.pipeline(config), diffae.over_attributes_for(config)


def diffae_pipeline(config=None, load=None, name: str = "diffae") -> EvalPipeline:
    """DiffAE for evaluation at ``config``'s model sizes (None: the official ffhq256).

    ``load``: ``(folder, seed) -> params`` instead of converted folders and
    stand-in initialisers (e.g. small test models); ``name``: the report's.
    The registry's ``diffae`` is ``diffae_pipeline()``.
    """
    import functools

    from leat_jax import deepfakes
    from leat_jax.deepfakes import diffae

    if config is None:
        fake = deepfakes.get("diffae")
    else:
        fake = deepfakes.Deepfake(name, diffae.pipeline(config), diffae.over_attributes_for(config),
                                  (config.unet.image_size,) * 2, deepfakes.get("diffae").attribute)
    return EvalPipeline(fake, load or functools.partial(_diffae_load, config=config), _diffae_attributes,
                        functools.partial(_diffae_configure, base=config),
                        functools.partial(_diffae_check, base=config))


def _builtin(name: str) -> EvalPipeline:
    from leat_jax import deepfakes

    try:
        fake = deepfakes.get(name)
    except deepfakes.UnknownDeepfakeError:
        raise
    except Exception as e:  # a pipeline module that fails to import
        raise SetupError(f"pipeline {name}: cannot be built ({type(e).__name__}: {e})") from None
    table = {
        "styleclip": (_styleclip_load, _styleclip_attributes, None, _styleclip_check),
        "simswap": (_simswap_load, _simswap_attributes, _simswap_configure, _simswap_check),
        "icface": (_icface_load, _icface_attributes, None, _icface_check),
        "diffae": (_diffae_load, _diffae_attributes, _diffae_configure, _diffae_check),
    }
    load, attrs, configure, check = table[name]
    return EvalPipeline(fake, load, attrs, configure, check)


def extra_pipelines(entries: Sequence[str]) -> dict[str, EvalPipeline]:
    """Pipelines from ``module:function`` entries (see the module docstring)."""
    from leat_jax import deepfakes
    from leat_jax.pipeline.victimset import load_extras

    return load_extras(entries, EXTRA_DEEPFAKES_ENV, deepfakes.NAMES, "EvalPipeline")


def resolve(name: str, extra: Mapping[str, EvalPipeline]) -> EvalPipeline:
    from leat_jax import deepfakes

    if name in extra:
        return extra[name]
    try:
        return _builtin(name)
    except deepfakes.UnknownDeepfakeError:
        raise SetupError(f"unknown pipeline {name!r}; known: {', '.join((*deepfakes.NAMES, *extra))}") from None
