"""The same network twice: leat-jax's port and the torch reference, same weights.

Weights are the golden recipe's stand-ins for the official state_dict layout
(``$LEAT_GOLDEN_DIR/<name>/layout.json``, default ``../shared/golden``): the
torch reference loads them directly (``load_state_dict(strict=True)``), and
leat-jax gets them the way a user would, from a file in the official
structure converted by ``converters.convert``. The file writers are the
golden tests' (``tests/golden_cases``), so both sides see one definition of
"the official file".
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

import converters
from leat_jax import victims as victim_registry
from leat_jax.victims import Victim
from tests import golden_cases
from tests.golden_harness import GOLDEN_DIR, recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class Pair:
    name: str
    victim: Victim
    params: Any
    torch_encoder: Callable[[torch.Tensor], torch.Tensor]  # [-1, 1] NCHW, any size -> latent
    torch_module: torch.nn.Module


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """As ``leat_jax.victims.resize``: bilinear, antialiased, identity at size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def _torch_module(name: str, sd: dict, extra: dict) -> tuple[torch.nn.Module, Callable]:
    """(module, official-input -> latent) of the torch reference."""
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
    if name == "e4e":
        from benchmarks.reference.e4e import build

        net = build(sd, extra["latent_avg"])
        return net, net
    if name == "diffae":
        from benchmarks.reference.diffae import from_state_dict

        net = from_state_dict(sd)
        return net, net
    if name == "simswap_id":
        from benchmarks.reference import simswap as ref

        net = ref.load(ref.ArcFaceResNet(), sd)
        return net, lambda x: ref.identity_embedding(net, x)
    if name == "simswap_G":
        from benchmarks.reference import simswap as ref

        prefixes = ("first_layer.", "down1.", "down2.", "down3.")
        net = ref.load(ref.GeneratorEncoder(), {k: v for k, v in sd.items() if k.startswith(prefixes)})
        return net, net
    if name == "icface":
        from benchmarks.reference.icface import icface_generator
        from leat_jax.victims.icface import NEUTRAL_ATTR

        net = icface_generator()
        net.load_state_dict(t, strict=True)
        attr = torch.from_numpy(np.array(NEUTRAL_ATTR))
        return net.eval(), lambda x: net(x, attr)
    raise KeyError(name)


def _torch_preprocess(name: str, victim: Victim) -> Callable[[torch.Tensor], torch.Tensor]:
    size = victim.input_size
    if name == "simswap_id":
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return lambda x: ((_resize(x, size) + 1) * 0.5 - mean) / std
    if name == "simswap_G":
        return lambda x: (_resize(x, size) + 1) * 0.5
    return lambda x: _resize(x, size)


def build(name: str, seed: int = 0, workdir=None) -> Pair:
    layout = json.loads((GOLDEN_DIR / name / "layout.json").read_text())
    sup = golden_cases.support(name)
    r = recipe()
    sd = r.make_state_dict(layout["state_dict"], seed)
    extra = r.make_state_dict(layout["extra"], seed) if "extra" in layout else {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src = Path(tmp) / sup.CHECKPOINT_NAME
        light = getattr(sup, "write_light_checkpoint", None)  # what the converter reads, no more
        light(src, layout, seed) if light else sup.write_checkpoint(src, layout, seed, {})
        converters.convert(name, src, Path(tmp) / "flax")
        victim, params = victim_registry.load(name, Path(tmp) / "flax")
    module, official = _torch_module(name, sd, extra)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    pre = _torch_preprocess(name, victim)
    return Pair(name, victim, params, lambda x: official(pre(x)), module)
