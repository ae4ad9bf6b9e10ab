"""``learn-start --calibrate``: per-victim weights for a fast attack from the learned start, and its TOML file.

On the first N learning images: the unit is the run's own attack (random
start, its iterations, step and schedule), per victim its mean latent
distance; the fast attack starts at the learned start and takes T iterations
of step ``2 * eps`` on a cosine schedule, its per-victim weights steered over
``ROUNDS`` rounds (``attack.steer``) so that each victim's share of the unit
comes near the others'. The round whose worst share is best is kept and
written as ``immunize.toml`` beside ``start.npy`` (``toml_text``), for
``immunize --config``. The shares are measured on learning images.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import sys
import time

import numpy as np

from leat_jax.attack import AttackConfig, run, steer
from leat_jax.attack.start import LearnedStart
from leat_jax.pipeline.start_file import START

# Steering rounds: round 0 with equal weights, then two steered ones (measured enough on stand-in weights).
ROUNDS = 3
# The file written beside start.npy.
TOML = "immunize.toml"
# The fast attack's first step, as a multiple of eps (then a cosine decay): large steps pay at few iterations.
STEP_OVER_EPS = 2.0
# Attack settings the immunize run must share with the learning run (beyond those the TOML sets itself).
SHARED = ("ensemble", "norm_floor", "compute_dtype", "transforms", "eot_samples", "eot_untransformed", "update",
          "momentum", "losses")
_DEFAULT_ATTACK = AttackConfig().to_dict()


def unit_attack(attack: AttackConfig) -> AttackConfig:
    """The reference attack: ``attack`` from a random start (its iterations, step and schedule)."""
    return dataclasses.replace(attack, start="random", record_history=False)


def fast_attack(attack: AttackConfig, start: LearnedStart, iterations: int, weights: dict) -> AttackConfig:
    """``attack`` from ``start``: ``iterations`` steps from ``2 * eps`` down a cosine, per-victim ``weights``."""
    return dataclasses.replace(attack, start=start, iterations=iterations, step=STEP_OVER_EPS * attack.eps,
                               step_schedule="cosine", victim_weights=weights, record_history=False)


def shared_fields(attack: AttackConfig) -> dict:
    """The fields of ``SHARED`` that ``attack`` sets to other than their defaults, as TOML-ready values.

    Raises:
      ValueError: one of them is a Python function or transformation, which a TOML file cannot name.
    """
    d = attack.to_dict()
    out = {k: d[k] for k in SHARED if d[k] != _DEFAULT_ATTACK[k]}
    if "losses" in out:
        out["losses"] = dict(out["losses"])
    for key, value in out.items():
        for v in value.values() if isinstance(value, dict) else (value,):
            if isinstance(v, str) and v.startswith("python:"):
                raise ValueError(f"the attack's {key} holds a Python object ({v}), which immunize.toml cannot name")
    return out


def mean_distances(victims, config: AttackConfig, params, images, image_ids, seed: int) -> np.ndarray:
    """(K,) float64: each victim's latent distance after ``config``'s attack, averaged over the images."""
    result = run(victims, config, params, images, image_ids, seed)
    return np.asarray(result.dist_end, np.float64).mean(axis=0)


def calibration_digest(settings: str, start: LearnedStart, images: int, iterations: int) -> str:
    """What a calibration depends on: the learning run's settings digest, the start, N and T."""
    d = {"settings": settings, "start": start.label(), "images": images, "fast_iterations": iterations,
         "rounds": ROUNDS, "step_over_eps": STEP_OVER_EPS}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _named(names, values, digits: int | None = None) -> dict:
    return {n: float(v) if digits is None else round(float(v), digits) for n, v in zip(names, values)}


def steered_rounds(measure, names, unit, configure, say) -> list[dict]:
    """``ROUNDS`` rounds of the fast attack, from equal weights, each round's weights steered from the last's.

    Args:
      measure: ``AttackConfig -> (K,)`` mean latent distances on the calibration images.
      names: the victims' names; unit: (K,) the unit's mean distances.
      configure: ``{name: weight} -> the fast attack's AttackConfig``; say: ``line -> None``, progress.
    Returns:
      Per round ``{"weights", "distances", "shares"}``, each ``{name: value}`` (weights as used, 3 decimals).
    """
    weights, share, rounds = np.ones(len(names)), None, []
    for r in range(ROUNDS):
        if r:
            weights = steer.next_weights(weights, share)
        fast = measure(configure(_named(names, weights)))
        share = steer.shares(fast, unit)
        rounds.append({"weights": _named(names, weights, 3), "distances": _named(names, fast),
                       "shares": _named(names, share)})
        say(f"calibration round {r} of 0..{ROUNDS - 1}  weights {_pairs(names, weights)}  "
            f"shares {_pairs(names, share)}")
    return rounds


