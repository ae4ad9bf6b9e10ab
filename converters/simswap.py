"""SimSwap's official files -> Flax parameters.

``arcface_checkpoint.tar`` (``simswap_id``) is not a tar archive but a torch
pickle of a whole ``nn.Module``, in two generations:

* current (2023-04-25 on): the bare ``ResNet`` module, classes pickled under
  ``models.arcface_models``;
* legacy: foamliu's training dict ``{'epoch', 'acc', 'model':
  DataParallel(ResNet), 'metric_fc', 'optimizer', ...}``, classes under
  ``models``; only ``['model'].module`` is the network.

``torch_io.load`` turns those classes into inert stand-ins, so the tensors
are read from the modules' ``_parameters``/``_buffers`` without the official
code and without running anything. A plain state_dict (with or without a
``module.`` prefix) is accepted too.

``latest_net_G.pth`` (``simswap_G``) is a plain state_dict of the whole 224
generator; the encoder victim keeps ``first_layer``/``down1..3`` and ignores
the identity-conditioned blocks and the decoder, which ``full_generator_to_params``
converts for the whole generator.

Flax trees mirror the official module trees, so no renaming rule is needed.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from converters.keymap import ConversionError, convert_state_dict, is_state_dict, strip_module_prefix
from converters.torch_io import Stub, module_state_dict, stub_class_name

ARCFACE_BLOCKS = (3, 4, 23, 3)  # SE-LResNet101E-IR
GENERATOR_DECODER = r"(BottleNeck|up[0-9]|last_layer)\..*"


def _network_state_dict(obj: Any, source: str, what: str, depth: int = 0) -> dict[str, np.ndarray]:
    """The network's state_dict from a pickled module, a wrapper dict or a state_dict."""
    if depth > 3:
        raise ConversionError(f"{source}: no {what} network found (nested too deeply)")
    if isinstance(obj, Stub):
        modules = obj.__dict__.get("_modules")
        if modules is None:
            raise ConversionError(f"{source}: holds a {stub_class_name(obj)}, not a torch module ({what} expected)")
        # DataParallel(net) keeps the network as its only child ``module``
        if list(modules) == ["module"] and (stub_class_name(obj) or "").endswith("DataParallel"):
            return _network_state_dict(modules["module"], source, what, depth + 1)
        return strip_module_prefix(module_state_dict(obj), source=source)
    if is_state_dict(obj):
        return strip_module_prefix(obj, source=source)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "net", "netG"):  # training-checkpoint wrappers
            if key in obj:
                return _network_state_dict(obj[key], source, what, depth + 1)
        raise ConversionError(
            f"{source}: a dict with keys {sorted(map(str, obj))[:8]}, neither a {what} state_dict "
            f"nor a checkpoint dict with a 'model' entry"
        )
    raise ConversionError(f"{source}: holds a {type(obj).__name__}, not a {what} network or state_dict")


def arcface_block_counts(sd: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    """IR blocks per stage, counted from the keys ``layerN.<i>.``."""
    found: dict[int, set[int]] = {}
    for key in sd:
        m = re.match(r"layer(\d+)\.(\d+)\.", key)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    counts = []
    for stage in range(1, max(found, default=0) + 1):
        idx = found.get(stage, set())
        if idx != set(range(len(idx))):  # blocks numbered 0..n-1 without holes
            raise ConversionError(f"layer{stage} has blocks {sorted(idx)}: not a contiguous nn.Sequential")
        counts.append(len(idx))
    return tuple(counts)


def identity_to_params(ckpt, source: str = "arcface_checkpoint.tar"):
    """``arcface_checkpoint.tar`` (either generation) -> ``simswap_id`` parameters."""
    from leat_jax.victims.simswap import arcface

    sd = _network_state_dict(ckpt, source, "ArcFace")
    counts = arcface_block_counts(sd)
    if counts != ARCFACE_BLOCKS:
        raise ConversionError(
            f"{source}: ArcFace has IR blocks {list(counts)} per stage; SimSwap's netArc is "
            f"SE-LResNet101E-IR with {list(ARCFACE_BLOCKS)}"
        )
    return convert_state_dict(sd, arcface().template, source=source)


def generator_to_params(ckpt, source: str = "latest_net_G.pth"):
    """``latest_net_G.pth`` -> ``simswap_G`` (encoder) parameters; the rest is ignored."""
    from leat_jax.victims.simswap import generator_encoder

    sd = _network_state_dict(ckpt, source, "generator")
    return convert_state_dict(sd, generator_encoder().template, ignore=[GENERATOR_DECODER], source=source)


def full_generator_to_params(ckpt, source: str = "latest_net_G.pth"):
    """``latest_net_G.pth`` -> parameters of the whole generator (``models.simswap.Generator``)."""
    from leat_jax.victims.simswap import generator

    sd = _network_state_dict(ckpt, source, "generator")
    return convert_state_dict(sd, generator().template, source=source)
