"""The Ray engine against the in-process engine on the same images, and the Ray driver's memory per record.

    flock /tmp/leat-heavy.lock python -m benchmarks.ray_engine [--images 24] [--size 256] \\
        [--victims simswap_id,simswap_G] [--iterations 10] [--records 200000]

1. The same folder immunized by both engines, one after the other in this
   run (stand-in weights): wall seconds of each whole command, images per
   second and the ratio. Ray's cluster is started first, by this process as
   the engine starts one, and timed apart; the Ray command joins it, so its
   time holds what the in-process command's holds (start, loading the
   victims, compiling) plus Ray's own (the actor's start, Ray Data). The
   steady rate is read off the records: images written after the first, per
   second between the first and the last, so start-up is out of both. And
   whether the files are byte-identical.
2. The driver's peak resident memory while it lists ``--records`` inputs
   into shards and drives them (no attack, no cluster): building every row
   up front (the former driver) against handing Ray Data shard numbers and
   settling each shard's records as they come back (the driver now), in a
   fresh process each, so the growth per record can be read off.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from leat_jax.engines import ray_engine
from leat_jax.pipeline import manifest


def images(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def immunize(src: Path, dst: Path, attack: list[str], *extra: str) -> dict:
    """Wall seconds of one whole ``leat-jax immunize`` command, and its steady rate from the records."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "leat_jax", "immunize", str(src), str(dst), *attack, "--quiet",
                    "--no-compile-cache", *extra], check=True)
    seconds = time.monotonic() - start
    times = sorted(r["time"] for r in manifest.read(dst).values() if r["status"] == "done")
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    return {"seconds": seconds, "images": len(times), "images_per_second": len(times) / seconds,
            "steady_images_per_second": steady}


def files(dst: Path) -> dict[str, bytes]:
    return {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*.png")
            if ".leat-jax" not in p.parts and not p.name.startswith("leat-jax")}


def engines(args) -> dict:
    """Both engines on the same images; Ray's cluster started (and timed) before its command."""
    attack = ["--victims", args.victims, "--stand-in-weights", "--iterations", str(args.iterations)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images(tmp / "src", args.images, args.size)
        one = immunize(tmp / "src", tmp / "one", attack)
        ray = ray_engine.import_ray()
        start = time.monotonic()
        ray_engine.connect(ray, None)
        cluster = time.monotonic() - start
        try:
            on_ray = immunize(tmp / "src", tmp / "ray", attack, "--engine", "ray", "--ray-address",
                              ray.get_runtime_context().gcs_address)
        finally:
            ray.shutdown()
        same = files(tmp / "one") == files(tmp / "ray")
    with_start = args.images / (on_ray["seconds"] + cluster)
    return {"in_process": one, "ray": on_ray, "cluster_start_seconds": cluster,
            "ray_images_per_second_with_cluster_start": with_start,
            "ratio_ray_over_in_process": one["seconds"] / on_ray["seconds"],
            "ratio_steady": (on_ray["steady_images_per_second"] or 0) / (one["steady_images_per_second"] or 1),
            "ratio_with_cluster_start": with_start / one["images_per_second"], "byte_identical": same}


DRIVER = {
    # the former driver: every to-do row built before Ray Data starts
    "rows": "    rows = [ray_engine.row(i, resume.get(i.rel)) for i in resume.items(lambda n: None)]\n"
            "    print(len(rows), before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n",
    # the driver now: shard numbers to Ray Data; each shard opened as its records come back, closed when done
    "shards": "    todo = list(resume.to_do(lambda n: None)); n = 0\n"
              "    for s in todo:\n"
              "        recs = [{'path': i.rel, 'status': 'done'} for i in resume.open_shard(s, previous=False)]\n"
              "        resume.settle(recs); n += len(recs)\n"
              "    print(n, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n",
}


def driver_memory(records: int, mode: str) -> dict:
    """Peak RSS of a fresh process listing ``records`` inputs and driving them as ``DRIVER[mode]`` (no attack)."""
    code = (
        "import resource, sys, tempfile; from pathlib import Path\n"
        "from leat_jax.engines import ray_engine\n"
        "from leat_jax.pipeline import inputs, shards\nfrom leat_jax.pipeline.resume import Resume\n"
        "n = int(sys.argv[1]); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    d = Path(d); items = (inputs.Item(f'f{i // 1000}/{i}.png', d / f'{i}.png', f'f{i // 1000}/{i}.png',"
        " None, 1000, i) for i in range(n))\n"
        "    found = shards.spill(items, d / 'w', 0, 1, d / 'out')\n"
        "    resume = Resume(shards.Store(d), d / 'w', found, d / 'out', 'h')\n"
        + DRIVER[mode]
    )
    out = subprocess.run([sys.executable, "-c", code, str(records)], check=True, capture_output=True, text=True)
    n, before, peak = map(int, out.stdout.split())
    return {"mode": mode, "records": n, "baseline_mib": before / 1024, "peak_mib": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--victims", default="simswap_id,simswap_G")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--records", type=int, default=200_000, help="0: skip the driver's memory")
    args = parser.parse_args()
    result = {"images": args.images, "size": args.size, "victims": args.victims, "iterations": args.iterations,
              "cpus": os.cpu_count(), **engines(args),
              "driver_memory": [driver_memory(n, mode) for mode in DRIVER for n in (args.records // 10, args.records)
                                if args.records],
              "benchmark_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
