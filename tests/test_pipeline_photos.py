"""`leat-jax immunize --faces detect` end to end, on small stand-in victims and a fake detector.

The fake detector returns fixed landmarks per photo size; the toy victims of
``tests.pipeline_toys`` get the default (FFHQ) crop rule. Faces are small
and of one size, so the whole module compiles two attack programs (a
one-face region and a two-face region). eps = 0.051 is 6.5 levels of 8
bits, so the bound is checked after rounding, on the written files.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from leat_jax import cli, errors
from leat_jax.pipeline import config as settings
from leat_jax.pipeline import immunize, inputs, job, photos, victimset
from tests.golden_harness import GOLDEN_DIR, REPO
from tests.pipeline_toys import ENV
from tests.pipeline_toys import victims as toy_victims

EPS = 0.051
STEP8 = math.floor(EPS * 127.5)  # 6 levels
ATTACK = ["--victims", "toy_a,toy_b", "--stand-in-weights", "--iterations", "4", "--eps", str(EPS), "--step", "0.02"]
SAMPLES = GOLDEN_DIR.parent / "samples"  # shared/samples beside shared/golden


def face(ex: float, ey: float) -> np.ndarray:
    """Five landmarks of a small upright face whose left eye is at (ex, ey): eyes 10 px apart."""
    return np.array([[ex, ey], [ex + 10, ey], [ex + 5, ey + 6], [ex + 1, ey + 12], [ex + 9, ey + 12]], np.float64)


def faces(*landmarks):
    lms = np.stack(landmarks) if landmarks else np.zeros((0, 5, 2))
    boxes = np.stack([[lm[:, 0].min() - 6, lm[:, 1].min() - 10, lm[:, 0].max() + 6, lm[:, 1].max() + 6]
                      for lm in landmarks]) if landmarks else np.zeros((0, 4))
    return types.SimpleNamespace(boxes=boxes, probs=np.full(len(lms), 0.99), landmarks=lms)


# photo size -> the faces in it
DETECTIONS = {
    (96, 160): faces(face(25, 35), face(115, 40)),  # two faces far apart: two groups
    (96, 144): faces(face(40, 38), face(58, 42)),  # two overlapping faces: one group
    (64, 64): faces(),  # no face
}


class FakeDetector:
    identity = "fake-detector-1"

    def __init__(self):
        self.calls = 0

    def detect(self, image):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.calls += 1
        return DETECTIONS[image.shape[:2]]


@pytest.fixture(autouse=True)
def toy_env(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture()
def fake(monkeypatch):
    det = FakeDetector()
    monkeypatch.setattr(photos, "default_detector", lambda: det)
    return det


def make_photos(folder: Path) -> Path:
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)
    for name, hw in (("two.png", (96, 160)), ("pair.png", (96, 144)), ("empty.png", (64, 64))):
        # smooth texture plus noise: the toy encoders have gradients everywhere
        yy, xx = np.mgrid[: hw[0], : hw[1]]
        base = 128 + 60 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None] * np.array([1.0, 0.6, -0.8])
        img = np.clip(base + rng.normal(0, 20, (*hw, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / name)
    return folder


def immunize_photos(capsys, src, dst, *extra):
    rc = cli.main(["immunize", str(src), str(dst), *ATTACK, "--faces", "detect", "--quiet", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def levels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def records(dst: Path) -> dict:
    from leat_jax.pipeline import manifest

    return manifest.read(dst)


def union_footprint(hw) -> np.ndarray:
    vs = tuple(toy_victims()[n] for n in ("toy_a", "toy_b"))
    plan = photos.plan(vs, DETECTIONS[hw], hw)
    mask = np.zeros(hw, bool)
    for f in plan.faces:
        mask |= f.mask
    return mask, plan


@pytest.fixture(scope="module")
def run_once(tmp_path_factory):
    """One run over the three photos, shared by the tests that only read its results."""
    root = tmp_path_factory.mktemp("photos")
    src, dst = make_photos(root / "src"), root / "dst"
    mp = pytest.MonkeyPatch()
    for k, v in ENV.items():
        mp.setenv(k, v)
    det = FakeDetector()
    mp.setattr(photos, "default_detector", lambda: det)
    try:
        rc = cli.main(["immunize", str(src), str(dst), *ATTACK, "--faces", "detect", "--quiet"])
    finally:
        mp.undo()
    assert rc == 0
    return src, dst, det


def test_plan_groups_overlapping_faces_and_buckets_regions():
    _, plan = union_footprint((96, 160))
    assert len(plan.faces) == 2 and [g.faces for g in plan.groups] == [(0,), (1,)]
    assert all(g.bucket == (64, 64) for g in plan.groups)
    _, plan = union_footprint((96, 144))
    assert [g.faces for g in plan.groups] == [(0, 1)]
    (g,) = plan.groups
    assert g.bucket[0] % photos.BUCKET == 0 and g.bucket[1] % photos.BUCKET == 0
    assert g.bucket[0] >= g.bbox[2] - g.bbox[0] and g.bucket[1] >= g.bbox[3] - g.bbox[1]
    # chained overlaps merge transitively; regions of the result never overlap
    groups = photos.group_faces([(0, 0, 10, 10), (20, 20, 30, 30), (5, 5, 25, 25), (40, 40, 50, 50)])
    assert [g.faces for g in groups] == [(0, 1, 2), (3,)]


def test_bound_and_untouched_pixels_on_the_written_photos(run_once):
    src, dst, det = run_once
    assert det.calls == 3
    for name, hw in (("two.png", (96, 160)), ("pair.png", (96, 144))):
        before, after = levels(src / name), levels(dst / name)
        diff = np.abs(after - before)
        assert diff.max() <= STEP8, f"{name}: bound broken after rounding"
        assert diff.max() * 2 / 255 <= EPS
        mask, _ = union_footprint(hw)
        assert not diff[~mask].any(), f"{name}: a pixel outside every crop's footprint changed"
        assert (diff[mask] > 0).mean() > 0.5  # the faces themselves are perturbed
    rec = records(dst)
    assert rec["two.png"]["linf"] <= EPS and rec["pair.png"]["linf"] <= EPS


def test_every_face_is_protected(run_once):
    _, dst, _ = run_once
    rec = records(dst)
    for name in ("two.png", "pair.png"):
        fs = rec[name]["faces"]
        assert len(fs) == 2 and rec[name]["no_face"] is False
        for f in fs:
            for victim, d in f["distances"].items():
                # the random start is the noise level; the attack takes each face well above it
                assert d["end"] > 3 * d["start"], (name, victim, d)
    # the two faces far apart were attacked as separate regions, the overlapping ones as one
    r = rec["two.png"]["faces"]
    assert r[0]["region"][3] <= r[1]["region"][1]


def test_a_photo_without_a_face_is_written_unchanged_and_reported(run_once):
    src, dst, _ = run_once
    np.testing.assert_array_equal(levels(dst / "empty.png"), levels(src / "empty.png"))
    rec = records(dst)["empty.png"]
    assert rec["status"] == "done" and rec["no_face"] is True and rec["faces"] == []
    report = json.loads((dst / inputs.REPORT).read_text())
    assert report["totals"]["no_face"] == 1
    assert report["settings"]["faces"]["mode"] == "detect"
    assert report["settings"]["faces"]["detector"] == FakeDetector.identity


def test_same_seed_same_bytes_and_rerun_skips(run_once, capsys, fake, tmp_path):
    src, dst, _ = run_once
    again = tmp_path / "again"
    assert immunize_photos(capsys, src, again)[0] == 0
    for name in ("two.png", "pair.png", "empty.png"):
        assert (again / name).read_bytes() == (dst / name).read_bytes()
    calls = fake.calls
    assert immunize_photos(capsys, src, again)[0] == 0
    report = json.loads((again / inputs.REPORT).read_text())
    assert report["run"]["already_done"] == 3 and report["run"]["protected"] == 0
    assert fake.calls == calls  # skipped photos are not even detected again
    # another seed, another perturbation
    other = tmp_path / "other"
    assert immunize_photos(capsys, src, other, "--seed", "5")[0] == 0
    assert (other / "two.png").read_bytes() != (dst / "two.png").read_bytes()


def test_photos_on_four_host_devices_give_the_files_of_one(run_once, tmp_path):
    src, dst, _ = run_once
    env = {**os.environ, **ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, "--xla_force_host_platform_device_count=4"])
    four = tmp_path / "four"
    cmd = [sys.executable, "-m", "tests.pipeline_photo_child", "immunize", str(src), str(four), *ATTACK,
           "--faces", "detect", "--quiet", "--contact-sheet", "0"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("two.png", "pair.png", "empty.png"):
        assert (four / name).read_bytes() == (dst / name).read_bytes()
    run = json.loads((four / inputs.REPORT).read_text())["run"]
    assert run["devices"] == 4 and run["per_process"][0]["photo_devices"] == 4


def test_faces_mode_keys_the_settings(tmp_path):
    loaded = victimset.Loaded((), (), (), ())
    aligned = settings.build("src", "dst", victims=(victimset.VictimSpec("toy_a"),), stand_in_weights=True)
    detect = settings.build("src", "dst", victims=(victimset.VictimSpec("toy_a"),), stand_in_weights=True,
                            faces="detect")
    s_aligned, h_aligned = job.settings(aligned, loaded)
    s_detect, h_detect = job.settings(detect, loaded, photos.settings(FakeDetector()))
    assert h_aligned != h_detect and s_aligned["faces"] == {"mode": "aligned"}
    # another detector or alignment version also redoes the work
    other = types.SimpleNamespace(identity="another")
    assert job.settings(detect, loaded, photos.settings(other))[1] != h_detect
    with pytest.raises(errors.SetupError, match="faces must be one of"):
        settings.build("src", "dst", faces="sideways")
    toml = tmp_path / "run.toml"
    toml.write_text('faces = "detect"\n')
    assert settings.build("s", "d", settings.read_toml(toml)).faces == "detect"


def test_cli_rejects_an_unknown_faces_mode(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["immunize", str(tmp_path), str(tmp_path / "o"), "--faces", "sideways"])
    assert e.value.code == 2
    assert "--faces" in capsys.readouterr().err


def test_a_failing_detector_fails_that_photo_only(capsys, monkeypatch, tmp_path):
    class Broken:
        identity = "broken"

        def detect(self, image):
            if image.shape[:2] == (64, 64):
                raise RuntimeError("boom\nsecond line")
            return DETECTIONS[image.shape[:2]]

    monkeypatch.setattr(photos, "default_detector", lambda: Broken())
    src = make_photos(tmp_path / "src")
    (src / "two.png").unlink()
    (src / "pair.png").unlink()
    rc, err = immunize_photos(capsys, src, tmp_path / "dst")
    assert rc == 1
    assert "empty.png: face detection failed (boom)" in err


def test_real_detector_on_the_astronaut(capsys, tmp_path):
    """The shipped detector (loaded as the command loads it), the sample photo, a toy victim."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SAMPLES / "astronaut.png", src / "astronaut.png")
    dst = tmp_path / "dst"
    cfg = settings.build(
        str(src), str(dst), victims=(victimset.VictimSpec("toy_a"),), stand_in_weights=True, iterations=2,
        eps=EPS, step=0.02, faces="detect", quiet=True, extra_victims=(ENV["LEAT_EXTRA_VICTIMS"],),
    )
    summary = immunize.run(cfg)
    assert summary.protected == 1 and summary.failed == 0 and summary.no_face == 0
    rec = records(dst)["astronaut.png"]
    assert len(rec["faces"]) == 1
    # MTCNN's landmarks of the astronaut (research/mtcnn.md: left eye (205.01, 101.73))
    np.testing.assert_allclose(rec["faces"][0]["landmarks"][0], [205.01, 101.73], atol=0.05)
    detector = json.loads((dst / inputs.SETTINGS).read_text())["faces"]["detector"]
    assert detector.startswith("leat_jax.faces.detect.Detector:params-")
    before, after = levels(src / "astronaut.png")[..., :3], levels(dst / "astronaut.png")[..., :3]
    diff = np.abs(after - before)
    assert 0 < diff.max() <= STEP8
    y0, x0, y1, x1 = rec["faces"][0]["region"]
    outside = np.ones(diff.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert not diff[outside].any()


def _oom():
    return jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 3.2GiB")


class _Unfetchable:
    """A device result whose fetch runs out of memory (as an asynchronous failure surfaces)."""

    def __array__(self, *args, **kwargs):
        raise _oom()


def test_out_of_memory_on_a_photo_retries_it_alone_with_identical_files(run_once, capsys, fake, monkeypatch,
                                                                         tmp_path):
    src, whole, _ = run_once
    real = photos.attack_groups

    def short_of_memory(victims, config, params, x, the_plan, *rest):
        if len(the_plan.groups) == 2:  # two.png: out of memory at dispatch
            raise _oom()
        if len(the_plan.faces) == 2:  # pair.png: out of memory when its result is fetched
            return [(g, (_Unfetchable(),) * 3) for g in the_plan.groups]
        return real(victims, config, params, x, the_plan, *rest)

    monkeypatch.setattr(photos, "attack_groups", short_of_memory)
    dst = tmp_path / "dst"
    rc, err = immunize_photos(capsys, src, dst)
    assert rc == 0, err
    for name in ("two.png", "pair.png", "empty.png"):
        assert (dst / name).read_bytes() == (whole / name).read_bytes()
    run = json.loads((dst / inputs.REPORT).read_text())["run"]["per_process"][0]
    retried = sorted((r["photo"], r["groups"], r["result"]) for r in run["out_of_memory"])
    assert retried == [("pair.png", 1, "done"), ("two.png", 2, "done")] and run["photos_in_flight"] == 1


def test_out_of_memory_even_alone_fails_the_photo_and_five_in_a_row_stop_the_job(capsys, fake, monkeypatch,
                                                                                    tmp_path):
    def no_memory(*args):
        raise _oom()

    monkeypatch.setattr(photos, "attack_group", no_memory)
    src = make_photos(tmp_path / "src")
    rc, err = immunize_photos(capsys, src, tmp_path / "dst")
    failed = [line for line in err.splitlines() if line.startswith("leat-jax: error:") and "even alone" in line]
    assert rc == 1 and len(failed) == 2 and "two.png: device out of memory even alone" in err, err
    assert (tmp_path / "dst" / "empty.png").exists() and not (tmp_path / "dst" / "two.png").exists()
    for i in range(6):  # six photos that fit no device: the job stops at the fifth
        shutil.copy(src / "two.png", src / f"two{i}.png")
    (src / "empty.png").unlink()
    rc, err = immunize_photos(capsys, src, tmp_path / "dst2")
    assert rc == 3, err
    assert f"{tmp_path / 'dst2'}: device out of memory; the job stopped after 5 images in a row" in err
