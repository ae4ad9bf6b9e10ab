"""leat_jax.transforms: the JPEG forward against Pillow's real JPEG, gradients through every kind, draws that depend
on the key alone, the spec grammar and its errors, jit/vmap, bounds and shapes."""
from __future__ import annotations

import ast
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from leat_jax import transforms
from leat_jax.transforms import jpeg, pixel, resample
from tests.golden_harness import REPO

SAMPLE = REPO / "leat_jax" / "pipeline" / "samples" / "astronaut_256.png"
KINDS = ("identity", "round8", "jpeg", "resize", "blur", "jitter", "noise")
JPEG = jax.jit(jpeg.jpeg)  # the quality is traced: one compilation per image shape


def _synthetic(kind: str) -> np.ndarray:
    """37 x 53 uint8 test images (not multiples of 8 or 16): a colour ramp (smooth), uniform noise (the worst case
    for rounding ties) and a 0/255 checkerboard in opposite colours (the largest DCT coefficients)."""
    yy, xx = np.mgrid[0:37, 0:53]
    if kind == "ramp":
        return np.stack([yy * 5.0, xx * 4.0, 255 - (xx + yy) * 2.0], -1).clip(0, 255).astype(np.uint8)
    if kind == "checker":
        board = (yy + xx) % 2 * 255
        return np.stack([board, 255 - board, board], -1).astype(np.uint8)
    return np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)


def _pillow_jpeg(u8: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def _to_unit(u8: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(u8, jnp.float32) / 127.5 - 1.0


@pytest.mark.parametrize("name", ["sample", "ramp", "noise", "checker"])
def test_jpeg_forward_matches_pillow(name):
    u8 = np.asarray(Image.open(SAMPLE).convert("RGB")) if name == "sample" else _synthetic(name)
    for quality in (50, 75, 95, 100):
        ours = np.round((np.asarray(JPEG(_to_unit(u8), float(quality))) + 1.0) * 127.5)
        diff = ours - _pillow_jpeg(u8, quality)
        mad, mse = np.abs(diff).mean(), (diff ** 2).mean()
        psnr = 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))
        assert mad <= 1.0 and psnr >= 40.0, f"{name} q{quality}: MAD {mad:.3f} levels, PSNR {psnr:.2f} dB"
        # libjpeg-turbo's integer arithmetic is emulated: the decoded file itself, sample for sample
        assert np.mean(diff == 0) >= 0.999, f"{name} q{quality}: {np.mean(diff != 0):.4f} of samples differ"


@pytest.mark.parametrize("shape", [(5, 4, 3), (40, 1, 3)])
def test_jpeg_tiny_images_match_pillow(shape):
    """Chroma at most 2 samples wide: libjpeg-turbo replicates it instead of its triangular upsampling."""
    u8 = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    ours = np.round((np.asarray(JPEG(_to_unit(u8), 75.0)) + 1.0) * 127.5)
    np.testing.assert_array_equal(ours, _pillow_jpeg(u8, 75))


def test_jpeg_greyscale_matches_pillow():
    u8 = np.asarray(Image.open(SAMPLE).convert("L"))[:50, :70]
    ours = np.round((np.asarray(JPEG(_to_unit(u8)[..., None], 75.0))[..., 0] + 1.0) * 127.5)
    np.testing.assert_array_equal(ours, _pillow_jpeg(u8, 75))


def test_jpeg_gradient_path_stays_near_the_exact_value():
    """The floating-point twin that supplies the gradient decodes to within a few levels of the exact value."""
    u8 = np.asarray(Image.open(SAMPLE).convert("RGB"))[60:97, 100:153]
    levels = jnp.asarray(u8, jnp.float32)
    tables = jpeg.quant_tables(75.0)
    soft = jax.jit(lambda v: jpeg.codec(v, tables, functools.partial(jpeg.float_block_codec, gradient="cubic"),
                                        jpeg.float_rgb_to_ycc, jpeg.float_ycc_to_rgb))(levels)
    assert np.abs(np.asarray(soft) - _pillow_jpeg(u8, 75)).mean() <= 1.0


@pytest.mark.parametrize("gradient, slope", [("square", lambda d: 2 * np.abs(d)), ("cubic", lambda d: 3 * d**2),
                                             ("identity", lambda d: np.ones_like(d))])
