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
    """One victim on both sides (``Pair.of`` builds one for any victim, e.g. a new one's)."""

    name: str
    victim: Victim
    params: Any
    torch_encoder: Callable[[torch.Tensor], torch.Tensor]  # [-1, 1] NCHW, any size -> latent
    torch_module: torch.nn.Module

    @classmethod
    def of(cls, name: str, victim: Victim, params, module: torch.nn.Module, official: Callable,
           preprocess: Callable) -> "Pair":
        """The pair of ``victim`` (with ``params``) and torch ``module`` (frozen, eval mode).

        Args:
          official: official input -> latent, on the torch side.
          preprocess: [-1, 1] NCHW, any size -> official input.
        """
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return cls(name, victim, params, lambda x: official(preprocess(x)), module)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """As ``leat_jax.victims.resize``: bilinear, antialiased, identity at size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def _e4e(sd: dict, extra: dict) -> tuple[torch.nn.Module, Callable]:
    from benchmarks.reference.e4e import build as build_e4e

    net = build_e4e(sd, extra["latent_avg"])
    return net, net


def _diffae(sd: dict, extra: dict) -> tuple[torch.nn.Module, Callable]:
    from benchmarks.reference.diffae import from_state_dict

    net = from_state_dict(sd)
    return net, net


def _simswap_id(sd: dict, extra: dict) -> tuple[torch.nn.Module, Callable]:
    from benchmarks.reference import simswap as ref

    net = ref.load(ref.ArcFaceResNet(), sd)
    return net, lambda x: ref.identity_embedding(net, x)


def _simswap_g(sd: dict, extra: dict) -> tuple[torch.nn.Module, Callable]:
    from benchmarks.reference import simswap as ref

    prefixes = ("first_layer.", "down1.", "down2.", "down3.")
    net = ref.load(ref.GeneratorEncoder(), {k: v for k, v in sd.items() if k.startswith(prefixes)})
    return net, net


def _icface(sd: dict, extra: dict) -> tuple[torch.nn.Module, Callable]:
    from benchmarks.reference.icface import icface_generator
    from leat_jax.victims.icface import NEUTRAL_ATTR

    net = icface_generator()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    attr = torch.from_numpy(np.array(NEUTRAL_ATTR))
    return net.eval(), lambda x: net(x, attr)


def pil_bicubic_input(size) -> Callable[[torch.Tensor], torch.Tensor]:
    """[-1, 1] NCHW -> ``size`` as ``leat_jax.victims.icface.preprocess`` (ICface's official PIL bicubic):
    one axis, then the other, each pass's overshoot clamped to the pixel range."""
    def resize(x):
        h, w = x.shape[-2:]
        oh, ow = size
        if (h, w) == tuple(size):
            return x
        first = (oh, w) if h / oh > max(1.0, w / ow) else (h, ow)
        one = F.interpolate(x, size=first, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
        return F.interpolate(one, size=tuple(size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)

    return resize


def resize_only(size) -> Callable[[torch.Tensor], torch.Tensor]:
    """[-1, 1] NCHW -> the official input of a victim that takes [-1, 1] at ``size``."""
    return lambda x: _resize(x, size)


def imagenet_input(size) -> Callable[[torch.Tensor], torch.Tensor]:
    """[-1, 1] NCHW -> ImageNet-normalised at ``size`` (SimSwap's ArcFace)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return lambda x: ((_resize(x, size) + 1) * 0.5 - mean) / std


def unit_input(size) -> Callable[[torch.Tensor], torch.Tensor]:
    """[-1, 1] NCHW -> [0, 1] at ``size`` (SimSwap's generator)."""
    return lambda x: (_resize(x, size) + 1) * 0.5


@dataclasses.dataclass(frozen=True)
class Reference:
    """The torch side of a victim.

    module: ``(state_dict, extra) -> (torch module, official input -> latent)``
      (``extra``: the golden layout's extra tensors, e.g. e4e's latent_avg).
    preprocess: ``input size -> ([-1, 1] NCHW, any size -> official input)``.
    """

    module: Callable[[dict, dict], tuple[torch.nn.Module, Callable]]
    preprocess: Callable[[tuple[int, int]], Callable[[torch.Tensor], torch.Tensor]]


# One entry per name of the victims registry (tests/test_registries.py checks it).
REFERENCES: dict[str, Reference] = {
    "e4e": Reference(_e4e, resize_only),
    "diffae": Reference(_diffae, resize_only),
    "simswap_id": Reference(_simswap_id, imagenet_input),
    "simswap_G": Reference(_simswap_g, unit_input),
    "icface": Reference(_icface, pil_bicubic_input),
}


def build(name: str, seed: int = 0, workdir=None) -> Pair:
    """The pair of the registry's victim ``name`` on the golden recipe's weights of ``seed``."""
    if name not in REFERENCES:
        raise KeyError(f"no torch reference for victim {name!r}; known: {', '.join(REFERENCES)}")
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
    ref = REFERENCES[name]
    module, official = ref.module(sd, extra)
    return Pair.of(name, victim, params, module, official, ref.preprocess(victim.input_size))
