"""Evaluation machinery: metrics on constructed cases, the image-space baseline,
LEAT against noise on a small pipeline, and `leat-jax evaluate` end to end on
the toy pipelines of ``tests.evaluate_toys``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from leat_jax import cli
from leat_jax.attack import AttackConfig, pgd
from leat_jax.attack.image_space import make_image_attack
from leat_jax.pipeline import inputs, metrics, start_file
from tests import evaluate_toys as toys
from tests.golden_harness import REPO

RNG = np.random.default_rng(3)


# ---------------------------------------------------------------- metrics


def test_mse_and_dsr_on_constructed_tables():
    clean = np.zeros((2, 4, 4, 3))
    adv = clean.copy()
    adv[0] += 0.5  # mse 0.25
    adv[1, :2] += 0.2  # half the pixels: 0.04 / 2 = 0.02
    np.testing.assert_allclose(metrics.mse(adv, clean), [0.25, 0.02])
    assert list(metrics.disrupted([0.25, 0.02, 0.05, np.nan])) == [True, False, False, False]
    # two pipelines, 3 images x 2 attributes
    a = np.array([[0.1, 0.2], [0.1, 0.01], [0.0, 0.0]])  # 3 of 6 pairs; image 0 on every attribute
    b = np.array([[0.1, 0.1], [0.1, 0.1], [0.1, 0.0]])  # 5 of 6 pairs; images 0, 1
    sa, sb = metrics.disrupted(a), metrics.disrupted(b)
    assert metrics.dsr(sa) == pytest.approx(0.5) and metrics.dsr(sb) == pytest.approx(5 / 6)
    assert metrics.image_dsr(sa) == pytest.approx(1 / 3) and metrics.image_dsr(sb) == pytest.approx(2 / 3)
    assert metrics.avg_dsr({"a": sa, "b": sb}) == pytest.approx((0.5 + 5 / 6) / 2)
    assert metrics.e_dsr({"a": sa, "b": sb}) == pytest.approx(1 / 3)  # only image 0 on both, every attribute
    agg = metrics.aggregate({"a": (a, a), "b": (b, np.full_like(b, np.nan))})
    assert agg["e_dsr"] == pytest.approx(1 / 3) and agg["e_masked_dsr"] == 0.0
    assert agg["avg_masked_dsr"] == pytest.approx(0.25)


def test_masked_mse_follows_cmua():
    x = np.zeros((4, 4, 3))
    clean = x.copy()
    clean[:2, :, 0] = 0.6  # rows 0-1 changed by the edit (0.6 > 0.5 summed over channels)
    clean[2, :, :] = 0.1  # row 2: 0.3 summed, under the threshold
    mask = metrics.cmua_mask(clean, x)
    assert mask.sum() == 8 and mask[:2].all()
    adv = clean.copy()
    adv[0, :, :] += 1.0  # 4 pixels x 3 channels inside the mask
    adv[3, :, :] += 1.0  # outside: ignored
    assert metrics.masked_mse(adv, clean, mask) == pytest.approx(12 / (8 * 3))
    assert np.isnan(metrics.masked_mse(adv, clean, np.zeros((4, 4), bool)))


def test_psnr_of_a_known_perturbation():
    x = RNG.uniform(-0.5, 0.5, (8, 8, 3))
    # +-0.1 in [-1, 1] is +-0.05 on [0, 1]: mse 0.0025, psnr 10 log10(400)
    adv = x + 0.1 * np.where(RNG.random(x.shape) < 0.5, -1, 1)
    assert metrics.psnr(adv, x) == pytest.approx(10 * np.log10(400))
    assert metrics.psnr(x, x) == np.inf


def _ssim_direct(a, b):
    """SSIM by its definition, window by window (float64, [-1, 1] inputs)."""
    a, b = (a + 1) / 2, (b + 1) / 2
    g = metrics.gaussian_window(11, 1.5)
    w = np.outer(g, g)
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(a.shape[-1]):
        for i in range(a.shape[0] - 10):
            for j in range(a.shape[1] - 10):
                pa, pb = a[i:i + 11, j:j + 11, c], b[i:i + 11, j:j + 11, c]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_ssim_identical_and_against_direct_computation():
    a = RNG.uniform(-1, 1, (14, 13, 3))
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a + RNG.normal(0, 0.3, a.shape), -1, 1)
    s = metrics.ssim(b, a)
    assert s == pytest.approx(_ssim_direct(b, a), rel=1e-9)
    assert s < 0.9
    assert metrics.gaussian_window().sum() == pytest.approx(1.0)


# ---------------------------------------------------------------- attacks on a small pipeline


def _setup():
    params = toys.load(None, 0)
    images = jnp.asarray(RNG.uniform(-0.9, 0.9, (3, toys.SIZE, toys.SIZE, 3)), jnp.float32)
    attr = jnp.asarray(0.3 * RNG.standard_normal(16), jnp.float32)
    return params, images, attr


def _pipe_mse(params, adv, clean, attr):
    return metrics.mse(np.asarray(toys.DEEPFAKE.apply(params, adv, attr)),
                       np.asarray(toys.DEEPFAKE.apply(params, clean, attr)))


def test_leat_beats_noise_of_the_same_eps_on_the_pipeline_output():
    params, x, attr = _setup()
    cfg = AttackConfig(eps=0.05, step=0.01, iterations=10)
    res = pgd.run([toys.encoder()], cfg, (params["encoder"],), x, jnp.arange(3, dtype=jnp.uint32), 0)
    noise = x + jax.random.uniform(jax.random.key(1), x.shape, jnp.float32, -0.05, 0.05)
    leat, rand = _pipe_mse(params, res.protected, x, attr), _pipe_mse(params, noise, x, attr)
    assert np.all(leat > 3 * rand), (leat, rand)


def test_image_space_baseline_bound_and_ascent():
    params, x, attr = _setup()
    x = x.at[0, 0, 0].set(1.0)  # a saturated pixel: the box must hold it
    cfg = AttackConfig(eps=0.05, step=0.01, iterations=10)
    fn = lambda p, im: toys.DEEPFAKE.apply(p["net"], im, p["attribute"])  # noqa: E731
    attack = jax.jit(make_image_attack([fn], cfg))
    res = attack(({"net": params, "attribute": attr},), x, jnp.arange(3, dtype=jnp.uint32), 0)
    eta = np.asarray(res.protected - x)
    assert np.abs(eta).max() <= 0.05 + 1e-6
    assert np.asarray(res.protected).max() <= 1.0 and np.asarray(res.protected).min() >= -1.0
    assert np.all(np.asarray(res.loss_end) > 2 * np.asarray(res.loss_start))
    noise = x + jax.random.uniform(jax.random.key(1), x.shape, jnp.float32, -0.05, 0.05)
    assert np.all(_pipe_mse(params, res.protected, x, attr) > 3 * _pipe_mse(params, noise, x, attr))
    # per image: a batch gives what each image gives alone
    one = attack(({"net": params, "attribute": attr},), x[1:2], jnp.arange(1, 2, dtype=jnp.uint32), 0)
    np.testing.assert_allclose(np.asarray(one.protected[0]), np.asarray(res.protected[1]), atol=1e-6)


def _toy_workers(tmp_path, *host_devices):
    """``tests.evaluate_toys`` children, one per device count, run side by side: their results."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    outs = [tmp_path / f"{n}.npz" for n in host_devices]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.evaluate_toys", str(o), "--host-devices", str(n)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for o, n in zip(outs, host_devices)]
    for proc in procs:
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, log[-3000:]
    return [dict(np.load(o)) for o in outs]


