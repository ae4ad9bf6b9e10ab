"""CONTRIBUTING.md's steps work: a victim and a pipeline declared outside the package
(``tests/outside_toys.py``) run through immunize, evaluate and the benchmark's per-victim line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from leat_jax import cli
from leat_jax.attack import AttackConfig
from tests import outside_toys

EPS = 0.05
ENV = {"LEAT_EXTRA_VICTIMS": "tests.outside_toys:victims", "LEAT_EXTRA_DEEPFAKES": "tests.outside_toys:pipelines"}


@pytest.fixture()
def protected(tmp_path, monkeypatch, capsys):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    rng = np.random.default_rng(0)
    clean, prot = tmp_path / "clean", tmp_path / "prot"
    clean.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)).save(clean / name)
    rc = cli.main(["immunize", str(clean), str(prot), "--victims", "ext_enc", "--stand-in-weights",
                   "--iterations", "2", "--eps", str(EPS), "--step", "0.03", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    return clean, prot


def test_an_outside_victim_is_immunized_against(protected):
    clean, prot = protected
    for name in ("a.png", "b.png"):
        x = np.asarray(Image.open(clean / name), np.float64)
        y = np.asarray(Image.open(prot / name), np.float64)
        diff = np.abs(y - x)
        assert diff.max() <= EPS * 127.5 + 0.5 + 1e-9  # the bound, after rounding to 8 bits
        assert (diff > 0).mean() > 0.5  # and the image was attacked


def test_an_outside_pipeline_is_evaluated(protected, tmp_path, capsys):
    clean, prot = protected
    out = tmp_path / "out"
    rc = cli.main(["evaluate", str(clean), str(prot), str(out), "--pipelines", "ext_pipe", "--stand-in-weights",
                   "--quiet", "--figure-rows", "0", "--threshold", "1e-6"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "leat-jax-evaluation.json").read_text())
    assert data["attributes"]["ext_pipe"] == {"known": ["shift 0"], "unknown": ["shift 1"]}
    res = data["attacks"]["leat"]["pipelines"]["ext_pipe"]
    assert res["known"]["pairs"] == 2 and res["unknown"]["pairs"] == 2
    # the protection moved the pipeline's output of every image, for every attribute
    assert res["known"]["dsr"] == 1.0 and res["unknown"]["dsr"] == 1.0


def test_an_outside_victim_gets_the_benchmarks_per_victim_line():
    pytest.importorskip("torch")
    from benchmarks import run

    r = run.per_victim(outside_toys.torch_pair(), 1, 1, AttackConfig(), False, warmup=0, image_size=32)
    line = run.per_victim_line("ext_enc", r)
    assert r["direction_cosine"] > 0.999  # same weights, same start: torch and JAX point the same way
    assert r["jax_s_per_image"] > 0 and r["torch_eager_s_per_image"] > 0 and r["flops_per_image"] > 0
    assert line.startswith("ext_enc: jax ") and f"direction cosine {r['direction_cosine']:.6f}" in line
