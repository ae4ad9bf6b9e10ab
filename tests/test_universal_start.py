"""A universal start learned with optax (``attack.universal``, ``leat-jax learn-start``) and the attack
warm-started from it (``AttackConfig.start``, ``immunize --start``). Toy victims, tiny synthetic images."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from leat_jax import cli
from leat_jax.attack import AttackConfig, prepared, run
from leat_jax.attack.start import LearnedStart
from leat_jax.attack.universal import (
    LearnConfig,
    init_state,
    make_clean_latents,
    make_learning_step,
    minibatch_clean,
)
from leat_jax.errors import SetupError
from leat_jax.pipeline import inputs, learn_start, start_file
from leat_jax.pipeline.victimset import VictimSpec
from tests.pipeline_toys import ENV
from tests.test_attack_research import old_digest
from tests.toys import toy_victim

WEAK = toy_victim("weak", 1.0)
STRONG = toy_victim("strong", 1000.0**0.5)
VICTIMS, PARAMS = (WEAK, STRONG), (WEAK.init_params(1), STRONG.init_params(2))
SIZE = 24


def faces(n: int, seed: int = 0) -> np.ndarray:
    """``n`` images of one distribution: a shared pattern, each with its own noise, on the 8-bit grid."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(99).uniform(-0.7, 0.7, (1, SIZE, SIZE, 3))
    x = np.clip(base + rng.normal(0, 0.15, (n, SIZE, SIZE, 3)), -1, 1)
    return (np.round((x + 1) * 127.5) / 127.5 - 1).astype(np.float32)


