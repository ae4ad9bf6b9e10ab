"""A child process for the device tests: runs the toy attack, saves the result.

Usage: python -m tests.parallel_worker OUT.npz [--host-devices N] [--devices N]
       [--coordinator HOST:PORT --num-processes P --process-id I]
The CPU device count is forced with ``chex.set_n_cpu_devices`` before JAX starts.
"""
from __future__ import annotations

import argparse

import numpy as np


def inputs(n=7, size=32):
    rng = np.random.default_rng(42)
    return rng.uniform(-0.9, 0.9, (n, size, size, 3)).astype(np.float32), np.arange(100, 100 + n, dtype=np.uint32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--devices", type=int)
    ap.add_argument("--coordinator")
    ap.add_argument("--num-processes", type=int)
    ap.add_argument("--process-id", type=int)
    ap.add_argument("--host-devices", type=int, default=1, help="CPU devices to force (chex), before JAX starts")
    args = ap.parse_args()

    import chex

    chex.set_n_cpu_devices(args.host_devices)
    from leat_jax import parallel

    if args.coordinator:
        parallel.initialize(parallel.DistributedConfig(args.coordinator, args.num_processes, args.process_id))
    import jax

    from leat_jax.attack import AttackConfig
    from tests.toys import toy_victim

    victims = (toy_victim("weak", 1.0), toy_victim("strong", 1000.0**0.5))
    params = (victims[0].init_params(1), victims[1].init_params(2))
    x, ids = inputs()
    index = np.arange(len(ids))
    if args.coordinator:
        index = np.asarray(parallel.process_share(list(index)))
    mesh = parallel.data_mesh(args.devices)
    out = parallel.sharded_attack(victims, AttackConfig(iterations=4), mesh, params, x[index], ids[index], 3)
    np.savez(args.out, index=index, protected=np.asarray(out.protected), dist_end=np.asarray(out.dist_end),
             n_devices=mesh.devices.size, process_count=jax.process_count())


if __name__ == "__main__":
    main()
