"""SimSwap (224) in both roles of a photo: the swap's *target* (``DEEPFAKE``), its identity *source* (``SOURCE``).

Official inference (``fsModel.forward(None, img_att, latent_id, None, True)``)
runs the whole ``Generator_Adain_Upsample`` on the aligned 224 target crop in
[0, 1] with ``latent_id``, the L2-normalised ArcFace embedding of the source
face, and returns ``(tanh + 1) / 2``. Here:

    swap(params, images, latent_id) = 2 * G(to_unit(resize_224(images)), latent_id) - 1

* ``params``: the whole generator (``converters.simswap.full_generator_to_params``
  of ``latest_net_G.pth``);
* ``images``: target faces, [-1, 1] NHWC; aligned 224 crops reach G untouched;
* ``latent_id``: the attribute, a unit identity vector (512,) shared by the
  batch or (N, 512); ``source_identity`` computes it from source faces as the
  official pipeline does. G uses it as given (it does not normalise it).

The output is the swapped 224 crop before paste-back (the aligned crop is
where disruption is measured; see research/generators.md 1.4).

``SOURCE`` (``simswap_source``) is the other role, the one the ``simswap_id``
victim defends: the protected photo gives the identity (through ArcFace) that
is swapped onto other people's faces, the attributes. The same generator and
ArcFace, the same folder:

    swap_from(params, images, target) = swap(params["generator"], target, source_identity(params["arcface"], images))
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from leat_jax.deepfakes import Attribute, Deepfake, vmap_over_attributes
from leat_jax.deepfakes.parts import count, load_part
from leat_jax.errors import SetupError
from leat_jax.victims import simswap as sv
from leat_jax.victims.base import resize, to_unit

INPUT_SIZE = sv.INPUT_SIZE  # (224, 224)


def _swap(params, images, latent_id):
    x01 = to_unit(resize(images, INPUT_SIZE))
    latent_id = jnp.asarray(latent_id, x01.dtype)
    # one identity for the whole batch, or one per image
    latent_id = jnp.broadcast_to(latent_id, (x01.shape[0], latent_id.shape[-1]))
    out01 = sv.generator().apply(params, x01, latent_id)
    return out01 * 2.0 - 1.0


swap = jax.jit(_swap)
swap.__doc__ = """(generator params, target images [-1, 1] NHWC, latent_id) -> swapped 224 crops in [-1, 1]."""

over_attributes = vmap_over_attributes(_swap)


@jax.jit
def source_identity(arcface_params, source_images):
    """``latent_id`` of source faces ([-1, 1] NHWC, aligned): [N, 512], unit norm.

    The official path: ImageNet-normalised 224 crop, torch's nearest resize to
    112, ArcFace, L2 normalisation (``victims.simswap.identity_apply``).
    """
    return sv.identity_apply(arcface_params, sv.identity_preprocess(source_images))


# sub-folder -> the `leat-jax convert` model writing it
PARTS = {"simswap_full": "simswap_full", "simswap_id": "simswap_id"}


def load(folder, seed):
    """``{"generator", "arcface"}`` params from ``folder`` (``PARTS``), or stand-ins of seed ``seed`` (None)."""
    if folder is None:
        return {"generator": sv.generator().init(seed), "arcface": sv.identity_victim().init_params(seed)}
    return {"generator": load_part(folder, "simswap_full"), "arcface": load_part(folder, "simswap_id")}


MOST_FACES = 4  # the default's cap: known 2 + unknown 2


def face_counts(section, images: int, name: str = "simswap", what: str = "source identities") -> tuple[int, int]:
    """(known, unknown) faces of the folder to swap with, for a folder of ``images`` clean images.

    Default: one per *other* image of the folder (at least one, at most
    ``MOST_FACES``), known rounded up: 2 images give 1 + 0, 3 give 1 + 1.
    ``SetupError`` when the section asks for more than the folder holds.
    """
    room = max(1, min(MOST_FACES, images - 1))
    k = count(section, "known", (room + 1) // 2, name)
    u = count(section, "unknown", max(0, room - k), name)
    if k + u > images:
        raise SetupError(f"[{name}] {k + u} {what} asked for (known {k} + unknown {u}), but the folder "
                         f"has {images} image(s): lower known / unknown in the --config file's [{name}] table")
    if k + u == 0:
        raise SetupError(f"[{name}] known and unknown are both 0: no face to swap with")
    return k, u


def _note(section, names, name: str, what: str) -> str:
    k, u = face_counts(section, len(names), name, what)
    which = f"{', '.join(names[:k])} (known)" + (f", {', '.join(names[k:k + u])} (unknown)" if u else "")
    how = (f"as set in [{name}]" if {"known", "unknown"} & set(section) else
           f"default: one per other image of the folder, at most 2 + 2; [{name}] known / unknown in --config")
    return f"[{name}] {what}: the faces of {which} ({how})"


def check(section, folder, names):
    """The identity counts against the folder's clean images ``names`` (sorted); a note naming the sources."""
    return _note(section, names, "simswap", "source identities")


