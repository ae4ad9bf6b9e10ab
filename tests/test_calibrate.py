"""``learn-start --calibrate``: the weight steering (``attack.steer``) and the calibrated fast attack written as
``OUT/immunize.toml`` (``pipeline.calibrate``). Toy victims, tiny synthetic images, few iterations."""
from __future__ import annotations

import hashlib
import json
import math
import tomllib

import numpy as np
import pytest

from leat_jax.attack import AttackConfig, prepared, run
from leat_jax.attack.steer import best_round, next_weights, shares
from leat_jax.pipeline import calibrate, config, inputs, learn_start, victimset
from leat_jax.pipeline.victimset import VictimSpec
from tests.pipeline_toys import ENV
from tests.test_universal_start import TOYS, command, toys, write_faces  # noqa: F401 (toys: a fixture)

SPECS = (VictimSpec("toy_a"), VictimSpec("toy_b"))


def test_an_under_served_victim_gains_weight_and_the_weights_keep_mean_one():
    w = next_weights([1.0, 1.0, 1.0], [0.5, 1.0, 1.0])
    np.testing.assert_allclose(w, [1.5, 0.75, 0.75])  # 1/share, over its mean 4/3
    w = next_weights([1.2, 0.9, 0.9], [0.8, 1.1, 1.3], digits=6)
    assert w[0] == w.max() and w[2] == w.min() and abs(w.mean() - 1) < 1e-6
    assert abs(next_weights([2.0, 3.0, 7.0], [1.0, 1.0, 1.0]).mean() - 1) <= 1.5e-3  # 3 decimals
    # a share proportional to the weight: one step equalises the shares
    c = np.array([0.4, 1.0, 2.5])
    w = next_weights(np.ones(3), c * np.ones(3), digits=12)
    np.testing.assert_allclose(c * w, np.full(3, (c * w)[0]), rtol=1e-9)


@pytest.mark.parametrize("bad", [0.0, -0.5, math.inf, math.nan])
def test_a_share_of_zero_or_not_finite_is_a_clear_value_error(bad):
    with pytest.raises(ValueError, match="victim 1's share is .*positive, finite"):
        next_weights([1.0, 1.0], [1.0, bad])
    with pytest.raises(ValueError, match="two \\(K,\\) arrays"):
        next_weights([1.0, 1.0], [1.0])


def test_shares_are_ratios_and_a_zero_unit_cannot_steer():
    np.testing.assert_allclose(shares([1.0, 3.0], [2.0, 2.0]), [0.5, 1.5])
    with pytest.raises(ValueError, match="victim 1's share is inf"):
        next_weights([1.0, 1.0], shares([1.0, 3.0], [2.0, 0.0]))


def test_the_best_round_has_the_highest_smallest_share_ties_the_earlier():
    assert best_round([[0.9, 1.2], [1.0, 1.05], [1.0, 1.3], [0.99, 2.0]]) == 1
    assert best_round([[0.7, 1.0], [math.nan, 3.0], [0.8, 0.9]]) == 2  # NaN counts as the worst
    with pytest.raises(ValueError):
        best_round([])


def calibrated(src, out, quiet=True, **more):
    """learn-start on the toy victims with a 4-iteration unit attack and calibration on 2 images, T = 2."""
    settings = dict(calibrate=2, fast_iterations=2) | more
    cfg = learn_start.build(src, out, {"iterations": 4, "ensemble": "normalized_l1"},
                            dict(steps=2, batch=2, size=16), victims=SPECS, stand_in_weights=True,
                            extra_victims=(ENV["LEAT_EXTRA_VICTIMS"],), quiet=quiet, **settings)
    return learn_start.run(cfg)