def learned_u(config: AttackConfig, steps: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(u, (steps, K) minibatch losses) learned on 8 images with the pure step."""
    learn = LearnConfig(steps=steps, batch=4, size=SIZE, rate=0.006)
    step, state = make_learning_step(VICTIMS, config, learn), init_state(config, learn)
    params, data, history = prepared(VICTIMS, config, PARAMS), faces(8), []
    for i in range(steps):
        idx, w = learn_start.minibatch(8, learn.batch, learn.seed, i)
        state, losses = step(params, state, jnp.asarray(data[idx]), jnp.asarray(idx, jnp.uint32), jnp.asarray(w), i)
        history.append(np.asarray(losses))
    return np.asarray(state.u), np.stack(history)


@pytest.fixture(scope="module")
def learned():
    return learned_u(AttackConfig())


def test_learning_raises_the_distortion_and_beats_noise_of_the_same_bound_at_t0(learned):
    u, history = learned
    config = AttackConfig(iterations=0)
    assert np.abs(u).max() <= config.eps + 1e-7
    assert np.all(history[-4:].mean(0) > 20 * history[0])  # each victim's minibatch distortion rose
    held, ids = jnp.asarray(faces(4, seed=5)), jnp.arange(100, 104, dtype=jnp.uint32)
    signs = np.sign(np.random.default_rng(3).standard_normal(u.shape)) * config.eps  # the strongest noise there is
    alone = {name: np.asarray(run(VICTIMS, AttackConfig(iterations=0, start=LearnedStart(a, jitter=0.0)),
                                  PARAMS, held, ids, 0).dist_end)
             for name, a in (("learned", u), ("noise", signs))}
    uniform = np.asarray(run(VICTIMS, config, PARAMS, held, ids, 0).dist_end)
    print(f"\nT=0 on held-out images, learned / sign noise: {(alone['learned'] / alone['noise']).mean(0).round(1)}")
    assert np.all(alone["learned"] > 2 * alone["noise"]) and np.all(alone["noise"] > uniform)


def test_warm_started_attack_is_bounded_after_rounding_deterministic_and_batch_independent(learned):
    u, _ = learned
    start = LearnedStart(u)
    x, ids = jnp.asarray(faces(3, seed=6)), jnp.arange(3, dtype=jnp.uint32)
    warm = AttackConfig(iterations=3, start=start)
    out = run(VICTIMS, warm, PARAMS, x, ids, 1)
    written = np.round((np.asarray(out.protected) + 1) * 127.5) / 127.5 - 1
    assert np.abs(written - np.asarray(x)).max() <= warm.eps + 1e-6
    again = run(VICTIMS, warm, PARAMS, x, ids, 1)
    np.testing.assert_array_equal(np.asarray(again.protected), np.asarray(out.protected))
    alone = run(VICTIMS, warm, PARAMS, x[2:], ids[2:], 1)
    np.testing.assert_array_equal(np.asarray(alone.protected[0]), np.asarray(out.protected[2]))
    cold = run(VICTIMS, AttackConfig(iterations=3), PARAMS, x, ids, 1)
    assert np.all(np.asarray(out.dist_start) > 5 * np.asarray(cold.dist_start))
    # The jitter is keyed per image: two seeds start apart, by at most jitter * eps around u.
    zero_it = AttackConfig(iterations=0, start=start)
    a, b = (np.asarray(run(VICTIMS, zero_it, PARAMS, x, ids, s).protected) - np.asarray(x) for s in (0, 1))
    assert 0 < np.abs(a - b).max() <= 2 * start.jitter * warm.eps + 1e-6
    # Another image size: u is resized; the bound holds.
    big = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 40, 36, 3)), jnp.float32)
    moved = np.asarray(run(VICTIMS, warm, PARAMS, big, ids[:1], 0).protected) - np.asarray(big)
    assert np.abs(moved).max() <= warm.eps + 1e-6


def test_start_counts_in_the_digest_and_no_start_keeps_old_digests(learned):
    u, _ = learned
    for cfg in (AttackConfig(), AttackConfig(start="random"), AttackConfig(eps=0.03, iterations=7)):
        assert cfg.digest() == old_digest(cfg)
    assert AttackConfig(start="zero") == AttackConfig(random_start=False)
    assert AttackConfig(start="zero").digest() == AttackConfig(random_start=False).digest()
    one, same, other = LearnedStart(u), LearnedStart(u.copy()), LearnedStart(u * 0.5)
    configs = [AttackConfig(start=s) for s in (one, other, LearnedStart(u, jitter=0.0))]
    assert len({c.digest() for c in configs} | {AttackConfig().digest()}) == 4
    assert AttackConfig(start=one) == AttackConfig(start=same) and hash(one) == hash(same)
    assert AttackConfig(start=one).digest() == AttackConfig(start=same).digest()
    assert AttackConfig(start=one).to_dict()["start"] == f"learned:{one.digest}"
    with pytest.raises(ValueError, match="beyond eps = 0.01"):
        AttackConfig(eps=0.01, start=one)


def write_faces(folder, n: int, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(faces(n, seed)):
        Image.fromarray(np.round((a + 1) * 127.5).astype(np.uint8)).save(folder / f"f{i}.png")
    return folder


class Killed(Exception):
    pass


def test_a_killed_learning_run_resumed_ends_as_an_uninterrupted_one(tmp_path):
    src = write_faces(tmp_path / "src", 5)

    def cfg(out, **learn):
        return learn_start.build(src, out, {}, dict(steps=6, batch=3, size=16, **learn),
                                 victims=(VictimSpec("toy_a"), VictimSpec("toy_b")),
                                 stand_in_weights=True, extra_victims=(ENV["LEAT_EXTRA_VICTIMS"],),
                                 checkpoint_every=2, quiet=True)

    whole = learn_start.run(cfg(tmp_path / "whole"))

    def kill(step):
        if step == 3:  # one step past the checkpoint at 2: it is lost and redone
            raise Killed

    with pytest.raises(Killed):
        learn_start.run(cfg(tmp_path / "part"), on_step=kill)
    assert not (tmp_path / "part" / start_file.START).exists()
    assert sorted(p.name for p in (tmp_path / "part" / learn_start.CHECKPOINTS).iterdir() if p.is_dir()) == ["2"]
    resumed = learn_start.run(cfg(tmp_path / "part"))
    np.testing.assert_array_equal(np.load(tmp_path / "part" / start_file.START),
                                  np.load(tmp_path / "whole" / start_file.START))
    assert resumed["history"] == whole["history"] and resumed["start_digest"] == whole["start_digest"]
    assert (tmp_path / "whole" / learn_start.CURVE).stat().st_size > 0
    with pytest.raises(SetupError, match="other settings"):
        learn_start.run(cfg(tmp_path / "part", rate=0.001))


def test_clean_latents_kept_once_per_image_learn_what_recomputing_them_learns(tmp_path, monkeypatch):
    """--keep-latents: each drawn image's latents as its minibatch computes them; the same u as recomputing them
    (the reported distortion may differ in the last bit); a killed run resumed ends as an uninterrupted one."""
    src = write_faces(tmp_path / "src", 5)
    learn = LearnConfig(steps=4, batch=3, size=16)
    which = learn_start.drawn(5, learn, 1)
    assert set(which) == {int(j) for i in range(1, 4) for j in learn_start.minibatch(5, 3, 0, i)[0]}
    _, data = learn_start.load_images(src, 16, 64)
    params = prepared(VICTIMS, AttackConfig(), PARAMS)
    cache = learn_start.clean_cache(make_clean_latents(VICTIMS, AttackConfig()), params, data, which, 3)
    for i in range(1, 4):  # each image's latents in any company equal those of the step's own minibatch
        idx, _ = learn_start.minibatch(5, 3, 0, i)
        own = minibatch_clean(VICTIMS, AttackConfig(), params, jnp.asarray(learn_start.as_images(data[idx])))
        for held, computed in zip(jax.tree.leaves(cache.take(idx)), jax.tree.leaves(own)):
            np.testing.assert_array_equal(np.asarray(held), np.asarray(computed))

    def run(out, on_step=None, **more):
        return learn_start.run(learn_start.build(src, out, {}, dict(steps=4, batch=3, size=16, rule="adam"),
                                                 victims=(VictimSpec("toy_a"), VictimSpec("toy_b")),
                                                 stand_in_weights=True, extra_victims=(ENV["LEAT_EXTRA_VICTIMS"],),
                                                 quiet=True, checkpoint_every=2, **more), on_step)

    def kill(step):
        if step == 3:
            raise Killed

    kept, recomputed = run(tmp_path / "kept", keep_latents=True), run(tmp_path / "again")
    with pytest.raises(Killed):
        run(tmp_path / "part", kill, keep_latents=True)
    with pytest.raises(SetupError, match="other settings"):  # a resumed run keeps the mode it began in
        run(tmp_path / "part")
    assert run(tmp_path / "part", keep_latents=True)["history"] == kept["history"]
    monkeypatch.setattr(learn_start, "CACHE_BYTES", 0)  # too large to keep: every step computes its own
    assert run(tmp_path / "over", keep_latents=True)["history"] == recomputed["history"]
    u = {d: np.load(tmp_path / d / start_file.START) for d in ("kept", "part", "again", "over")}
    np.testing.assert_array_equal(u["part"], u["kept"])
    np.testing.assert_array_equal(u["over"], u["again"])
    np.testing.assert_allclose(u["kept"], u["again"], rtol=0, atol=1e-7)
    for name, values in recomputed["history"].items():
        np.testing.assert_allclose(kept["history"][name], values, rtol=1e-6)


SHARDED = """
import sys, chex
chex.set_n_cpu_devices(2)
from leat_jax.pipeline import learn_start
from leat_jax.pipeline.victimset import VictimSpec
for n, keep in ((1, False), (2, False), (2, True)):
    learn_start.run(learn_start.build(sys.argv[1], f"{sys.argv[2]}/d{n}{keep}", {}, dict(steps=3, batch=3, size=16,
                    rule="adam", rate=0.003), victims=(VictimSpec("toy_a"), VictimSpec("toy_b")),
                    stand_in_weights=True, extra_victims=("tests.pipeline_toys:victims",), devices=n, quiet=True,
                    keep_latents=keep))
"""


def test_learning_split_over_two_devices_learns_what_one_device_learns(tmp_path):
    src = write_faces(tmp_path / "src", 4)  # 3 images a step: one device gets a weight-0 pad
    proc = subprocess.run([sys.executable, "-c", SHARDED, str(src), str(tmp_path)], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two, kept = (np.load(tmp_path / d / start_file.START) for d in ("d1False", "d2False", "d2True"))
    assert np.abs(one).max() > 1e-3  # it moved
    np.testing.assert_allclose(two, one, atol=1e-5)
    np.testing.assert_allclose(kept, two, rtol=0, atol=1e-7)  # latents kept, split over the devices as the step


@pytest.fixture
def toys(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


def command(capsys, *args):
    """``leat-jax ARGS`` in this process: (exit code, stderr)."""
    rc = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


TOYS = ["--victims", "toy_a,toy_b", "--stand-in-weights", "--quiet"]


def test_learn_start_and_immunize_start_on_the_command_line(tmp_path, capsys, toys):
    src = write_faces(tmp_path / "src", 3)
    rc, err = command(capsys, "learn-start", src, tmp_path / "u", *TOYS, "--steps", "2", "--batch", "2",
                      "--size", "16")
    assert rc == 0, err
    start = start_file.load_start(tmp_path / "u")
    common = ["immunize", src, *TOYS, "--iterations", "1"]
    assert command(capsys, *common[:2], tmp_path / "cold", *common[2:])[0] == 0
    assert command(capsys, *common[:2], tmp_path / "warm", *common[2:], "--start", tmp_path / "u")[0] == 0
    toml = tmp_path / "run.toml"  # the TOML file's start is relative to it
    toml.write_text('[attack]\nstart = "u"\niterations = 1\n')
    assert command(capsys, "immunize", src, tmp_path / "toml", *TOYS, "--config", toml)[0] == 0
    assert command(capsys, *common[:2], tmp_path / "zero", *common[2:], "--start", "zero")[0] == 0
    settings = {d: json.loads((tmp_path / d / inputs.REPORT).read_text())["settings"]
                for d in ("cold", "warm", "toml", "zero")}
    assert settings["warm"]["attack"]["start"] == f"learned:{start.digest}"
    assert settings["toml"]["settings_hash"] == settings["warm"]["settings_hash"]
    assert len({s["settings_hash"] for s in settings.values()}) == 3
    assert settings["zero"]["attack"]["random_start"] is False and settings["cold"]["attack"]["start"] is None


def test_bad_inputs_are_one_line_errors_with_exit_2(tmp_path, capsys, toys):
    (tmp_path / "empty").mkdir()
    src = write_faces(tmp_path / "src", 1)
    np.save(tmp_path / "flat.npy", np.zeros((16, 16), np.float32))
    np.save(tmp_path / "loud.npy", np.full((16, 16, 3), 0.2, np.float32))
    (tmp_path / "text.npy").write_text("not an array")
    cases = [
        (["learn-start", tmp_path / "empty", tmp_path / "o1", *TOYS], "no image to learn from"),
        (["learn-start", tmp_path / "missing", tmp_path / "o2", *TOYS], "no such file or folder"),
        (["immunize", src, tmp_path / "o3", *TOYS, "--start", tmp_path / "flat.npy"], "(H, W, 3)"),
        (["immunize", src, tmp_path / "o4", *TOYS, "--start", tmp_path / "loud.npy"], "beyond eps = 0.05"),
        (["immunize", src, tmp_path / "o5", *TOYS, "--start", tmp_path / "nowhere"], "cannot read the start"),
        (["immunize", src, tmp_path / "o6", *TOYS, "--start", tmp_path / "text.npy"], "not a .npy array"),
    ]
    for argv, message in cases:
        rc, err = command(capsys, *argv)
        assert rc == 2 and message in err and err.startswith("leat-jax: error: "), (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert "pickled" not in err and "(no .npy header)" in err, err  # the text file: numpy's fallback not shown
