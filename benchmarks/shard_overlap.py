"""The in-process sharded job with and without reading the next shard while one is attacked, side by side.

    flock /tmp/leat-heavy.lock python -m benchmarks.shard_overlap [--shards 4] [--images 4] [--size 1024] \\
        [--victims simswap_G] [--iterations 1] [--repeats 3] [--read-delays 0,0.5] [--workers 4]

Writes ``--shards`` tar shards of random images, runs the job once to
compile (not timed), then, for each read delay, ``--repeats`` times each
way, alternately, in this process: one shard after the other
(``sharded_job.local(overlap=False)``) and the next shard read and decoded
ahead. Each time is a whole job (a fresh DST; loading the stand-in victims
included; persistent cache off). A read delay stands for a store's latency
(object storage, a network disk): each shard's read first sleeps that long,
which takes no CPU. Also times reading and decoding every shard alone:
overlap can hide at most that (and the delays), less the first shard's.
Checks that both ways write byte-identical shards.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from leat_jax import xla_cpu
from leat_jax.engines import shard_stages, sharded_job
from leat_jax.pipeline import config, job, sinks, sources
from leat_jax.pipeline.victimset import VictimSpec


def write_shards(folder: Path, shards: int, n: int, size: int) -> None:
    """``shards`` tar shards of ``n`` random ``size`` px PNG images each."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for s in range(shards):
        files = []
        for i in range(n):
            data = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(data, "PNG")
            files.append((f"{s:03d}-{i:03d}.png", data.getvalue()))
        (folder / f"shard-{s:03d}.tar").write_bytes(sinks.encode_shard("tar", files))


def timed_job(src: Path, dst: Path, args, overlap: bool) -> float:
    """Wall seconds of one whole sharded job."""
    cfg = config.build(str(src), str(dst), victims=tuple(VictimSpec(v) for v in args.victims.split(",")),
                       stand_in_weights=True, iterations=args.iterations, quiet=True, compile_cache=False,
                       workers=args.workers)
    start = time.monotonic()
    summary = sharded_job.run(cfg, functools.partial(sharded_job.local, overlap=overlap), io.StringIO())
    seconds = time.monotonic() - start
    assert summary.protected == args.shards * args.images and not summary.failed, summary
    return seconds


def delayed(read, delay: float):
    """``shard_stages.read_entries`` that first waits ``delay`` seconds, as a slow store would."""
    def read_entries(*args, **kwargs):
        time.sleep(delay)
        return read(*args, **kwargs)

    return read_entries


def read_seconds(src: Path) -> list[float]:
    """Seconds to read and decode each shard alone (no pool: as one reader thread would, less its helpers)."""
    ctx = job.Context(Path("."), Path("."), "h", 0, 0.05, "png", 95, 4096, (), {})
    times = []
    for shard in sources.list_shards(str(src)):
        start = time.monotonic()
        shard_stages.read_entries(shard, ctx)
        times.append(time.monotonic() - start)
    return times


def outputs(dst: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dst.glob("*.tar"))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--images", type=int, default=4, help="images per shard")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--victims", default="simswap_G")
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=4, help="the job's --workers (decoding and encoding threads)")
    p.add_argument("--read-delays", default="0,0.5", help="seconds each shard's read waits first, comma-separated")
    args = p.parse_args(argv)
    xla_cpu.cpu_flags()  # before any computation, as the CLI does
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards(tmp / "src", args.shards, args.images, args.size)
        timed_job(tmp / "src", tmp / "warm", args, True)  # compiles; not counted
        by_delay, read = {}, shard_stages.read_entries
        for delay in [float(d) for d in args.read_delays.split(",")]:
            shard_stages.read_entries = delayed(read, delay)
            times: dict[str, list[float]] = {"one after the other": [], "next shard read ahead": []}
            try:
                for k in range(args.repeats):
                    for name, overlap in (("one after the other", False), ("next shard read ahead", True)):
                        times[name].append(timed_job(tmp / "src", tmp / f"{delay}-{overlap}-{k}", args, overlap))
            finally:
                shard_stages.read_entries = read
            same = outputs(tmp / f"{delay}-False-0") == outputs(tmp / f"{delay}-True-0") == outputs(tmp / "warm")
            gain = float(np.mean(times["one after the other"]) - np.mean(times["next shard read ahead"]))
            by_delay[delay] = {"seconds": times, "gain_seconds": gain, "byte_identical": same}
        reads = read_seconds(tmp / "src")
    result = {"args": vars(args), "by_read_delay": by_delay, "read_and_decode_seconds": reads,
              "hideable_seconds_without_delay": sum(reads[1:])}
    json.dump(result, sys.stdout, indent=2)
    print()
    return result


if __name__ == "__main__":
    main()
