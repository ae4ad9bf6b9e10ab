"""`leat-jax evaluate` as a newcomer meets it: the checks that need no weights come before any network
is built, SimSwap's identity default fits the folder, the difference panel of stand-in runs, and
``--samples`` on the demo's output.

"No network built" is asserted twice over: every builder of the real pipelines' networks is replaced by
one that raises, and an XLA compilation listener counts compilations (checked to fire on a known one).
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from leat_jax import cli, deepfakes
from leat_jax.deepfakes import diffae, styleclip
from leat_jax.deepfakes import simswap as simswap_fake
from leat_jax.errors import SetupError
from leat_jax.pipeline import evaluate, evaluate_config, evaluate_report, inputs
from leat_jax.pipeline.immunize import SAMPLES
from leat_jax.victims import e4e, icface, simswap
from tests import evaluate_toys as toys

RNG = np.random.default_rng(22)


class NetworkBuilt(Exception):
    """Raised by the replaced network builders: something tried to build a pipeline's network."""


@pytest.fixture()
def no_networks(monkeypatch):
    """Every builder the four real pipelines' loaders call raises ``NetworkBuilt``."""
    def refuse(*args, **kwargs):
        raise NetworkBuilt

    for module, names in ((e4e, ["victim"]), (styleclip, ["generator", "mapper"]),
                          (simswap, ["generator", "identity_victim"]), (icface, ["network"]),
                          (diffae, ["encoder_functional", "unet_functional", "classifier_functional"])):
        for name in names:
            monkeypatch.setattr(module, name, refuse)


@pytest.fixture()
def compilations():
    """A list that receives one entry per XLA compilation while the test runs."""
    seen: list[str] = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listen)


