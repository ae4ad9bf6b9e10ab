"""Robust mode (EOT) against plain LEAT: seconds per attack iteration, side by side, on the same weights.

    python -m benchmarks.robust [--victims e4e,diffae,...] [--size 256] [--repeats 5]
                                [--transforms robust] [--eot-samples 1] [--json PATH]
    python -m benchmarks.robust --compare PLAIN.json ROBUST.json


One image on stand-in weights; per configuration one jitted attack iteration
(transform draws, forwards and input gradients of every victim, the
normalised ensemble), compiled apart; runs alternate, warm-up excluded,
medians. ``--compare`` reads two ``leat-jax robustness`` reports of the same
clean images (plain and robust protection) and prints, per victim, robust
mode's distortion after each countermeasure as a share of plain LEAT's
untransformed distortion (the issue's targets). Figures go to
``benchmarks/RESULTS.md`` by hand.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import alternate
from leat_jax import xla_cpu
from leat_jax.attack import AttackConfig, clean_latents, ensemble_direction, image_key, prepared
from leat_jax.attack.pgd import eot_key
from leat_jax.pipeline import victimset

ALL = ("e4e", "diffae", "simswap_id", "simswap_G", "icface")


def iteration(victims, config):
    """Jitted one-image iteration: (params, x, eta, clean, key) -> (direction, losses)."""

    def f(params, x, eta, clean, key):
        draw = eot_key(key, 0) if config.transforms else None
        return ensemble_direction(victims, config, params, x, eta, clean, draw)

    return jax.jit(f)


def measure(names, size: int, repeats: int, transforms: str, eot_samples: int) -> dict:
    """Median seconds per iteration of plain and robust mode, and compile seconds of each."""
    extra = tuple(e for e in os.environ.get(victimset.EXTRA_VICTIMS_ENV, "").split(",") if e.strip())
    loaded = victimset.load(tuple(victimset.VictimSpec(n) for n in names), True, extra)
    plain = AttackConfig()
    robust = dataclasses.replace(plain, transforms=transforms, eot_samples=eot_samples)
    params = jax.block_until_ready(prepared(loaded.victims, plain, loaded.params))
    x = jnp.asarray(np.random.default_rng(0).uniform(-0.9, 0.9, (size, size, 3)), jnp.float32)
    key = image_key(0, 7)
    eta = jax.random.uniform(key, x.shape, jnp.float32, -plain.eps, plain.eps)
    clean = jax.block_until_ready(jax.jit(lambda p, a: clean_latents(loaded.victims, plain, p, a))(params, x))
    runners, compile_s = {}, {}
    for name, cfg in (("plain", plain), ("robust", robust)):
        t0 = time.perf_counter()
        fn = iteration(loaded.victims, cfg).lower(params, x, eta, clean, key).compile()
        compile_s[name] = time.perf_counter() - t0
        runners[name] = (lambda f: lambda: f(params, x, eta, clean, key))(fn)
    seconds = alternate(runners, repeats)
    return {"victims": list(names), "size": size, "repeats": repeats, "transforms": robust.to_dict()["transforms"],
            "eot_samples": eot_samples, "seconds_per_iteration": seconds,
            "ratio": seconds["robust"] / seconds["plain"], "compile_seconds": compile_s}


TARGETS = (("none", 0.8), ("jpeg75", 0.8), ("half+jpeg75", 0.6))


def _mean_ratio(robust: dict, plain: dict, k: int, t: str, t_plain: str) -> float:
    """Image mean of d(E(t(x_robust)), E(x)) / d(E(t_plain(x_plain)), E(x)) for victim ``k`` ("none": untransformed)."""
    def d(report, rel, cm):
        r = report["per_image"][rel]
        return r["protected"][k] if cm == "none" else r["countermeasures"][cm]["protected"][k]

    return float(np.mean([d(robust, rel, t) / d(plain, rel, t_plain) for rel in robust["per_image"]]))


def compare(plain: dict, robust: dict) -> str:
    """Markdown, per victim: robust's distortion after each target countermeasure over plain's untransformed one
    (the targets), then over plain's after the same countermeasure (does robust mode beat plain after an upload)."""
    victims = list(plain["summary"])
    after = ("jpeg75", "half+jpeg75")
    lines = ["| victim | " + " | ".join(f"{t} / plain none (>= {g})" for t, g in TARGETS) + " | "
             + " | ".join(f"{t} / plain {t}" for t in after) + " |", "|---" * (len(TARGETS) + len(after) + 1) + "|"]
    for k, v in enumerate(victims):
        cells = [_mean_ratio(robust, plain, k, t, "none") for t, _ in TARGETS]
        cells += [_mean_ratio(robust, plain, k, t, t) for t in after]
        lines.append(f"| {v} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    xla_cpu.cpu_flags()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victims", default=",".join(ALL))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--transforms", default="robust")
    ap.add_argument("--eot-samples", type=int, default=1)
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--compare", nargs=2, metavar=("PLAIN.json", "ROBUST.json"),
                    help="robustness reports of plain and robust protection: print the targets' table")
    args = ap.parse_args(argv)
    if args.compare:
        reports = [json.loads(open(p).read()) for p in args.compare]
        print(compare(*reports))
        return 0
    res = measure(tuple(n for n in args.victims.split(",") if n), args.size, args.repeats, args.transforms,
                  args.eot_samples)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
