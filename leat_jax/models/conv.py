"""A 2-D convolution whose input gradient can read a kernel flipped once, before the attack's loop.

The attack differentiates every network with respect to its input, many
times with the same weights. Here the input gradient is the stride-1
convolution of the (dilated) output gradient with ``flip(kernel)``, in/out
swapped: a kernel computed from the weights alone, once per run
(``Functional.prepare``), and taken ready made (``with_input_grad_kernel``);
without it the gradient computes it itself. Convolutions with at most 2x2
outputs are patches times the kernel matrix (``_patch_conv``), and the input
gradient of a convolution reading an image goes tap by tap
(``_input_grad_by_taps``), where XLA's CPU code was slow
(``benchmarks/RESULTS.md``, "Closing the convolution gap").

Values are those of ``lax.conv_general_dilated`` (same arithmetic). Covered:
NHWC/HWIO, any strides and explicit padding, no dilation, one group; anything
else falls back to ``lax.conv_general_dilated``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, tuple) and len(dimension_numbers) == 3 and all(
            isinstance(d, str) for d in dimension_numbers):
        return tuple(dimension_numbers) == _NHWC
    dn = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers)
    return (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _pairs(padding, window, strides, in_hw):
    """Explicit (low, high) padding per spatial dimension, as lax resolves strings."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(in_hw, window, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def with_input_grad_kernel(w_t, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                           dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                           precision=None, preferred_element_type=None, **kwargs):
    """``conv_general_dilated`` whose input gradient uses ``w_t = input_grad_kernel(rhs)``, given."""
    return conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                feature_group_count, batch_group_count, precision, preferred_element_type,
                                _w_t=w_t, **kwargs)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, _w_t=None, **kwargs):
    """Drop-in for ``lax.conv_general_dilated`` (as ``nnx.Conv`` calls it)."""
    plain = (
        _is_nhwc(dimension_numbers) and lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and preferred_element_type is None and all(v is None for v in kwargs.values())
    )
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count,
                                        precision=precision, preferred_element_type=preferred_element_type, **kwargs)
    strides = tuple(int(s) for s in window_strides)
    pads = _pairs(padding, rhs.shape[:2], strides, lhs.shape[1:3])
    out_hw = _out_hw(lhs.shape[1:3], rhs.shape[:2], strides, pads)
    if min(out_hw) >= 1 and out_hw[0] * out_hw[1] <= SMALL_OUTPUT and min(min(p) for p in pads) >= 0:
        return _patch_conv(strides, pads, precision, lhs, rhs)
    if _w_t is None:
        _w_t = input_grad_kernel(rhs)
    return _conv(strides, pads, precision, lhs, rhs, _w_t.astype(rhs.dtype))


SMALL_OUTPUT = 4  # output positions up to which the patch product is used (measured: 2x2 yes, 4x4 no)
SMALL_INPUT_CHANNELS = 4  # up to this many input channels, the input gradient goes tap by tap


def _out_hw(in_hw, k_hw, strides, pads):
    return tuple((in_hw[i] + pads[i][0] + pads[i][1] - k_hw[i]) // strides[i] + 1 for i in range(2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _conv(strides, pads, precision, x, w, w_t):
    del w_t  # only the gradient reads it
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)


def _fwd(strides, pads, precision, x, w, w_t):
    return _conv(strides, pads, precision, x, w, w_t), (x, w, w_t)


def input_grad_kernel(w):
    """HWIO kernel of the input gradient: spatially flipped, in/out swapped."""
    return jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)


