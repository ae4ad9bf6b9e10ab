"""Which XLA CPU flags close the convolution gap? One child process per flag set.

    python -m benchmarks.xla_flags [--victim icface] [--repeats 3]

Each child builds the victim pair (same weights for leat-jax and torch) and
times one attack iteration of both, alternating, so every flag set is judged
by its ratio to torch eager measured side by side on the same (shared) CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FLAG_SETS = {
    "default": "",  # XLA's own defaults (leat_jax.xla_cpu changes them for the CLI: see "no_ynn")
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "no_thunks": "--xla_cpu_use_thunk_runtime=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    # Which library runs which op (LibraryFusionType): by default YNNPACK takes
    # the forward convolutions and Eigen the rest (gradients, 3-channel convs).
    "no_ynn": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn_all": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE",
    "xnn_conv": "--xla_cpu_experimental_ynn_fusion_type= "
                "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "onednn_conv": "--xla_cpu_use_onednn=true --xla_cpu_experimental_ynn_fusion_type= "
                   "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
}


def child(victim: str, batch: int, repeats: int) -> None:
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import pairs
    from benchmarks.reference.attack import TorchAttackConfig, direction
    from benchmarks.run import compile_timed, jax_clean, jax_iteration, jax_prepare, nchw, random_start, sample_images
    from benchmarks.timing import alternate, clock
    from leat_jax.attack import AttackConfig

    p = pairs.build(victim)
    cfg = AttackConfig()
    x = sample_images(batch)
    eta = random_start(x, np.arange(batch), 0, cfg.eps)
    params = jax_prepare((p.victim,), cfg, (p.params,))
    clean = jax_clean((p.victim,), cfg)(params, jnp.asarray(x))
    compiled, t_compile = compile_timed(
        jax_iteration((p.victim,), cfg), params, jnp.asarray(x), jnp.asarray(eta), clean
    )
    xt, et = nchw(x), nchw(eta)
    tclean = [p.torch_encoder(xt).detach()]
    runners = {
        "jax": lambda: compiled(params, jnp.asarray(x), jnp.asarray(eta), clean),
        "torch": lambda: direction([p.torch_encoder], tclean, xt, et, TorchAttackConfig()),
    }
    t = alternate(runners, repeats)
    # CPU seconds too: on a shared, oversubscribed machine they move less than wall time.
    cpu = {}
    for k, f in runners.items():
        c0 = time.process_time()
        for _ in range(repeats):
            clock(f)
        cpu[k + "_cpu"] = (time.process_time() - c0) / repeats
    print("RESULT " + json.dumps({**t, **cpu, "compile_s": t_compile}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--victim", default="icface")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sets", default=",".join(FLAG_SETS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.victim, args.batch, args.repeats)
        return 0
    root = Path(__file__).resolve().parents[1]
    for name in args.sets.split(","):
        env = {**os.environ, "XLA_FLAGS": FLAG_SETS[name]}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.xla_flags", "--child", "--victim", args.victim,
                               "--batch", str(args.batch), "--repeats", str(args.repeats)],
                              cwd=root, env=env, capture_output=True, text=True)
        line = [out_line for out_line in proc.stdout.splitlines() if out_line.startswith("RESULT ")]
        if not line:
            print(f"{name:20s} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(line[-1][7:])
        print(f"{name:20s} jax {r['jax']:.3f} s  torch {r['torch']:.3f} s  torch/jax {r['torch'] / r['jax']:.2f}  "
              f"| cpu-s jax {r['jax_cpu']:.3f} torch {r['torch_cpu']:.3f} | compile {r['compile_s']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