def _folders(tmp_path, count: int, size: int = 16):
    """clean/ with ``count`` images and prot/ with their protected versions (+-3 levels)."""
    clean, prot = tmp_path / "clean", tmp_path / "prot"
    clean.mkdir()
    prot.mkdir()
    for i in range(count):
        levels = RNG.integers(20, 236, (size, size, 3)).astype(np.uint8)
        Image.fromarray(levels).save(clean / f"img{i}.png")
        moved = np.clip(levels.astype(int) + RNG.choice([-3, 3], levels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(moved).save(prot / f"img{i}.png")
    return clean, prot


def _evaluate(capsys, *args):
    rc = cli.main(["evaluate", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_settings_that_do_not_fit_fail_before_any_network(tmp_path, capsys, no_networks, compilations):
    """The issue's case: 4 identities asked of 3 images. ICface comes first and is fine: its check passes,
    SimSwap's fails, and neither is loaded nor compiled; the output folder is not even created."""
    clean, prot = _folders(tmp_path, 3)
    cfg = tmp_path / "eval.toml"
    cfg.write_text("[simswap]\nknown = 2\nunknown = 2\n")
    out = tmp_path / "out"
    rc, err = _evaluate(capsys, clean, prot, out, "--pipelines", "icface,simswap", "--stand-in-weights",
                        "--config", cfg, "--quiet")
    assert rc == cli.EXIT_SETUP and len(err.strip().splitlines()) == 1
    assert "[simswap] 4 source identities asked for (known 2 + unknown 2), but the folder has 3 image(s)" in err
    assert compilations == [] and not out.exists()
    jax.jit(lambda x: x * 3 + 1)(jnp.ones(5))  # the listener does hear a compilation
    assert compilations


@pytest.mark.parametrize("text, message", [
    ("[diffae]\ninversion_step = 2\n", "[diffae] table: unknown setting 'inversion_step'; known: known, unknown, "
     "inversion_steps, render_steps"),
    ("[simswap]\nknwn = 1\n", "[simswap] table: unknown setting 'knwn'; known: known, unknown"),
    ("[simswapp]\nknown = 1\n", "[simswapp] table names no pipeline; known: styleclip, simswap"),
])
def test_a_typo_in_the_config_file_fails_before_any_network(tmp_path, capsys, no_networks, compilations, text,
                                                           message):
    """A mistyped key or table would leave a default in place (DiffAE's 250 + 100 DDIM steps: hours): refused."""
    clean, prot = _folders(tmp_path, 2)
    cfg = tmp_path / "eval.toml"
    cfg.write_text(text)
    rc, err = _evaluate(capsys, clean, prot, tmp_path / "out", "--pipelines", "simswap,diffae",
                        "--stand-in-weights", "--config", cfg, "--quiet")
    assert rc == cli.EXIT_SETUP and len(err.strip().splitlines()) == 1, err
    assert err.startswith("leat-jax: error: the --config file's ") and message in err, err
    assert compilations == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ('threshold = "x"\n', "threshold must be a non-negative number, got 'x'"),
    ("[attack]\neps = 0\n", "[attack]: eps must be positive, got 0"),
])
def test_a_bad_value_in_the_config_file_names_the_file(tmp_path, capsys, no_networks, text, message):
    clean, prot = _folders(tmp_path, 2)
    cfg = tmp_path / "eval.toml"
    cfg.write_text(text)
    rc, err = _evaluate(capsys, clean, prot, tmp_path / "out", "--pipelines", "simswap", "--stand-in-weights",
                        "--config", cfg, "--quiet")
    assert rc == cli.EXIT_SETUP and err == f"leat-jax: error: {cfg}: {message}\n", err


@pytest.mark.parametrize("section, message", [
    ({"diffae": {"render_steps": 600}}, "[diffae] render_steps must be a DDIM step count"),
    ({"icface": {"known": -1}}, "[icface] known must be a non-negative integer"),
    ({"styleclip": {"unknown": 1.5}}, "[styleclip] unknown must be a non-negative integer"),
])
def test_every_pipelines_settings_are_checked_first(tmp_path, no_networks, compilations, section, message):
    """Whichever pipeline is at fault, the run stops before the first one (StyleCLIP) is built."""
    clean, prot = _folders(tmp_path, 2)
    cfg = evaluate_config.build(clean, prot, tmp_path / "out", {"sections": section}, quiet=True,
                                stand_in_weights=True,
                                pipelines=tuple(evaluate_config.PipelineSpec(n) for n in deepfakes.NAMES))
    with pytest.raises(SetupError, match=message.replace("[", r"\[").replace("]", r"\]")):
        evaluate.run(cfg)
    assert compilations == []


def test_a_converted_folder_missing_a_network_fails_before_loading(tmp_path, capsys, no_networks, compilations):
    clean, prot = _folders(tmp_path, 3)
    (tmp_path / "simswap" / "simswap_id").mkdir(parents=True)
    rc, err = _evaluate(capsys, clean, prot, tmp_path / "out", "--pipelines", f"icface,simswap={tmp_path / 'simswap'}",
                        "--stand-in-weights", "--quiet")
    assert rc == cli.EXIT_SETUP and f"{tmp_path / 'simswap'}: no simswap_full/ (each made by `leat-jax convert`)" in err
    assert compilations == []


@pytest.mark.parametrize("images, known, unknown", [(1, 1, 0), (2, 1, 0), (3, 1, 1), (4, 2, 1), (5, 2, 2), (9, 2, 2)])
def test_simswap_identity_default_fits_the_folder(images, known, unknown):
    """One identity per other image of the folder, at least one, at most 2 + 2; explicit counts are kept."""
    assert simswap_fake.face_counts({}, images) == (known, unknown)
    assert sum(simswap_fake.face_counts({}, images)) <= images
    assert simswap_fake.face_counts({"known": 1, "unknown": 0}, images) == (1, 0)


@pytest.mark.parametrize("count, which", [
    (2, "the faces of img0.png (known) (default"),
    (3, "the faces of img0.png (known), img1.png (unknown) (default"),
])
def test_simswap_default_on_a_folder_says_which_images(tmp_path, capsys, no_networks, compilations, count, which):
    """Folders of 2 and 3 images pass SimSwap's check with the default and the run says which images give the
    identities; it then goes on to build the networks (refused here)."""
    clean, prot = _folders(tmp_path, count)
    with pytest.raises(NetworkBuilt):
        cli.main(["evaluate", str(clean), str(prot), str(tmp_path / "out"), "--pipelines", "simswap",
                  "--stand-in-weights"])
    err = capsys.readouterr().err
    assert f"[simswap] source identities: {which}" in err
    assert compilations == []


def test_difference_tile_scale_and_label():
    clean = np.zeros((8, 8, 3), np.float32)
    prot = clean.copy()
    prot[2, 3] = 0.004
    prot[5, 5] = [0.002, 0.002, 0.002]
    tile, label = evaluate_report.difference_tile(clean, prot)
    assert label == "x250" and tile.shape == (8, 8, 3)
    assert tile[2, 3, 0] == pytest.approx(1.0) and tile[5, 5, 0] == pytest.approx(0.0)  # white, mid grey
    assert np.all(tile[0, 0] == -1.0)  # unchanged: black
    assert evaluate_report.difference_tile(clean, clean)[1] == "identical"


def _figure_columns(path) -> list[np.ndarray]:
    """The figure's first row of tiles, one (128, 128, 3) array per column."""
    fig = np.asarray(Image.open(path).convert("RGB"))
    pad, head, tile = 6, 40, evaluate_report.TILE
    cols = (fig.shape[1] - pad) // (tile + pad)
    return [fig[head:head + tile, pad + c * (tile + pad):pad + c * (tile + pad) + tile] for c in range(cols)]


def test_samples_end_to_end_with_the_difference_panel(tmp_path, capsys, monkeypatch):
    """`immunize --samples DEMO` then `evaluate --samples DEMO` (on the toy pipeline: the real ones at real
    size take minutes) evaluates the bundled samples against the demo's output, LEAT's seconds beside the
    evaluation's, and the stand-in figure has the difference column, not flat; with a folder, no such column."""
    for k, v in toys.ENV.items():
        monkeypatch.setenv(k, v)
    demo = tmp_path / "demo"
    assert cli.main(["immunize", "--samples", str(demo), "--victims", "toy_enc", "--stand-in-weights",
                     "--iterations", "2", "--quiet"]) == 0
    rc, err = _evaluate(capsys, "--samples", demo, "--pipelines", "toy_pipe", "--threshold", "0")
    assert rc == 0 and "mean NOTHING about real protection" in err
    out = demo / evaluate_config.SAMPLES_OUT
    data = json.loads((out / evaluate_report.REPORT_JSON).read_text())
    samples = sorted(p.name for p in SAMPLES.iterdir() if inputs.is_image_name(p.name))
    assert data["clean"] == str(SAMPLES) and data["images"] == len(samples) == 3
    assert data["pipelines"]["toy_pipe"]["stand_in"] is True
    leat = data["attacks"]["leat"]
    assert leat["attack_seconds_per_image"] > 0 and leat["evaluation_seconds_per_image"] > 0
    assert leat["pipelines"]["toy_pipe"]["all"]["dsr"] == 1.0  # threshold 0: every changed output counts
    cols = _figure_columns(out / evaluate_report.FIGURE)
    assert len(cols) == 5  # clean, protected, toy_pipe clean out, protected out, |difference|
    diff = cols[4].astype(int)
    assert diff.max() >= 250 and diff.std() > 10  # amplified to white somewhere, and not a flat panel
    assert np.abs(cols[3].astype(int) - cols[2].astype(int)).max() < diff.max()  # the raw outputs look alike

    rc, _ = _evaluate(capsys, "--samples", demo, tmp_path / "real", "--pipelines", f"toy_pipe={tmp_path}",
                      "--quiet")
    assert rc == 0 and len(_figure_columns(tmp_path / "real" / evaluate_report.FIGURE)) == 4  # converted: no difference


def test_samples_settings_pass_every_real_pipelines_checks(tmp_path, capsys, no_networks, compilations):
    """``--samples`` runs every pipeline; its settings pass each pipeline's checks on the three bundled faces
    (SimSwap: one known and one unknown identity), before the first network is built (refused here)."""
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in ("astronaut_256.png", "astronaut_grey.png", "astronaut_tight.png"):
        Image.new("RGB", (256, 256)).save(demo / name)
    cfg = evaluate_config.build_samples(demo)
    assert [p.name for p in cfg.pipelines] == list(deepfakes.NAMES) and cfg.stand_in_weights
    assert cfg.out == str(demo / evaluate_config.SAMPLES_OUT) and cfg.sections["diffae"]["render_steps"] == 2
    with pytest.raises(NetworkBuilt):
        evaluate.run(cfg)
    err = capsys.readouterr().err
    assert "[simswap] source identities: the faces of astronaut_256.png (known), astronaut_grey.png (unknown)" in err
    assert compilations == []


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "clean", "prot"], "evaluate takes CLEAN_DIR PROTECTED_DIR OUT_DIR"),
    (["evaluate", "--samples", "a", "b", "c"], "evaluate --samples takes DEMO_DIR [OUT_DIR]"),
])
def test_evaluate_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
