"""Official PyTorch checkpoints -> Flax parameters (orbax-checkpoint).

``convert(name, src, dst)`` reads the official file safely (``torch_io``),
maps it through the family's key table (``keymap``), checks it against the
victim's parameter tree and writes it with ``leat_jax.checkpoints``.

Each family module exposes, per victim name, ``to_params(ckpt, source) ->
params``: the loaded checkpoint object (numpy arrays, stand-ins for pickled
classes) to the Flax parameter tree.
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

CONVERTER_VERSION = "1"

# victim name -> (module, function)
CONVERTERS: dict[str, tuple[str, str]] = {
    "e4e": ("converters.e4e", "to_params"),
    "diffae": ("converters.diffae", "to_params"),
    "simswap_id": ("converters.simswap", "identity_to_params"),
    "simswap_G": ("converters.simswap", "generator_to_params"),
    "icface": ("converters.icface", "to_params"),
}


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
    from leat_jax import checkpoints, victims

    if name not in CONVERTERS:
        raise ConversionError(f"no converter for {name!r}; known: {', '.join(CONVERTERS)}")
    module, fn = CONVERTERS[name]
    ckpt = torch_io.load(src)
    params = getattr(importlib.import_module(module), fn)(ckpt, str(src))
    try:
        checkpoints.check_against_template(params, victims.get(name).template, str(src))
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
        "source_sha256": sha256(src),
        "converter_version": CONVERTER_VERSION,
        "leat_jax_version": __version__,
    }
    checkpoints.save_params(dst, params, meta)
    return meta