def test_quantisation_rounds_forward_and_has_its_surrogate_slope(gradient, slope):
    table = jnp.full((8, 8), 4.0)
    d = np.linspace(-0.45, 0.45, 64, dtype=np.float32).reshape(8, 8)  # offsets from the grid, in steps
    coefficients = jnp.asarray((np.arange(64).reshape(8, 8) - 30 + d) * 4.0)
    out, vjp = jax.vjp(lambda c: jpeg.quantise(c, table, gradient), coefficients)
    np.testing.assert_array_equal(np.asarray(out), (np.arange(64).reshape(8, 8) - 30) * 4.0)
    np.testing.assert_allclose(np.asarray(vjp(jnp.ones((8, 8)))[0]), slope(d), rtol=1e-4, atol=1e-6)


def test_chain_passes_the_jpeg_transforms_surrogate_value_unchanged():
    """``jpeg:gradient=...`` reaches ``jpeg.jpeg``: the value is libjpeg's whatever the surrogate, the gradients of
    the three differ, and a non-default one's is what ``jpeg.jpeg`` gives with it."""
    x = _to_unit(_synthetic("ramp"))[:16, :16] * 0.9
    cotangent = jax.random.normal(jax.random.key(1), x.shape)

    @jax.jit
    def through_chains(image):  # (value, gradient) per surrogate, one compilation
        out = {}
        for gradient in jpeg.GRADIENTS:
            chain = transforms.parse(f"jpeg:quality=75,gradient={gradient}")
            value, vjp = jax.vjp(lambda im: transforms.apply_chain(chain, jax.random.key(0), im), image)
            out[gradient] = (value, vjp(cotangent)[0])
        out["direct cubic"] = jax.vjp(lambda im: jpeg.jpeg(im, 75.0, "cubic"), image)[1](cotangent)[0]
        return out

    results = through_chains(x)
    value = np.asarray(results["square"][0])
    u8 = np.round((np.asarray(x) + 1.0) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(np.round((value + 1.0) * 127.5), _pillow_jpeg(u8, 75))
    for gradient in jpeg.GRADIENTS:
        np.testing.assert_array_equal(np.asarray(results[gradient][0]), value)
    np.testing.assert_allclose(results["cubic"][1], results["direct cubic"], rtol=1e-5, atol=1e-6)
    # the rounding's slopes 2|d|, 3d**2 and 1 leave clearly different input gradients
    grads = {g: np.asarray(results[g][1]) for g in jpeg.GRADIENTS}
    for a, b in (("square", "cubic"), ("square", "identity"), ("cubic", "identity")):
        assert np.abs(grads[a] - grads[b]).mean() > 0.05 * np.abs(grads[b]).mean(), (a, b)


@pytest.mark.parametrize("quality", [1, 10, 25, 50, 75, 95, 100])
def test_quant_tables_are_the_ones_pillow_writes(quality):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", quality=quality)
    written = Image.open(io.BytesIO(buf.getvalue())).quantization
    luma, chroma = jpeg.quant_tables(float(quality))
    np.testing.assert_array_equal(np.asarray(luma).ravel(), written[0])
    np.testing.assert_array_equal(np.asarray(chroma).ravel(), written[1])


RESIZE = jax.jit(resample.resize_down_up)


def test_resize_matches_pillow_bicubic():
    u8 = np.asarray(Image.open(SAMPLE).convert("RGB"))[60:97, 100:153]  # the face, 37 x 53
    ours = (np.asarray(RESIZE(_to_unit(u8), 0.5)) + 1.0) * 127.5  # to round(18.5) x round(26.5) = 18 x 26
    small = Image.fromarray(u8).resize((26, 18), Image.BICUBIC)
    ref = np.asarray(small.resize((53, 37), Image.BICUBIC), np.float64)
    assert np.abs(ours - ref).mean() < 1.0  # Pillow also rounds to 8 bits between its passes


def test_neutral_parameters_are_identities():
    x = _to_unit(_synthetic("ramp"))
    jitter = jax.jit(resample.jitter)
    np.testing.assert_allclose(jitter(x, 0.0, 0.0, 1.0, 0.0), x, atol=1e-5)
    np.testing.assert_allclose(RESIZE(x, 1.0), x, atol=1e-5)
    np.testing.assert_allclose(jax.jit(pixel.blur, static_argnums=2)(x, 0.0, 1.5), x, atol=1e-6)
    shifted = jitter(x, 2.0, -3.0, 1.0, 0.0)  # whole-pixel shift: the content moves, edges replicate
    np.testing.assert_allclose(shifted[2:, :-3], x[:-2, 3:], atol=1e-5)
    np.testing.assert_allclose(shifted[:2, :-3], jnp.broadcast_to(x[:1, 3:], (2, 50, 3)), atol=1e-5)


def test_round8_and_noise_values():
    x = jax.random.uniform(jax.random.key(3), (37, 53, 3), minval=-1.0, maxval=1.0)
    levels = (np.asarray(pixel.round8(x)) + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert np.abs(levels - (np.asarray(x) + 1.0) * 127.5).max() <= 0.5 + 1e-4
    noisy = np.asarray(jax.jit(pixel.add_noise)(jnp.zeros_like(x), jax.random.key(0), 4.0)) * 127.5
    assert 3.8 < noisy.std() < 4.2 and abs(noisy.mean()) < 0.2  # 5 standard errors of 5883 samples


@functools.partial(jax.jit, static_argnums=2)
def _loss_gradient(key, image, chain):
    return jax.grad(lambda im: jnp.sum(transforms.apply_chain(chain, key, im) ** 2))(image)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_are_finite_and_nonzero(kind):
    chain = transforms.parse(kind)
    x = _to_unit(_synthetic("ramp"))[:19, :22] * 0.9  # smooth: blur and JPEG keep most of it
    g = _loss_gradient(jax.random.key(2), x, chain)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
    # d sum(T(x)**2) / dx is 2x for the identity; every kind keeps a share of it (JPEG's surrogate has a mean
    # slope of 1/2 per rounded coefficient)
    assert float(jnp.mean(jnp.abs(g))) > 0.1 * float(jnp.mean(jnp.abs(2 * x)))


def test_batch_equals_one_by_one_draws_follow_the_key_shape_and_bounds():
    chain = transforms.parse("round8,resize,jpeg,jitter")  # every drawn kind an upload and a re-alignment apply
    # odd sizes (not multiples of 8 or 16), saturated pixels included
    images = jnp.clip(jax.random.normal(jax.random.key(4), (3, 17, 9, 3)), -1.0, 1.0)
    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.jit(jax.vmap(lambda k, im: transforms.apply_chain(chain, k, im)))
    out = batched(keys, images)
    assert out.shape == images.shape and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    # an image's result depends on its key alone, not on its place or company in the batch
    again = batched(keys[jnp.array([2, 0, 0])], images[jnp.array([2, 0, 1])])
    np.testing.assert_array_equal(again[0], out[2])
    np.testing.assert_array_equal(again[1], out[0])
    # another key, another draw
    assert float(jnp.abs(again[2] - out[1]).max()) > 0.05


def test_parse_and_to_text_round_trip():
    text = "jpeg:quality=50-95,resize:factor=0.5-1.0,jitter:shift=-4-4,angle=-5-5,round8,blur:sigma=1,noise"
    chain = transforms.parse(text)
    assert [t.name for t in chain] == ["jpeg", "resize", "jitter", "round8", "blur", "noise"]
    assert chain[2].range("shift") == (-4.0, 4.0) and chain[2].range("scale") == (0.95, 1.05)  # default filled
    assert chain[4].range("sigma") == (1.0, 1.0)
    assert transforms.parse(transforms.to_text(chain)) == chain
    assert transforms.to_text(transforms.parse(transforms.to_text(chain))) == transforms.to_text(chain)
    assert transforms.parse("jpeg") == (transforms.Transform("jpeg"),)
    assert hash(transforms.parse("jpeg:quality=50-95")) == hash((transforms.Transform("jpeg"),))
    assert transforms.parse(transforms.to_text(transforms.ROBUST_DEFAULT)) == transforms.ROBUST_DEFAULT
    assert [t.name for t in transforms.ROBUST_DEFAULT] == ["jpeg", "round8"]
    assert transforms.ROBUST_DEFAULT[0].range("quality") == (50.0, 95.0)


def test_the_jpeg_surrogate_is_a_word_parameter_written_only_off_its_default():
    cubic = transforms.parse("round8,jpeg:gradient=cubic,quality=75")
    assert cubic[1].word("gradient") == "cubic" and cubic[1].range("quality") == (75.0, 75.0)
    assert transforms.to_text(cubic) == "round8,jpeg:quality=75,gradient=cubic"
    assert transforms.parse(transforms.to_text(cubic)) == cubic
    # the default is jpeg.GRADIENT, left out of the text: chains written before the parameter read the same
    default = transforms.Transform("jpeg")
    assert default.word("gradient") == jpeg.GRADIENT
    for text in ("jpeg", f"jpeg:gradient={jpeg.GRADIENT}", f"jpeg:quality=50-95,gradient={jpeg.GRADIENT}"):
        assert transforms.parse(text) == (default,) and hash(transforms.parse(text)) == hash((default,))
        assert transforms.to_text(transforms.parse(text)) == "jpeg:quality=50-95"
    assert transforms.to_text(transforms.ROBUST_DEFAULT) == "jpeg:quality=50-95,round8"
    others = [transforms.Transform("jpeg", words=(("gradient", g),)) for g in jpeg.GRADIENTS]
    assert len(set(others)) == 3 and others[0] == default
    identity = transforms.Transform("jpeg", words=[["gradient", "identity"]])
    assert identity == transforms.parse("jpeg,gradient=identity")[0]
    with pytest.raises(transforms.TransformSpecError, match="gradient=x is not one of square, cubic or identity"):
        transforms.Transform("jpeg", words=(("gradient", "x"),))
    with pytest.raises(transforms.TransformSpecError, match="gradient takes a word .*, not a range"):
        transforms.Transform("jpeg", (("gradient", 1, 1),))
    with pytest.raises(transforms.TransformSpecError, match="quality takes a number or a range LO-HI, not a word"):
        transforms.Transform("jpeg", words=(("quality", "75"),))


@pytest.mark.parametrize("spec, words", [
    ("jpg", "unknown transform 'jpg'"),
    ("jpeg:q=50", "unknown parameter 'q'"),
    ("jpeg:quality=0", "quality=0 out of range"),
    ("jpeg:quality=50-101", "quality=101 out of range"),
    ("jpeg:quality=50.5", "must be an integer"),
    ("resize:factor=0", "factor=0 out of range, must be within (0, 1]"),
    ("resize:factor=0.5-1.5", "factor=1.5 out of range"),
    ("resize:factor=0.9-0.5", "lo > hi"),
    ("blur:sigma=big", "bad parameter 'sigma=big'"),
    ("jpeg,,round8", "empty item"),
    ("quality=50", "before any transform kind"),
    ("jitter:shift=1,shift=2", "given twice"),
    ("jpeg:gradient=cubix", "bad parameter 'gradient=cubix' (gradient must be one of square, cubic or identity)"),
    ("jpeg:gradient=3", "'gradient=3' (gradient must be one of square, cubic or identity, not a number)"),
    ("jpeg:gradient=square-cubic", "'gradient=square-cubic' (gradient must be one of square, cubic or identity, "
                                   "not a range)"),
    ("jpeg:quality=high", "bad parameter 'quality=high' (expected a number or a range LO-HI within [1, 100])"),
    ("jpeg:quality=75,gradient=cubic,gradient=square", "'gradient' given twice"),
    ("blur:gradient=cubic", "unknown parameter 'gradient' (known: sigma)"),
    ("jpg:gradient=cubic", "unknown transform 'jpg'"),
])
def test_bad_specs_give_one_line_errors(spec, words):
    with pytest.raises(transforms.TransformSpecError) as caught:
        transforms.parse(spec)
    message = str(caught.value)
    assert words in message and "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_transform_objects_are_checked_and_canonical():
    built = transforms.Transform("jitter", [["angle", -2, 2], ("shift", 0, 1)])
    assert built.ranges == (("shift", 0.0, 1.0), ("scale", 0.95, 1.05), ("angle", -2.0, 2.0))
    assert built == transforms.parse("jitter:angle=-2-2,shift=0-1")[0]
    with pytest.raises(transforms.TransformSpecError, match="not \\(parameter, lo, hi\\)"):
        transforms.Transform("jpeg", (("quality", 50),))
    with pytest.raises(transforms.TransformSpecError, match="out of range"):
        transforms.Transform("jpeg", (("quality", 50, 101),))


def test_transforms_import_only_jax_numpy_dm_pix():
    allowed = {"jax", "numpy", "dm_pix", "dataclasses", "functools", "math", "re"}
    for path in (REPO / "leat_jax" / "transforms").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] in allowed or name.startswith("leat_jax.transforms"), f"{path}: {name}"
