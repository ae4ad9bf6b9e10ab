"""StyleGAN2 generator and StyleCLIP mapper checkpoints -> Flax parameters.

The FFHQ generator (rosinality layout, 171 entries) ships inside three files:

* ``e4e_ffhq_encode.pt``: ``{'state_dict': {encoder.*, decoder.*}, 'latent_avg', 'opts'}``;
* every StyleCLIP mapper ``<edit>.pt``: ``{'state_dict': {mapper.*, decoder.*}, 'opts'}``;
* rosinality's ``stylegan2-ffhq-config-f.pt``: ``{'g_ema': state_dict, 'latent_avg', ['g', 'd']}``.

``generator_to_params`` reads any of them (``decoder.*`` or ``g_ema``, never
the non-EMA ``g``); ``mapper_to_params`` reads ``mapper.*`` of a mapper file.

Layout rules (the Flax tree mirrors the official names otherwise):
modulated conv weights [1, out, in, k, k] -> HWIO; ``to_rgb*.bias`` [1, 3, 1, 1]
-> [3]; ``input.input`` and ``noises.noise_i`` NCHW -> NHWC. The FIR kernel
buffers (``*.blur.kernel``, ``*.upsample.kernel``) are the constructor's
constant, hard-coded in the port: they are checked against it, not loaded.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from converters.keymap import (
    ConversionError,
    Rule,
    convert_state_dict,
    is_state_dict,
    strip_module_prefix,
    strip_prefix,
)
from converters.torch_io import Stub

DECODER_PREFIX = "decoder."
MAPPER_PREFIX = "mapper."
FIR_KERNEL = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float64) / 64.0 * 4.0  # make_kernel(k) * 4
MAPPER_GROUPS = {"course_mapping": "no_coarse_mapper", "medium_mapping": "no_medium_mapper",
                 "fine_mapping": "no_fine_mapper"}

_MODULATED = r"(conv1|convs\.\d+|to_rgb1|to_rgbs\.\d+)\.conv\.weight"
_KERNEL_BUFFER = r".*\.(blur|upsample)\.kernel"


def _modulated_kernel(w: np.ndarray) -> np.ndarray:
    if w.ndim != 5 or w.shape[0] != 1:
        raise ConversionError(f"a modulated conv weight is [1, out, in, k, k], got {w.shape}")
    return np.ascontiguousarray(w[0].transpose(2, 3, 1, 0))


def _nchw_to_nhwc(w: np.ndarray) -> np.ndarray:
    if w.ndim != 4:
        raise ConversionError(f"expected a 4-D NCHW tensor, got {w.shape}")
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1))


GENERATOR_RULES = (
    Rule(_MODULATED, r"\1.conv.kernel", _modulated_kernel),
    Rule(r"(to_rgb1|to_rgbs\.\d+)\.bias", r"\1.bias", lambda b: np.asarray(b).reshape(-1)),
    Rule(r"input\.input", "input.input", _nchw_to_nhwc),
    Rule(r"noises\.(noise_\d+)", r"noises.\1", _nchw_to_nhwc),
)


def _opt(opts, name: str):
    if isinstance(opts, Mapping):
        return opts.get(name)
    if isinstance(opts, Stub):  # a pickled argparse.Namespace, read as a stand-in
        return opts.__dict__.get(name)
    return None


def _wrapped_state_dict(ckpt, source: str) -> Mapping[str, np.ndarray]:
    """``ckpt['state_dict']`` (``module.`` removed when every key has it), or a bare state_dict."""
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else ckpt
    if not is_state_dict(sd):
        raise ConversionError(f"{source}: expected a checkpoint dict with a 'state_dict' of tensors")
    return strip_module_prefix(sd, source=source)


def generator_state_dict(ckpt, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The generator's own keys from an e4e, StyleCLIP-mapper or rosinality file."""
    if isinstance(ckpt, Mapping) and "g_ema" in ckpt:  # rosinality: the EMA generator is the one used
        sd = ckpt["g_ema"]
        if not is_state_dict(sd):
            raise ConversionError(f"{source}: 'g_ema' is not a state_dict")
        return dict(sd)
    sd = _wrapped_state_dict(ckpt, source)
    dec = strip_prefix(sd, DECODER_PREFIX, required=False)
    if dec:
        return dec
    if "conv1.conv.weight" in sd:  # a bare generator state_dict
        return dict(sd)
    raise ConversionError(
        f"{source}: no StyleGAN2 generator found (no 'g_ema', no {DECODER_PREFIX!r} keys; e.g. {list(sd)[:3]})"
    )


