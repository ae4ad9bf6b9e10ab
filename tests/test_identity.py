"""The evaluation's identity (ArcFace cosine) and face-detection (MTCNN) checks, alone and in the report.

ArcFace is the real architecture on numpy stand-in weights (``evaluate_toys.template_params``: no
initialiser to compile); the detector is the shipped MTCNN.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from leat_jax import cli
from leat_jax.errors import SetupError
from leat_jax.pipeline import evaluate_config, evaluate_report, identity
from leat_jax.pipeline.immunize import SAMPLES
from leat_jax.victims import simswap as sv
from tests import evaluate_toys as toys

RNG = np.random.default_rng(19)
FACE = SAMPLES / "astronaut_256.png"


@pytest.fixture(scope="module")
def arcface():
    return toys.template_params(sv.arcface().template, 0)


@pytest.fixture(scope="module")
def checks(arcface):
    return identity.OutputChecks(arcface)


def _face() -> np.ndarray:
    """The bundled sample face as a (256, 256, 3) output in [-1, 1]."""
    return np.asarray(Image.open(FACE).convert("RGB"), np.float32) / 127.5 - 1.0


def test_identical_outputs_have_cosine_one_and_noise_is_counted(checks):
    face = _face()
    clean = np.stack([face, face[:, ::-1]])  # two attributes' outputs
    cos, outcomes = checks.measure("same", clean, clean.copy())
    np.testing.assert_allclose(cos, 1.0, atol=1e-6)
    assert outcomes == ["same", "same"]
    noise = RNG.uniform(-1, 1, clean.shape).astype(np.float32)
    cos_noise, outcomes_noise = checks.measure("same", clean, noise)  # the clean results come from the cache
    assert np.all(cos_noise < identity.IDENTITY_THRESHOLD) and np.all(cos_noise < cos - 0.5)
    assert outcomes_noise == ["none", "none"]
    s = identity.summarize(np.stack([cos, cos_noise]), np.array([outcomes, outcomes_noise], object))
    assert s["identity_dsr"] == 0.5 and s["face_dsr"] == 0.5 and s["no_face_rate"] == 0.5
    assert s["clean_faces"] == 4 and s["other_face_rate"] == 0.0
    assert s["mean_identity_cosine"] == pytest.approx(np.mean([*cos, *cos_noise]))


def test_embeddings_are_unit_and_do_not_depend_on_the_batch(arcface):
    x = RNG.uniform(-1, 1, (identity.BATCH + 1, 16, 16, 3)).astype(np.float32)
    e = identity.embed(arcface, x)  # two padded batches
    assert e.shape == (identity.BATCH + 1, 512)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(identity.embed(arcface, x[-1:])[0], e[-1], atol=1e-5)


def test_detection_finds_the_sample_face_and_none_in_grey(checks):
    box = identity.best_box(checks.detector, _face())
    assert box is not None and 40 < box[0] < box[2] < 216 and 40 < box[1] < box[3] < 230
    assert identity.best_box(checks.detector, np.zeros((256, 256, 3), np.float32)) is None  # flat grey
    assert identity.face_outcome(box, None) == "none"
    assert identity.face_outcome(None, box) == "no clean face"
    assert identity.face_outcome(box, box + 1.0) == "same"
    shifted = box + np.array([60.0, 0.0, 60.0, 0.0])  # IoU well below 0.5
    assert identity.iou(box, shifted) < identity.IOU_THRESHOLD and identity.face_outcome(box, shifted) == "other"


def test_iou_of_known_boxes():
    assert identity.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert identity.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert identity.iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_arcface_source_order(tmp_path):
    assert identity.arcface_source([("icface", None), ("simswap_source", "ck/ss")], "x", False) == "ck/ss/simswap_id"
    assert identity.arcface_source([("icface", None)], str(tmp_path), False) == str(tmp_path)
    assert identity.arcface_source([("simswap", None)], None, True) is None  # stand-in pipelines: not implied
    assert identity.arcface_source([("simswap", None)], identity.STAND_IN, True) == identity.STAND_IN
    with pytest.raises(SetupError, match="needs --stand-in-weights"):
        identity.arcface_source([], identity.STAND_IN, False)
    with pytest.raises(SetupError, match="not a folder"):
        identity.arcface_source([], str(tmp_path / "missing"), False)


@pytest.fixture()
def folders(tmp_path, monkeypatch, capsys):
    for k, v in toys.ENV.items():
        monkeypatch.setenv(k, v)
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(RNG.integers(0, 256, (toys.SIZE, toys.SIZE, 3)).astype(np.uint8)).save(clean / name)
    prot = tmp_path / "prot"
    assert cli.main(["immunize", str(clean), str(prot), "--victims", "toy_enc", "--stand-in-weights",
                     "--iterations", "3", "--quiet"]) == 0
    capsys.readouterr()
    return clean, prot


def test_report_carries_identity_and_face_numbers(folders, tmp_path, capsys, monkeypatch, arcface):
    monkeypatch.setattr(identity, "stand_in_arcface", lambda seed: arcface)
    clean, prot = folders
    out = tmp_path / "out"
    cfg = tmp_path / "eval.toml"
    cfg.write_text('identity_threshold = 0.9999\narcface = "stand-in"\n[toy_pipe]\nknown = 1\nunknown = 1\n')
    rc = cli.main(["evaluate", str(clean), str(prot), str(out), "--pipelines", "toy_pipe", "--stand-in-weights",
                   "--config", str(cfg), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0 and "ArcFace of the identity check" in err
    data = json.loads((out / evaluate_report.REPORT_JSON).read_text())
    assert data["identity_threshold"] == 0.9999 and data["identity_weights"] == identity.STAND_IN
    cos = np.array([data["attacks"]["leat"]["per_image"][r]["toy_pipe"]["identity_cosine"] for r in ("a.png", "b.png")])
    assert cos.shape == (2, 2) and np.all(cos <= 1.0 + 1e-6) and np.all(cos > -1.0)
    s = data["attacks"]["leat"]["pipelines"]["toy_pipe"]["all"]
    assert s["mean_identity_cosine"] == pytest.approx(cos.mean())
    assert s["identity_dsr"] == pytest.approx(np.mean(cos < 0.9999))
    assert s["clean_faces"] == 0 and s["face_dsr"] is None  # 16x16 toy outputs: no face to lose
    faces = data["attacks"]["leat"]["per_image"]["a.png"]["toy_pipe"]["face"]
    assert faces == ["no clean face"] * 2
    assert "identity_dsr" in data["definitions"] and "face_dsr" in data["definitions"]
    md = (out / evaluate_report.REPORT_MD).read_text()
    assert "| mean identity cosine | identity DSR |" in md and "< 0.9999" in md
    assert f"| leat | toy_pipe | known | 2 | {100 * s['dsr']:.1f}% |" in md


@pytest.mark.parametrize("setting, message", [
    ("identity_threshold = 2", "identity_threshold must be a cosine in [-1, 1], got 2"),
    ('identity_threshold = "high"', "identity_threshold must be a cosine in [-1, 1], got 'high'"),
    ('arcface = "nowhere"', "not a folder"),
])
def test_bad_identity_settings_are_one_line_errors(folders, tmp_path, capsys, setting, message):
    clean, prot = folders
    cfg = tmp_path / "eval.toml"
    cfg.write_text(setting + "\n")
    rc = cli.main(["evaluate", str(clean), str(prot), str(tmp_path / "out"), "--pipelines", "toy_pipe",
                   "--stand-in-weights", "--config", str(cfg), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_non_finite_outputs_count_as_not_disrupted_and_show_no_face(checks):
    assert identity.best_box(checks.detector, np.full((64, 64, 3), np.nan, np.float32)) is None
    s = identity.summarize(np.array([[0.1, np.nan]]), np.array([["same", "no clean face"]], object), 0.3)
    assert s["identity_dsr"] == 0.5 and s["mean_identity_cosine"] == pytest.approx(0.1)
    assert s["clean_faces"] == 1 and s["face_dsr"] == 0.0
    none = identity.summarize(np.full((1, 2), np.nan), np.array([["none", "other"]], object))
    assert none["identity_dsr"] is None and none["face_dsr"] == 1.0  # no ArcFace: no identity numbers


def test_toml_arcface_folder_is_relative_to_the_file(tmp_path):
    cfg = tmp_path / "eval.toml"
    cfg.write_text('arcface = "weights/simswap_id"\nidentity_threshold = 0.4\n')
    assert evaluate_config.read_toml(cfg)["arcface"] == str(tmp_path / "weights" / "simswap_id")
    cfg.write_text('arcface = "stand-in"\n')
    built = evaluate_config.build("c", "p", "o", evaluate_config.read_toml(cfg))
    assert built.arcface == identity.STAND_IN and built.identity_threshold == identity.IDENTITY_THRESHOLD
    cfg.write_text('[attack]\nstart = "u.npz"\niterations = 3\n')  # the baseline's table, read as immunize reads it
    assert evaluate_config.read_toml(cfg)["attack"] == {"start": str(tmp_path / "u.npz"), "iterations": 3}
    cfg.write_text('[attack]\nsteps = 3\n')
    with pytest.raises(SetupError, match=r"eval.toml: unknown \[attack\] settings \['steps'\]; known: "):
        evaluate_config.read_toml(cfg)


def test_identity_flags_override_the_toml_and_bad_ones_are_one_line(folders, tmp_path, capsys):
    clean, prot = folders
    cfg = tmp_path / "eval.toml"
    cfg.write_text('identity_threshold = 0.5\n')
    base = ["evaluate", str(clean), str(prot), str(tmp_path / "out"), "--pipelines", "toy_pipe", "--stand-in-weights",
            "--config", str(cfg), "--quiet"]
    rc = cli.main([*base, "--identity-threshold", "1.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "identity_threshold must be a cosine in [-1, 1], got 1.5" in err and len(err.splitlines()) == 1
    rc = cli.main([*base, "--arcface", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not a folder" in err and len(err.splitlines()) == 1
