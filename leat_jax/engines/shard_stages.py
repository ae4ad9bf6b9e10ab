"""The stages of a sharded job (tar or Parquet shards in, the same shape out), as plain functions on rows.

A row is one input shard: ``read_shard`` reads and decodes its images (a
CPU task), ``attack_entries`` attacks them (in ``ray_engine.Attacker`` or,
by ``run_shard``, in this process), and ``write_shard`` quantises, encodes
and checks each image, then commits the output shard whole with its records
in the done marker (``sinks``). A shard that cannot be read fails alone,
with a one-line record.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import pickle
import posixpath
from concurrent.futures import Executor
from pathlib import Path
from typing import Callable

from leat_jax.pipeline import images, job, reading, sinks, sources, writing
from leat_jax.pipeline.images import OUTPUT_FORMATS
from leat_jax.pipeline.inputs import Item

# Kinds of row between the stages (shared with ``ray_engine``).
RECORD, PREPARED, ATTACKED = "record", "prepared", "attacked"


def shard_row(shard: sources.Shard, out_url: str) -> dict:
    return {"item": json.dumps(dataclasses.asdict(shard)), "out": out_url, "previous": "", "kind": "", "record": "",
            "payload": b""}


def shard_of(text: str) -> sources.Shard:
    return sources.Shard(**json.loads(text))


def output_name(key: str, fmt: str) -> str:
    return posixpath.splitext(key)[0] + OUTPUT_FORMATS[fmt]


def read_shard(r: dict, ctx: job.Context) -> dict:
    """Read one shard and decode its images; a row of entries (``job.Prepared`` or a failed record)."""
    entries = read_entries(shard_of(r["item"]), ctx)
    if isinstance(entries, dict):
        return {**r, "kind": RECORD, "record": json.dumps([entries])}
    return {**r, "kind": PREPARED, "payload": pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL)}


def read_entries(shard: sources.Shard, ctx: job.Context, pool: Executor | None = None) -> list | dict:
    """A shard's entries (``job.Prepared`` or a failed record each); the one failed record of an unreadable shard.

    ``pool``: threads that decode the images (in stored order all the same); None: this thread.
    """
    try:
        found = sources.members(shard, sources.read_bytes(shard.url))
    except sources.SourceError as e:
        return {"path": shard.rel, "status": "failed", "process": ctx.process_index, "error": str(e)}

    def entry(member) -> job.Prepared | dict:
        key, blob, problem = member
        item = Item(key, Path(shard.rel, key), output_name(key, ctx.format))
        got = job.Failure(item, problem) if problem else reading.decoded(ctx, item, blob, job.sha256(blob))
        return writing.failed_record(ctx, item, got.error) if isinstance(got, job.Failure) else got

    return list(mapped(pool, entry, found))


def mapped(pool: Executor | None, fn: Callable, items: list):
    """``fn`` over ``items``, in order: on ``pool``'s threads, or in this thread without one."""
    return pool.map(fn, items) if pool is not None else map(fn, items)


def encoded(ctx: job.Context, entry) -> tuple[bytes | None, dict]:
    """(encoded image or None, record) of one entry after the attack."""
    if isinstance(entry, dict):
        return None, entry
    p, protected, distances = entry
    try:
        data, measured = writing.encode_checked(ctx, p, protected)
    except images.ImageError as e:
        return None, writing.failed_record(ctx, p.item, f"{p.item.path}: {e}")
    return data, {"path": p.item.rel, "status": "done", "process": ctx.process_index, "input_sha256": p.input_sha256,
                  "settings": ctx.settings_hash, "output": p.item.output, "output_sha256": job.sha256(data),
                  "distances": distances, "linf": measured, "size": [int(s) for s in p.image.size],
                  "image": p.image.description}


