"""The research settings on the command line and in TOML: update rule, schedule, per-victim losses and weights."""
from __future__ import annotations

import pytest

from leat_jax import cli
from leat_jax.pipeline import config as settings


@pytest.mark.parametrize("flags, message", [
    (["--update", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--step-schedule", "exp"], "invalid choice: 'exp'"),
    (["--loss", "diffae=huber"], "attack settings: losses: unknown loss 'huber' for diffae; known: mse, cosine, l1"),
    (["--loss", "diffae"], "--loss: expected NAME=VALUE,... with distinct names, got 'diffae'"),
    (["--victim-weights", "diffae=heavy"], "--victim-weights: diffae: not a valid value: 'heavy'"),
    (["--victim-weights", "e4e=2"], "victim_weights names e4e, not attacked (victims: diffae, simswap_G)"),
    (["--loss", "nobody=cosine"], "losses names nobody, not attacked"),
])
def test_bad_research_settings_exit_2_with_one_line(tmp_path, capsys, flags, message):
    argv = ["immunize", str(tmp_path), str(tmp_path / "out"), "--stand-in-weights", *flags]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1] and err[-1].startswith(("leat-jax: error:", "leat-jax immunize: error:"))
    assert not (tmp_path / "out").exists()  # refused before any work


def test_flags_override_toml_research_settings(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[attack]\nupdate = "adam"\nlosses = { simswap_G = "cosine" }\n'
                    'victim_weights = { diffae = 2, simswap_G = 0.5 }\n')
    cfg = settings.build("src", "dst", settings.read_toml(toml), stand_in_weights=True)
    assert (cfg.attack.update, cfg.attack.losses) == ("adam", (("simswap_G", "cosine"),))
    assert cfg.attack.victim_weights == (("diffae", 2.0), ("simswap_G", 0.5))
    cfg = settings.build("src", "dst", settings.read_toml(toml), stand_in_weights=True, update="mifgsm",
                         momentum=0.5, losses=settings.parse_pairs("diffae=l1, simswap_G=mse", "--loss"))
    assert (cfg.attack.update, cfg.attack.momentum) == ("mifgsm", 0.5)
    assert cfg.attack.losses == (("diffae", "l1"), ("simswap_G", "mse"))
    assert cfg.attack.digest() != settings.build("src", "dst", stand_in_weights=True).attack.digest()
