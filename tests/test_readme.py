"""README.md's examples run: its Python snippets (on toy stand-ins of the victims they load) and the flags of
every ``leat-jax`` command line it shows, so the documentation cannot drift from the code."""
from __future__ import annotations

import dataclasses
import re
import tomllib

import jax.numpy as jnp
import numpy as np
import pytest

from leat_jax import attack, cli, victims
from tests import pipeline_toys
from tests.golden_harness import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README, flags=re.M | re.S)
README_IMAGES, SMALL_IMAGES = "jnp.zeros((2, 256, 256, 3))", "jnp.zeros((2, 64, 64, 3))"


def array_toy(name: str):
    """A toy encoder registered as ``name`` whose latent is one array, as the real victims' are, and not zero
    for a black image (the snippet's placeholder), as theirs are not."""
    toy = pipeline_toys.victims()["toy_a"]  # its stand-in weights are drawn by numpy: no compilation
    return dataclasses.replace(toy, name=name, apply=lambda params, x: toy.apply(params, x)["features"] + 1.0)


def test_readme_has_the_research_snippets():
    assert any("from leat_jax.attack import" in s for s in SNIPPETS)
    assert any("LearnedStart" in s for s in SNIPPETS)
    assert sum(README_IMAGES in s for s in SNIPPETS) == 1


def test_python_snippets_run_and_do_what_they_say(monkeypatch):
    loaded, calls = [], []

    def load(name, directory):  # stand-ins for the converted weights the snippet names
        assert str(directory).endswith(name)
        v = array_toy(name)
        loaded.append(v)
        return v, v.init_params(len(loaded))

    real_run = attack.run

    def recorded_run(vs, cfg, ps, images, *args, **kwargs):
        out = real_run(vs, cfg, ps, images, *args, **kwargs)
        calls.append((vs, cfg, ps, images, out))
        return out

    monkeypatch.setattr(victims, "load", load)
    monkeypatch.setattr(attack, "run", recorded_run)  # the snippets import it from there
    scope: dict = {}
    for index, snippet in enumerate(SNIPPETS):  # one session: later snippets use earlier names
        snippet = snippet.replace(README_IMAGES, SMALL_IMAGES)  # robust mode's JPEG costs seconds at 256 px
        exec(compile(snippet, f"README.md python snippet {index}", "exec"), scope)
    assert len(calls) == 4 and [c[1].transforms != () for c in calls] == [False, True, False, False]
    for vs, cfg, ps, images, out in calls:
        check_result(vs, cfg, ps, images, out)


def check_result(vs, cfg, ps, images, out):
    """The README's claims about one result: shapes, the bound, ascent, distances as each victim's loss."""
    b, k = images.shape[0], len(vs)
    assert out.protected.shape == images.shape
    assert out.dist_start.shape == out.dist_end.shape == (b, k)
    assert (out.history is None) == (not cfg.record_history)
    if cfg.record_history:
        assert out.history.shape == (b, cfg.iterations, k)
    assert float(jnp.max(jnp.abs(out.protected - images))) <= cfg.eps + 1e-6
    assert np.all(np.asarray(out.dist_end) > np.asarray(out.dist_start))  # every victim's loss went up
    for j, v in enumerate(vs):  # the reported distances are each victim's own loss (the snippet's function)
        clean, now = v.encode(ps[j], images), v.encode(ps[j], out.protected)
        want = [cfg.loss_of(v.name)(now[i:i + 1], clean[i:i + 1]) for i in range(b)]
        np.testing.assert_allclose(np.asarray(out.dist_end)[:, j], want, rtol=1e-4, atol=1e-7)


def command_lines():
    """(subcommand, flags) of every ``leat-jax`` command line in the README's shell blocks and inline code."""
    text = "\n".join(re.findall(r"^ *```bash\n(.*?)^ *```", README, flags=re.M | re.S)).replace("\\\n", " ")
    lines = text.splitlines() + re.findall(r"`((?:\.venv/bin/)?leat-jax [^`]+)`", README)
    for line in lines:  # a comment after a command may name more of its flags: they count too
        m = re.search(r"(?:^|\s)(?:\.venv/bin/)?leat-jax\s+([a-z-]+)(.*)", line)
        if m and m.group(1) != "-h":
            yield m.group(1), re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", m.group(2))


def test_every_command_line_uses_real_subcommands_and_flags(capsys):
    shown = list(command_lines())
    assert {c for c, _ in shown} >= {"immunize", "learn-start", "evaluate", "robustness", "convert"}
    with pytest.raises(SystemExit):
        cli.main(["-h"])
    top = capsys.readouterr().out
    assert not [c for c, _ in shown if not re.search(rf"^\s+{re.escape(c)}\b", top, flags=re.M)]
    helps = {}
    for command in {c for c, _ in shown}:
        with pytest.raises(SystemExit):
            cli.main([command, "-h"])
        helps[command] = capsys.readouterr().out
    bad = [f"leat-jax {c} {f}" for c, flags in shown for f in flags
           if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", helps[c])]
    assert not bad, "README shows flags the CLI does not have: " + ", ".join(bad)
    models = set(re.findall(r"leat-jax convert +([\w-]+) ", README))
    assert "e4e" in models and "mtcnn" in models
    assert not [m for m in models if not re.search(rf"(?<![\w-]){re.escape(m)}(?![\w-])", helps["convert"])]


def test_every_dependency_has_its_reason_in_the_readme():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    section = README.split("## Dependencies, and why each", 1)[1]
    explained = {re.split(r"[\[=<>]", b)[0] for b in re.findall(r"\*\*([^*]+)\*\*", section)}
    missing = sorted({re.split(r"[\[=<>]", d)[0] for d in wanted} - explained)
    assert not missing, f"README's dependency list does not say why: {', '.join(missing)}"