def check_fir_kernels(sd: Mapping[str, np.ndarray], source: str = "checkpoint") -> None:
    """The stored FIR buffers must be the [1, 3, 3, 1] constant the port hard-codes."""
    import re

    for key, value in sd.items():
        if re.fullmatch(_KERNEL_BUFFER, key):
            value = np.asarray(value, np.float64)
            if value.shape != FIR_KERNEL.shape or not np.allclose(value, FIR_KERNEL, rtol=0, atol=1e-7):
                raise ConversionError(
                    f"{source}: {key} is not make_kernel([1, 3, 3, 1]) * 4 (blur_kernel must be [1, 3, 3, 1])"
                )


def generator_to_params(ckpt, source: str = "e4e_ffhq_encode.pt", template=None):
    """An official file holding the generator -> ``models.stylegan2.Generator`` parameters."""
    if template is None:
        from leat_jax.deepfakes.styleclip import generator

        template = generator().template
    sd = generator_state_dict(ckpt, source)
    check_fir_kernels(sd, source)
    return convert_state_dict(sd, template, rules=GENERATOR_RULES, ignore=[_KERNEL_BUFFER], source=source)


def mapper_to_params(ckpt, source: str = "mapper.pt", template=None):
    """A StyleCLIP mapper checkpoint -> ``models.styleclip_mapper.LevelsMapper`` parameters.

    Groups the file leaves out (``no_fine_mapper`` etc.) become all-zero
    weights, which reproduce the official zero residual exactly. A group that
    is partly present, or present when ``opts`` says it is off (and the
    reverse), is refused: the official strict load would fail too.
    """
    if template is None:
        from leat_jax.deepfakes.styleclip import mapper

        template = mapper().template
    opts = ckpt.get("opts") if isinstance(ckpt, Mapping) else None
    mapper_type = _opt(opts, "mapper_type")
    if mapper_type is not None and mapper_type != "LevelsMapper":
        raise ConversionError(f"{source}: opts.mapper_type is {mapper_type!r}; only 'LevelsMapper' is supported")
    if _opt(opts, "work_in_stylespace"):
        raise ConversionError(f"{source}: a StyleSpace mapper (work_in_stylespace=True) is not supported")
    sd = strip_prefix(_wrapped_state_dict(ckpt, source), MAPPER_PREFIX, required=False)
    if not sd:
        raise ConversionError(f"{source}: no {MAPPER_PREFIX!r} keys: not a StyleCLIP mapper checkpoint")
    zero = {}
    for group, flag in MAPPER_GROUPS.items():
        present = any(k.startswith(group + ".") for k in sd)
        off = _opt(opts, flag)
        if off is not None and bool(off) == present:
            raise ConversionError(f"{source}: opts.{flag} is {off} but {group}.* keys are "
                                  f"{'present' if present else 'absent'}")
        if not present:
            zero[group] = template[group]
    present_template = {k: v for k, v in template.items() if k not in zero}
    params = convert_state_dict(sd, present_template, source=source)
    for group, sub in zero.items():
        params[group] = _zeros_like(sub)
    return params


def _zeros_like(template):
    if isinstance(template, Mapping):
        return {k: _zeros_like(v) for k, v in template.items()}
    return np.zeros(template.shape, np.float32)
