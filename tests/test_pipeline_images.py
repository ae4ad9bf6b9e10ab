"""Image IO of the pipeline: modes, 16-bit PNG, EXIF orientation, the bound after rounding.

No JAX here: these check the decode -> quantise -> encode path against
Pillow's own reading of the same files.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from leat_jax.pipeline import images, inputs, png16, tiff16

RNG = np.random.default_rng(0)


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _png16_with_filter(samples: np.ndarray, filt: int) -> bytes:
    """A 16-bit PNG whose every row uses ``filt``, filtered by a plain reference loop."""
    h, w, c = samples.shape
    bpp = 2 * c
    raw = samples.astype(">u2").tobytes()
    stride = w * bpp
    out, prev = bytearray(), bytes(stride)
    for y in range(h):
        row = raw[y * stride : (y + 1) * stride]
        f = bytearray(stride)
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            cc = prev[i - bpp] if i >= bpp else 0
            if filt == 0:
                pred = 0
            elif filt == 1:
                pred = a
            elif filt == 2:
                pred = b
            elif filt == 3:
                pred = (a + b) // 2
            else:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
            f[i] = (row[i] - pred) & 0xFF
        out += bytes([filt]) + f
        prev = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, png16.COLOR_TYPE[c], 0, 0, 0)
    return png16.SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")


def tiff16_bytes(samples: np.ndarray, compression: int = 1, predictor: int = 1, endian: str = "<",
                 rows_per_strip: int = 3) -> bytes:
    """A 16-bit RGB(A) TIFF in strips, written here: Pillow cannot write one."""
    h, w, c = samples.shape
    rows = samples.astype(endian + "u2")
    if predictor == 2:
        rows = rows.copy()
        rows[:, 1:] = samples[:, 1:] - samples[:, :-1]  # uint16 wraps, as the predictor wants
    strips = []
    for y in range(0, h, rows_per_strip):
        raw = rows[y : y + rows_per_strip].astype(endian + "u2").tobytes()
        strips.append(zlib.compress(raw) if compression == 8 else raw)
    bo = "II" if endian == "<" else "MM"
    pack = lambda fmt, *v: struct.pack(endian + fmt, *v)  # noqa: E731
    data = b"".join(strips)
    n_strips = len(strips)
    offsets, pos = [], 8
    for s_ in strips:
        offsets.append(pos)
        pos += len(s_)
    extra_at = pos  # after the strips: BitsPerSample, StripOffsets, StripByteCounts arrays
    bps = pack(f"{c}H", *([16] * c))
    offs = pack(f"{n_strips}I", *offsets)
    counts = pack(f"{n_strips}I", *map(len, strips))
    ifd_at = extra_at + len(bps) + len(offs) + len(counts)
    entries = [
        (256, 3, 1, w), (257, 3, 1, h), (258, 3, c, extra_at), (259, 3, 1, compression), (262, 3, 1, 2),
        (273, 4, n_strips, extra_at + len(bps)), (277, 3, 1, c), (278, 3, 1, rows_per_strip),
        (279, 4, n_strips, extra_at + len(bps) + len(offs)), (284, 3, 1, 1), (317, 3, 1, predictor),
    ]
    if c == 4:
        entries.append((338, 3, 1, 2))
    ifd = pack("H", len(entries))
    for tag, typ, count, value in sorted(entries):
        if typ == 3 and count == 1:
            ifd += pack("HHIHH", tag, typ, count, value, 0)
        elif typ == 4 and count == 1:
            ifd += pack("HHII", tag, typ, count, offsets[0] if tag == 273 else len(strips[0]))
        else:
            ifd += pack("HHII", tag, typ, count, value)
    ifd += pack("I", 0)
    return bo.encode() + pack("H", 42) + pack("I", ifd_at) + data + bps + offs + counts + ifd


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("compression, predictor, endian", [(1, 1, "<"), (8, 2, "<"), (1, 1, ">"), (8, 1, ">")])
def test_tiff16_colour_is_read_at_16_bits(channels, compression, predictor, endian):
    samples = RNG.integers(0, 65536, (7, 5, channels), dtype=np.uint16)
    data = tiff16_bytes(samples, compression, predictor, endian)
    with Image.open(io.BytesIO(data)) as im:
        assert tiff16.is_deep_colour(im)
    d = images.decode(data, max_side=64)
    assert d.bits == 16 and d.description.startswith("TIFF")
    np.testing.assert_array_equal(d.levels, samples[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(d.alpha, samples[..., 3])


@pytest.mark.parametrize("options", [
    {"compression": "lzw"}, {"compression": "packbits"}, {"tile": (16, 16)}, {"planarconfig": "separate"},
    {"compression": "zlib", "predictor": 2, "byteorder": ">"},
])
def test_tiff16_other_layouts_are_read_by_tifffile(options):
    samples = RNG.integers(0, 65536, (20, 24, 4), dtype=np.uint16)
    buf = io.BytesIO()
    planar = options.get("planarconfig") == "separate"
    tifffile.imwrite(buf, np.moveaxis(samples, -1, 0) if planar else samples, photometric="rgb",
                     extrasamples=("unassalpha",), **options)
    d = images.decode(buf.getvalue(), max_side=64)
    assert d.bits == 16
    np.testing.assert_array_equal(d.levels, samples[..., :3])
    np.testing.assert_array_equal(d.alpha, samples[..., 3])


def test_tiff16_refusals_and_damage_are_one_line_errors():
    buf = io.BytesIO()
    tifffile.imwrite(buf, RNG.integers(0, 65536, (4, 4, 4), dtype=np.uint16), photometric="rgb",
                     extrasamples=("assocalpha",))
    with pytest.raises(images.ImageError, match=r"premultiplied alpha is not supported; re-save"):
        images.decode(buf.getvalue(), max_side=64)
    good = tiff16_bytes(RNG.integers(0, 65536, (8, 8, 3), dtype=np.uint16), compression=8)
    broken = bytearray(good)
    broken[8:40] = bytes(32)  # the first strip's Deflate stream
    with pytest.raises(images.ImageError, match="damaged or truncated") as e:
        images.decode(bytes(broken), max_side=64)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("filt", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png16_reads_every_row_filter(filt, channels):
    samples = RNG.integers(0, 65536, (5, 7, channels), dtype=np.uint16)
    got, has_alpha, _ = png16.decode(_png16_with_filter(samples, filt))
    assert has_alpha == (channels == 4)
    np.testing.assert_array_equal(got, samples)


def test_png16_round_trip_and_pillow_agrees_on_grey():
    grey = RNG.integers(0, 65536, (9, 6, 1), dtype=np.uint16)
    data = png16.encode(grey, icc=b"fake profile")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), grey[..., 0])
    got, _, icc = png16.decode(data)
    np.testing.assert_array_equal(got, grey)
    assert icc == b"fake profile"
    # and the other way: Pillow's 16-bit grey PNG, read here
    got, _, _ = png16.decode(_png_bytes(Image.fromarray(grey[..., 0])))
    np.testing.assert_array_equal(got, grey)


def test_png16_damage_is_a_one_line_error():
    data = png16.encode(RNG.integers(0, 65536, (8, 8, 3), dtype=np.uint16))
    with pytest.raises(png16.PngError, match="truncated"):
        png16.decode(data[: len(data) // 2])
    broken = bytearray(data)
    broken[40] ^= 0xFF
    with pytest.raises(png16.PngError, match="checksum|corrupt"):
        png16.decode(bytes(broken))


def _decode(im: Image.Image, fmt="PNG", **kw) -> images.Decoded:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return images.decode(buf.getvalue(), max_side=4096)


def test_modes_map_to_what_comes_back():
    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgba = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    grey = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    d = _decode(Image.fromarray(rgb))
    assert d.levels.shape == (6, 5, 3) and d.alpha is None and d.bits == 8
    d = _decode(Image.fromarray(rgba, "RGBA"))
    np.testing.assert_array_equal(d.alpha, rgba[..., 3])
    d = _decode(Image.fromarray(grey, "L"))
    assert d.levels.shape == (6, 5, 1)
    assert d.model_input().shape == (6, 5, 3)
    d = _decode(Image.fromarray(grey, "L").convert("LA"))
    assert d.levels.shape == (6, 5, 1) and d.alpha is not None
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    d = _decode(pal)
    np.testing.assert_array_equal(d.levels, np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0
    d = _decode(pal, transparency=0)
    assert d.alpha is not None and (d.alpha == 0).any()
    d = _decode(Image.fromarray(rgb).convert("CMYK"), "JPEG")
    assert d.levels.shape == (6, 5, 3) and d.icc_profile is None
    d = _decode(Image.fromarray(grey.astype(np.uint16) * 257), "TIFF")
    assert d.bits == 16 and d.levels.dtype == np.uint16


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow(orientation):
    rgb = RNG.integers(0, 256, (4, 7, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        im.save(buf, fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
        want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
        got = images.decode(buf.getvalue(), max_side=64).levels
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("eps", [0.05, 0.051, 4 / 255, 0.5])
def test_quantize_keeps_the_bound_after_rounding(bits, eps):
    """The worst case for rounding: the attack at exactly +-eps everywhere."""
    dtype = np.uint8 if bits == 8 else np.uint16
    maxval = (1 << bits) - 1
    levels = RNG.integers(0, maxval + 1, (16, 16, 3)).astype(dtype)
    levels[0, :4, 0] = [0, maxval, 1, maxval - 1]
    d = images.Decoded(levels=levels, alpha=None, bits=bits, description="test")
    x = d.model_input()
    for sign in (+1, -1):
        protected = np.clip(x + sign * np.float32(eps), -1, 1)
        out = images.quantize(d, protected, eps)
        assert out.dtype == dtype
        assert images.linf(levels, out, bits) <= eps + 1e-12
        step = np.abs(out.astype(np.int64) - levels.astype(np.int64)).max()
        assert step == images.level_step(eps, bits) >= 1


def test_grey_perturbation_is_the_channel_mean():
    levels = np.full((3, 3, 1), 100, np.uint8)
    d = images.Decoded(levels=levels, alpha=None, bits=8, description="test")
    eta = np.zeros((3, 3, 3), np.float32)
    eta[..., 0] = 0.05
    eta[..., 1] = 0.05
    eta[..., 2] = -0.05  # mean: 0.05 / 3, that is 2.125 levels
    out = images.quantize(d, d.model_input() + eta, 0.05)
    assert out.shape == (3, 3, 1) and (out == 102).all()


def test_encode_keeps_alpha_and_16_bits():
    levels = RNG.integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    alpha = RNG.integers(0, 65536, (5, 4), dtype=np.uint16)
    d = images.Decoded(levels=levels, alpha=alpha, bits=16, description="test")
    back = images.decode(images.encode(d, levels, "png"), max_side=64)
    assert back.bits == 16
    np.testing.assert_array_equal(back.levels, levels)
    np.testing.assert_array_equal(back.alpha, alpha)
    with pytest.raises(images.ImageError, match="16-bit"):
        images.encode(d, levels, "jpeg")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, not an image", "not an image"),
        (_png_bytes(Image.fromarray(RNG.integers(0, 256, (8, 20, 3), dtype=np.uint8)))[:300], "damaged or truncated"),
        (_png_bytes(Image.new("RGB", (40, 8))), "larger than the limit"),
    ],
)
def test_bad_bytes_are_one_line_errors(data, reason):
    with pytest.raises(images.ImageError, match=reason) as e:
        images.decode(data, max_side=32)
    assert "\n" not in str(e.value)


def test_output_names_avoid_clashes(tmp_path):
    for name in ("a.png", "a.jpg", "b.jpeg", "c.PNG"):
        Image.new("RGB", (2, 2)).save(tmp_path / name, "PNG")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "notes.txt").write_text("not an image name: ignored")
    items = {i.rel: i for i in inputs.discover(tmp_path, tmp_path / "out")}
    assert set(items) == {"a.png", "a.jpg", "b.jpeg", "c.PNG", "dir.png"}
    assert items["a.png"].output == "a.png" and items["a.jpg"].output == "a.jpg.png"
    assert items["b.jpeg"].output == "b.png" and items["c.PNG"].output == "c.png"
    assert "directory" in items["dir.png"].problem
    assert len({i.image_id for i in items.values()}) == len(items)
    assert inputs.image_id("a.png") == inputs.image_id("a.png")  # stable: from the path alone
