"""A sharded job (tar or Parquet shards in, the same shape out), under either engine.

``run`` holds the lock on DST, settles the settings, skips the shards whose
done marker matches them and the input's version, hands the others to an
engine's ``Runner`` and builds the report from the markers, so it holds
after any crash. ``local`` is the in-process engine's runner: the stages of
``shard_stages`` one shard at a time in this process, on every local device,
the next shard read ahead; ``ray_engine.shard_runner`` runs the same
functions on Ray Data.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Iterator

from leat_jax.engines import shard_sheet, shard_stages
from leat_jax.errors import SetupError
from leat_jax.pipeline import compile_cache, faults, immunize, inputs, job, report, sinks, sources, victimset
from leat_jax.pipeline.config import ImmunizeConfig
from leat_jax.pipeline.progress import Progress


@dataclasses.dataclass(frozen=True)
class Runner:
    """How an engine runs the shard stages.

    Attributes:
      what: the engine and its devices, for the opening line.
      stats: its figures for the report's run (devices, platform, engine...);
        the engine adds those it has at the end (the in-process one: the
        compile cache's hits and misses, batch, out-of-memory retries) as it
        closes.
      rows: shard rows (``shard_stages.shard_row``) -> a row per shard, in
        any order, with its records as JSON text under ``record``.
    """

    what: str
    stats: dict
    rows: Callable[[list[dict]], Iterable[dict]]


def run(cfg: ImmunizeConfig, engine: Callable[[ImmunizeConfig, job.Context], ContextManager[Runner]],
        stream=None) -> immunize.Summary:
    """Run the sharded job at ``cfg.src`` under ``engine``; its summary.

    Args:
      cfg: the run's settings (SRC a shard, a folder of shards or a URL).
      engine: opens the engine for the job's context (``local``, ``ray_engine.shard_runner``).
      stream: where lines go (default stderr).
    Raises:
      SetupError: (one line) SRC has no shards, DST is locked or unwritable, settings the shards cannot take.
      faults.JobFailed: (one line) the job failed on the way; committed shards are kept.
    """
    stream = stream if stream is not None else sys.stderr
    start = time.monotonic()
    if cfg.faces != "aligned":
        raise SetupError(f"--engine {cfg.engine}: --faces detect works on folders and list files, not on tar or "
                         "Parquet shards; use --faces aligned")
    if cfg.distributed is not None:
        raise SetupError("--distributed works on folders and list files; run tar or Parquet shards in one process "
                         "or with --engine ray")
    if cfg.verify:
        raise SetupError("--verify works on folders and list files; a sharded job checks each shard's done marker "
                         "against the settings and the input shard's version (size and ETag or modification time)")
    found = input_shards(cfg.src, cfg.dst)
    try:
        lock = sinks.output_lock(cfg.dst)  # no second run writes these shards at the same time
        lock.acquire()
    except OSError as e:  # DST a file, or not writable
        raise SetupError(f"{cfg.dst}: cannot write there ({e.strerror or e})") from None
    try:
        sinks.clear_partial(cfg.dst, [s.rel for s in found] + [inputs.CONTACT_SHEET])
        return stages(cfg, found, engine, stream, start)
    finally:
        lock.release()


def input_shards(src: str, dst: str) -> list[sources.Shard]:
    """The shards of SRC to protect into DST: ``SetupError`` (one line) when there are none or DST would overwrite one.

    With DST inside SRC the shards under DST are outputs, not inputs; with
    SRC inside DST they are all inputs.
    """
    try:
        listed = sources.list_shards(src)
    except sources.SourceError as e:
        raise SetupError(str(e)) from None
    loose = loose_image(src)
    if loose:  # a photo folder with a stray archive: its photos would be skipped without a word
        raise SetupError(f"{src}: images ({loose}) beside .tar or .parquet shards at its top; a sharded job reads "
                         "only the shards: move the images into a folder of their own or into a shard")
    for s in listed:
        if same_place(s.url, f"{dst.rstrip('/')}/{s.rel}"):
            raise SetupError(f"{s.url}: its output would overwrite it (DST {dst} is where SRC's shards are); "
                             "give another DST")
    found = listed if inside(src, dst) else [s for s in listed if not inside(s.url, dst)]
    if not found:
        raise SetupError(f"{src}: no .tar or .parquet shards")
    return found


def loose_image(src: str) -> str | None:
    """The name of an image file at the top of SRC when SRC is a local folder; None otherwise."""
    folder = Path(src)
    if "://" in src or not folder.is_dir():
        return None
    return next((p.name for p in sorted(folder.iterdir()) if inputs.is_image_name(p.name) and p.is_file()), None)


def same_place(url: str, other: str) -> bool:
    """Whether two URLs or paths name the same file."""
    (fs, path), (other_fs, other_path) = sources.filesystem(url), sources.filesystem(other)
    return fs.protocol == other_fs.protocol and path.rstrip("/") == other_path.rstrip("/")


def inside(url: str, dst: str) -> bool:
    """Whether the shard at ``url`` lies under DST (DST inside SRC: never take our own outputs for inputs)."""
    (fs, path), (dst_fs, dst_path) = sources.filesystem(url), sources.filesystem(dst)
    return fs.protocol == dst_fs.protocol and path.startswith(dst_path.rstrip("/") + "/")


def stages(cfg: ImmunizeConfig, found: list, engine, stream, start) -> immunize.Summary:
    """The settings, the shards still to do, the stages under the engine, the report."""
    say = (lambda text: None) if cfg.quiet else (lambda text: print(text, file=stream, flush=True))
    # the identities and the checkpoints' structure: an engine loads the weights where it attacks
    loaded = victimset.load(cfg.victim_specs(), cfg.stand_in_weights, cfg.extra_victims, weights=False)
    settings, settings_hash = job.settings(cfg, loaded)
    warning = immunize.STAND_IN_WARNING.format(names=", ".join(loaded.stand_in)) if loaded.stand_in else None
    for line in (warning, immunize.JPEG_WARNING if cfg.format == "jpeg" else None):  # as the folder job warns
        if line:
            print(line, file=stream, flush=True)
    dst = cfg.dst.rstrip("/")
    ctx = job.Context(Path(dst), Path("."), settings_hash, 0, cfg.attack.eps, cfg.format, cfg.jpeg_quality,
                      cfg.max_size, tuple(loaded.names), {})
    out = {s.rel: f"{dst}/{s.rel}" for s in found}
    counts = job.Counts()
    todo = to_do(found, out, settings_hash, cfg.force, counts)
    unread = []  # records of shards that could not be read: no marker holds them
    with engine(cfg, ctx) if todo else idle(cfg) as runner:
        say(f"leat-jax: {immunize.counted(len(found), 'shard')} ({len(found) - len(todo)} done before) "
            f"from {cfg.src} -> {dst}; "
            f"victims: {', '.join(loaded.names)}; {runner.what}; eps {cfg.attack.eps}, "
            f"{cfg.attack.iterations} iterations")
        rows = [shard_stages.shard_row(s, out[s.rel]) for s in todo]
        for k, r in enumerate(runner.rows(rows) if rows else (), 1):
            records = json.loads(r["record"])
            failed = count(records, counts, out, unread, stream)
            say(f"leat-jax: shard {k}/{len(rows)} {shard_stages.shard_of(r['item']).rel}: "
                f"{len(records) - failed} protected, {failed} failed ({time.monotonic() - start:.0f} s)")
    try:
        summary = finish(cfg, found, out, counts, (settings, settings_hash, warning, runner.stats, unread), say, start)
    except OSError as e:  # DST became unwritable after the last shard
        raise faults.JobFailed(f"{e.filename or dst}: {e.strerror or e}; the report was not written, committed shards "
                               "are kept; run the same command again to write it") from None
    if loaded.stand_in:
        print("leat-jax: reminder: stand-in weights; this output protects against nothing.", file=stream, flush=True)
    return summary


def to_do(found: list, out: dict, settings_hash: str, force: bool, counts: job.Counts) -> list:
    """The shards without a matching done marker (all with ``force``); the others' images count as skipped."""
    todo = []
    for s in found:
        marker = None if force else sinks.committed(out[s.rel], settings_hash, s.version)
        if marker is None:
            todo.append(s)
        else:
            counts.skipped += sum(r["status"] == "done" for r in marker["records"])
    return todo


def count(records: list[dict], counts: job.Counts, out: dict, unread: list, stream) -> int:
    """Count a finished shard's records, each failure shown on its line; a shard's unread record to ``unread``.

    Returns:
      How many of ``records`` failed.
    """
    failed = 0
    for record in records:
        if record["status"] == "failed":
            failed += 1
            unread += [record] if record["path"] in out else []
            print(f"leat-jax: error: {record['error']}", file=stream, flush=True)
    counts.failed += failed
    counts.protected += len(records) - failed
    return failed


def finish(cfg, found, out, counts: job.Counts, about, say, start) -> immunize.Summary:
    """The report, built from the committed shards' markers; the summary."""
    settings, settings_hash, warning, engine_stats, unread = about
    rows, total, markers = [], 0, {}
    for s in found:
        markers[s.rel] = sinks.committed(out[s.rel], settings_hash, s.version) or {"records": []}
        records = {r["path"]: r for r in markers[s.rel]["records"]}
        total += len(records)
        rows.append(([inputs.Item(rel, Path(rel), rec.get("output") or rel) for rel, rec in records.items()], records))
    rows.append(([inputs.Item(r["path"], Path(r["path"]), r["path"]) for r in unread], {r["path"]: r for r in unread}))
    seconds = time.monotonic() - start
    stats = {"process": 0, "inputs": total, "protected": counts.protected, "skipped": counts.skipped,
             "failed": counts.failed, "seconds": seconds, "no_face": 0, **engine_stats, "shards": len(found)}
    data = report.build(rows, settings, [stats], cfg.src, cfg.dst, warning)
    dst = cfg.dst.rstrip("/")
    shown = shard_sheet.pairs(found, out, markers, cfg.contact_sheet) if cfg.contact_sheet else []
    sheet = shard_sheet.write(dst, shown, cfg.attack.eps, warning)  # first: a failure leaves no report, as said
    sinks.put(f"{dst}/{inputs.SETTINGS}", (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode())
    sinks.put(f"{dst}/{inputs.REPORT}", (json.dumps(data, indent=2) + "\n").encode())
    say(immunize.closing_line(counts, seconds, f"{dst}/{inputs.REPORT}", sheet))
    return immunize.Summary(total, counts.protected, counts.skipped, counts.failed, seconds,
                            local_path(f"{dst}/{inputs.REPORT}"), local_path(sheet),
                            tuple(settings["stand_in_weights"]))


def local_path(url: str | None) -> Path | None:
    """``url`` as a path when it is on the local disk (a summary's paths); None for an object store's or none."""
    return None if url is None or "://" in url else Path(url)


@contextlib.contextmanager
def idle(cfg: ImmunizeConfig) -> Iterator[Runner]:
    """No engine at all: every shard was done before, so no weights are loaded and no cluster is started."""
    yield Runner("every shard done before, no engine started", {"devices": 0, "platform": None, "engine": cfg.engine},
                 lambda rows: ())


@contextlib.contextmanager
def local(cfg: ImmunizeConfig, ctx: job.Context, stream=None, overlap: bool = True) -> Iterator[Runner]:
    """The in-process engine's runner: every local device, the victims' weights loaded and prepared once.

    On ``stream`` (default stderr), as the folder job shows them: a progress
    bar per shard (images attacked, rate, ETA; none when quiet) and the
    attack's lines (each compilation, out-of-memory retries; none when quiet either) through it.
    ``overlap``: read and decode the next shard while this one is attacked
    (False: one after the other, as a benchmark compares).
    """
    bars = ShardBars(stream if stream is not None else sys.stderr, cfg.quiet)
    loaded = victimset.load(cfg.victim_specs(), cfg.stand_in_weights, cfg.extra_victims)
    mesh = immunize.mesh_of(cfg)
    compile_cache.use(compile_cache.resolve(cfg.compile_cache))
    stage = immunize.attack_stage(cfg, ctx, loaded, mesh, None, bars.show)
    platform = mesh.devices.flat[0].platform
    stats = {"devices": int(mesh.devices.size), "platform": platform, "engine": "inprocess"}
    # --workers threads decode and encode a shard's images, as the folder job's read and write them
    pool = cf.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="leat-shard-io")
    reader = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="leat-shard-ahead") if overlap else None
    try:
        with compile_cache.Counter() as compiles:
            yield Runner(f"{mesh.devices.size} {platform} device(s), batch {stage.batch}", stats,
                         lambda rows: in_turn(rows, ctx, stage, bars, pool, reader))
        stats.update(compile_cache={"folder": immunize.jax_cache_folder(cfg), **compiles.stats()}, **stage.stats())
    finally:  # on Ctrl-C too: a shard read ahead is dropped (reading writes nothing), queued decodes are cancelled
        if reader is not None:
            reader.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)


