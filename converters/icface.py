"""ICface checkpoints (``latest_net_GN.pth``, ``latest_net_G.pth``) -> Flax parameters.

The released files are ``torch.save``'d dicts ``{"state_dict": ...,
"optimizer": ...}`` written from ``nn.DataParallel``-wrapped nets, so the keys
presumably read ``module.model.1.weight``. The official loader calls
``load_state_dict(..., strict=False)``, which would load nothing at all under
a wrong prefix; here an optional ``module.`` prefix is stripped and then the
key set must match the network exactly (``num_batches_tracked`` aside, which
torch 0.4.0 did not write). The optimizer state is not used.

Key table: everything maps by position (the Flax module mirrors the official
``nn.Sequential``) except the two transposed convolutions, whose torch weight
``(in, out, kh, kw)`` becomes the spatially flipped HWIO kernel of the
equivalent stride-1 conv over the dilated input.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from converters.keymap import ConversionError, Rule, convert_state_dict, is_state_dict, strip_module_prefix
from converters.torch_io import Stub, module_state_dict

N_BLOCKS = 6


def conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
    """torch ConvTranspose2d weight (in, out, kh, kw) -> flipped HWIO (kh, kw, in, out)."""
    if w.ndim != 4:
        raise ConversionError(f"a ConvTranspose2d weight is 4-D, got shape {w.shape}")
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))


def rules(n_blocks: int = N_BLOCKS) -> list[Rule]:
    """The transposed convs sit after the stem (0-9) and the residual blocks."""
    first = 10 + n_blocks
    return [Rule(rf"model\.({first}|{first + 3})\.weight", r"model.\1.kernel", conv_transpose_kernel)]


def extract_state_dict(ckpt, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The generator's state_dict from the loaded file, ``module.`` stripped.

    Accepts the released ``{"state_dict", "optimizer"}`` dict, a bare
    state_dict (as the old code variant and re-saved copies have), or a
    pickled whole module.
    """
    if isinstance(ckpt, Stub):
        sd = module_state_dict(ckpt)
    elif isinstance(ckpt, Mapping) and "state_dict" in ckpt:
        sd = ckpt["state_dict"]
        if isinstance(sd, Stub):
            sd = module_state_dict(sd)
    elif is_state_dict(ckpt):
        sd = ckpt
    else:
        keys = list(ckpt)[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ConversionError(f"{source}: expected a dict with 'state_dict' (ICface's latest_net_G*.pth), found {keys}")
    if not isinstance(sd, Mapping) or not sd:
        raise ConversionError(f"{source}: 'state_dict' is empty or not a mapping")
    return strip_module_prefix(sd, source=source)


def state_dict_to_params(sd: Mapping[str, np.ndarray], template, n_blocks: int = N_BLOCKS, source: str = "checkpoint"):
    """A ``ResnetGenerator`` state_dict (unprefixed) onto a Flax template; exact key match."""
    return convert_state_dict(sd, template, rules=rules(n_blocks), source=source)


def _to_params(ckpt, source: str):
    from leat_jax.victims.icface import network

    return state_dict_to_params(extract_state_dict(ckpt, source), network().template, source=source)


def to_params(ckpt, source: str = "latest_net_GN.pth"):
    """The neutralizer ``netGN`` (victim ``icface``)."""
    return _to_params(ckpt, source)


def generator_to_params(ckpt, source: str = "latest_net_G.pth"):
    """The reenactment generator ``netG``: same class, same table."""
    return _to_params(ckpt, source)