def test_image_space_baseline_two_devices_match_one(tmp_path):
    """Sharded over 2 forced CPU devices (3 images: one padded slot) = 1 device = the plain vmapped attack."""
    one, two = _toy_workers(tmp_path, 1, 2)
    assert int(one["n_devices"]) == 1 and int(two["n_devices"]) == 2
    assert two["protected"].shape == one["protected"].shape == (3, toys.SIZE, toys.SIZE, 3)
    np.testing.assert_allclose(two["protected"], one["protected"], atol=1e-6)
    np.testing.assert_allclose(two["loss_end"], one["loss_end"], rtol=1e-5)
    assert np.all(one["loss_end"] > one["loss_start"])
    params = toys.load(None, 0)
    known, _ = toys.attributes({"known": 2, "unknown": 0}, None, params, [], 0)
    fn = lambda p, im: toys.DEEPFAKE.apply(p["net"], im, p["attribute"])  # noqa: E731
    plain = jax.jit(make_image_attack([fn, fn], AttackConfig(iterations=4)))(
        tuple({"net": params, "attribute": a.value} for a in known), one["x"],
        jnp.arange(10, 13, dtype=jnp.uint32), 7)
    np.testing.assert_allclose(np.asarray(plain.protected), one["protected"], atol=1e-6)