def target_check(section, folder, names):
    """The target counts against the folder's clean images ``names`` (sorted); a note naming the targets."""
    return _note(section, names, "simswap_source", "target faces")


def attributes(section, folder, params, images, seed):
    """Source identities (``face_counts``): the ArcFace identities of the first clean images of the folder, in
    sorted order (known first); an image that is itself a source is swapped with its own identity for that
    attribute (documented, not excluded)."""
    k, u = face_counts(section, len(images))
    ids = [np.asarray(source_identity(params["arcface"], np.asarray(im)[None]))[0] for im in images[:k + u]]
    attrs = [Attribute(f"identity of image {i}", v) for i, v in enumerate(ids)]
    return attrs[:k], attrs[k:]


def _evaluation_swap(params, images, latent_id):
    return _swap(params["generator"], images, latent_id)


# evaluation's params hold the ArcFace too (for the attributes): the swap reads the generator's
_EVALUATION = (jax.jit(_evaluation_swap), vmap_over_attributes(_evaluation_swap))


def configure(section):
    """(apply, over_attributes) on ``load``'s params (``{"generator", "arcface"}``)."""
    return _EVALUATION


def _swap_from(params, images, target):
    # images: the sources (N, H, W, 3); target: one face (224, 224, 3) for all, or (N, 224, 224, 3)
    latent_id = sv.identity_apply(params["arcface"], sv.identity_preprocess(images))
    targets = jnp.broadcast_to(target, (images.shape[0], *target.shape[-3:]))
    return _swap(params["generator"], targets, latent_id)


swap_from = jax.jit(_swap_from)
swap_from.__doc__ = """({"generator", "arcface"} params, source images [-1, 1] NHWC, target face (224, 224, 3))
-> the target with each source's identity, 224 crops in [-1, 1]."""


def target_attributes(section, folder, params, images, seed):
    """Counts of target faces, default ``known = 2``, ``unknown = 2``: the first clean images of the folder
    in sorted order (known first), at 224; an image that is itself a target gets its own identity back
    for that attribute (documented, not excluded)."""
    k, u = face_counts(section, len(images), "simswap_source", "target faces")
    faces = [np.asarray(resize(jnp.asarray(im)[None], INPUT_SIZE))[0] for im in images[:k + u]]
    attrs = [Attribute(f"face of image {i} as target", f) for i, f in enumerate(faces)]
    return attrs[:k], attrs[k:]


DEEPFAKE = Deepfake(
    name="simswap",
    apply=swap,
    over_attributes=over_attributes,
    output_size=INPUT_SIZE,
    attribute="source identity: a unit ArcFace embedding latent_id (512,) from another person's face",
    load=load,
    attributes=attributes,
    configure=configure,
    parts=PARTS,
    check=check,
    settings=("known", "unknown"),
)

SOURCE = Deepfake(
    name="simswap_source",
    apply=swap_from,
    over_attributes=vmap_over_attributes(_swap_from),
    output_size=INPUT_SIZE,
    attribute="target face: another person's aligned face (224, 224, 3) receiving the protected identity",
    load=load,
    attributes=target_attributes,
    parts=PARTS,
    check=target_check,
    settings=("known", "unknown"),
)
