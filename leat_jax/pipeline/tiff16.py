"""16-bit colour TIFF, read here: Pillow reads RGB(A) TIFFs of 16 bits a
sample as 8 bits, which would silently halve what such a scan holds.

Pillow still parses the tags; this reads the strips: uncompressed or
Deflate, with or without the horizontal predictor, contiguous samples.
Other layouts (LZW, tiles, planar) are refused with a message saying how to
re-save the file. 16-bit grey TIFFs need none of this: Pillow reads them.
"""
from __future__ import annotations

import zlib

import numpy as np

_COMPRESSION = {1: "no", 5: "LZW", 7: "JPEG", 8: "Deflate", 32946: "Deflate", 32773: "PackBits"}
_RESAVE = "re-save it uncompressed or with Deflate, or as a 16-bit PNG"


class TiffError(ValueError):
    """A 16-bit colour TIFF this module does not read; one line."""


def _tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def is_deep_colour(im) -> bool:
    """Whether Pillow's ``im`` is a TIFF of colour samples deeper than 8 bits."""
    if im.format != "TIFF":
        return False
    tags = im.tag_v2
    bits = _tuple(tags.get(258, (1,)))
    return tags.get(277, 1) >= 3 and any(b > 8 for b in bits)


def decode(im, data: bytes) -> tuple[np.ndarray, bool]:
    """(samples (H, W, C) uint16, last channel is alpha) of a 16-bit RGB(A) TIFF."""
    tags = im.tag_v2
    bits = _tuple(tags.get(258))
    spp = tags.get(277, 1)
    if set(bits) != {16}:
        raise TiffError(f"TIFF with {'/'.join(map(str, bits))} bits a sample is not supported")
    if tags.get(262) != 2 or spp not in (3, 4):
        raise TiffError(f"16-bit TIFF of photometric type {tags.get(262)} with {spp} samples is not supported")
    if tags.get(339, 1) not in (1, (1,) * spp):
        raise TiffError("16-bit TIFF of signed or floating-point samples is not supported")
    if 322 in tags:
        raise TiffError(f"tiled 16-bit colour TIFFs are not supported; {_RESAVE}")
    if tags.get(284, 1) != 1:
        raise TiffError(f"planar 16-bit colour TIFFs are not supported; {_RESAVE}")
    if spp == 4 and _tuple(tags.get(338, (2,)))[0] == 1:
        raise TiffError(f"16-bit TIFF with premultiplied alpha is not supported; {_RESAVE}")
    compression, predictor = tags.get(259, 1), tags.get(317, 1)
    if compression not in (1, 8, 32946):
        name = _COMPRESSION.get(compression, f"type {compression}")
        raise TiffError(f"16-bit colour TIFF with {name} compression is not supported; {_RESAVE}")
    if predictor not in (1, 2):
        raise TiffError(f"16-bit colour TIFF with predictor {predictor} is not supported; {_RESAVE}")
    width, height = im.size
    strips = []
    for offset, count in zip(_tuple(tags.get(273, ())), _tuple(tags.get(279, ()))):
        raw = data[offset : offset + count]
        if len(raw) < count:
            raise TiffError("truncated TIFF (a strip runs past the end of the file)")
        if compression != 1:
            try:
                raw = zlib.decompress(raw)
            except zlib.error as e:
                raise TiffError(f"corrupt TIFF image data ({e})") from None
        strips.append(raw)
    buf = b"".join(strips)
    need = height * width * spp * 2
    if len(buf) < need:
        raise TiffError(f"truncated TIFF ({len(buf)} of {need} bytes of image data)")
    dtype = np.dtype("<u2" if tags._endian == "<" else ">u2")
    samples = np.frombuffer(buf[:need], dtype).reshape(height, width, spp).astype(np.uint16)
    if predictor == 2:  # horizontal differencing, modulo 2**16 along each row
        samples = np.cumsum(samples, axis=1, dtype=np.uint16)
    return samples, spp == 4
