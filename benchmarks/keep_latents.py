"""learn-start's step with the clean latents kept (``--keep-latents``) against recomputing them every step.

    python -m benchmarks.keep_latents [--victims simswap_id,simswap_G] [--batch 4] [--size 224] [--repeats 5]

Stand-in weights, random images in [-1, 1], one minibatch: both steps are
compiled first, then timed alternately (``timing.alternate``, medians); the
kept step is timed without the clean pass it no longer needs (done once per
image per run). Also says whether one step gives the same bits both ways
(u and the reported losses). Figures go to ``benchmarks/RESULTS.md`` by hand.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import alternate, clock
from leat_jax import xla_cpu
from leat_jax.attack import AttackConfig, prepared
from leat_jax.attack.universal import LearnConfig, init_state, make_clean_latents, make_learning_step
from leat_jax.pipeline import victimset
from leat_jax.pipeline.victimset import VictimSpec


def main(argv=None) -> int:
    xla_cpu.cpu_flags()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victims", default="simswap_id,simswap_G")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    loaded = victimset.load(tuple(VictimSpec(n) for n in args.victims.split(",")), True, ())
    config, learn = AttackConfig(), LearnConfig(steps=10, batch=args.batch, size=args.size)
    params = prepared(loaded.victims, config, loaded.params)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 3)), jnp.float32)
    ids, weights, state = jnp.arange(args.batch, dtype=jnp.uint32), jnp.ones(args.batch), init_state(config, learn)
    recompute = make_learning_step(loaded.victims, config, learn)
    kept = make_learning_step(loaded.victims, config, learn, cached=True)
    clean_fn = make_clean_latents(loaded.victims, config)
    clean = clean_fn(params, x)
    a, b = recompute(params, state, x, ids, weights, 3), kept(params, state, x, ids, weights, 3, clean)
    same = {"u": bool(np.array_equal(a[0].u, b[0].u)), "losses": bool(np.array_equal(a[1], b[1]))}
    seconds = alternate({"recompute": lambda: recompute(params, state, x, ids, weights, 3),
                         "kept": lambda: kept(params, state, x, ids, weights, 3, clean)}, args.repeats)
    print(json.dumps({"victims": loaded.names, "batch": args.batch, "size": args.size, "step_seconds": seconds,
                      "speedup": seconds["recompute"] / seconds["kept"], "clean_pass_seconds": clock(
                          lambda: clean_fn(params, x)), "same_bits": same, "devices": jax.device_count()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