def test_image_space_baseline_in_bfloat16():
    """compute_dtype reaches the pipelines (as in LEAT): bf16 weights and inputs, float32 loss and eta."""
    params, x, attr = _setup()
    fn = lambda p, im: toys.DEEPFAKE.apply(p["net"], im, p["attribute"])  # noqa: E731
    seen = []

    def spy(p, im):  # what the pipeline receives: image, weights and attribute dtypes
        seen.append((im.dtype, p["net"]["decoder"].dtype, p["attribute"].dtype))
        return fn(p, im)

    ids = jnp.arange(3, dtype=jnp.uint32)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        seen.clear()
        cfg = AttackConfig(eps=0.05, step=0.01, iterations=6, compute_dtype=dtype)
        runs[dtype] = jax.jit(make_image_attack([spy], cfg))(({"net": params, "attribute": attr},), x, ids, 0)
        assert seen and all(d == (jnp.dtype(dtype),) * 3 for d in seen), seen
    bf = runs["bfloat16"]
    assert bf.protected.dtype == jnp.float32 and bf.loss_end.dtype == jnp.float32
    assert np.abs(np.asarray(bf.protected - x)).max() <= 0.05 + 1e-6
    assert np.all(np.asarray(bf.loss_end) > 2 * np.asarray(bf.loss_start))
    # the same attack, at bf16 precision: close to float32's loss, not bit-identical
    np.testing.assert_allclose(np.asarray(bf.loss_end), np.asarray(runs["float32"].loss_end), rtol=0.3)
    assert not np.array_equal(np.asarray(bf.protected), np.asarray(runs["float32"].protected))


# ---------------------------------------------------------------- the command


@pytest.fixture()
def env(monkeypatch):
    for k, v in toys.ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture()
def protected(tmp_path, env, capsys):
    clean = tmp_path / "clean"
    (clean / "sub").mkdir(parents=True)
    for i, rel in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        Image.fromarray(RNG.integers(0, 256, (toys.SIZE, toys.SIZE, 3)).astype(np.uint8)).save(clean / rel)
    prot = tmp_path / "prot"
    rc = cli.main(["immunize", str(clean), str(prot), "--victims", "toy_enc", "--stand-in-weights",
                   "--iterations", "5", "--quiet"])
    assert rc == 0
    capsys.readouterr()
    return clean, prot


