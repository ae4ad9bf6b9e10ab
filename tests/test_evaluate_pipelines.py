"""`leat-jax evaluate` on the real StyleCLIP and DiffAE pipelines, with random weights.

StyleCLIP runs at its real size (e4e's 267 M parameters, StyleGAN2 1024 and
the 256 pool) from converted folders, as a user with official weights runs
it: ``--pipelines styleclip=DIR`` with mappers named by sub-folder. The
weights are made from numpy (e4e: the golden recipe's rules on the Flax
layout; StyleGAN2 and the mappers: the golden stand-in rule through our
converters), since the jitted stand-in initialisers spend over a minute of
CPU compiling. DiffAE at its real size costs ~10 CPU-seconds per UNet call
at 256 on CPU (over a minute per image even at 2 DDIM steps), so it runs as
``diffae_small`` (``tests.evaluate_toys``): the same edit, inversion and
render code at 16x16, with the step-count settings and the baseline.

Each evaluation has one image whose protected version is identical to the
clean one (its disruption must be exactly zero) and one that changed; with
threshold 0 every changed pair counts, so the DSRs have known values, and
they are also recomputed from the per-image table.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leat_jax import checkpoints, cli
from tests import evaluate_toys as toys

RNG = np.random.default_rng(11)


def _pairs(root: Path, size: int):
    """clean/{same,moved}.png and prot/ with 'same' byte-identical and 'moved' changed by +-4 levels."""
    clean, prot = root / "clean", root / "prot"
    clean.mkdir()
    prot.mkdir()
    for name in ("moved", "same"):
        levels = RNG.integers(40, 216, (size, size, 3)).astype(np.uint8)
        Image.fromarray(levels).save(clean / f"{name}.png")
        if name == "moved":
            levels = np.clip(levels.astype(int) + RNG.choice([-4, 4], levels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(levels).save(prot / f"{name}.png")
    return clean, prot


def _evaluate(capsys, *args):
    rc = cli.main(["evaluate", *map(str, args)])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err[-3000:]
    return err


def _check_report(out: Path, name: str, known: list[str], unknown: list[str], attacks=("leat",)):
    data = json.loads((out / "leat-jax-evaluation.json").read_text())
    assert data["images"] == 2 and data["threshold"] == 0.0
    assert data["attributes"][name] == {"known": known, "unknown": unknown}
    assert set(data["attacks"]) == set(attacks)
    for attack in attacks:
        res = data["attacks"][attack]
        table = res["per_image"]
        assert set(table) == {"moved.png", "same.png"}
        mse = np.array([table[r][name]["mse"] for r in ("moved.png", "same.png")])  # (images, attributes)
        assert mse.shape == (2, len(known) + len(unknown)) and np.all(np.isfinite(mse)) and np.all(mse[0] > 0)
        # LEAT's 'same' is the clean image itself: identical output, exactly zero disruption
        expect = 0.5 if attack == "leat" else 1.0  # the baseline attacked both clean images
        if attack == "leat":
            assert np.all(mse[1] == 0.0)
            assert all(m in (0.0, None) for m in table["same.png"][name]["masked_mse"])
        for split, cols in (("known", slice(0, len(known))), ("unknown", slice(len(known), None))):
            s = res["pipelines"][name][split]
            assert s["pairs"] == 2 * len(mse[0, cols])
            assert 0.0 <= s["dsr"] <= 1.0
            assert s["dsr"] == pytest.approx(np.mean(mse[:, cols] > data["threshold"]))  # the table's
            assert s["dsr"] == expect and s["image_dsr"] == expect
            assert s["mean_mse"] == pytest.approx(mse[:, cols].mean(), rel=1e-6)
        overall = res["overall"]["all"]
        assert overall["avg_dsr"] == expect and overall["e_dsr"] == expect
        im = res["imperceptibility"]
        assert np.isfinite(im["psnr"]) and 0.0 < im["ssim"] <= 1.0 and 0.0 < im["linf"] <= 0.05 + 1e-9
    md = (out / "leat-jax-evaluation.md").read_text()
    assert f"| leat | {name} | known | {2 * len(known)} |" in md
    assert f"| leat | {name} | unknown | {2 * len(unknown)} |" in md
    fig = Image.open(out / "leat-jax-evaluation.png")
    assert fig.width > 4 * 128 and fig.height > 2 * 128  # 2 inputs + clean/protected outputs, 2 rows
    return data


# ---------------------------------------------------------------- StyleCLIP


@pytest.fixture(scope="module")
def styleclip_dir(tmp_path_factory):
    """A converted StyleCLIP folder at the real sizes: e4e/, stylegan2/, mappers/{smile,beard}/."""
    from converters import stylegan2 as conv
    from leat_jax.victims import e4e
    from tests.golden_cases import styleclip_mapper as mapper_case
    from tests.golden_cases import stylegan2 as sg_case
    from tests.golden_harness import GOLDEN_DIR

    root = tmp_path_factory.mktemp("styleclip")
    meta = {"converter_version": "test"}
    checkpoints.save_params(root / "e4e", toys.template_params(e4e.victim().template, 0), {**meta, "model": "e4e"})
    layout = json.loads((GOLDEN_DIR / "stylegan2" / "layout.json").read_text())
    decoder = sg_case.standin_state_dict(layout, 0, "decoder.")
    g = conv.generator_to_params(sg_case.e4e_file_object(decoder, 0), "recipe")
    checkpoints.save_params(root / "stylegan2", g, {**meta, "model": "stylegan2"})
    mapper_layout = json.loads((GOLDEN_DIR / "styleclip_mapper" / "layout.json").read_text())
    for i, prompt in enumerate(("smile", "beard")):
        sd = mapper_case.standin_mapper_state_dict(mapper_layout, i + 1)
        released = {"state_dict": {"mapper." + k: v for k, v in sd.items()}, "opts": dict(mapper_case.OPTS)}
        checkpoints.save_params(root / "mappers" / prompt, conv.mapper_to_params(released, prompt),
                                {**meta, "model": "styleclip_mapper"})
    return root


def test_styleclip_evaluate_at_real_size(styleclip_dir, tmp_path, capsys):
    clean, prot = _pairs(tmp_path, 64)  # e4e takes any size to 256
    out = tmp_path / "out"
    cfg = tmp_path / "eval.toml"
    cfg.write_text('[styleclip]\nknown = ["smile"]\nunknown = ["beard"]\n')
    err = _evaluate(capsys, clean, prot, out, "--pipelines", f"styleclip={styleclip_dir}", "--config", cfg,
                    "--threshold", "0", "--figure-rows", "2")
    assert "NOTHING" not in err  # converted folders: no stand-in warning
    data = _check_report(out, "styleclip", ["smile"], ["beard"])
    assert data["pipelines"]["styleclip"]["stand_in"] is False and data["warning"] is None
    assert "leat on styleclip 2/2" in err  # progress lines


# ---------------------------------------------------------------- DiffAE


def test_diffae_evaluate_with_baseline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LEAT_EXTRA_DEEPFAKES", "tests.evaluate_toys:pipelines")
    clean, prot = _pairs(tmp_path, 16)
    out = tmp_path / "out"
    cfg = tmp_path / "eval.toml"
    cfg.write_text('threshold = 0.0\nseed = 0\n[attack]\niterations = 2\n'
                   '[diffae_small]\nknown = ["Smiling:0.5"]\nunknown = ["Young:-0.5", "Eyeglasses:0.5"]\n'
                   'inversion_steps = 2\nrender_steps = 2\n')
    err = _evaluate(capsys, clean, prot, out, "--pipelines", "diffae_small", "--stand-in-weights", "--baseline",
                    "--config", cfg)
    assert "mean NOTHING about real protection" in err
    data = _check_report(out, "diffae_small", ["Smiling:0.5"], ["Young:-0.5", "Eyeglasses:0.5"],
                         attacks=("leat", "image_space"))
    assert data["baseline"]["attributes"] == [["diffae_small", "Smiling:0.5"]]
    timing = data["attacks"]["image_space"]["timing"]
    assert timing["images"] == 2 and timing["devices"] >= 1 and timing["seconds_per_image"] > 0
    for rel in ("moved.png", "same.png"):  # the baseline attacked both clean images within eps
        base = np.asarray(Image.open(out / "baseline" / rel), np.int16)
        ref = np.asarray(Image.open(clean / rel), np.int16)
        assert 0 < np.abs(base - ref).max() <= 7  # eps 0.05 is 6.4 levels