def _bwd(strides, pads, precision, res, g):
    x, w, w_t = res
    if w.shape[2] <= SMALL_INPUT_CHANNELS:
        dx = _input_grad_by_taps(g, w, x.shape, strides, pads, precision)
    else:
        in_hw, out_hw, k = x.shape[1:3], g.shape[1:3], w.shape[:2]
        # Stride-1 convolution of the s-dilated gradient; the high padding
        # absorbs the rows a strided forward never reached.
        bwd_pads = tuple((k[i] - 1 - pads[i][0], in_hw[i] - (out_hw[i] - 1) * strides[i] - 1 + pads[i][0])
                         for i in range(2))
        dx = lax.conv_general_dilated(g, w_t.astype(g.dtype), (1, 1), bwd_pads, lhs_dilation=strides,
                                      dimension_numbers=_NHWC, precision=precision)
    _, vjp_w = jax.vjp(lambda w_: lax.conv_general_dilated(x, w_, strides, pads, dimension_numbers=_NHWC,
                                                           precision=precision), w)
    # The output does not depend on w_t's value (it is w's, rearranged): zero.
    return dx.astype(x.dtype), vjp_w(g)[0], jnp.zeros_like(w_t)


_conv.defvjp(_fwd, _bwd)


# ----------------------------------------------------------------------------- small outputs


def _patches(x, k_hw, strides, pads):
    """(N, Ho, Wo, kh * kw * C): every window, taps in HWI order (the kernel's reshape order)."""
    ho, wo = _out_hw(x.shape[1:3], k_hw, strides, pads)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    rows, cols = (ho - 1) * strides[0] + 1, (wo - 1) * strides[1] + 1
    return jnp.concatenate([xp[:, i:i + rows:strides[0], j:j + cols:strides[1]]
                            for i in range(k_hw[0]) for j in range(k_hw[1])], axis=-1)


def _matmul(a, b, contract, precision):
    return lax.dot_general(a, b, ((contract[:1], contract[1:]), ((), ())), precision=precision)


def _patch_product(strides, pads, precision, x, w):
    p = _patches(x, w.shape[:2], strides, pads)
    n, ho, wo, k = p.shape
    y = _matmul(p.reshape(n * ho * wo, k), w.reshape(k, w.shape[3]), (1, 0), precision)
    return y.reshape(n, ho, wo, w.shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _patch_conv(strides, pads, precision, x, w):
    return _patch_product(strides, pads, precision, x, w)


def _patch_fwd(strides, pads, precision, x, w):
    return _patch_conv(strides, pads, precision, x, w), (x, w)


def _input_grad_by_taps(g, w, x_shape, strides, pads, precision):
    """Input gradient as patch gradients (g @ W^T) added back tap by tap.

    The kernel is read as stored (no transposed copy). For an image's three
    channels this is 2-5x faster than XLA's convolution with three output
    channels (every network's first layer; measured on 2 cores).
    """
    (kh, kw, c, o), (n, h, wd) = w.shape, x_shape[:3]
    ho, wo = g.shape[1:3]
    dp = _matmul(g.reshape(n * ho * wo, o), w.reshape(kh * kw * c, o).astype(g.dtype), (1, 1), precision)
    dp = dp.reshape(n, ho, wo, kh, kw, c)
    hp, wp = h + pads[0][0] + pads[0][1], wd + pads[1][0] + pads[1][1]
    zero = jnp.zeros((), dp.dtype)
    dxp = sum(lax.pad(dp[:, :, :, i, j], zero, ((0, 0, 0),
                                                (i, hp - i - (ho - 1) * strides[0] - 1, strides[0] - 1),
                                                (j, wp - j - (wo - 1) * strides[1] - 1, strides[1] - 1),
                                                (0, 0, 0)))
              for i in range(kh) for j in range(kw))
    return dxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + wd]


def _patch_bwd(strides, pads, precision, res, g):
    x, w = res
    dx = _input_grad_by_taps(g, w, x.shape, strides, pads, precision)
    # The kernel gradient by JAX's own rule (dead code in an attack; under
    # shard_map it also gets the cross-device sum a replicated weight needs).
    _, vjp_w = jax.vjp(lambda w_: _patch_product(strides, pads, precision, x, w_), w)
    return dx.astype(x.dtype), vjp_w(g)[0]


_patch_conv.defvjp(_patch_fwd, _patch_bwd)
