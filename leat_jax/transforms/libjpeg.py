"""libjpeg-turbo's integer arithmetic, emulated in int32 for the exact forward pass of the JPEG transform.

The "islow" DCT (jfdctint.c / jidctint.c: Loeffler, Ligtenberg and Moschytz's factorisation with 13-bit constants,
2 extra bits between passes), quantisation with rounding half away from zero, and the fixed-point JFIF colour
conversions (jccolor.c / jdcolor.c, 16-bit constants). Everything stays far inside int32 for 8-bit samples.
"""

import jax.numpy as jnp
import numpy as np

CONST_BITS, PASS1_BITS, SCALE_BITS = 13, 2, 16


def fix(x: float, bits: int) -> int:
    """libjpeg's FIX(x): x in fixed point with ``bits`` fraction bits, rounded."""
    return int(x * (1 << bits) + 0.5)


# the islow DCTs' constants, keyed by the value they stand for
C = {name: fix(float(name), CONST_BITS) for name in (
    "0.298631336", "0.390180644", "0.541196100", "0.765366865", "0.899976223", "1.175875602",
    "1.501321110", "1.847759065", "1.961570560", "2.053119869", "2.562915447", "3.072711026")}


def descale(x, n: int):
    """Right shift by n bits, rounding (libjpeg's DESCALE)."""
    return jnp.right_shift(x + (1 << (n - 1)), n)


def odd_part(t4, t5, t6, t7):
    """The shared odd-part rotation of both DCTs; returns the four products (for outputs 7, 5, 3, 1)."""
    z5 = (t4 + t5 + t6 + t7) * C["1.175875602"]
    z1 = (t4 + t7) * -C["0.899976223"]
    z2 = (t5 + t6) * -C["2.562915447"]
    z3 = (t4 + t6) * -C["1.961570560"] + z5
    z4 = (t5 + t7) * -C["0.390180644"] + z5
    return (t4 * C["0.298631336"] + z1 + z3, t5 * C["2.053119869"] + z2 + z4,
            t6 * C["3.072711026"] + z2 + z3, t7 * C["1.501321110"] + z1 + z4)


def fdct_butterfly(d):
    """jfdctint's 1-D butterfly up to its final descale, on the last axis. Outputs 0 and 4 carry an extra
    2**CONST_BITS so that one descale serves all eight (pass 1: << PASS1_BITS; pass 2: DESCALE by PASS1_BITS)."""
    t0, t1, t2, t3 = (d[..., i] + d[..., 7 - i] for i in range(4))
    t4, t5, t6, t7 = (d[..., 3 - i] - d[..., 4 + i] for i in range(4))
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    z1 = (t12 + t13) * C["0.541196100"]
    o7, o5, o3, o1 = odd_part(t4, t5, t6, t7)
    even = ((t10 + t11) << CONST_BITS, z1 + t13 * C["0.765366865"], (t10 - t11) << CONST_BITS,
            z1 - t12 * C["1.847759065"])
    return np.stack([even[0], o1, even[1], o3, even[2], o5, even[3], o7], axis=-1)


def idct_butterfly(d):
    """jidctint's 1-D butterfly up to its final descale, on the last axis."""
    z1 = (d[..., 2] + d[..., 6]) * C["0.541196100"]
    t2, t3 = z1 - d[..., 6] * C["1.847759065"], z1 + d[..., 2] * C["0.765366865"]
    t0, t1 = (d[..., 0] + d[..., 4]) << CONST_BITS, (d[..., 0] - d[..., 4]) << CONST_BITS
    even = (t0 + t3, t1 + t2, t1 - t2, t0 - t3)
    o0, o1, o2, o3 = odd_part(d[..., 7], d[..., 5], d[..., 3], d[..., 1])
    odd = (o3, o2, o1, o0)
    return np.stack([even[i] + odd[i] for i in range(4)] + [even[3 - i] - odd[3 - i] for i in range(4)], axis=-1)


# Both butterflies are integer-linear up to their descale: as matrices, one pass is descale(M @ x)
FDCT = fdct_butterfly(np.eye(8, dtype=np.int64)).T.astype(np.int32)
IDCT = idct_butterfly(np.eye(8, dtype=np.int64)).T.astype(np.int32)


def fdct(blocks):
    """jfdctint: (..., 8, 8) int32 samples minus 128 -> coefficients scaled by 8, as libjpeg holds them (rows,
    then columns). Sums may wrap in int32 on the way; the final values fit, so they come out exact."""
    rows = descale(jnp.einsum("...ij,uj->...iu", blocks, FDCT), CONST_BITS - PASS1_BITS)
    return descale(jnp.einsum("vi,...iu->...vu", FDCT, rows), CONST_BITS + PASS1_BITS)


def idct(coefficients):
    """jidctint: (..., 8, 8) int32 dequantised coefficients -> samples 0..255 (columns, then rows)."""
    columns = descale(jnp.einsum("iv,...vu->...iu", IDCT, coefficients), CONST_BITS - PASS1_BITS)
    return jnp.clip(descale(jnp.einsum("...iu,ju->...ij", columns, IDCT), CONST_BITS + PASS1_BITS + 3) + 128, 0, 255)


def quantise(scaled, table):
    """jcdctmgr's quantize: coefficients scaled by 8 -> quantised values, rounding half away from zero."""
    divisor = table * 8
    magnitude = jnp.floor_divide(jnp.abs(scaled) + divisor // 2, divisor)
    return jnp.where(scaled < 0, -magnitude, magnitude)


RGB_TO_YCC = np.array([[fix(0.299, 16), fix(0.587, 16), fix(0.114, 16)],
                       [-fix(0.16874, 16), -fix(0.33126, 16), fix(0.5, 16)],
                       [fix(0.5, 16), -fix(0.41869, 16), -fix(0.08131, 16)]], np.int32)


def rgb_to_ycc(rgb):
    """jccolor's RGB -> YCbCr on int32 (..., 3) samples 0..255."""
    offset = jnp.array([1 << 15, (128 << 16) + (1 << 15) - 1, (128 << 16) + (1 << 15) - 1], jnp.int32)
    return jnp.right_shift(rgb @ RGB_TO_YCC.T + offset, SCALE_BITS)


def ycc_to_rgb(ycc):
    """jdcolor's YCbCr -> RGB on int32 (..., 3) samples 0..255, clamped."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    half = 1 << (SCALE_BITS - 1)
    r = y + jnp.right_shift(fix(1.402, 16) * cr + half, SCALE_BITS)
    g = y + jnp.right_shift(-fix(0.34414, 16) * cb - fix(0.71414, 16) * cr + half, SCALE_BITS)
    b = y + jnp.right_shift(fix(1.772, 16) * cb + half, SCALE_BITS)
    return jnp.clip(jnp.stack([r, g, b], axis=-1), 0, 255)