def calibrate(victims, params, attack: AttackConfig, start: LearnedStart, images, image_ids, seed: int,
              iterations: int, quiet: bool = False) -> dict:
    """Steer the fast attack's weights on ``images``; the record ``report.json`` keeps.

    Args:
      victims, params: the loaded victims and their prepared parameters.
      attack: the learning run's attack (the unit); start: the learned start.
      images, image_ids: (N, H, W, 3) float32 in [-1, 1] and (N,) uint32; seed: the attacks' seed.
      iterations: T, the fast attack's iterations.
    Returns:
      ``{"images", "fast_iterations", "step", "unit": {...}, "rounds": [{"weights", "distances",
      "shares"}, ...], "kept", "weights", "start_digest"}``; weights and shares per victim name.
    """
    names, started = [v.name for v in victims], time.monotonic()

    def say(line):
        if not quiet:
            print(f"leat-jax: learn-start {line}  {time.monotonic() - started:.0f}s", file=sys.stderr)

    measure = functools.partial(mean_distances, victims, params=params, images=images, image_ids=image_ids, seed=seed)
    unit = measure(unit_attack(attack))
    say(f"calibration unit ({attack.iterations} iterations, random start)  {_pairs(names, unit)}")
    rounds = steered_rounds(measure, names, unit, functools.partial(fast_attack, attack, start, iterations), say)
    kept = steer.best_round([list(r["shares"].values()) for r in rounds])
    return {"images": len(images), "fast_iterations": iterations, "step": STEP_OVER_EPS * attack.eps,
            "unit": {"iterations": attack.iterations, "step": attack.step, "step_schedule": attack.step_schedule,
                     "distances": _named(names, unit)},
            "rounds": rounds, "kept": kept, "weights": rounds[kept]["weights"], "start_digest": start.digest}


def _pairs(names, values) -> str:
    return " ".join(f"{n} {v:.4g}" for n, v in zip(names, values))


def toml_value(value) -> str:
    """``value`` (bool, number, string, or a dict of them) as a TOML value; dicts as inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # Python's float text (0.1, 1e-12, inf) is TOML's
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise ValueError(f"no TOML value for {value!r}")


def toml_key(key: str) -> str:
    """``key`` bare when TOML allows it, else quoted."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_text(record: dict, attack: AttackConfig) -> str:
    """``immunize.toml``: a header saying what it is and each round's weights and shares, then ``[attack]``.

    Args:
      record: ``calibrate``'s record; attack: the learning run's attack (its eps and ``shared_fields``).
    Returns:
      The file's text; no path in it, so equal runs in other folders write equal files.
    """
    unit = record["unit"]
    lines = [
        f"# Settings for `leat-jax immunize SRC DST --config {TOML} --victims ...` (the learning run's victims),",
        f"# written by `leat-jax learn-start --calibrate {record['images']}` beside the learned start {START}.",
        f"# The fast attack: from {START} (plus jitter), {record['fast_iterations']} iterations of step "
        f"2 * eps = {toml_value(record['step'])} on a cosine schedule,",
        "# per-victim weights steered so that each victim's share (its mean latent distance under the fast attack /",
        f"# under the learning run's attack: random start, {unit['iterations']} iterations, step "
        f"{toml_value(unit['step'])}, {unit['step_schedule']}) comes near the others'.",
        f"# Shares measured on the first {record['images']} learning images, not on held-out ones:",
    ]
    for r, rnd in enumerate(record["rounds"]):
        lines.append(f"#   round {r}: weights {_pairs(rnd['weights'], rnd['weights'].values())}; "
                     f"shares {_pairs(rnd['shares'], rnd['shares'].values())}")
    lines += [f"# Kept: round {record['kept']} (the highest smallest share).", "", "[attack]"]
    table = {"start": START, "eps": attack.eps, "iterations": record["fast_iterations"], "step": record["step"],
             "step_schedule": "cosine", "victim_weights": record["weights"], **shared_fields(attack)}
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def immunize_command(out, victims, stand_in: bool) -> str:
    """The ``leat-jax immunize`` command line that uses ``out``'s TOML file, for SRC and DST of one's choosing."""
    flags = f" --victims {','.join(str(v) for v in victims)}" if victims else ""
    return f"leat-jax immunize SRC DST --config {out}/{TOML}{flags}" + (" --stand-in-weights" if stand_in else "")
