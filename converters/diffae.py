"""DiffAE ``checkpoints/ffhq256_autoenc/last.ckpt`` -> semantic encoder parameters.

The official file is a PyTorch Lightning (1.4) checkpoint dict. Its
``state_dict`` holds ``x_T`` (sampling noise), ``model.*`` (training weights)
and ``ema_model.*`` (EMA weights), each with the decoder UNet and the
encoder. Inference encodes with the EMA copy (``LitModel.encode`` calls
``ema_model.encoder``), so only ``ema_model.encoder.*`` is read. Note that
the UNet's own keys (``ema_model.input_blocks.0.0.weight``...) share the
encoder's relative names: the prefix must be matched whole. Everything else in
the file (optimizer and scheduler states, callbacks keyed by Lightning
classes, hyper-parameters, AMP scaler) is loaded as inert data by
``torch_io`` and ignored here.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from converters.keymap import ConversionError, Rule, convert_state_dict, strip_prefix

ENCODER_PREFIX = "ema_model.encoder."


def _conv1d_to_dense(w: np.ndarray) -> np.ndarray:
    """Attention ``Conv1d(C, C', 1)`` weight (C', C, 1) -> dense kernel (C, C')."""
    if w.ndim != 3 or w.shape[-1] != 1:
        return w  # left as is: the shape check then names the key
    return w[:, :, 0].T


# The only departures from positional mapping: the attention 1x1 Conv1d's.
RULES = (Rule(r"(.*)\.(qkv|proj_out)\.weight", r"\1.\2.kernel", transform=_conv1d_to_dense),)


def lightning_state_dict(ckpt, source: str = "checkpoint") -> Mapping:
    """The ``state_dict`` of a Lightning checkpoint (or the dict itself if it is one)."""
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"{source}: expected a PyTorch Lightning checkpoint dict, found {type(ckpt).__name__}")
    sd = ckpt.get("state_dict")
    if isinstance(sd, Mapping):
        return sd
    if any(isinstance(k, str) and k.startswith(ENCODER_PREFIX) for k in ckpt):
        return ckpt  # a bare LitModel state_dict
    keys = ", ".join(sorted(str(k) for k in ckpt)[:8])
    raise ConversionError(f"{source}: no 'state_dict' in the checkpoint (top-level keys: {keys})")


def to_params(ckpt, source: str = "checkpoint") -> dict:
    """Flax parameters of the ``diffae`` victim from the loaded official checkpoint."""
    from leat_jax import victims

    sd = lightning_state_dict(ckpt, source)
    if not any(isinstance(k, str) and k.startswith(ENCODER_PREFIX) for k in sd):
        hint = " (it has 'model.encoder.*': the non-EMA weights are not what DiffAE encodes with)" if any(
            isinstance(k, str) and k.startswith("model.encoder.") for k in sd
        ) else ""
        raise ConversionError(f"{source}: no EMA encoder weights (keys '{ENCODER_PREFIX}*'){hint}")
    encoder = strip_prefix(sd, ENCODER_PREFIX, source=source)
    return convert_state_dict(encoder, victims.get("diffae").template, rules=RULES, source=source)
