"""16-bit colour TIFF, read with tifffile: Pillow reads RGB(A) TIFFs of 16 bits a
sample as 8 bits, which would silently halve what such a scan holds.

Every compression, predictor, strip or tile layout and planar configuration
tifffile and imagecodecs decode is read; signed, floating-point and
premultiplied-alpha samples are refused in one line. 16-bit grey TIFFs need
none of this: Pillow reads them.
"""
from __future__ import annotations

import io

import numpy as np
import tifffile

_RESAVE = "re-save it as unsigned 16-bit RGB(A), or as a 16-bit PNG"


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


def _check(page: tifffile.TiffPage) -> None:
    spp = page.samplesperpixel
    if page.bitspersample != 16:
        raise TiffError(f"TIFF with {page.bitspersample} bits a sample is not supported; {_RESAVE}")
    if page.photometric != tifffile.PHOTOMETRIC.RGB or spp not in (3, 4):
        raise TiffError(f"16-bit TIFF of photometric type {int(page.photometric)} with {spp} samples "
                        f"is not supported; {_RESAVE}")
    if page.sampleformat != tifffile.SAMPLEFORMAT.UINT:
        raise TiffError(f"16-bit TIFF of signed or floating-point samples is not supported; {_RESAVE}")
    if spp == 4 and page.extrasamples[:1] == (tifffile.EXTRASAMPLE.ASSOCALPHA,):
        raise TiffError(f"16-bit TIFF with premultiplied alpha is not supported; {_RESAVE}")


def decode(data: bytes) -> tuple[np.ndarray, bool]:
    """The first image of a 16-bit RGB(A) TIFF file's bytes.

    Returns:
        ``(samples (H, W, C) uint16, whether the last channel is alpha)``.

    Raises:
        TiffError: a layout refused above, or damaged image data (one line).
    """
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            _check(page)
            samples = page.asarray()
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except TiffError:
        raise
    except Exception as e:  # tifffile and its codecs raise many kinds on damaged files
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TiffError(f"damaged or truncated TIFF image data ({why})") from None
    if planar:
        samples = np.moveaxis(samples, 0, -1)
    return np.ascontiguousarray(samples, np.uint16), samples.shape[-1] == 4
