"""`leat-jax immunize` end to end, in this process, on small stand-in victims.

Every test goes through ``cli.main`` with the toy victims of
``tests.pipeline_toys`` (``LEAT_EXTRA_VICTIMS``). All runs share one attack
setting, so each image size compiles once for the whole module. eps = 0.051
is 6.5 levels of 8 bits: rounding to the nearest level would overshoot it,
so every run also checks that the bound holds after quantisation.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image, ImageOps

from leat_jax import cli
from leat_jax.pipeline import images, inputs, png16, victimset
from leat_jax.pipeline import immunize as immunize_job
from tests.pipeline_toys import ENV
from tests.test_pipeline_images import tiff16_bytes

EPS = 0.051
STEP8 = math.floor(EPS * 127.5)  # 6 levels
STEP16 = math.floor(EPS * 32767.5)
ATTACK = ["--victims", "toy_a,toy_b", "--stand-in-weights", "--iterations", "3", "--eps", str(EPS), "--step", "0.02"]
RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def toy_victims(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


def immunize(capsys, src, dst, *extra, attack=ATTACK):
    """Run the command; (exit code, stderr)."""
    args = ["immunize", *([str(src)] if src is not None else []), str(dst), *attack, "--quiet", *extra]
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def noise(h=24, w=24, c=3, dtype=np.uint8):
    hi = 256 if dtype == np.uint8 else 65536
    shape = (h, w) if c == 1 else (h, w, c)
    return RNG.integers(0, hi, shape).astype(dtype)


def outputs(dst: Path) -> dict[str, bytes]:
    """Every file under DST but leat-jax's own, by relative path."""
    return {
        p.relative_to(dst).as_posix(): p.read_bytes()
        for p in sorted(dst.rglob("*"))
        if p.is_file() and inputs.STATE_DIR not in p.parts and p.name not in inputs.RESERVED
    }


def report(dst: Path) -> dict:
    return json.loads((dst / inputs.REPORT).read_text())


