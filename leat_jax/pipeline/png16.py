"""16-bit PNG, read and written: Pillow reads a 16-bit colour PNG as 8 bits and
writes no 16-bit colour PNG, which would throw away what a 16-bit input holds.

Pixels are decoded by imagecodecs (libpng: every row filter, a ``tRNS`` colour
key as alpha); the chunks are walked here for the checksums, the header and
the ICC profile. Writing stays here: imagecodecs writes no ICC profile.
Interlaced 16-bit files are refused.
"""
from __future__ import annotations

import struct
import zlib

import imagecodecs
import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type -> samples per pixel (grey, RGB, grey+alpha, RGBA)
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
COLOR_TYPE = {v: k for k, v in CHANNELS.items()}


class PngError(ValueError):
    """The file is not a PNG this module reads; the message says why, in one line."""


def bit_depth(data: bytes) -> int | None:
    """The bit depth in a PNG's header, or None when ``data`` is no PNG."""
    if len(data) < 29 or data[:8] != SIGNATURE or data[12:16] != b"IHDR":
        return None
    return data[24]


def _chunks(data: bytes):
    pos = len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise PngError("truncated PNG (a chunk runs past the end of the file)")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            raise PngError(f"corrupt PNG (checksum of the {kind.decode('latin-1')} chunk is wrong)")
        yield kind, body
        if kind == b"IEND":
            return
        pos += 12 + length
    raise PngError("truncated PNG (no IEND chunk)")


def decode(data: bytes) -> tuple[np.ndarray, bool, bytes | None]:
    """(samples (H, W, C) uint16, last channel is alpha, ICC profile) of a 16-bit PNG.

    A ``tRNS`` colour key becomes an alpha channel.
    """
    header = None
    icc = None
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"iCCP":
            name_end = body.find(b"\0")
            try:
                icc = zlib.decompress(body[name_end + 2 :])
            except zlib.error:
                icc = None  # a broken profile is dropped, the pixels are still good
    if header is None:
        raise PngError("corrupt PNG (no header)")
    width, height, depth, color_type, _, _, interlace = header
    if depth != 16 or color_type not in CHANNELS:
        raise PngError(f"not a 16-bit PNG (depth {depth}, colour type {color_type})")
    if interlace:
        raise PngError("interlaced 16-bit PNGs are not supported; save it without interlacing")
    try:
        samples = imagecodecs.png_decode(data)
    except Exception as e:  # imagecodecs.PngError and friends, on damaged image data
        raise PngError(f"corrupt or truncated PNG image data ({_first_line(e)})") from None
    samples = samples.reshape(height, width, -1).astype(np.uint16, copy=False)
    # libpng turns a tRNS colour key into an alpha channel: transparent stays so after the samples move.
    has_alpha = samples.shape[-1] in (2, 4)
    return samples, has_alpha, icc


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode(samples: np.ndarray, icc: bytes | None = None) -> bytes:
    """A 16-bit PNG of ``samples`` (H, W, C) uint16, C in 1..4 (2 and 4 carry alpha)."""
    height, width, channels = samples.shape
    bpp = channels * 2
    rows = np.ascontiguousarray(samples.astype(">u2")).view(np.uint8).reshape(height, width * bpp)
    sub = rows.copy()
    sub[:, bpp:] = rows[:, bpp:] - rows[:, :-bpp]  # uint8 arithmetic wraps, as PNG wants
    filtered = np.concatenate([np.ones((height, 1), np.uint8), sub], axis=1)
    out = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, COLOR_TYPE[channels], 0, 0, 0))]
    if icc:
        out.append(_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)))
    out.append(_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)
