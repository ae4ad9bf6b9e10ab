"""DiffAE checkpoints -> Flax parameters of the encoder, the decoder UNet and the classifier.

``checkpoints/ffhq256_autoenc/last.ckpt`` gives the semantic encoder
(``to_params``, the ``diffae`` victim) and the conditional decoder UNet
(``unet_to_params``); ``checkpoints/ffhq256_autoenc_cls/last.ckpt`` gives the
attribute classifier and the z_sem statistics (``classifier_to_params``).

The official file is a PyTorch Lightning (1.4) checkpoint dict. Its
``state_dict`` holds ``x_T`` (sampling noise), ``model.*`` (training weights)
and ``ema_model.*`` (EMA weights), each with the decoder UNet and the
encoder. Every inference path uses the EMA copy (``LitModel.encode`` calls
``ema_model.encoder``, ``render`` and ``encode_stochastic`` pass
``ema_model``), so only ``ema_model.encoder.*`` (the encoder) and the other
``ema_model.*`` keys (the UNet) are read. Note that the UNet's own keys
(``ema_model.input_blocks.0.0.weight``...) share the encoder's relative
names: the prefix must be matched whole. Everything else in
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


UNET_PREFIX = "ema_model."
# Not part of the decoder: the encoder (converted by ``to_params``) and, in the
# latent-DPM checkpoints (``*_latent``), the latent network.
UNET_IGNORE = (r"encoder\..*", r"latent_net\..*")
CLS_KEYS = ("conds_mean", "conds_std", "classifier.weight", "classifier.bias",
            "ema_classifier.weight", "ema_classifier.bias")


def unet_to_params(ckpt, source: str = "checkpoint", template=None) -> dict:
    """Flax parameters of the decoder UNet (``ema_model.*`` but the encoder) of ``last.ckpt``.

    ``template``: the UNet's parameter shapes (default: the ffhq256 UNet).
    """
    if template is None:
        from leat_jax.deepfakes.diffae import unet_functional

        template = unet_functional().template
    sd = lightning_state_dict(ckpt, source)
    if not any(isinstance(k, str) and k.startswith(UNET_PREFIX) and not k.startswith(ENCODER_PREFIX) for k in sd):
        hint = " (it has 'model.*': the non-EMA weights are not what DiffAE renders with)" if any(
            isinstance(k, str) and k.startswith("model.") for k in sd
        ) else ""
        raise ConversionError(f"{source}: no EMA decoder weights (keys '{UNET_PREFIX}*'){hint}")
    unet = strip_prefix(sd, UNET_PREFIX, source=source)
    return convert_state_dict(unet, template, rules=RULES, ignore=UNET_IGNORE, source=source)


def classifier_to_params(ckpt, source: str = "checkpoint", template=None) -> dict:
    """Flax parameters of the attribute classifier from ``ffhq256_autoenc_cls/last.ckpt``.

    ``ClsModel.state_dict()`` holds exactly ``conds_mean``, ``conds_std``
    (the z_sem statistics, taken from this file alone: no ``latent.pkl``
    needed), ``classifier.*`` and ``ema_classifier.*``.
    """
    if template is None:
        from leat_jax.deepfakes.diffae import classifier_functional

        template = classifier_functional().template
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"{source}: expected a PyTorch Lightning checkpoint dict, found {type(ckpt).__name__}")
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, Mapping) or "classifier.weight" not in sd:
        keys = ", ".join(sorted(str(k) for k in (sd if isinstance(sd, Mapping) else ckpt))[:8])
        raise ConversionError(f"{source}: no 'classifier.weight': not a DiffAE classifier checkpoint "
                              f"(ffhq256_autoenc_cls/last.ckpt); keys: {keys}")
    return convert_state_dict(sd, template, source=source)
