"""StyleCLIP, latent-mapper edition: e4e inversion, the mapper's edit, StyleGAN2, the 256 pool.

The official mapper inference (``mapper/scripts/inference.py``) on an e4e
inversion: ``w = e4e(x)``, ``w_hat = w + 0.1 * mapper(w)``,
``G([w_hat], input_is_latent=True, randomize_noise=False, truncation=1)``,
then the wrapper's ``AdaptiveAvgPool2d((256, 256))``. Here:

    edit(params, images, mapper_params) = pool_256(G(w + 0.1 * M(w))),  w = e4e(resize_256(images))

* ``params``: ``{"e4e": victims e4e params (encoder + latent_avg),
  "generator": converters.stylegan2.generator_to_params(e4e_ffhq_encode.pt)}``;
* ``images``: [-1, 1] NHWC faces (aligned FFHQ-style crops officially);
* ``mapper_params``: the attribute, one text prompt's mapper
  (``converters.stylegan2.mapper_to_params``); a stack of them maps with
  ``over_attributes``.

The output is G's raw image pooled to 256, about [-1, 1] for real weights and
not clamped here (the official code clamps only when saving a PNG), so
gradients (the image-space baseline's) never vanish at the clamp; the
evaluation clamps every output to [-1, 1] before any metric, as saving does.
"""
from __future__ import annotations

import functools
from pathlib import Path

import jax

from leat_jax.deepfakes import Attribute, Deepfake, vmap_over_attributes
from leat_jax.deepfakes.parts import count, load_part
from leat_jax.errors import SetupError
from leat_jax.models.base import Functional
from leat_jax.models.styleclip_mapper import edit as apply_edit
from leat_jax.models.styleclip_mapper import levels_mapper
from leat_jax.models.stylegan2 import GeneratorConfig, face_pool
from leat_jax.models.stylegan2 import generator as build_generator
from leat_jax.victims import e4e

OUTPUT_SIZE = 256  # the official wrapper's face_pool


@functools.cache
def generator(config: GeneratorConfig = GeneratorConfig()) -> Functional:
    """StyleGAN2 (1024 FFHQ by default): ``apply(params, w_plus) -> raw image`` [N, 1024, 1024, 3]."""
    return Functional(lambda rngs: build_generator(rngs, config))


@functools.cache
def mapper() -> Functional:
    """StyleCLIP's LevelsMapper: ``apply(params, w_plus) -> residual``."""
    return Functional(levels_mapper)


def invert(e4e_params, images):
    """W+ codes [N, 18, 512] of [-1, 1] NHWC images (e4e, with latent_avg)."""
    return e4e.apply(e4e_params, e4e.preprocess(images))


def edit_latent(mapper_params, w_plus):
    """``w + 0.1 * mapper(w)``."""
    return apply_edit(mapper().apply(mapper_params, w_plus), w_plus)


def synthesize(generator_params, w_plus, size: int = OUTPUT_SIZE):
    """G's image from W+, pooled to ``size`` (the 1024 image when ``size`` is None)."""
    image = generator().apply(generator_params, w_plus)
    return image if size is None else face_pool(image, size)


def _edit(params, images, mapper_params):
    w = invert(params["e4e"], images)
    return synthesize(params["generator"], edit_latent(mapper_params, w))


edit = jax.jit(_edit)
edit.__doc__ = """({"e4e", "generator"} params, faces [-1, 1] NHWC, mapper params) -> edited faces, 256, raw range."""

over_attributes = vmap_over_attributes(_edit)

# sub-folder -> the `leat-jax convert` model writing it
PARTS = {"e4e": "e4e", "stylegan2": "stylegan2", "mappers/<prompt>": "styleclip_mapper"}


def load(folder, seed):
    """``{"e4e", "generator"}`` params from ``folder`` (``PARTS``), or stand-ins of seed ``seed`` (None)."""
    if folder is None:
        return {"e4e": e4e.victim().init_params(seed), "generator": generator().init(seed)}
    return {"e4e": load_part(folder, "e4e"), "generator": load_part(folder, "stylegan2")}


def _check_names(section, folder):
    for key in ("known", "unknown"):
        v = section.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(n, str) for n in v)):
            raise SetupError(f"[styleclip] {key} must list mapper names (sub-folders of {Path(folder) / 'mappers'}), "
                             f"got {v!r}")


def choice(section, folder):
    """(known, unknown): counts of stand-in mappers (``folder`` None), or mapper names found under ``folder``."""
    if folder is None:
        return count(section, "known", 2, "styleclip"), count(section, "unknown", 2, "styleclip")
    _check_names(section, folder)
    found = sorted(p.name for p in (Path(folder) / "mappers").glob("*") if p.is_dir())
    known, unknown = section.get("known"), section.get("unknown")
    if known is None:
        half = (len(found) + 1) // 2
        known, unknown = found[:half], found[half:] if unknown is None else unknown
    unknown = unknown or []
    for n in [*known, *unknown]:
        if n not in found:
            raise SetupError(f"[styleclip] no mapper {n!r} in {Path(folder) / 'mappers'}; found: {', '.join(found)}")
    return known, unknown


def check(section, folder, names):
    """The mapper choice, before anything is loaded."""
    choice(section, folder)


def attributes(section, folder, params, images, seed):
    """Mapper prompt names (sub-folders of ``mappers/``).

    Default: every mapper found, sorted, the first half (rounded up) known. On
    stand-in weights (``folder`` None): ``known = 2``, ``unknown = 2`` stand-in
    mappers (seeds ``seed + 1``, ...).
    """
    known, unknown = choice(section, folder)
    if folder is None:
        stand_in = [Attribute(f"stand-in mapper {i}", mapper().init(seed + 1 + i)) for i in range(known + unknown)]
        return stand_in[:known], stand_in[known:]
    return ([Attribute(n, load_part(Path(folder) / "mappers", n)) for n in known],
            [Attribute(n, load_part(Path(folder) / "mappers", n)) for n in unknown])


DEEPFAKE = Deepfake(
    name="styleclip",
    apply=edit,
    over_attributes=over_attributes,
    output_size=(OUTPUT_SIZE, OUTPUT_SIZE),
    attribute="text edit: the parameters of one StyleCLIP latent mapper (one per prompt)",
    load=load,
    attributes=attributes,
    parts=PARTS,
    check=check,
    settings=("known", "unknown"),
)
