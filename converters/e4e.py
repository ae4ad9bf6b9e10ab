"""Official e4e checkpoint (``e4e_ffhq_encode.pt``) -> Flax parameters of ``leat_jax.models.e4e.E4E``.

The file is the training coach's dict ``{'state_dict', 'latent_avg', 'opts'}``:
``state_dict`` is the whole pSp wrapper's (``encoder.*`` and the StyleGAN2
``decoder.*``). We take ``encoder.*`` (our module mirrors the official names,
so the key map is the generic positional one) and ``latent_avg``, and ignore
the decoder, opts and any training keys. Nothing in the file is executed
(``converters.torch_io``).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from converters.keymap import ConversionError, convert_state_dict, strip_module_prefix
from converters.torch_io import Stub

ENCODER_PREFIX = "encoder."
# The decoder, and pSp's face_pool should a variant ever store state for it.
IGNORE = (r"decoder\..*", r"face_pool\..*")


def _opt(opts, name):
    if isinstance(opts, Mapping):
        return opts.get(name)
    if isinstance(opts, Stub):  # a pickled argparse.Namespace read as a stand-in
        return opts.__dict__.get(name)
    return None


def _state_dict(ckpt, source: str) -> Mapping[str, np.ndarray]:
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"{source}: expected the e4e training dict, found {type(ckpt).__name__}")
    sd = ckpt.get("state_dict", ckpt)  # the official loader also accepts a bare pSp state_dict
    if not isinstance(sd, Mapping):
        raise ConversionError(f"{source}: 'state_dict' is a {type(sd).__name__}, not a mapping")
    sd = strip_module_prefix(sd, source=source)  # a pSp saved from inside DataParallel/DDP
    if not any(k.startswith(ENCODER_PREFIX) for k in sd):
        raise ConversionError(
            f"{source}: no key starts with {ENCODER_PREFIX!r} (found e.g. {list(sd)[:3]}); "
            "expected the pSp/e4e checkpoint e4e_ffhq_encode.pt"
        )
    return sd


def _latent_avg(ckpt, source: str, shape) -> np.ndarray:
    if "latent_avg" not in ckpt or ckpt["latent_avg"] is None:
        # The official pSp would then sample the decoder's mean W at random; a
        # released e4e checkpoint always carries it, so refuse rather than guess.
        raise ConversionError(f"{source}: no 'latent_avg' entry; the e4e W+ code is encoder output + latent_avg")
    value = np.asarray(ckpt["latent_avg"], np.float32)
    # [512] (a generator's mean W) or [1, 512] broadcast over the 18 slots as
    # latent_avg.repeat(N, 1, 1) does; [18, 512] is the released file's shape.
    if value.shape not in ((shape[-1],), (1, shape[-1]), tuple(shape)):
        raise ConversionError(
            f"{source}: latent_avg has shape {value.shape}, expected {tuple(shape)} or ({shape[-1]},)")
    return np.ascontiguousarray(np.broadcast_to(value, shape), np.float32)


def convert(ckpt, template, source: str = "checkpoint") -> dict:
    """The E4E parameter tree for ``template`` from a loaded official checkpoint."""
    opts = ckpt.get("opts") if isinstance(ckpt, Mapping) else None
    encoder_type = _opt(opts, "encoder_type")
    if encoder_type is not None and encoder_type != "Encoder4Editing":
        # pSp's GradualStyleEncoder has the same keys but another forward pass.
        raise ConversionError(
            f"{source}: opts.encoder_type is {encoder_type!r}; this converter is for 'Encoder4Editing'")
    sd = _state_dict(ckpt, source)
    encoder_template = {"encoder": template["encoder"]}
    params = convert_state_dict(sd, encoder_template, ignore=IGNORE, source=source)
    params["latent_avg"] = _latent_avg(ckpt, source, tuple(template["latent_avg"].shape))
    return params


def to_params(ckpt, source: str = "checkpoint") -> dict:
    from leat_jax.victims import get

    return convert(ckpt, get("e4e").template, source)
