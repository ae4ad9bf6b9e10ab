"""The immunize job's state at scale: peak memory and time of listing, resume and report.

    python -m benchmarks.state [--n 1000000] [--dir /tmp/leat-state-bench] [--keep]

Builds a synthetic tree of N empty ``.png`` files (1000 per folder), then
runs each phase in a fresh process and reports its peak resident memory
(``ru_maxrss``) and wall time:

* listing: walk the tree (streamed, sorted per folder), spill it into shards;
* records: the manifest code appends a ``done`` record per input to its
  shard's manifest and writes each shard's done marker (setup for the next two);
* rerun: decide a fully done rerun: list and spill again (digesting each
  shard with its outputs' size and time on the way), then check each
  shard's marker (every shard skipped, no listing read back, no image opened);
* report: build the report, streamed over the shards.

No image is decoded and nothing is attacked: this measures the state alone.
Figures go to ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import time
from pathlib import Path

PER_FOLDER = 1000
SETTINGS = {"settings_hash": "0" * 16, "victims": [{"name": "e4e"}, {"name": "diffae"}], "faces": {"mode": "aligned"}}


def make_tree(src: Path, n: int) -> None:
    for i in range(n):
        folder = src / f"f{i // PER_FOLDER:05d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:08d}.png").touch()


def _listing(src: Path, dst: Path) -> dict:
    from leat_jax.pipeline import inputs, shards

    found = shards.spill(inputs.stream(src, dst), dst / ".leat-jax" / "work-p0", 0, 1, dst)
    return {"inputs": sum(found.counts.values()), "shards": len(found.counts)}


def _records(src: Path, dst: Path) -> dict:
    from leat_jax.pipeline import shards

    store, work = shards.Store(dst / ".leat-jax"), dst / ".leat-jax" / "work-p0"
    for s in range(shards.SHARDS):
        items = shards.listing(work, s)
        store.append(s, ({"path": i.rel, "status": "done", "settings": SETTINGS["settings_hash"], "output": i.output,
                          "input_size": i.size, "input_mtime_ns": i.mtime_ns, "input_sha256": "0" * 64,
                          "output_sha256": "0" * 64, "output_size": 0, "output_mtime_ns": 0, "linf": 0.02,
                          "distances": {"e4e": {"start": 0.1, "end": 0.9}, "diffae": {"start": 0.2, "end": 0.8}}}
                         for i in items))
        store.mark_done(s, SETTINGS["settings_hash"], shards.digest(items, dst), len(items))
    return {}


def _rerun(src: Path, dst: Path) -> dict:
    from leat_jax.pipeline import inputs, shards
    from leat_jax.pipeline.resume import Resume

    work = dst / ".leat-jax" / "work-p0"
    found = shards.spill(inputs.stream(src, dst), work, 0, 1, dst)
    skipped = []
    resume = Resume(shards.Store(dst / ".leat-jax"), work, found, dst, SETTINGS["settings_hash"])
    todo = sum(1 for _ in resume.items(skipped.append))
    return {"to_do": todo, "skipped": sum(skipped)}


def _report(src: Path, dst: Path) -> dict:
    from leat_jax.pipeline import immunize, report

    runs = [{"seconds": 1.0, "protected": 0, "skipped": 0, "failed": 0, "devices": 1, "platform": "cpu"}]
    data = report.build(immunize.shard_rows(dst / ".leat-jax", 1), SETTINGS, runs, src, dst, None)
    return {"totals": data["totals"], "json_bytes": len(json.dumps(data))}


def _child(phase: str, src: str, dst: str, out) -> None:
    start = time.perf_counter()
    result = globals()[f"_{phase}"](Path(src), Path(dst))
    result.update(seconds=time.perf_counter() - start,
                  peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out.put(result)


def measure(phase: str, src: Path, dst: Path) -> dict:
    """Run one phase in a fresh process; its result with seconds and peak memory."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(phase, str(src), str(dst), q))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/leat-state-bench")
    ap.add_argument("--keep", action="store_true", help="keep the tree (and reuse it next time)")
    args = ap.parse_args()
    root = Path(args.dir)
    src, dst = root / f"src-{args.n}", root / f"dst-{args.n}"
    if not src.exists():
        t = time.perf_counter()
        make_tree(src, args.n)
        print(f"tree of {args.n} files made in {time.perf_counter() - t:.1f}s", flush=True)
    shutil.rmtree(dst, ignore_errors=True)
    results = {"n": args.n, "cpus": os.cpu_count(), "baseline": measure("baseline_", src, dst)}
    for phase in ("listing", "records", "rerun", "report"):
        results[phase] = measure(phase, src, dst)
        print(phase, json.dumps(results[phase]), flush=True)
    print(json.dumps(results))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def _baseline_(src: Path, dst: Path) -> dict:
    """The interpreter with the modules imported, nothing done: the floor of every phase."""
    from leat_jax.pipeline import immunize, report, resume, shards  # noqa: F401

    return {}


if __name__ == "__main__":
    main()
