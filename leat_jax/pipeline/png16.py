"""16-bit PNG, read and written here: Pillow reads a 16-bit colour PNG as 8 bits
and writes no 16-bit colour PNG, which would throw away what a 16-bit input holds.

Only what immunizing needs: every colour type at bit depth 16, not interlaced.
Written files use the Sub filter, which numpy applies to a whole image at once.
"""
from __future__ import annotations

import struct
import zlib

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


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters; (height, stride) uint8."""
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: a running sum along each byte lane
            lanes = line.reshape(-1, bpp).astype(np.uint32)
            cur = (np.cumsum(lanes, axis=0) & 0xFF).astype(np.uint8).reshape(-1)
        elif kind == 2:  # Up
            cur = line + prev
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            cur = bytearray(line.tobytes())
            up = prev.tobytes()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = up[i]
                if kind == 3:
                    cur[i] = (cur[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    cur[i] = (cur[i] + pred) & 0xFF
            cur = np.frombuffer(bytes(cur), np.uint8)
        else:
            raise PngError(f"corrupt PNG (unknown row filter {kind})")
        out[y] = cur
        prev = out[y]
    return out


def decode(data: bytes) -> tuple[np.ndarray, bool, bytes | None]:
    """(samples (H, W, C) uint16, last channel is alpha, ICC profile) of a 16-bit PNG.

    A ``tRNS`` colour key becomes an alpha channel, so what was transparent
    stays so after the colour samples move.
    """
    header = None
    idat: list[bytes] = []
    icc = None
    trns = None
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"iCCP":
            name_end = body.find(b"\0")
            try:
                icc = zlib.decompress(body[name_end + 2 :])
            except zlib.error:
                icc = None  # a broken profile is dropped, the pixels are still good
        elif kind == b"tRNS":
            trns = body
    if header is None:
        raise PngError("corrupt PNG (no header)")
    width, height, depth, color_type, _, _, interlace = header
    if depth != 16 or color_type not in CHANNELS:
        raise PngError(f"not a 16-bit PNG (depth {depth}, colour type {color_type})")
    if interlace:
        raise PngError("interlaced 16-bit PNGs are not supported; save it without interlacing")
    channels = CHANNELS[color_type]
    stride = width * channels * 2
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise PngError(f"corrupt or truncated PNG image data ({e})") from None
    if len(raw) != height * (stride + 1):
        raise PngError(f"truncated PNG ({len(raw)} of {height * (stride + 1)} bytes of image data)")
    rows = _unfilter(raw, height, stride, channels * 2)
    samples = rows.view(">u2").reshape(height, width, channels).astype(np.uint16)
    has_alpha = color_type in (4, 6)
    if trns is not None and not has_alpha and len(trns) >= 2 * (channels):
        key = np.asarray(struct.unpack(f">{channels}H", trns[: 2 * channels]), np.uint16)
        alpha = np.where(np.all(samples == key, axis=-1), 0, 65535).astype(np.uint16)
        samples = np.concatenate([samples, alpha[..., None]], axis=-1)
        has_alpha = True
    return samples, has_alpha, icc


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