def in_turn(rows: list[dict], ctx: job.Context, stage, bars=None, pool=None, reader=None) -> Iterator[dict]:
    """Each row's shard read, attacked and committed here, in order: its row of records (``one_shard``).

    With a ``reader`` (one thread) the next shard is read and decoded while
    this one is attacked and written: at most one shard ahead, so at most
    two shards' images are held. Its failure surfaces at its turn, as
    without one, after the shards before it are committed.
    """
    def read(r: dict):
        return shard_stages.read_entries(shard_stages.shard_of(r["item"]), ctx, pool)

    ahead = reader.submit(read, rows[0]) if reader is not None and rows else None
    for k, r in enumerate(rows):
        if reader is None:
            entries = functools.partial(read, r)
        else:  # the last shard's future is dropped before the next read starts
            got = ahead
            entries = got.result
            ahead = reader.submit(read, rows[k + 1]) if k + 1 < len(rows) else None
        yield one_shard(r, entries, ctx, stage, bars, pool)


class ShardBars:
    """The in-process engine's progress bar of the shard being attacked, and lines shown without tearing it."""

    def __init__(self, stream, quiet: bool):
        self.stream, self.quiet, self.bar = stream, quiet, None

    def open(self, total: int) -> Callable[[int], None]:
        """A bar for a shard of ``total`` images to attack; its ``update`` (images done)."""
        self.bar = Progress(total, stream=self.stream, quiet=self.quiet)
        return self.bar.update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def show(self, text: str) -> None:
        """One of the attack's lines (compilations, retries): progress, so none when quiet."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.message(text)
        else:
            print(text, file=self.stream, flush=True)


def one_shard(r: dict, entries: Callable[[], list | dict], ctx: job.Context, stage, bars=None, pool=None) -> dict:
    """Read (``entries()``: ``shard_stages.read_entries``'s), attack and commit one shard here; one line for a failure
    that stops the job (``faults.JobFailed``)."""
    try:
        return shard_stages.attack_and_commit(r, entries(), ctx, stage, bars, pool)
    except OSError as e:  # DST became unwritable mid-run
        raise faults.JobFailed(f"{e.filename or r['out']}: {e.strerror or e}; the job stopped, committed shards are "
                               "kept") from None
    except Exception as e:
        if not faults.is_out_of_memory(e):
            raise
        raise faults.JobFailed(f"device out of memory ({str(e).strip().splitlines()[0]})") from None
