"""A child process for tests/test_determinism.py, on N forced host devices.

Usage: python -m tests.determinism_worker OUT.npz --host-devices N attack WEIGHTS IMAGES.npz BATCH
       python -m tests.determinism_worker OUT.npz --host-devices N detect PHOTO...
``attack``: the converted victims in WEIGHTS/<name> attack IMAGES.npz's images
over all N devices, BATCH images per call; ``detect``: the immunize
pipeline's face detector on each photo. The device count is forced with
``chex.set_n_cpu_devices`` before JAX starts.
"""
from __future__ import annotations

import argparse

import numpy as np

# Two real architectures, cheap to compile: SimSwap's generator encoder and ArcFace.
VICTIMS = ("simswap_G", "simswap_id")
ITERATIONS = 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--host-devices", type=int, required=True)
    ap.add_argument("mode", choices=("attack", "detect"))
    ap.add_argument("args", nargs="+")
    args = ap.parse_args()

    import chex

    from leat_jax import xla_cpu

    xla_cpu.cpu_flags()
    chex.set_n_cpu_devices(args.host_devices)
    import jax

    if args.mode == "detect":
        from PIL import Image

        from leat_jax.pipeline import photos

        detector = photos.default_detector()
        found = [detector.detect(np.asarray(Image.open(p).convert("RGB"))) for p in args.args]
        np.savez(args.out, n_devices=jax.device_count(), **{f"boxes{i}": f.boxes for i, f in enumerate(found)},
                 **{f"landmarks{i}": f.landmarks for i, f in enumerate(found)})
        return
    from leat_jax import parallel, victims
    from leat_jax.attack import AttackConfig, prepared
    from leat_jax.parallel.mesh import replicate

    weights, images, batch = args.args
    config = AttackConfig(iterations=ITERATIONS)
    vs, ps = zip(*(victims.load(n, f"{weights}/{n}") for n in VICTIMS))
    mesh = parallel.data_mesh()
    ps = replicate(prepared(vs, config, ps), mesh)
    with np.load(images) as z:
        x, ids = z["x"], z["ids"]
    step = int(batch)
    parts = [parallel.sharded_attack(vs, config, mesh, ps, x[i:i + step], ids[i:i + step], 0)
             for i in range(0, len(x), step)]
    np.savez(args.out, n_devices=mesh.devices.size, protected=np.concatenate([np.asarray(p.protected) for p in parts]),
             dist_end=np.concatenate([np.asarray(p.dist_end) for p in parts]))


if __name__ == "__main__":
    main()