def levels_of(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if png16.bit_depth(data) == 16:
        samples = png16.decode(data)[0].astype(np.int64)
        return samples[..., 0] if samples.shape[-1] == 1 else samples
    return np.asarray(Image.open(path)).astype(np.int64)


def simple_set(folder: Path, n: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(noise()).save(folder / f"img{i}.png")
    return folder


# --- formats and modes ------------------------------------------------------


def _formats(src: Path) -> dict[str, tuple[str, str]]:
    """Write one file per format and mode; name -> (output name, Pillow mode of the output)."""
    (src / "deep").mkdir(parents=True)
    rgb, grey = noise(), noise(c=1)
    Image.fromarray(rgb).save(src / "rgb.png")
    Image.fromarray(noise(c=4), "RGBA").save(src / "rgba.png")
    Image.fromarray(grey, "L").save(src / "grey.png")
    Image.fromarray(noise(c=1), "L").save(src / "grey.jpg", quality=90)
    Image.fromarray(noise(c=2), "LA").save(src / "la.png")
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(src / "palette.png")
    pal.save(src / "palette_t.png", transparency=3)
    Image.fromarray(noise()).save(src / "photo.jpg", quality=90)
    Image.fromarray(noise()).convert("CMYK").save(src / "cmyk.jpg", quality=90)
    Image.fromarray(noise()).save(src / "lossy.webp", quality=80)
    Image.fromarray(noise()).save(src / "pic.bmp")
    Image.fromarray(noise()).save(src / "scan.tif")
    Image.fromarray(noise(h=20, w=28)).save(src / "wide.png")  # any size: its own batch
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: the output is upright
    Image.fromarray(np.repeat(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], 24, 0).repeat(3, 2)).save(
        src / "rotated.jpg", exif=exif, quality=95
    )
    Image.fromarray(noise(c=1, dtype=np.uint16)).save(src / "deep/grey16.png")
    Image.fromarray(noise(c=1, dtype=np.uint16)).save(src / "deep/grey16.tif")
    (src / "deep/rgb16.png").write_bytes(png16.encode(noise(dtype=np.uint16)))
    (src / "deep/rgba16.png").write_bytes(png16.encode(noise(c=4, dtype=np.uint16)))
    (src / "deep/rgb16.tif").write_bytes(tiff16_bytes(noise(dtype=np.uint16), compression=8, predictor=2))
    return {
        "rgb.png": ("rgb.png", "RGB"),
        "rgba.png": ("rgba.png", "RGBA"),
        "grey.png": ("grey.png", "L"),
        "grey.jpg": ("grey.jpg.png", "L"),  # grey.png took grey.png
        "la.png": ("la.png", "LA"),
        "palette.png": ("palette.png", "RGB"),
        "palette_t.png": ("palette_t.png", "RGBA"),
        "photo.jpg": ("photo.png", "RGB"),
        "cmyk.jpg": ("cmyk.png", "RGB"),
        "lossy.webp": ("lossy.png", "RGB"),
        "pic.bmp": ("pic.png", "RGB"),
        "scan.tif": ("scan.png", "RGB"),
        "wide.png": ("wide.png", "RGB"),
        "rotated.jpg": ("rotated.png", "RGB"),
        "deep/grey16.png": ("deep/grey16.png", "I;16"),
        "deep/grey16.tif": ("deep/grey16.tif.png", "I;16"),  # clashes with grey16.png
        "deep/rgb16.png": ("deep/rgb16.png", "RGB16"),
        "deep/rgba16.png": ("deep/rgba16.png", "RGBA16"),
        "deep/rgb16.tif": ("deep/rgb16.tif.png", "RGB16"),  # Pillow would read it as 8 bits
    }


def _reference(path: Path, mode: str) -> np.ndarray:
    """The input as Pillow reads it (upright), in the output's mode; 16-bit colour via png16."""
    if mode in ("RGB16", "RGBA16"):
        d = images.decode(path.read_bytes(), max_side=64)  # png16 / tiff16, checked in test_pipeline_images
        both = d.levels if d.alpha is None else np.concatenate([d.levels, d.alpha[..., None]], axis=-1)
        return both.astype(np.int64)
    im = ImageOps.exif_transpose(Image.open(path))
    if mode == "I;16":
        return np.asarray(im).astype(np.int64)
    return np.asarray(im.convert(mode)).astype(np.int64)


def test_formats_and_modes_come_back_as_they_were_within_the_bound(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    cases = _formats(src)
    rc, err = immunize(capsys, src, dst)
    assert rc == 0, err
    assert set(outputs(dst)) == {out for out, _ in cases.values()}
    for name, (out, mode) in cases.items():
        path = dst / out
        with Image.open(path) as im:
            assert im.format == "PNG", name  # lossless by default
            if mode in ("RGB16", "RGBA16"):
                assert png16.bit_depth(path.read_bytes()) == 16, name
            else:
                assert im.mode == mode, name
            assert 0x0112 not in im.getexif(), name  # stored upright, no orientation left
        ref, got = _reference(src / name, mode), levels_of(path)
        assert got.shape == ref.shape, name
        colour = slice(None) if mode in ("RGB", "L", "I;16", "RGB16") else slice(0, -1)
        diff = np.abs(got[..., colour] - ref[..., colour]) if got.ndim == 3 else np.abs(got - ref)
        step = STEP16 if mode in ("I;16", "RGB16", "RGBA16") else STEP8
        assert diff.max() <= step, name  # the bound, on the written integers
        assert diff.max() >= step // 2, name  # and the attack did move it
        if mode in ("RGBA", "LA", "RGBA16"):
            np.testing.assert_array_equal(got[..., -1], ref[..., -1], err_msg=name)  # alpha untouched
    # the rotated input was read upright: a horizontal ramp stored on its side is vertical now
    upright = levels_of(dst / "rotated.png")
    assert np.abs(np.diff(upright.mean(axis=(1, 2)))).mean() > 5 > np.abs(np.diff(upright.mean(axis=(0, 2)))).mean()

    rep = report(dst)
    assert rep["totals"] == {"images": len(cases), "done": len(cases), "failed": 0, "missing": 0,
                             "done_with_other_settings": 0}
    assert "protects against NOTHING" in rep["warning"]
    assert all(img["linf"] <= EPS for img in rep["images"])
    for victim in ("toy_a", "toy_b"):
        assert rep["mean_distance"][victim]["end"] > rep["mean_distance"][victim]["start"] > 0
    with Image.open(dst / inputs.CONTACT_SHEET) as sheet:
        assert sheet.mode == "RGB" and sheet.width > 3 * 100
    settings = json.loads((dst / inputs.SETTINGS).read_text())
    assert settings["attack"]["eps"] == EPS and [v["name"] for v in settings["victims"]] == ["toy_a", "toy_b"]


# --- resuming, batch size, settings ------------------------------------------


def test_rerun_skips_done_redoes_changed_and_force_redoes_all(tmp_path, capsys):
    src, dst = simple_set(tmp_path / "src"), tmp_path / "dst"
    assert immunize(capsys, src, dst)[0] == 0
    first = outputs(dst)
    assert len(first) == 5

    assert immunize(capsys, src, dst)[0] == 0
    assert report(dst)["run"]["already_done"] == 5 and report(dst)["run"]["protected"] == 0
    assert outputs(dst) == first

    Image.fromarray(noise()).save(src / "img2.png")  # changed input
    (dst / "img4.png").unlink()  # lost output
    (dst / "img3.png").write_bytes(b"tampered")  # damaged output
    assert immunize(capsys, src, dst)[0] == 0
    run = report(dst)["run"]
    assert (run["protected"], run["already_done"]) == (3, 2)
    assert run["software"]["jax"] == jax.__version__ and run["software"]["xla_flags"] == os.environ.get("XLA_FLAGS")
    now = outputs(dst)
    assert now["img2.png"] != first["img2.png"]
    assert {k: v for k, v in now.items() if k != "img2.png"} == {k: v for k, v in first.items() if k != "img2.png"}

    assert immunize(capsys, src, dst, "--force")[0] == 0
    assert report(dst)["run"]["protected"] == 5
    assert outputs(dst) == now  # redone, identical: a result depends on (seed, path, input) only

    assert immunize(capsys, src, dst, "--seed", "1")[0] == 0  # other settings: all redone
    assert report(dst)["run"]["protected"] == 5
    assert all(outputs(dst)[k] != now[k] for k in now)


def test_the_opening_line_counts_images_in_agreement(tmp_path, capsys):
    src = simple_set(tmp_path / "src", 2)
    for one_or_all, dst, count in ((src / "img0.png", tmp_path / "one", "1 image"),
                                   (src, tmp_path / "two", "2 images")):
        assert cli.main(["immunize", str(one_or_all), str(dst), *ATTACK]) == 0  # not --quiet: the lines show
        assert f"\nleat-jax: {count} from {one_or_all} -> {dst}; victims: toy_a, toy_b;" in capsys.readouterr().err


def test_a_rerun_with_everything_done_builds_no_weights_and_loses_nothing(tmp_path, capsys, monkeypatch):
    src, dst = simple_set(tmp_path / "src", 3), tmp_path / "dst"
    assert immunize(capsys, src, dst)[0] == 0
    first, before = outputs(dst), report(dst)
    manifest = (dst / inputs.STATE_DIR / "manifest-0.jsonl").read_bytes()
    load = victimset.load

    def identities_only(*args, weights=True, **kwargs):
        if weights:
            raise AssertionError("the victims' weights were built")
        return load(*args, weights=weights, **kwargs)

    monkeypatch.setattr(victimset, "load", identities_only)
    assert cli.main(["immunize", str(src), str(dst), *ATTACK]) == 0  # not --quiet: the summary shows
    err = capsys.readouterr().err
    assert "leat-jax: 0 protected, 3 already done, 0 failed in " in err and "compiling" not in err, err
    assert outputs(dst) == first and (dst / inputs.STATE_DIR / "manifest-0.jsonl").read_bytes() == manifest
    after = report(dst)
    for key in ("settings", "totals", "mean_distance", "images", "failures", "missing", "warning"):
        assert after[key] == before[key], key
    assert (after["run"]["protected"], after["run"]["already_done"], after["run"]["failed"]) == (0, 3, 0)
    for key in ("devices", "platform", "batch", "out_of_memory"):
        assert after["run"]["per_process"][0][key] == before["run"]["per_process"][0][key], key
    Image.fromarray(noise()).save(src / "img1.png")  # something to do again: the weights are built
    with pytest.raises(AssertionError, match="weights were built"):
        immunize(capsys, src, dst)


def test_quiet_shows_errors_and_warnings_only(tmp_path, capsys):
    src = simple_set(tmp_path / "src", 2)
    (src / "bad.png").write_text("not an image")
    rc, err = immunize(capsys, src, tmp_path / "dst", "--format", "jpeg")  # --quiet
    lines = err.splitlines()
    assert rc == 1 and len(lines) == 5, err  # no opening line, compilations, progress or summary
    assert lines[0].startswith("WARNING: stand-in weights") and lines[1] == immunize_job.JPEG_WARNING
    assert lines[2].startswith(f"leat-jax: error: {src / 'bad.png'}: not an image"), err
    assert lines[3:] == ["leat-jax: reminder: stand-in weights; this output protects against nothing.",
                         "leat-jax: error: 1 image(s) failed (listed above and in the report); the rest are done"]


def test_results_do_not_depend_on_batch_size(tmp_path, capsys):
    src = simple_set(tmp_path / "src", 5)
    assert immunize(capsys, src, tmp_path / "b1", "--batch-size", "1")[0] == 0
    assert immunize(capsys, src, tmp_path / "b3", "--batch-size", "3")[0] == 0  # 3 + 2 padded
    assert outputs(tmp_path / "b1") == outputs(tmp_path / "b3")


def test_list_file_and_toml_config(tmp_path, capsys):
    root = tmp_path / "root"
    src = simple_set(root / "photos", 3)
    listing = root / "list.txt"
    listing.write_text(f"# faces\nphotos/img0.png\n\n{src / 'img1.png'}\n{src / 'img1.png'}\n")
    config = tmp_path / "run.toml"
    config.write_text(
        'stand_in_weights = true\nseed = 0\n[victims]\ntoy_a = "stand-in"\ntoy_b = "stand-in"\n'
        f"[attack]\niterations = 3\neps = {EPS}\nstep = 0.02\n"
    )
    rc, err = immunize(capsys, listing, tmp_path / "dst", "--config", str(config), attack=[])
    assert rc == 0, err
    listed = outputs(tmp_path / "dst")
    assert set(listed) == {"photos/img0.png", "photos/img1.png"}
    # the same images (same relative paths) and settings, from the folder and flags: the same files
    assert immunize(capsys, root, tmp_path / "ref")[0] == 0
    walked = outputs(tmp_path / "ref")
    assert set(walked) == {"photos/img0.png", "photos/img1.png", "photos/img2.png"}
    assert all(listed[k] == walked[k] for k in listed)

    config.write_text("colour = 'blue'\n" + config.read_text())
    rc, err = immunize(capsys, listing, tmp_path / "dst", "--config", str(config), attack=[])
    assert rc == 2 and "unknown setting 'colour'" in err and len(err.strip().splitlines()) == 1
    # a victim's name mistyped in the file, a stand-in without stand_in_weights, a bad value: the file is named
    victims, stand_in = '[victims]\ntoy_a = "stand-in"\n', "stand_in_weights = true\n"
    for text, message in ((stand_in + victims + 'toy_bb = "stand-in"\n', "[victims]: unknown victim 'toy_bb'"),
                          (victims, "[victims]: victim toy_a has no checkpoint"),
                          (stand_in + 'format = "gif"\n' + victims, "format must be one of png, jpeg, got 'gif'"),
                          (stand_in + victims + "[attack]\neps = -1\n", "[attack]: eps must be positive, got -1")):
        config.write_text(text)
        rc, err = immunize(capsys, listing, tmp_path / "dst", "--config", str(config), attack=[])
        assert rc == 2 and err.startswith(f"leat-jax: error: {config}: {message}"), err
        assert len(err.strip().splitlines()) == 1, err


def test_an_output_onto_its_own_input_is_refused(tmp_path, capsys):
    """DST the folder of an image SRC (exit 2), or of a list's entries (each fails): the originals stay."""
    src = simple_set(tmp_path / "faces", 2)
    before = outputs(src)
    rc, err = immunize(capsys, src / "img0.png", src)
    assert rc == 2 and err == (f"leat-jax: error: {src / 'img0.png'}: its output {src / 'img0.png'} is this input "
                               "itself, which would be overwritten; give another DST\n"), err
    (tmp_path / "list.txt").write_text("faces/img0.png\nfaces/img1.png\n")
    rc, err = immunize(capsys, tmp_path / "list.txt", tmp_path)
    assert rc == 1 and err.count("is this input itself, which would be overwritten") == 2, err
    assert outputs(src) == before


def test_jpeg_output_warns_and_refuses_alpha(tmp_path, capsys):
    src = simple_set(tmp_path / "src", 2)
    Image.fromarray(noise(c=4), "RGBA").save(src / "alpha.png")
    rc, err = immunize(capsys, src, tmp_path / "dst", "--format", "jpeg")
    assert rc == 1
    assert "compression" in err and "weakens the protection" in err
    assert "alpha.png: JPEG output cannot hold an alpha channel" in err
    assert set(outputs(tmp_path / "dst")) == {"img0.jpg", "img1.jpg"}
    rep = report(tmp_path / "dst")
    assert all(img["linf"] > 0 for img in rep["images"])  # measured after JPEG, recorded


def test_samples_run_on_toys(tmp_path, capsys):
    rc, err = immunize(capsys, None, tmp_path / "demo", "--samples")
    assert rc == 0, err
    assert set(outputs(tmp_path / "demo")) == {"astronaut_256.png", "astronaut_tight.png", "astronaut_grey.png"}
    with Image.open(tmp_path / "demo" / "astronaut_grey.png") as im:
        assert im.mode == "L"


# --- bad input ---------------------------------------------------------------


def test_each_bad_input_is_one_line_recorded_and_the_rest_goes_on(tmp_path, capsys):
    src, dst = simple_set(tmp_path / "src", 2), tmp_path / "dst"
    good = (src / "img0.png").read_bytes()
    jpeg = io.BytesIO()
    Image.fromarray(noise()).save(jpeg, "JPEG", quality=90)
    data = jpeg.getvalue()
    # cut half-way through the scan: half the file could end inside the headers ("not an image"), depending
    # on the noise the shared RNG gave
    scan = data.index(b"\xff\xda")
    (src / "cut.jpg").write_bytes(data[: (scan + len(data)) // 2])
    (src / "zero.png").write_bytes(b"")
    (src / "text.jpg").write_text("this is not an image\n")
    (src / "cut.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(noise(h=40, w=30)).save(src / "huge.png")
    (src / "folder.png").mkdir()
    Image.fromarray(noise()).save(src / "folder.png" / "inside.png")
    (src / "gone.png").symlink_to(src / "nowhere.png")
    (src / "sub").mkdir()
    Image.fromarray(noise()).save(src / "sub" / "blocked.png")
    dst.mkdir()
    (dst / "sub").write_text("a file where the output needs a folder")
    expected = {
        "zero.png": "empty file",
        "text.jpg": "not an image",
        "cut.jpg": "damaged or truncated",
        "cut.png": "damaged or truncated",
        "huge.png": "larger than the limit of 32 pixels",
        "folder.png": "a directory named like an image",
        "gone.png": "no such file",
        "sub/blocked.png": "cannot write: a file stands where a folder should be",
    }
    rc, err = immunize(capsys, src, dst, "--max-size", "32")
    assert rc == 1
    lines = [line for line in err.splitlines() if line.startswith("leat-jax: error:")]
    for name, reason in expected.items():
        hits = [line for line in lines if name in line]
        assert len(hits) == 1 and reason in hits[0], (name, lines)
    assert set(outputs(dst)) == {"img0.png", "img1.png", "sub"}  # the good ones are done
    records = {}
    for line in (dst / inputs.STATE_DIR / "manifest-0.jsonl").read_text().splitlines():
        records[json.loads(line)["path"]] = json.loads(line)
    assert {p for p, r in records.items() if r["status"] == "failed"} == set(expected)
    assert all(expected[p] in r["error"] for p, r in records.items() if r["status"] == "failed")
    rep = report(dst)
    assert rep["totals"]["failed"] == len(expected) and rep["totals"]["done"] == 2

    # fixed input: the rerun does just that one
    (src / "zero.png").write_bytes(good)
    rc, _ = immunize(capsys, src, dst, "--max-size", "32")
    assert rc == 1 and report(dst)["run"]["protected"] == 1 and "zero.png" in outputs(dst)


def test_unusable_dst_src_and_victims_stop_before_any_work(tmp_path, capsys):
    src = simple_set(tmp_path / "src", 1)
    (tmp_path / "file").write_text("x")
    empty, empty_list = tmp_path / "empty", tmp_path / "list.txt"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("not an image")
    empty_list.write_text("# nothing listed\n\n")
    cases = [
        ((src, tmp_path / "file"), [], "the output folder is a file"),
        ((src, tmp_path / "file" / "dst"), [], "cannot write to the output folder"),
        ((tmp_path / "missing", tmp_path / "d"), [], "no such file or folder"),
        ((empty, tmp_path / "d"), [], f"{empty}: no images in this folder or below"),
        ((empty_list, tmp_path / "d"), [], f"{empty_list}: the list names no images"),
        (("s3://bucket/faces", tmp_path / "d"), [],
         "s3://bucket/faces: SRC is a URL; object storage needs --engine ray"),
        ((src, "s3://bucket/out"), [], "s3://bucket/out: DST is a URL; "),
        ((src, src), [], "the same folder"),
        ((src, tmp_path / "d"), ["--victims", "nobody", "--stand-in-weights"], "unknown victim 'nobody'"),
        ((src, tmp_path / "d"), ["--victims", "toy_a"], "has no checkpoint"),
        ((src, tmp_path / "d"), ["--victims", f"toy_a={tmp_path / 'nockpt'}"], "not a converted checkpoint"),
    ]
    for (s, d), attack, reason in cases:
        rc, err = immunize(capsys, s, d, attack=attack or ATTACK)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and reason in lines[0], (reason, err)


def test_checkpoints_load_and_bad_ones_are_refused(tmp_path, capsys):
    from leat_jax import checkpoints
    from tests.pipeline_toys import victims

    src = simple_set(tmp_path / "src", 2)
    toy_a = victims()["toy_a"]
    good = tmp_path / "ckpt_a"
    checkpoints.save_params(good, toy_a.init_params(0), {"model": "toy_a", "source_sha256": "0" * 64})
    rc, err = immunize(capsys, src, tmp_path / "ckpt_run",
                       attack=["--victims", f"toy_a={good},toy_b", "--stand-in-weights", *ATTACK[3:]])
    assert rc == 0, err
    assert immunize(capsys, src, tmp_path / "stand_in_run")[0] == 0
    # the same weights from a checkpoint give the same files
    assert outputs(tmp_path / "ckpt_run") == outputs(tmp_path / "stand_in_run")

    wrong = tmp_path / "ckpt_wrong"
    shutil.copytree(good, wrong)
    (wrong / "meta.json").write_text(json.dumps({"model": "toy_b"}))
    corrupt = tmp_path / "ckpt_corrupt"
    shutil.copytree(good, corrupt)
    shutil.rmtree(corrupt / "params")
    (corrupt / "params").write_text("garbage")
    for ckpt, reason in ((wrong, "not 'toy_a'"), (corrupt, "cannot read the parameters, the checkpoint is damaged")):
        rc, err = immunize(capsys, src, tmp_path / "bad",
                           attack=["--victims", f"toy_a={ckpt},toy_b", "--stand-in-weights", *ATTACK[3:]])
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and reason in lines[0] and str(ckpt) in lines[0], err
    assert not (tmp_path / "bad" / "img0.png").exists()