def evaluate(capsys, *args):
    rc = cli.main(["evaluate", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_evaluate_end_to_end_with_baseline(protected, tmp_path, capsys):
    clean, prot = protected
    out = tmp_path / "out"
    cfg = tmp_path / "eval.toml"
    cfg.write_text('threshold = 0.001\n[attack]\niterations = 4\n[toy_pipe]\nknown = 1\nunknown = 2\n')
    rc, err = evaluate(capsys, clean, prot, out, "--pipelines", "toy_pipe", "--stand-in-weights", "--baseline",
                       "--config", cfg, "--quiet")
    assert rc == 0 and "mean NOTHING about real protection" in err
    data = json.loads((out / "leat-jax-evaluation.json").read_text())
    assert data["images"] == 3 and data["warning"]
    assert data["attributes"]["toy_pipe"] == {"known": ["v0"], "unknown": ["v1", "v2"]}
    assert data["baseline"]["attributes"] == [["toy_pipe", "v0"]]  # known only
    assert data["baseline"]["attack"]["iterations"] == 4 and data["baseline"]["attack"]["eps"] == 0.05
    for attack in ("leat", "image_space"):
        res = data["attacks"][attack]
        assert res["pipelines"]["toy_pipe"]["known"]["pairs"] == 3
        assert res["pipelines"]["toy_pipe"]["unknown"]["pairs"] == 6
        assert res["pipelines"]["toy_pipe"]["unknown"]["dsr"] == 1.0  # threshold 0.001: every pair
        assert res["overall"]["all"]["e_dsr"] == 1.0
        assert 25 < res["imperceptibility"]["psnr"] < 60 and res["imperceptibility"]["linf"] <= 0.05 + 1e-9
        assert res["attack_seconds_per_image"] > 0  # LEAT's from the immunize report, the baseline's measured
        assert res["evaluation_seconds_per_image"] > 0
        assert set(res["per_image"]) == {"a.png", "b.jpg", "sub/c.png"}
    imm = json.loads((prot / "leat-jax-report.json").read_text())["run"]
    leat = data["attacks"]["leat"]
    assert leat["attack_seconds_per_image"] == pytest.approx(imm["seconds"] / imm["protected"])
    assert (out / "baseline" / "sub" / "c.png").is_file()
    md = (out / "leat-jax-evaluation.md").read_text()
    assert "mean NOTHING" in md and "| leat | toy_pipe | unknown | 6 |" in md
    assert "| image_space | toy_pipe | known | 3 |" in md
    assert "| attack, seconds per image | this evaluation, seconds per image |" in md
    assert f"| {leat['attack_seconds_per_image']:.4g} | {leat['evaluation_seconds_per_image']:.4g} |" in md
    fig = Image.open(out / "leat-jax-evaluation.png")
    assert fig.width > 5 * 128 and fig.height > 3 * 128  # 5 columns (stand-in: the difference too), 3 rows


def test_baseline_never_sees_unknown_attributes(protected, tmp_path, capsys):
    """toy_nan's unknown attributes are NaN: used by the baseline, they would make it NaN."""
    clean, prot = protected
    out = tmp_path / "out"
    rc, _ = evaluate(capsys, clean, prot, out, "--pipelines", "toy_nan", "--stand-in-weights", "--baseline",
                     "--quiet", "--figure-rows", "0", "--threshold", "0.001")
    assert rc == 0
    data = json.loads((out / "leat-jax-evaluation.json").read_text())
    base = data["attacks"]["image_space"]
    assert base["pipelines"]["toy_nan"]["known"]["dsr"] == 1.0
    assert base["imperceptibility"]["psnr"] is not None and base["imperceptibility"]["linf"] > 0.03
    assert base["pipelines"]["toy_nan"]["unknown"]["mean_mse"] is None  # NaN outputs: reported as null
    assert not (out / "leat-jax-evaluation.png").exists()
    # toy_pipe has the same known attributes and finite unknown ones: the same baseline images
    out2 = tmp_path / "out2"
    rc, _ = evaluate(capsys, clean, prot, out2, "--pipelines", "toy_pipe", "--stand-in-weights", "--baseline",
                     "--quiet", "--figure-rows", "0")
    assert rc == 0
    for rel in ("a.png", "b.png", "sub/c.png"):
        assert (out / "baseline" / rel).read_bytes() == (out2 / "baseline" / rel).read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--pipelines", "toy_pipe"], "has no folder"),
    ([], "no pipelines"),
    (["--pipelines", "nope", "--stand-in-weights"], "unknown pipeline 'nope'"),
    (["--pipelines", "toy_pipe=/does/not/exist"], "not a folder"),
    (["--pipelines", "toy_pipe", "--stand-in-weights", "--baseline", "--devices", "0"], "devices must be a positive"),
])
def test_evaluate_bad_setup_is_one_line(protected, tmp_path, capsys, args, message):
    clean, prot = protected
    rc, err = evaluate(capsys, clean, prot, tmp_path / "out", *args, "--quiet")
    assert rc == cli.EXIT_SETUP and message in err and len(err.strip().splitlines()) == 1