def test_calibration_writes_an_immunize_file_that_attacks_as_measured(tmp_path, capsys):
    src = write_faces(tmp_path / "src", 3)
    report = calibrated(src, tmp_path / "a", quiet=False)
    cal = report["calibration"]
    assert capsys.readouterr().err.count("calibration round") == calibrate.ROUNDS
    rounds = cal["rounds"]
    assert len(rounds) == calibrate.ROUNDS and rounds[0]["weights"] == {"toy_a": 1.0, "toy_b": 1.0}
    for prev, nxt in zip(rounds, rounds[1:]):  # each round's weights steered from the one before
        np.testing.assert_allclose(list(nxt["weights"].values()),
                                   next_weights(list(prev["weights"].values()), list(prev["shares"].values())))
    for r in rounds:
        for name, share in r["shares"].items():
            assert share == pytest.approx(r["distances"][name] / cal["unit"]["distances"][name], rel=1e-12)
    assert cal["kept"] == best_round([list(r["shares"].values()) for r in rounds])
    assert cal["weights"] == rounds[cal["kept"]]["weights"]

    toml_path = tmp_path / "a" / calibrate.TOML
    table = tomllib.loads(toml_path.read_text())["attack"]
    assert table["start"] == "start.npy" and table["victim_weights"] == cal["weights"]
    assert table["ensemble"] == "normalized_l1" and "transforms" not in table  # the run's non-default fields
    cfg = config.build(str(src), str(tmp_path / "dst"), config.read_toml(toml_path), victims=SPECS,
                       stand_in_weights=True, extra_victims=(ENV["LEAT_EXTRA_VICTIMS"],))
    attack = cfg.attack
    assert attack.start.digest == report["start_digest"] and attack.iterations == 2
    assert attack.step == pytest.approx(2 * attack.eps) and attack.step_schedule == "cosine"
    assert dict(attack.victim_weights) == cal["weights"] and attack.ensemble == "normalized_l1"

    # The file's attack on the 2 calibration images gives the kept round's distances; the unit's, the unit's.
    loaded = victimset.load(SPECS, True, (ENV["LEAT_EXTRA_VICTIMS"],))
    rels, data = learn_start.load_images(src, 16, 64)
    ids = np.asarray([inputs.image_id(r) for r in rels[:2]], np.uint32)
    params, images = prepared(loaded.victims, attack, loaded.params), learn_start.as_images(data[:2])
    for cfg_, want in ((attack, rounds[cal["kept"]]["distances"]),
                       (AttackConfig(iterations=4, ensemble="normalized_l1"), cal["unit"]["distances"])):
        got = np.asarray(run(loaded.victims, cfg_, params, images, ids, 0).dist_end, np.float64).mean(axis=0)
        np.testing.assert_allclose(got, list(want.values()), rtol=1e-6)

    again = calibrated(src, tmp_path / "b")  # another folder: the same file, byte for byte
    assert (tmp_path / "b" / calibrate.TOML).read_bytes() == toml_path.read_bytes()
    assert again["calibration"] == cal
    before = toml_path.read_bytes()
    assert calibrated(src, tmp_path / "a", quiet=False)["calibration"] == cal  # a rerun keeps it, not recomputed
    assert "calibration round" not in capsys.readouterr().err and toml_path.read_bytes() == before
    assert calibrated(src, tmp_path / "a", calibrate=0)["calibration"] == cal  # still the file's record
    assert tomllib.loads(toml_path.read_text())["attack"]["iterations"] == 2


def old_settings_digest(cfg, identities, rels) -> str:
    """``learn_start.settings_digest`` as it was before calibration existed."""
    d = {"attack": cfg.attack.digest(), "learn": {f: getattr(cfg.learn, f) for f in cfg.learn.__dataclass_fields__},
         "victims": list(identities), "images": hashlib.sha256("\n".join(rels).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def test_bad_calibration_flags_exit_2_before_learning_and_none_changes_nothing(tmp_path, capsys, toys):  # noqa: F811
    src = write_faces(tmp_path / "src", 3)
    small = ["--steps", "1", "--batch", "2", "--size", "16"]
    for flags, message in ((["--calibrate", "-1"], "--calibrate: must be a non-negative integer"),
                           (["--fast-iterations", "0"], "--fast-iterations: must be a positive integer"),
                           (["--calibrate", "4"], "--calibrate 4: ")):
        rc, err = command(capsys, "learn-start", src, tmp_path / "bad", *TOYS, *small, *flags)
        assert rc == 2 and err.startswith(f"leat-jax: error: {message}") and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()  # refused before anything was learned or written
    rc, err = command(capsys, "learn-start", src, tmp_path / "plain", *TOYS, *small)
    assert rc == 0, err
    report = json.loads((tmp_path / "plain" / learn_start.REPORT).read_text())
    assert not (tmp_path / "plain" / calibrate.TOML).exists() and "calibration" not in report
    base = learn_start.build(src, tmp_path / "plain", {}, dict(steps=1, batch=2, size=16), victims=SPECS)
    with_fields = learn_start.build(src, tmp_path / "plain", {}, dict(steps=1, batch=2, size=16), victims=SPECS,
                                    calibrate=3, fast_iterations=7)
    identities = [v["weights"] for v in report["victims"]]
    assert report["settings_digest"] == old_settings_digest(base, identities, report["images"])
    assert learn_start.settings_digest(with_fields, identities, report["images"]) == report["settings_digest"]
