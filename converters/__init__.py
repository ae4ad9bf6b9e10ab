"""Official PyTorch checkpoints -> Flax parameters (orbax-checkpoint).

``convert(name, src, dst)`` reads the official file safely (``torch_io``),
maps it through the family's key table (``keymap``), checks it against the
victim's parameter tree and writes it with ``leat_jax.checkpoints``.

Each family module exposes, per network, a ``*_to_params(ckpt, source) ->
params``: the loaded checkpoint object (numpy arrays, stand-ins for pickled
classes) to the Flax parameter tree. A converter whose source is not one
torch file (MTCNN: a wheel or a folder of three files) is marked
``reads_source = True`` and gets SRC itself; its optional ``source_meta(src)``
adds to ``meta.json``.
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

CONVERTER_VERSION = "1"

# name -> (converter "module:function", template "module:function" or None).
# The converter maps a loaded checkpoint object to Flax parameters; the
# template (a ``Functional``'s, or the victim's of that name when None) is
# what the result is checked against.
CONVERTERS: dict[str, tuple[str, str | None]] = {
    # the victims: the latent encoders LEAT attacks
    "e4e": ("converters.e4e:to_params", None),
    "diffae": ("converters.diffae:to_params", None),
    "simswap_id": ("converters.simswap:identity_to_params", None),
    "simswap_G": ("converters.simswap:generator_to_params", None),
    "icface": ("converters.icface:to_params", None),
    # the rest of the deepfake pipelines, for evaluation
    "stylegan2": ("converters.stylegan2:generator_to_params", "leat_jax.deepfakes.styleclip:generator"),
    "styleclip_mapper": ("converters.stylegan2:mapper_to_params", "leat_jax.deepfakes.styleclip:mapper"),
    "simswap_full": ("converters.simswap:full_generator_to_params", "leat_jax.victims.simswap:generator"),
    "icface_full": ("converters.icface:generator_to_params", "leat_jax.victims.icface:network"),
    "diffae_unet": ("converters.diffae:unet_to_params", "leat_jax.deepfakes.diffae:unet_functional"),
    "diffae_cls": ("converters.diffae:classifier_to_params", "leat_jax.deepfakes.diffae:classifier_functional"),
    # face detection (SRC: the facenet-pytorch wheel or a folder with its three files)
    "mtcnn": ("converters.mtcnn:to_params", "leat_jax.models.mtcnn:mtcnn"),
}


def _resolve(spec: str):
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def template(name: str):
    """The parameter tree (shapes) a converted ``name`` must have."""
    from leat_jax import victims

    spec = CONVERTERS[name][1]
    return victims.get(name).template if spec is None else _resolve(spec)().template


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_params(name: str, src):
    """The Flax parameters of victim ``name`` from the official file ``src``."""
    from converters import torch_io
    from converters.keymap import ConversionError
    from leat_jax import checkpoints

    if name not in CONVERTERS:
        raise ConversionError(f"no converter for {name!r}; known: {', '.join(CONVERTERS)}")
    fn = _resolve(CONVERTERS[name][0])
    params = fn(src) if getattr(fn, "reads_source", False) else fn(torch_io.load(src), str(src))
    try:
        checkpoints.check_against_template(params, template(name), str(src))
    except checkpoints.CheckpointError as e:
        raise ConversionError(str(e)) from None
    return params


def convert(name: str, src, dst) -> dict:
    """Convert the official checkpoint ``src`` of victim ``name`` into ``dst``."""
    from leat_jax import __version__, checkpoints

    params = to_params(name, src)
    meta = {
        "model": name,
        "source_name": Path(src).name,
        "source_sha256": sha256(src) if Path(src).is_file() else None,  # a folder source: see source_meta
        "converter_version": CONVERTER_VERSION,
        "leat_jax_version": __version__,
    }
    source_meta = getattr(_resolve(CONVERTERS[name][0]), "source_meta", None)
    if source_meta is not None:
        meta.update(source_meta(src))
    checkpoints.save_params(dst, params, meta)
    return meta