def test_evaluate_without_protected_versions(protected, tmp_path, capsys, env):
    clean, _ = protected
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = evaluate(capsys, clean, empty, tmp_path / "out", "--pipelines", "toy_pipe", "--stand-in-weights")
    assert rc == cli.EXIT_SETUP and "has a protected version" in err
    rc, err = evaluate(capsys, tmp_path / "missing", empty, tmp_path / "out", "--pipelines", "toy_pipe")
    assert rc == cli.EXIT_SETUP and "not a folder" in err


@pytest.mark.parametrize("section, message", [
    ({"inversion_steps": 1}, "inversion_steps must be a DDIM step count"),
    ({"render_steps": 600}, "render_steps must be a DDIM step count"),  # no integer stride gives 600
    ({"render_steps": "2"}, "render_steps must be a DDIM step count"),
    ({"known": 2}, "known must list"),
    ({"unknown": ["Smiling:x"]}, "'Smiling:x'"),
])
def test_diffae_settings_are_checked(section, message):
    from leat_jax.deepfakes import diffae
    from leat_jax.errors import SetupError

    with pytest.raises(SetupError, match=message):
        diffae.configure(section)
        diffae.attributes(section, None, None, [], 0)


def test_baseline_refuses_without_the_settings_it_must_match(protected, tmp_path, capsys):
    clean, prot = protected
    (prot / "leat-jax-report.json").unlink()
    args = [clean, prot, tmp_path / "out", "--pipelines", "toy_pipe", "--stand-in-weights", "--baseline", "--quiet"]
    rc, err = evaluate(capsys, *args)
    assert rc == cli.EXIT_SETUP and len(err.strip().splitlines()) == 1
    assert "no readable immunize report" in err and "attack settings" in err and "seed" in err
    assert not (tmp_path / "out").exists()
    cfg = tmp_path / "eval.toml"
    cfg.write_text("[attack]\niterations = 1\n")
    rc, err = evaluate(capsys, *args, "--config", cfg)  # the attack given, the seed still missing
    assert rc == cli.EXIT_SETUP and "the seed (--seed)" in err and "attack settings" not in err
    rc, _ = evaluate(capsys, *args, "--config", cfg, "--seed", "0", "--figure-rows", "0")  # both given: it runs
    assert rc == 0 and (tmp_path / "out" / "baseline" / "a.png").is_file()