def write_shard(r: dict, ctx: job.Context) -> dict:
    """Encode a shard's attacked images and commit the output shard with its records (marker last)."""
    if r["kind"] != ATTACKED:
        return r
    records = commit_entries(shard_of(r["item"]), r["out"], pickle.loads(r["payload"]), ctx)
    return {**r, "kind": RECORD, "record": json.dumps(records), "payload": b""}


def commit_entries(shard: sources.Shard, out: str, entries: list, ctx: job.Context,
                   pool: Executor | None = None) -> list[dict]:
    """Encode a shard's entries after the attack (on ``pool``'s threads, if any) and commit them at ``out`` (marker
    last); their records."""
    files, records = [], []
    for data, record in mapped(pool, functools.partial(encoded, ctx), entries):
        records.append(record)
        if data is not None:  # tar members take the output's suffix; Parquet keeps the key
            files.append((record["output"] if shard.kind == "tar" else record["path"], data))
    marker = {"settings": ctx.settings_hash, "version": shard.version, "source": shard.url, "records": records}
    sinks.commit(out, sinks.encode_shard(shard.kind, files), marker)
    return records


def attack_entries(stage, entries: dict[int, list], done: Callable[[int], None] | None = None) -> None:
    """Replace each ``job.Prepared`` of ``entries`` by (prepared, protected image, distances), by image size.

    As in the in-process engine, ``job.IN_FLIGHT`` batches are dispatched
    before the oldest is collected: the devices (on CPU, the cores) never
    wait for the host, and a whole shard is never on them at once.

    Args:
      stage: the attack stage (``aligned.AlignedAttack``).
      entries: by row, that row's entries (``job.Prepared`` or failed records); changed in place.
      done: told how many images each collected batch finished (a progress bar's ``update``).
    """
    done = done or (lambda n: None)
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, row_entries in entries.items():
        for j, e in enumerate(row_entries):
            if isinstance(e, job.Prepared):
                by_size.setdefault(e.image.size, []).append((i, j))
    for members in by_size.values():
        chunk, pending, results = [entries[i][j] for i, j in members], collections.deque(), []
        for start in range(0, len(chunk), stage.batch):
            pending.extend(stage.launch(chunk[start:start + stage.batch]))
            while len(pending) > job.IN_FLIGHT:
                results += collected(stage, pending.popleft(), done)
        while pending:
            results += collected(stage, pending.popleft(), done)
        for (i, j), result in zip(members, results):
            entries[i][j] = result


def collected(stage, launched, done: Callable[[int], None]) -> list:
    """The results of one launched batch, their count told to ``done``."""
    results = stage.collect(launched)
    done(len(results))
    return results


def run_shard(r: dict, ctx: job.Context, stage, bars=None, pool: Executor | None = None) -> dict:
    """Every stage of one shard in this process (the in-process engine): its row of records.

    The entries go from stage to stage as they are: no pickled copy of the
    shard's images beside them, as a Ray row needs. ``bars``: the shard's
    progress bar (``sharded_job.ShardBars``): ``open(images to attack)``
    gives its update, ``close()`` ends it after the attack. ``pool``:
    threads that decode and encode the shard's images (None: this thread).
    """
    return attack_and_commit(r, read_entries(shard_of(r["item"]), ctx, pool), ctx, stage, bars, pool)


def attack_and_commit(r: dict, entries: list | dict, ctx: job.Context, stage, bars=None,
                      pool: Executor | None = None) -> dict:
    """The stages of ``run_shard`` after the read, on the shard's ``entries`` (``read_entries``): its row of records."""
    if isinstance(entries, dict):
        return {**r, "kind": RECORD, "record": json.dumps([entries])}
    done = bars.open(sum(isinstance(e, job.Prepared) for e in entries)) if bars is not None else None
    try:
        attack_entries(stage, {0: entries}, done)
    finally:
        if bars is not None:
            bars.close()
    records = commit_entries(shard_of(r["item"]), r["out"], entries, ctx, pool)
    return {**r, "kind": RECORD, "record": json.dumps(records), "payload": b""}
