"""Every victim and every pipeline is declared once; each room's table keyed by their names is complete.

A name missing from any room (a converter, a torch reference, a golden
folder, a crop rule, the README's table) fails here, not at a user's run.
"""
from __future__ import annotations

import importlib.util
import re

import pytest

import converters
from leat_jax import cli, deepfakes, victims
from leat_jax.faces import align
from tests.golden_harness import GOLDEN_DIR, REPO

# Converted networks that are neither a victim nor a pipeline's part.
OTHER_CONVERTERS = {"mtcnn"}


def pipeline_parts() -> dict[str, str]:
    """Converter name -> the pipeline reading it, over every registered pipeline."""
    return {conv: name for name in deepfakes.NAMES for conv in deepfakes.get(name).parts.values()}


def test_every_victim_declares_an_official_crop_rule():
    for name in victims.NAMES:
        rule = victims.REGISTRY[name].crop_rule
        assert isinstance(rule, align.Rule), name
        assert rule.kind in ("ffhq", "simswap", "icface") and rule.border in align.BORDERS, (name, rule)
    assert victims.REGISTRY["simswap_G"].crop_rule == victims.REGISTRY["simswap_id"].crop_rule == align.SIMSWAP


def test_every_victim_has_a_converter_a_torch_reference_and_golden_cases():
    pytest.importorskip("torch")
    from benchmarks import pairs

    assert set(pairs.REFERENCES) == set(victims.NAMES)
    for name in victims.NAMES:
        assert name in converters.CONVERTERS, f"no converter for victim {name}"
        assert converters.CONVERTERS[name][1] is None, f"{name}: a victim's template is its own"
        assert sorted((GOLDEN_DIR / name).glob("case_*.npz")), f"no golden case of {name} in {GOLDEN_DIR / name}"
        assert importlib.util.find_spec(f"tests.golden_cases.{name}"), f"no golden file writer for {name}"


def test_every_pipeline_declares_load_attributes_and_converted_parts():
    for name in deepfakes.NAMES:
        fake = deepfakes.get(name)
        assert fake.name == name and callable(fake.load) and callable(fake.attributes), name
        assert fake.parts, f"pipeline {name} declares no parts"
        for sub, conv in fake.parts.items():
            assert conv in converters.CONVERTERS, f"pipeline {name}: part {sub} names no converter ({conv})"
            assert sorted((GOLDEN_DIR / conv).glob("case_*.npz")), f"no golden case for {conv} in {GOLDEN_DIR / conv}"


def test_every_converter_belongs_to_a_victim_or_a_pipeline():
    owners = set(victims.NAMES) | set(pipeline_parts()) | OTHER_CONVERTERS
    assert set(converters.CONVERTERS) == owners


def test_the_benchmark_runs_every_victim_by_default():
    pytest.importorskip("torch")
    from benchmarks import run

    assert run.Plan.of(run.parser().parse_args([])).names == victims.NAMES


def test_readme_table_lists_exactly_the_registered_victims():
    text = (REPO / "README.md").read_text()
    table = text.split("## The networks", 1)[1].split("\n\n", 2)[1]
    rows = re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)
    assert rows == list(victims.NAMES)


def test_cli_help_names_every_victim_and_pipeline(capsys):
    for command in ("immunize", "evaluate", "convert"):
        with pytest.raises(SystemExit):
            cli.main([command, "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(NAME: {', '.join(victims.NAMES)})" in text
    assert f"NAME among {', '.join(deepfakes.NAMES)}" in text
    assert f"a victim ({', '.join(victims.NAMES)})" in text
