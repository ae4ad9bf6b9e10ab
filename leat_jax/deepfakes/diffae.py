"""Diffusion Autoencoders (ffhq256): attribute editing of a real face, as the official notebook does it.

``manipulate.ipynb`` (and ``predict.py``) edit a photo x in four stages:

1. z = E(x), the semantic encoder (EMA weights), raw z_sem (512);
2. x_T = DDIM inversion of x conditioned on z (``encode_stochastic``, the
   stochastic encoder; 250 steps in the notebook, 200 in ``predict.py``);
3. z' = the classifier edit of z: normalise with ``conds_mean`` /
   ``conds_std``, step ``alpha * sqrt(512)`` along the unit row of
   ``classifier.weight`` (non-EMA), denormalise;
4. the DDIM render of x_T conditioned on z' (100 steps), in [-1, 1].

Here:

    edit(params, images, strengths) -> edited images, [-1, 1] NHWC 256x256

* ``params``: ``{"encoder": ..., "unet": ..., "classifier": ...}`` from
  ``converters.diffae.to_params`` / ``unet_to_params`` (both of
  ``ffhq256_autoenc/last.ckpt``) and ``classifier_to_params``
  (``ffhq256_autoenc_cls/last.ckpt``);
* ``images``: faces in [-1, 1] NHWC, brought to 256x256 as the official
  loader does (``victims.diffae.preprocess``; aligned 256 crops untouched);
* ``strengths``: the attribute, signed amplitudes of the 40 CelebA attributes,
  (40,) for the batch or (N, 40); ``attribute("Wavy_Hair", 0.3)`` is the
  one-hot vector of the official single-attribute edit (several non-zero
  entries add their steps).

Step counts, the schedule and the models' sizes are ``DiffAEConfig`` fields
(official: inversion 250, render 100). Each sampler step is one pure function
(``ddim_step``); a loop is a ``lax.scan`` over per-step coefficient tables
with ``jax.checkpoint`` around each step, so gradients through hundreds of
UNet calls keep only one image per step (the image-space baseline needs them).

Numerics: the official sampler works in float64 numpy for the schedule and
casts coefficients to the image dtype; so do we. Officially each UNet call runs
under CUDA fp16 autocast; we run in the image dtype (float32), the precision
the golden cases check. On GPUs, matrix products and convolutions default to
TF32-like precision: set ``matmul_precision="highest"`` for exact parity.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leat_jax.deepfakes import Attribute, Deepfake, vmap_over_attributes
from leat_jax.deepfakes.parts import load_part
from leat_jax.errors import SetupError
from leat_jax.models.base import Functional
from leat_jax.models.diffae import (
    CELEBA_ATTRIBUTES,
    FFHQ256_ENCODER,
    FFHQ256_UNET,
    AttributeClassifier,
    ConditionalUNet,
    EncoderConfig,
    SemanticEncoder,
    UNetConfig,
)
from leat_jax.victims import diffae as dv

IMAGE_SIZE = (FFHQ256_UNET.image_size, FFHQ256_UNET.image_size)


@dataclasses.dataclass(frozen=True)
class DiffAEConfig:
    """How the edit is computed (defaults: ``manipulate.ipynb`` on ffhq256_autoenc).

    Attributes:
      inversion_steps: DDIM steps of the stochastic encoder (notebook 250;
        ``predict.py`` 200).
      render_steps: DDIM steps of the render (100 in both).
      encoder, unet: model configurations (``templates.ffhq256_autoenc()``).
      num_train_steps, beta_start, beta_end: the training schedule, linear
        betas (``get_named_beta_schedule('linear', 1000)``).
      clip_denoised: clamp the predicted x0 to [-1, 1] at every step (and
        re-derive eps from it), as the official sampler does.
      remat: ``jax.checkpoint`` per sampler step (memory for gradients).
      matmul_precision: ``jax.default_matmul_precision`` for the whole edit
        (None: the backend's default; "highest" for parity on GPU/TPU).
    """

    inversion_steps: int = 250
    render_steps: int = 100
    encoder: EncoderConfig = FFHQ256_ENCODER
    unet: UNetConfig = FFHQ256_UNET
    num_train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    clip_denoised: bool = True
    remat: bool = True
    matmul_precision: str | None = None


DEFAULT = DiffAEConfig()


@functools.cache
def encoder_functional(config: EncoderConfig = FFHQ256_ENCODER) -> Functional:
    return Functional(lambda rngs: SemanticEncoder(config, rngs=rngs))


@functools.cache
def unet_functional(config: UNetConfig = FFHQ256_UNET) -> Functional:
    return Functional(lambda rngs: ConditionalUNet(config, rngs=rngs))


@functools.cache
def classifier_functional(z_channels: int = FFHQ256_UNET.embed_channels) -> Functional:
    return Functional(lambda rngs: AttributeClassifier(z_channels, rngs=rngs))


# --- the DDIM schedule (diffusion/base.py, diffusion/diffusion.py) ---------------------


def space_timesteps(num_timesteps: int, count: int) -> np.ndarray:
    """The kept steps of ``space_timesteps(num_timesteps, f"ddim{count}")``.

    The smallest integer stride s with ``len(range(0, num_timesteps, s)) ==
    count``; steps 0, s, 2s, ... (T=100: 0..990; the top is never 999).
    """
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == count:
            return np.arange(0, num_timesteps, stride)
    raise ValueError(f"cannot create exactly {count} steps out of {num_timesteps} with an integer stride")


def spaced_alphas_cumprod(config: DiffAEConfig, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept steps, their alpha-bar), float64, as ``SpacedDiffusionBeatGans`` derives them.

    The spaced process re-derives betas from the base alpha-bar at the kept
    steps and multiplies them back up; the result equals the base values to
    ~1e-17, but we follow the same arithmetic.
    """
    n = config.num_train_steps
    scale = 1000 / n  # get_named_beta_schedule('linear', n)
    betas = np.linspace(scale * config.beta_start, scale * config.beta_end, n, dtype=np.float64)
    base = np.cumprod(1.0 - betas)
    kept = space_timesteps(n, count)
    last, new_betas = 1.0, []
    for abar in base[kept]:
        new_betas.append(1 - abar / last)
        last = abar
    return kept, np.cumprod(1.0 - np.asarray(new_betas))


class DDIMSteps(NamedTuple):
    """Per-step tables of one DDIM loop, in visiting order (each (T,)).

    One step at original timestep ``t`` maps x to
    ``to * x0 + to_m1 * eps'`` with ``x0 = clip(recip * x - recipm1 * eps)``
    and ``eps' = (recip * x - x0) / recipm1``: the render's target is the
    next-lower kept step (alpha-bar 1 below step 0), the inversion's the
    next-higher one (alpha-bar 0 above the top).
    """

    t: np.ndarray  # original timestep the UNet sees (not rescaled)
    recip: np.ndarray  # sqrt(1 / abar_t)
    recipm1: np.ndarray  # sqrt(1 / abar_t - 1)
    to: np.ndarray  # sqrt(abar_target)
    to_m1: np.ndarray  # sqrt(1 - abar_target)


def _tables(kept, abar, target) -> DDIMSteps:
    return DDIMSteps(
        t=np.asarray(kept, np.int32),
        recip=np.sqrt(1.0 / abar),
        recipm1=np.sqrt(1.0 / abar - 1),
        to=np.sqrt(target),
        to_m1=np.sqrt(1.0 - target),
    )


def render_schedule(config: DiffAEConfig = DEFAULT, steps: int | None = None) -> DDIMSteps:
    """``ddim_sample_loop`` with T = ``steps`` (default ``config.render_steps``): top step first."""
    kept, abar = spaced_alphas_cumprod(config, steps or config.render_steps)
    prev = np.append(1.0, abar[:-1])
    return DDIMSteps(*(a[::-1] for a in _tables(kept, abar, prev)))


def inversion_schedule(config: DiffAEConfig = DEFAULT, steps: int | None = None) -> DDIMSteps:
    """``ddim_reverse_sample_loop`` with T = ``steps`` (default ``config.inversion_steps``): step 0 first."""
    kept, abar = spaced_alphas_cumprod(config, steps or config.inversion_steps)
    nxt = np.append(abar[1:], 0.0)
    return _tables(kept, abar, nxt)


def ddim_step(eps_fn, x, cond, step: DDIMSteps, clip_denoised: bool = True):
    """One deterministic DDIM step (eta = 0) of either direction.

    ``eps_fn(x, t, cond)``: the noise prediction (the UNet); ``step``: one
    row of a ``DDIMSteps`` table (scalars).
    """
    t = jnp.full((x.shape[0],), step.t, jnp.int32)
    eps = eps_fn(x, t, cond)
    recip, recipm1, to, to_m1 = (jnp.asarray(c, x.dtype) for c in step[1:])
    x0 = recip * x - recipm1 * eps
    if clip_denoised:
        x0 = jnp.clip(x0, -1.0, 1.0)
    eps = (recip * x - x0) / recipm1  # re-derived from the clamped x0, as the official sampler
    return to * x0 + to_m1 * eps


def ddim_loop(eps_fn, x, cond, steps: DDIMSteps, clip_denoised: bool = True, remat: bool = True):
    """All steps of ``steps`` from ``x``: a ``lax.scan``, each step rematerialised when ``remat``."""
    tables = DDIMSteps(jnp.asarray(steps.t, jnp.int32), *(jnp.asarray(c, x.dtype) for c in steps[1:]))

    def step(x, row):
        return ddim_step(eps_fn, x, cond, row, clip_denoised)

    if remat:
        step = jax.checkpoint(step)
    x, _ = jax.lax.scan(lambda carry, row: (step(carry, row), None), x, tables)
    return x


# --- the stages ---------------------------------------------------------------------


def _eps_fn(unet_params, config: DiffAEConfig):
    unet = unet_functional(config.unet)
    return lambda x, t, cond: unet.apply(unet_params, x, t, cond)


def preprocess(images, config: DiffAEConfig = DEFAULT):
    """[-1, 1] NHWC faces -> the model's square input (the official loader at 256: ``victims.diffae``).

    Other model sizes (small test configurations) take images at their size.
    """
    size = config.unet.image_size
    if config.encoder.image_size != size:
        raise ValueError(f"encoder ({config.encoder.image_size}) and UNet ({size}) sizes differ")
    if images.shape[1:3] == (size, size):
        return images
    if (size, size) == dv.INPUT_SIZE:
        return dv.preprocess(images)
    raise ValueError(f"images of {images.shape[1:3]} for a {size}x{size} model: resize them first")


def encode(params, images, config: DiffAEConfig = DEFAULT):
    """z_sem (N, 512) of [-1, 1] NHWC faces (``LitModel.encode``)."""
    return encoder_functional(config.encoder).apply(params["encoder"], preprocess(images, config))


def stochastic_encode(unet_params, x, z, config: DiffAEConfig = DEFAULT, steps: int | None = None):
    """x_T of 256x256 images x (``encode_stochastic(x, z, T)``): DDIM inversion conditioned on z."""
    return ddim_loop(_eps_fn(unet_params, config), x, z, inversion_schedule(config, steps),
                     config.clip_denoised, config.remat)


def render(unet_params, x_T, z, config: DiffAEConfig = DEFAULT, steps: int | None = None):
    """The DDIM render of x_T conditioned on z, in [-1, 1] (``LitModel.render`` before its (x+1)/2)."""
    return ddim_loop(_eps_fn(unet_params, config), x_T, z, render_schedule(config, steps),
                     config.clip_denoised, config.remat)


def classifier_logits(classifier_params, z):
    """Logits of the 40 CelebA attributes for raw z_sem."""
    f = classifier_functional(z.shape[-1])
    return f.apply(classifier_params, z)


def edit_latent(classifier_params, z, strengths):
    """The official z_sem edit (see ``AttributeClassifier.edit``)."""
    f = classifier_functional(z.shape[-1])
    return nnx.merge(f.graphdef, classifier_params).edit(z, strengths)


def attribute(name: str | int, alpha: float = 0.3) -> np.ndarray:
    """The strengths vector (40,) of one official edit: ``alpha`` on attribute ``name``.

    As ``predict.py``, a name only present as ``No_<name>`` (``Beard``) means
    that attribute with the amplitude negated. Default 0.3 (the notebook's).
    """
    if isinstance(name, str):
        if name not in CELEBA_ATTRIBUTES and f"No_{name}" in CELEBA_ATTRIBUTES:
            name, alpha = f"No_{name}", -alpha
        if name not in CELEBA_ATTRIBUTES:
            raise ValueError(f"unknown CelebA attribute {name!r}; known: {', '.join(CELEBA_ATTRIBUTES)}")
        index = CELEBA_ATTRIBUTES.index(name)
    else:
        index = int(name)
    out = np.zeros(len(CELEBA_ATTRIBUTES), np.float32)
    out[index] = alpha
    return out


def _edit(params, images, strengths, config: DiffAEConfig = DEFAULT):
    precision = config.matmul_precision
    with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
        x = preprocess(images, config)
        z = encoder_functional(config.encoder).apply(params["encoder"], x)
        x_T = stochastic_encode(params["unet"], x, z, config)  # from the ORIGINAL z
        z_edit = edit_latent(params["classifier"], z, strengths)
        return render(params["unet"], x_T, z_edit, config)


edit = jax.jit(_edit, static_argnames=("config",))
edit.__doc__ = """(params, images [-1, 1] NHWC, strengths (40,) or (N, 40), config) -> edited 256 images in [-1, 1]."""


@functools.cache
def pipeline(config: DiffAEConfig = DEFAULT):
    """``(params, images, strengths) -> images`` for ``config``, jitted (e.g. fewer steps)."""
    return jax.jit(functools.partial(_edit, config=config))


@functools.cache
def over_attributes_for(config: DiffAEConfig = DEFAULT):
    """``pipeline(config)`` vmapped over stacked strengths (A, 40): (A, N, 256, 256, 3).

    The encoding and the inversion do not depend on the attribute, so vmap
    leaves them unbatched: they run once for all attributes.
    """
    return vmap_over_attributes(functools.partial(_edit, config=config))


# sub-folder -> the `leat-jax convert` model writing it
PARTS = {"encoder": "diffae", "unet": "diffae_unet", "classifier": "diffae_cls"}
KNOWN = ("Smiling:0.3", "Blond_Hair:0.3")
UNKNOWN = ("Eyeglasses:0.3", "Young:-0.3")


def load(folder, seed, config: DiffAEConfig | None = None):
    """``{"encoder", "unet", "classifier"}`` params from ``folder`` (``PARTS``), or stand-ins of seed
    ``seed`` (None) at ``config``'s model sizes (None: the official ffhq256)."""
    config = config or DEFAULT
    if folder is None:
        return {"encoder": encoder_functional(config.encoder).init(seed),
                "unet": unet_functional(config.unet).init(seed + 1),
                "classifier": classifier_functional(config.unet.embed_channels).init(seed + 2)}
    return {k: load_part(folder, k) for k in PARTS}


def _parse_attribute(entry) -> Attribute:
    name, _, strength = str(entry).partition(":")
    try:
        return Attribute(entry, attribute(name.strip(), float(strength) if strength else 0.3))
    except ValueError as e:
        raise SetupError(f"[diffae] {entry!r}: {e}") from None


def attributes(section, folder, params, images, seed):
    """``"Attribute:strength"`` entries (``Smiling:0.3``, signed); defaults ``KNOWN`` and ``UNKNOWN``."""
    lists = {k: section.get(k, default) for k, default in (("known", KNOWN), ("unknown", UNKNOWN))}
    for key, v in lists.items():
        if not (isinstance(v, (list, tuple)) and all(isinstance(e, str) for e in v)):
            raise SetupError(f'[diffae] {key} must list "Attribute:strength" entries, got {v!r}')
    return [_parse_attribute(e) for e in lists["known"]], [_parse_attribute(e) for e in lists["unknown"]]


def configure(section, base: DiffAEConfig | None = None):
    """(apply, over_attributes) at ``base`` (None: the official settings) with the section's
    ``inversion_steps`` / ``render_steps``; ``SetupError`` for a count that is not a DDIM step count."""
    base = base or DEFAULT
    steps = {k: section[k] for k in ("inversion_steps", "render_steps") if k in section}
    for key, n in steps.items():
        try:
            if type(n) is not int:
                raise ValueError("not an integer")
            space_timesteps(base.num_train_steps, n)
        except ValueError:
            raise SetupError(f"[diffae] {key} must be a DDIM step count (an integer from 2 to "
                             f"{base.num_train_steps} giving an integer stride), got {n!r}") from None
    config = dataclasses.replace(base, **steps) if steps else base
    return pipeline(config), over_attributes_for(config)


def check(section, folder, names, base: DiffAEConfig | None = None):
    """The section's step counts and attributes (builds nothing: the jitted functions compile on first call)."""
    configure(section, base)
    attributes(section, folder, None, [], 0)


DEEPFAKE = Deepfake(
    name="diffae",
    apply=edit,
    over_attributes=over_attributes_for(DEFAULT),
    output_size=IMAGE_SIZE,
    attribute="signed strengths of the 40 CelebA attributes (40,), one-hot alpha for the official edit "
    f"(default alpha 0.3; inversion {DEFAULT.inversion_steps}, render {DEFAULT.render_steps} DDIM steps)",
    load=load,
    attributes=attributes,
    configure=configure,
    parts=PARTS,
    check=check,
    settings=("known", "unknown", "inversion_steps", "render_steps"),
)


def at_config(config: DiffAEConfig, load_fn=None, name: str = "diffae") -> Deepfake:
    """DiffAE at ``config``'s model sizes and step counts (e.g. small test models), named ``name``.

    ``load_fn``: ``(folder, seed) -> params`` instead of ``load`` at ``config``.
    """
    return dataclasses.replace(
        DEEPFAKE, name=name, apply=pipeline(config), over_attributes=over_attributes_for(config),
        output_size=(config.unet.image_size,) * 2, load=load_fn or functools.partial(load, config=config),
        configure=functools.partial(configure, base=config), check=functools.partial(check, base=config))


__all__ = [
    "DDIMSteps", "DEEPFAKE", "DEFAULT", "DiffAEConfig", "IMAGE_SIZE", "KNOWN", "PARTS", "UNKNOWN", "at_config",
    "attribute", "attributes", "classifier_functional", "configure", "load",
    "classifier_logits", "ddim_loop", "ddim_step", "edit", "edit_latent", "encode", "encoder_functional",
    "inversion_schedule", "over_attributes_for", "pipeline", "preprocess", "render", "render_schedule",
    "space_timesteps", "spaced_alphas_cumprod", "stochastic_encode", "unet_functional",
]