def test_baseline_reads_a_learned_start_again_from_the_file_the_immunize_report_names(tmp_path, env, capsys):
    """immunize --start u.npy; evaluate --baseline reloads u.npy while its digest matches, else a one-line error."""
    clean = tmp_path / "clean"
    clean.mkdir()
    for i in range(2):
        Image.fromarray(RNG.integers(0, 256, (toys.SIZE, toys.SIZE, 3)).astype(np.uint8)).save(clean / f"{i}.png")
    job = tmp_path / "job"  # the start beside the immunize output, in one folder that moves below
    job.mkdir()
    u = job / "u.npy"
    np.save(u, np.random.default_rng(4).uniform(-0.05, 0.05, (8, 8, 3)).astype(np.float32))
    start = start_file.load_start(u)
    prot = job / "prot"
    assert cli.main(["immunize", str(clean), str(prot), "--victims", "toy_enc", "--stand-in-weights",
                     "--iterations", "2", "--start", str(u), "--quiet"]) == 0
    report = json.loads((prot / inputs.REPORT).read_text())
    assert report["settings"]["start_file"] == {"path": str(u.resolve()), "relative": "../u.npy",
                                                "digest": start.digest, "jitter": 0.25}
    args = [clean, prot, "--pipelines", "toy_pipe", "--stand-in-weights", "--baseline", "--quiet", "--figure-rows", "0"]

    def baseline(out, *more, protected=prot):
        rc, err = evaluate(capsys, args[0], protected, tmp_path / out, *args[2:], *more)
        assert rc == 0, err
        data = json.loads((tmp_path / out / "leat-jax-evaluation.json").read_text())["baseline"]
        return data, {p.name: p.read_bytes() for p in (tmp_path / out / "baseline").iterdir()}

    data, images = baseline("out")
    assert data["attack"]["start"] == f"learned:{start.digest}" and data["attack"]["iterations"] == 2
    assert data["start_file"] == {**report["settings"]["start_file"], "relative": "../job/u.npy"}
    # the whole folder moved: the start is found beside the report, digest checked, the same images
    moved = tmp_path / "moved"
    job.rename(moved)
    data, again = baseline("after_move", protected=moved / "prot")
    assert again == images and data["start_file"]["path"] == str((moved / "u.npy").resolve())
    (moved / "u.npy").rename(tmp_path / "aside.npy")  # at neither place: both named
    rc, err = evaluate(capsys, args[0], moved / "prot", tmp_path / "neither", *args[2:])
    assert rc == cli.EXIT_SETUP and len(err.strip().splitlines()) == 1, err
    assert str((moved / "u.npy").resolve()) in err and str(u.resolve()) in err and "cannot read the start" in err
    (tmp_path / "aside.npy").rename(moved / "u.npy")
    moved.rename(job)
    # a report from before relative paths were kept reads the resolved path
    del report["settings"]["start_file"]["relative"]
    (prot / inputs.REPORT).write_text(json.dumps(report))
    assert baseline("no_relative")[1] == images
    moved = tmp_path / "elsewhere.npy"
    u.rename(moved)  # given explicitly from its new place: the same baseline images, byte for byte
    assert baseline("given", "--start", moved)[1] == images
    assert baseline("random", "--start", "random")[1] != images  # the start matters
    for broken, message in (("gone", "cannot read the start"), ("changed", "not the " + start.digest)):
        if broken == "changed":
            np.save(u, np.load(moved) * 0.5)
        rc, err = evaluate(capsys, *args[:2], tmp_path / broken, *args[2:])
        assert rc == cli.EXIT_SETUP and len(err.strip().splitlines()) == 1, err
        assert str(u.resolve()) in err and message in err and "give the attack settings explicitly" in err
        assert not (tmp_path / broken).exists()
    # a report from before start files were recorded: the existing error, asking for the settings
    del report["settings"]["start_file"]
    (prot / inputs.REPORT).write_text(json.dumps(report))
    rc, err = evaluate(capsys, *args[:2], tmp_path / "old", *args[2:])
    assert rc == cli.EXIT_SETUP and "names no file" in err and len(err.strip().splitlines()) == 1
    assert evaluate(capsys, *args[:2], tmp_path / "plain", *args[2:5], "--quiet")[0] == 0  # no baseline: no start


def test_outputs_are_clamped_to_the_image_range_before_any_metric(protected, tmp_path, capsys):
    """toy_bright is toy_pipe's output plus 4: saved, every pixel is white, whatever the input."""
    clean, prot = protected
    out = tmp_path / "out"
    rc, _ = evaluate(capsys, clean, prot, out, "--pipelines", "toy_pipe,toy_bright", "--stand-in-weights", "--quiet",
                     "--figure-rows", "0", "--threshold", "0.001")
    assert rc == 0
    per_image = json.loads((out / "leat-jax-evaluation.json").read_text())["attacks"]["leat"]["per_image"]
    for rel, row in per_image.items():
        assert all(v > 0 for v in row["toy_pipe"]["mse"])  # the same outputs, unshifted, do change
        assert row["toy_bright"]["mse"] == [0.0] * len(row["toy_pipe"]["mse"])


def test_image_space_baseline_follows_the_update_rule():
    params, x, attr = _setup()
    fn = lambda p, im: toys.DEEPFAKE.apply(p["net"], im, p["attribute"])  # noqa: E731
    args = (({"net": params, "attribute": attr},), x, jnp.arange(3, dtype=jnp.uint32), 0)
    adam = jax.jit(make_image_attack([fn], AttackConfig(iterations=4, update="adam")))(*args)
    sign = jax.jit(make_image_attack([fn], AttackConfig(iterations=4)))(*args)
    assert np.all(np.asarray(adam.loss_end) > 2 * np.asarray(adam.loss_start))
    assert np.abs(np.asarray(adam.protected - x)).max() <= 0.05 + 1e-6
    assert not np.array_equal(np.asarray(adam.protected), np.asarray(sign.protected))
