"""SimSwap 224 generator encoder: golden-case support.

``latest_net_G.pth`` is ``torch.save(netG.state_dict())`` of the whole
generator (123 entries, no prefix); the encoder victim reads its
``first_layer``/``down1..3`` part.
"""
from __future__ import annotations

import numpy as np

NAME = "simswap_G"
OUTPUT = "feat"
CHECKPOINT_NAME = "latest_net_G.pth"
ENCODER_PREFIXES = ("first_layer.", "down1.", "down2.", "down3.")


def generator_state_dict(state_dict):
    """The whole generator's own ``state_dict()`` (with its ``_metadata``), from recipe arrays."""
    from benchmarks.reference import simswap as ref

    return ref.load(ref.Generator(), state_dict).state_dict()


def write_generator_file(path, state_dict, *, zip_format: bool = True, prefix: str = ""):
    import torch

    sd = generator_state_dict(state_dict)
    if prefix:
        sd = type(sd)((prefix + k, v) for k, v in sd.items())
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)


def write_checkpoint(path, layout, seed, case):
    from tests.golden_harness import recipe

    write_generator_file(path, recipe().make_state_dict(layout["state_dict"], seed))


def to_golden(feat):
    return np.transpose(np.asarray(feat), (0, 3, 1, 2))  # NHWC -> NCHW


def torch_forward(state_dict, x_nchw, case):
    from benchmarks.reference import simswap as ref

    enc = {k: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIXES)}
    return ref.load(ref.GeneratorEncoder(), enc)(x_nchw)
