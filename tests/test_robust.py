"""Robust mode (EOT in the attack), real countermeasures and `leat-jax robustness`, on toy victims."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from leat_jax import cli, transforms
from leat_jax.attack import AttackConfig, clean_latents, ensemble_direction, image_key, latent_mse, run
from leat_jax.attack.pgd import eot_key, transformed_views
from leat_jax.errors import SetupError
from leat_jax.pipeline import countermeasures, robustness
from leat_jax.transforms import jpeg
from tests.golden_harness import REPO
from tests.pipeline_toys import ENV
from tests.pipeline_toys import victims as toy_victims

PLAIN = AttackConfig(iterations=10, step=0.01)
# JPEG through the attack: what the retention test needs, and the costliest transform to compile.
ROBUST = dataclasses.replace(PLAIN, transforms="jpeg:quality=60-90,round8")


@pytest.fixture(scope="module")
def toys():
    vs = toy_victims()
    v = (vs["toy_a"], vs["toy_b"])
    return v, tuple(x.init_params(i) for i, x in enumerate(v))


def _images(n, size=32, seed=3):
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def attacked(toys):
    """Two images attacked plainly and through JPEG (one compilation each, shared by the tests below)."""
    vs, ps = toys
    x, ids = _images(2, 32, seed=5), jnp.asarray([1, 2], jnp.uint32)
    return x, ids, {c: run(vs, c, ps, x, ids, 0) for c in (PLAIN, ROBUST)}


def test_plain_settings_hash_is_unchanged_and_transforms_enter_it():
    plain = AttackConfig()
    new_fields = ("record_history", "transforms", "eot_samples", "eot_untransformed",
                  "update", "momentum", "step_schedule", "losses", "victim_weights", "start")
    old = {k: v for k, v in dataclasses.asdict(plain).items() if k not in new_fields}
    assert plain.digest() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert AttackConfig(eot_samples=3, eot_untransformed=True).digest() == plain.digest()  # nothing without transforms
    with_x = AttackConfig(transforms="robust", eot_untransformed=True)
    assert with_x.digest() != AttackConfig(transforms="robust").digest()
    robust = AttackConfig(transforms="robust")
    assert robust.transforms == tuple(transforms.ROBUST_DEFAULT)
    assert len({plain.digest(), robust.digest(), AttackConfig(transforms="robust", eot_samples=2).digest(),
                AttackConfig(transforms="jpeg:quality=75").digest()}) == 4
    assert AttackConfig(transforms="resize:factor=0.5-1.0,round8") == AttackConfig(transforms="resize,round8")
    assert AttackConfig(**robust.to_dict()) == robust and hash(robust) == hash(AttackConfig(**robust.to_dict()))
    assert AttackConfig(transforms="none").transforms == ()


def test_a_jpeg_chain_does_not_match_manifests_of_the_cubic_surrogate():
    # digests of manifests written while JPEG's rounding had the cubic surrogate (the default until "square")
    cubic_era = {"robust": "b8cb4a88f2198922", "jpeg:quality=75": "a13060de0a28f837"}
    for text, old in cubic_era.items():
        assert AttackConfig(transforms=text).digest() != old, text
    assert AttackConfig(transforms="resize,round8").digest() == "701569b4a718f666"  # no JPEG: its manifests hold


def test_settings_hashes_of_earlier_outputs_hold_and_the_jpeg_surrogate_enters_them():
    # measured on main before the JPEG surrogate became a transform parameter (commit ba3bd1b), so that outputs
    # made earlier keep their hashes: plain LEAT and --robust (the default surrogate)
    assert AttackConfig().digest() == "d2d436f2d765c000"
    assert AttackConfig(transforms="robust").digest() == "fe5dbf0aa3cb8ed9"
    assert AttackConfig(transforms=f"jpeg:quality=50-95,gradient={jpeg.GRADIENT},round8").digest() == "fe5dbf0aa3cb8ed9"
    assert AttackConfig(transforms="resize,jpeg:quality=50-95,jitter,round8").digest() == "ac6567d6e4ca55de"
    robust = AttackConfig(transforms="robust").digest()
    others = {g: AttackConfig(transforms=f"jpeg:gradient={g},round8").digest() for g in jpeg.GRADIENTS}
    assert others[jpeg.GRADIENT] == robust and len(set(others.values())) == 3
    # two JPEGs: which one has which surrogate counts
    pairs = [AttackConfig(transforms=f"jpeg:gradient={a},jpeg:gradient={b}") for a, b in
             (("cubic", "square"), ("square", "cubic"), ("cubic", "cubic"), ("square", "square"))]
    assert len({c.digest() for c in pairs}) == 4
    assert [c.transforms[0].word("gradient") for c in pairs[:2]] == ["cubic", "square"]
    assert AttackConfig(**pairs[0].to_dict()) == pairs[0] and AttackConfig(**pairs[0].to_dict()).digest() == \
        pairs[0].digest()


def test_transform_draws_depend_only_on_seed_image_and_iteration():
    cfg = AttackConfig(transforms="noise:std=2-4,jitter", eot_samples=2)
    x = jnp.asarray(_images(1)[0])
    draw = jax.jit(lambda s, i, t: jnp.stack(transformed_views(cfg, x, eot_key(image_key(s, i), t))))
    ref = np.asarray(draw(0, 5, 3))
    np.testing.assert_array_equal(np.asarray(draw(0, 5, 3)), ref)
    assert not np.allclose(ref[0], ref[1])  # the two draws of one iteration differ
    with_x = transformed_views(dataclasses.replace(cfg, eot_untransformed=True), x, eot_key(image_key(0, 5), 3))
    assert len(with_x) == 3 and with_x[0] is x
    np.testing.assert_allclose(np.asarray(jnp.stack(with_x[1:])), ref, atol=1e-4)  # eager against jitted
    for other in ((1, 5, 3), (0, 6, 3), (0, 5, 4)):
        assert np.abs(np.asarray(draw(*other)) - ref).max() > 1e-3, other


def test_batch_equals_images_alone_with_transforms(toys, attacked):
    vs, ps = toys
    x, ids, results = attacked
    batch = results[ROBUST]
    for i in range(len(x)):
        one = run(vs, ROBUST, ps, x[i:i + 1], ids[i:i + 1], 0)
        np.testing.assert_array_equal(np.asarray(one.protected[0]), np.asarray(batch.protected[i]))
        np.testing.assert_array_equal(np.asarray(one.dist_end[0]), np.asarray(batch.dist_end[i]))
    assert np.abs(np.asarray(batch.protected) - x).max() <= ROBUST.eps + 1e-6
    assert np.abs(np.asarray(results[PLAIN].protected) - np.asarray(batch.protected)).max() > 1e-3


_DEVICES_CHILD = """
import sys, chex
chex.set_n_cpu_devices(4)
from leat_jax import cli
src, out = sys.argv[1], sys.argv[2]
args = ["--victims", "toy_a", "--stand-in-weights", "--iterations", "1", "--robust", "--quiet"]
four = cli.main(["immunize", src, out + "/four", *args])
print(four, cli.main(["immunize", src, out + "/one", "--devices", "1", *args]))
"""


def test_four_devices_write_the_files_of_one_with_robust(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, img in enumerate(_images(5, 16, seed=9)):
        Image.fromarray(np.round((img + 1) * 127.5).astype(np.uint8)).save(src / f"f{i}.png")
    env = {**os.environ, **ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _DEVICES_CHILD, str(src), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.stdout.split() == ["0", "0"], proc.stderr[-3000:]
    for i in range(5):
        four, one = ((tmp_path / d / f"f{i}.png").read_bytes() for d in ("four", "one"))
        assert four == one
        assert four != (src / f"f{i}.png").read_bytes()


def _retention_after_jpeg(vs, ps, x, protected):
    """Per victim, mean over images of d(E(jpeg75(x_adv)), E(x)) / d(E(x_adv), E(x)), on 8-bit images."""
    f = robustness.distance_function(vs)
    ratios = []
    for clean, adv in zip(x, np.asarray(protected)):
        c8, a8 = (np.round((a + 1) * 127.5).clip(0, 255).astype(np.uint8) for a in (clean, adv))
        d = f(ps, c8, [a8, countermeasures.apply("jpeg75", a8)])
        ratios.append(d[1] / d[0])
    return np.mean(ratios, axis=0)


def test_robust_mode_keeps_more_distortion_after_real_jpeg(toys, attacked):
    vs, ps = toys
    x, _, results = attacked
    r_plain, r_robust = (_retention_after_jpeg(vs, ps, x, results[c].protected) for c in (PLAIN, ROBUST))
    assert np.all(r_robust > r_plain), (r_plain, r_robust)


@pytest.mark.parametrize("spec, message", [
    ("jpeg:quality=0-200", "quality"),
    ("sharpen", "unknown transform 'sharpen'"),
    ("resize:factor=1.5", "factor"),
    ("jpeg:quality=75,gradient=cubix", "jpeg: bad parameter 'gradient=cubix' (gradient must be one of square, cubic"),
])
def test_bad_transform_specs_are_one_line_exit_2(tmp_path, capsys, spec, message):
    (tmp_path / "src").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "src" / "a.png")
    rc = cli.main(["immunize", str(tmp_path / "src"), str(tmp_path / "out"), "--stand-in-weights",
                   "--transforms", spec])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("leat-jax: error: attack settings:") and message in lines[0], lines
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["immunize", "a", "b", "--robust", "--eot-samples", "0"])
    assert e.value.code == 2


def test_bad_countermeasures_and_toml_transforms_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    toml = tmp_path / "s.toml"
    toml.write_text('[attack]\ntransforms = "jpeg:quality=50-101"\n')
    cases = [
        (["robustness", str(tmp_path / "c"), str(tmp_path / "c"), "--countermeasures", "jpeg42"], "jpeg42"),
        (["evaluate", str(tmp_path / "c"), str(tmp_path / "c"), str(tmp_path / "o"), "--countermeasure", "half+x"],
         "'x'"),
        (["immunize", str(tmp_path / "c"), str(tmp_path / "o"), "--config", str(toml)], "quality"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("leat-jax: error: ") and message in lines[0], lines
    with pytest.raises(SetupError):
        countermeasures.check("webp80+jpeg")


def test_countermeasures_change_images_as_pillow_does():
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    for name in countermeasures.DEFAULT:
        out = countermeasures.apply(name, rgb)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - rgb).mean() > 1.0, name
    np.testing.assert_array_equal(countermeasures.apply("half+jpeg75", rgb),
                                  countermeasures.apply("jpeg75", countermeasures.apply("half", rgb)))


def test_robustness_command_end_to_end(tmp_path, capsys, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    clean, prot = tmp_path / "clean", tmp_path / "prot"
    clean.mkdir(), prot.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        c = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
        Image.fromarray(c).save(clean / f"p{i}.png")
        Image.fromarray(np.clip(c + rng.integers(-6, 7, c.shape), 0, 255).astype(np.uint8)).save(prot / f"p{i}.png")
    (clean / "lonely.png").write_bytes((clean / "p0.png").read_bytes())
    rc = cli.main(["robustness", str(clean), str(prot), "--victims", "toy_a,toy_b", "--stand-in-weights",
                   "--countermeasures", "jpeg95,jpeg75,jpeg50,half+jpeg75", "--quiet"])
    assert rc == 0
    data = json.loads((prot / robustness.REPORT_JSON).read_text())
    assert data["images"] == 2 and data["skipped"][0]["path"] == "lonely.png" and data["warning"]
    for k, name in enumerate(("toy_a", "toy_b")):
        row = data["summary"][name]
        assert row["distance"] == pytest.approx(np.mean([r["protected"][k] for r in data["per_image"].values()]))
        for cm in data["countermeasures"]:
            s = row["countermeasures"][cm]
            expect = np.mean([r["countermeasures"][cm]["protected"][k] / r["protected"][k]
                              for r in data["per_image"].values()])
            assert s["retention"] == pytest.approx(expect) and s["retention"] > 0 and s["floor"] > 0
    md = (prot / robustness.REPORT_MD).read_text()
    assert "| half+jpeg75 |" in md and "toy_b" in md
    assert Image.open(prot / robustness.FIGURE).size == (640, 420)


def test_evaluate_reads_protected_images_through_the_countermeasure(tmp_path, capsys, monkeypatch):
    from tests import evaluate_toys

    for k, v in evaluate_toys.ENV.items():
        monkeypatch.setenv(k, v)
    clean, prot = tmp_path / "clean", tmp_path / "prot"
    clean.mkdir(), prot.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        c = rng.integers(0, 256, (evaluate_toys.SIZE, evaluate_toys.SIZE, 3)).astype(np.uint8)
        Image.fromarray(c).save(clean / f"e{i}.png")
        Image.fromarray(np.clip(c + rng.integers(-6, 7, c.shape), 0, 255).astype(np.uint8)).save(prot / f"e{i}.png")
    psnr = {}
    for cm in (None, "blur"):
        out = tmp_path / f"out-{cm}"
        extra = ["--countermeasure", cm] if cm else []
        rc = cli.main(["evaluate", str(clean), str(prot), str(out), "--pipelines", "toy_pipe", "--stand-in-weights",
                       "--figure-rows", "0", "--quiet", *extra])
        assert rc == 0, capsys.readouterr().err
        psnr[cm] = json.loads((out / "leat-jax-evaluation.json").read_text())["attacks"]["leat"]["imperceptibility"]
    # blurring noise images moves them much further from the clean ones than +-6 levels did
    assert psnr["blur"]["psnr"] < psnr[None]["psnr"] - 5 and psnr["blur"]["linf"] > psnr[None]["linf"]


def test_shared_transform_pullback_matches_plain_autodiff(toys):
    """The views are transformed once and each victim's gradient pulled back through them in one batch: the sum
    of those gradients equals autodiff of the summed per-victim view losses."""
    vs, ps = toys
    x = jnp.asarray(_images(1, 16, seed=4)[0])
    eta = jnp.full_like(x, 0.01)
    cfg = AttackConfig(ensemble="sum", transforms="resize,jitter", eot_samples=2)
    key = eot_key(image_key(0, 1), 2)
    clean = clean_latents(vs, cfg, ps, x)
    g_shared, l_shared = jax.jit(lambda e: ensemble_direction(vs, cfg, ps, x, e, clean, key))(eta)

    def summed(e):
        views = transformed_views(cfg, x + e, key)
        per_victim = [sum(latent_mse(v.encode(p, view[None]), c) for view in views) / len(views)
                      for v, p, c in zip(vs, ps, clean)]
        return sum(per_victim), jnp.stack(per_victim)

    (_, l_plain), g_plain = jax.jit(jax.value_and_grad(summed, has_aux=True))(eta)
    np.testing.assert_allclose(np.asarray(l_shared), np.asarray(l_plain), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_shared), np.asarray(g_plain), rtol=1e-4, atol=1e-9)
    assert float(jnp.abs(g_shared).max()) > 0
