"""The Ray engine: the immunize job's stages on Ray Data, over a cluster of accelerator hosts.

The driver lists the inputs into shards, keeps the manifest and the done
markers (``job.Recorder``) and writes the report, as the in-process engine
does. Ray Data streams the rest: CPU tasks read and decode, an autoscaling
pool of actors on the accelerators attacks (each loads and prepares the
weights once, with the persistent compilation cache on), CPU tasks quantise,
encode and write. Rows between stages are plain data (JSON text, pickled host
arrays); only the driver appends records, once the files are in place. The
same stage functions run on the same inputs with the same batch shapes, so
outputs are byte-identical to the in-process engine's.

A cluster this module starts listens on 127.0.0.1 only and has no
dashboard, so no jobs API (whoever reaches that API runs code on the
cluster); see ``single_machine``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import ipaddress
import json
import logging
import pickle
import re
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from leat_jax import parallel, xla_cpu
from leat_jax.engines import shard_stages, sharded_job
from leat_jax.engines.shard_stages import ATTACKED, PREPARED, RECORD
from leat_jax.errors import SetupError
from leat_jax.pipeline import (
    compile_cache,
    faults,
    immunize,
    inputs,
    job,
    manifest,
    reading,
    shards,
    sources,
    victimset,
    writing,
)
from leat_jax.pipeline.config import ImmunizeConfig
from leat_jax.pipeline.lock import Lock
from leat_jax.pipeline.progress import Progress
from leat_jax.pipeline.resume import Resume

# Kinds of row between the stages: skipped (done before), records, entries to attack, entries attacked;
# and a row an attack actor could not take, its record the actor's one-line SetupError (see Attacker).
SKIPPED = "skipped"
SETUP_FAILED = "setup-failed"
# CPUs a read or write task asks for, and an attack actor without accelerators. They differ so that
# Ray Data does not fuse reading into the actors (it fuses stages whose resource requests are equal).
TASK_CPUS = 0.5
ACTOR_CPUS = 0.25
LOOPBACK = "127.0.0.1"


def import_ray():
    """The ``ray`` module; a one-line ``SetupError`` when the extra is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SetupError("--engine ray needs Ray Data: pip install 'leat-jax[ray]'") from None
    # The job's own progress line shows the global count, rate and ETA; Ray Data's would tear it. With its bars off,
    # Ray Data's progress module warns so once per process: that module alone is kept to errors.
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Ray 2.60's DataContext warns of three deprecated fields (use_push_based_shuffle, use_polars,
    # use_arrow_tensor_v2) when it is first built, for its own defaults: not from our calls (ray-project/ray#65302).
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # Left as is: the driver's core worker notes once that the attack actors restart from arguments in the object
    # store (ray-project/ray#53727); its one switch, RAY_BACKEND_LOG_LEVEL, prints a line of its own instead.
    return ray


def pool_size(text: str | None, accelerators: int) -> tuple[int, int]:
    """(min, max) attack actors from ``N`` or ``MIN-MAX``; None: one per accelerator (one on CPU).

    Raises:
      SetupError: when ``text`` is neither.
    """
    if text is None:
        return 1, max(1, accelerators)
    found = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    low, high = (int(found[1]), int(found[2] or found[1])) if found else (0, 0)
    if not found or low < 1 or high < low:
        raise SetupError(f"--ray-actors: expected N or MIN-MAX (1 <= MIN <= MAX), got {text!r}")
    return low, high


def connect(ray, address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address``, or start a local one; True when this call started it.

    A local cluster listens on 127.0.0.1 only and has no dashboard, so no
    jobs API; a driver joining at a loopback address listens there too.
    ``num_cpus``: the local cluster's CPUs (None: the machine's). A process
    already connected (``ray.init`` done by the caller) is used as is, once
    ``address`` answers.
    """
    if address:
        answering(address)
    if ray.is_initialized():
        return False
    try:
        with single_machine(ray, address is None or is_loopback(address_host(address))), warnings.catch_warnings():
            # Ray starts its servers by fork and exec (subprocess): no Python runs in the child, so JAX's
            # warning against forking its threads (the driver's checkpoint check starts them) does not apply.
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            if address:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR", _node_ip_address=LOOPBACK)
    except Exception as e:  # ray raises several types for an address nothing answers at
        text = str(e).strip().splitlines()
        where = address or "a local cluster"
        raise SetupError(f"--ray-address {where}: cannot join the Ray cluster "
                         f"({type(e).__name__}: {text[0] if text else ''})") from None
    return True


@contextlib.contextmanager
def single_machine(ray, on: bool = True):
    """While it is open (and ``on``), ``ray.init`` keeps a loopback node address, so every server binds there.

    Ray binds each node's servers (GCS, raylet, object manager, workers,
    agents, metrics) to the node's address, or to every interface when that
    address is not loopback; and in cluster mode it turns a loopback address
    into the host's reachable one (``services.resolve_ip_for_localhost``),
    for a new node and for an address joined alike. Its single-machine mode
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once at import) keeps
    loopback; it is switched on around this call only, as the variable
    would switch it for the whole process.
    """
    constants = importlib.import_module("ray._private.ray_constants")
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = before and not on
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def address_host(address: str) -> str | None:
    """HOST of a ``[ray://]HOST:PORT`` address; None for ``auto`` and other forms Ray resolves itself."""
    found = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address.strip())
    return found[1] if found else None


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``, IPv4-mapped loopback)."""
    if host == "localhost":
        return True
    try:
        found = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return (getattr(found, "ipv4_mapped", None) or found).is_loopback


def answering(address: str, timeout: float = 5.0) -> None:
    """Raise a one-line ``SetupError`` when nothing answers at a ``[ray://]HOST:PORT`` address.

    Ray itself retries an unanswered address for minutes before it gives up.
    """
    host = address_host(address)
    if host is None:
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(address.strip().rsplit(":", 1)[1])), timeout=timeout).close()
    except OSError as e:
        raise SetupError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); "
                         "start the cluster first (ray start --head)") from None


def item_text(item: inputs.Item) -> str:
    return json.dumps([item.rel, str(item.path), item.output, item.problem, item.size, item.mtime_ns])


def item_of(text: str) -> inputs.Item:
    rel, path, output, problem, size, mtime_ns = json.loads(text)
    return inputs.Item(rel, Path(path), output, problem, size, mtime_ns)


def row(item: inputs.Item, previous: dict | None, shard: int = 0) -> dict:
    """The list stage's row of one input: the item, its previous record (for the read stage), its shard."""
    return {"item": item_text(item), "previous": json.dumps(previous) if previous else "", "kind": "", "record": "",
            "payload": b"", "shard": shard}


def list_shard(r: dict, work: str, state: str, redo: bool) -> list[dict]:
    """The list stage on one shard number (a CPU task): a row per input, from the spilled listing.

    Reads the listing and the previous records where the driver spilled them
    (under DST, which every worker of a folder job shares).
    """
    s = int(r["shard"])
    previous = {} if redo else shards.Store(Path(state)).records(s)
    return [row(item, previous.get(item.rel), s) for item in shards.listing(Path(work), s)]


def read_row(r: dict, ctx: job.Context) -> dict:
    """The read and decode stage on one row (a CPU task)."""
    item = item_of(r["item"])
    previous = json.loads(r["previous"]) if r["previous"] else None
    got = reading.read(dataclasses.replace(ctx, previous={item.rel: previous} if previous else {}), item)
    out = {**r, "previous": ""}
    if isinstance(got, job.Skipped):
        return {**out, "kind": SKIPPED}
    if isinstance(got, job.Failure):
        return {**out, "kind": RECORD, "record": json.dumps([writing.failed_record(ctx, item, got.error)])}
    return {**out, "kind": PREPARED, "payload": pickle.dumps([got], protocol=pickle.HIGHEST_PROTOCOL)}


def write_row(r: dict, ctx: job.Context) -> dict:
    """The quantise, encode and write stage on one row (a CPU task); its record."""
    if r["kind"] != ATTACKED:
        return r
    records = [writing.write_image(ctx, *entry) for entry in pickle.loads(r["payload"])]
    return {**r, "kind": RECORD, "record": json.dumps(records), "payload": b""}


class Attacker:
    """The attack stage as a Ray actor: loads and prepares the weights once, attacks batches of rows.

    An actor that cannot set up (a checkpoint damaged inside its arrays, which
    the driver's cheap check does not read) does not die: it hands each row
    to attack back as ``SETUP_FAILED`` with its one-line error, which the driver raises
    (``streamed``). A dying actor's error would reach the user inside Ray's
    tracebacks, as a failed job to run again.

    Args:
      cfg: the run's settings (victims, attack, seed, batch size, devices).
      ctx: the job's context.
    """

    def __init__(self, cfg: ImmunizeConfig, ctx: job.Context):
        xla_cpu.cpu_flags()  # before any computation, as the CLI does
        compile_cache.use(compile_cache.resolve(cfg.compile_cache))
        self.ctx, self.problem = ctx, None
        try:
            loaded = victimset.load(cfg.victim_specs(), cfg.stand_in_weights, cfg.extra_victims)
            self.detector = immunize.face_detector(cfg, None)[0]
            self.stage = immunize.attack_stage(cfg, ctx, loaded, parallel.data_mesh(cfg.devices), self.detector,
                                               lambda text: None)
        except SetupError as e:
            self.problem = str(e)

    def __call__(self, batch: dict) -> dict:
        """Attack every ``job.Prepared`` entry of the batch's rows, grouped by image size.

        Photos (``--faces detect``) are attacked one by one and written here,
        as ``PhotoAttack`` writes them in-process; their rows leave as records.
        """
        kinds, payload, record = list(batch["kind"]), list(batch["payload"]), list(batch["record"])
        entries = {i: pickle.loads(payload[i]) for i, k in enumerate(kinds) if k == PREPARED}
        if self.problem is not None:  # rows already recorded or skipped pass on as they came
            for i in entries:
                kinds[i], payload[i], record[i] = SETUP_FAILED, b"", self.problem
        elif self.detector is not None:
            for i, row_entries in entries.items():
                records = [r for e in row_entries for r in (self.photo(e) if isinstance(e, job.Prepared) else [e])]
                kinds[i], payload[i], record[i] = RECORD, b"", json.dumps(records)
        else:
            shard_stages.attack_entries(self.stage, entries)
            for i, row_entries in entries.items():
                kinds[i], payload[i] = ATTACKED, pickle.dumps(row_entries, protocol=pickle.HIGHEST_PROTOCOL)
        return {**batch, "kind": np.asarray(kinds, dtype=object), "payload": np.asarray(payload, dtype=object),
                "record": np.asarray(record, dtype=object)}

    def photo(self, got: job.Prepared) -> list[dict]:
        """``--faces detect``: detect, attack and write one photo here (``PhotoAttack`` writes); its records."""
        got = self.stage.inspect(got)
        if isinstance(got, job.Failure):
            return [writing.failed_record(self.ctx, got.item, got.error)]
        return [r for launched in self.stage.submit(got) for r in self.stage.finish(launched)]


def dataset(ray, rows: list[dict], cfg: ImmunizeConfig, ctx: job.Context, actors: tuple[int, int], gpus: bool,
            sharded: bool = False, listing: dict | None = None):
    """The stages as one Ray Data dataset over ``rows`` (inputs, or shards); its rows come out as records or skips.

    ``listing``: keyword arguments of ``list_shard``, when ``rows`` are shard numbers of a folder job.
    """
    # A folder job hands each actor call job.IN_FLIGHT device batches, so one is computed while another waits.
    batch = 1 if sharded else (cfg.batch_size or (8 if gpus else 1)) * (cfg.devices or 1) * job.IN_FLIGHT
    read, write = (shard_stages.read_shard, shard_stages.write_shard) if sharded else (read_row, write_row)
    ds = ray.data.from_items(rows)
    if listing is not None:
        ds = ds.flat_map(list_shard, fn_kwargs=listing, num_cpus=TASK_CPUS)
    ds = ds.map(read, fn_kwargs={"ctx": ctx}, num_cpus=TASK_CPUS)
    ds = ds.map_batches(Attacker, fn_constructor_args=(cfg, ctx), batch_size=batch, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]),
                        num_gpus=1 if gpus else 0, num_cpus=1 if gpus else ACTOR_CPUS)
    return ds.map(write, fn_kwargs={"ctx": ctx}, num_cpus=TASK_CPUS)


def drive(ds, recorder: job.Recorder) -> job.Counts:
    """Stream the dataset's rows into the record stage (the driver alone writes the manifest)."""
    try:
        for r in streamed(ds):
            recorder.resume.open_shard(int(r["shard"]), previous=False)
            if r["kind"] == SKIPPED:
                recorder.skipped(item_of(r["item"]))
            else:
                recorder.add(json.loads(r["record"]))
    finally:
        recorder.close()
    return recorder.counts


def run(cfg: ImmunizeConfig, stream=None) -> immunize.Summary:
    """Run the immunize job on a Ray cluster; returns its summary.

    Joins ``cfg.ray_address`` (or starts a local cluster, stopped at the end).
    Raises ``SetupError`` (one line) if it cannot start, ``faults.JobFailed``
    (one line) if the job fails on the way.
    """
    stream = stream if stream is not None else sys.stderr
    start = time.monotonic()
    if cfg.distributed is not None:
        raise SetupError("--engine ray and --distributed exclude each other (Ray shares the work out itself)")
    pool_size(cfg.ray_actors, 0)  # a bad range fails before any cluster starts
    ray = import_ray()
    if cfg.src is not None and sources.is_sharded(cfg.src):
        return sharded_job.run(cfg, functools.partial(shard_runner, ray), stream)
    src = Path(cfg.src) if cfg.src is not None else immunize.SAMPLES
    dst = Path(cfg.dst)
    items = immunize.list_inputs(src, dst, cfg.format)
    tmp_dir = writing.prepare_dst(dst, 0)
    # the identities and the checkpoints' structure: the actors load the weights (the driver would only hold them)
    loaded = victimset.load(cfg.victim_specs(), cfg.stand_in_weights, cfg.extra_victims, weights=False)
    started = connect(ray, cfg.ray_address)
    try:
        with Lock(manifest.state_dir(dst), 0):
            return run_stages(ray, cfg, loaded, src, dst, items, tmp_dir, stream, start)
    except OSError as e:  # DST became unwritable mid-run
        raise faults.JobFailed(f"{e.filename or dst}: {e.strerror or e}; the job stopped, finished images are kept") \
            from None
    finally:
        if started:
            ray.shutdown()


def run_stages(ray, cfg, loaded, src, dst, items, tmp_dir, stream, start) -> immunize.Summary:
    """Settings, shards and resume on the driver; the stages on the cluster; the report."""
    say = (lambda text: None) if cfg.quiet else (lambda text: print(text, file=stream, flush=True))
    settings, settings_hash = job.settings(cfg, loaded, immunize.face_detector(cfg, None)[1])
    warning = immunize.STAND_IN_WARNING.format(names=", ".join(loaded.stand_in)) if loaded.stand_in else None
    for line in (warning, immunize.JPEG_WARNING if cfg.format == "jpeg" else None):
        if line:
            print(line, file=stream, flush=True)
    state = manifest.state_dir(dst)
    work = state / "work-p0"
    base = job.Context(dst, tmp_dir, settings_hash, 0, cfg.attack.eps, cfg.format, cfg.jpeg_quality, cfg.max_size,
                       tuple(loaded.names), {}, cfg.verify)
    resume = Resume(shards.Store(state), work, shards.spill(items, work, 0, 1, dst), dst, settings_hash, cfg.force,
                    cfg.verify)
    ctx = dataclasses.replace(base, previous=resume)
    progress = Progress(resume.total, stream=stream, quiet=cfg.quiet)
    immunize.write_settings(ctx, settings)
    recorder = job.Recorder(ctx, progress, resume)
    # Only shard numbers go to Ray Data, so the driver's memory does not grow with the dataset.
    todo = [{"shard": s} for s in resume.to_do(recorder.skipped_shard)]
    listing = {"work": str(work), "state": str(state), "redo": cfg.force}
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = pool_size(cfg.ray_actors, gpus)
    say(f"leat-jax: {immunize.counted(resume.total, 'image')} from {src} -> {dst}; "
        f"victims: {', '.join(loaded.names)}; Ray engine, "
        f"{actors[0]}-{actors[1]} attack actor(s) on {'GPU' if gpus else 'CPU'}; eps {cfg.attack.eps}, "
        f"{cfg.attack.iterations} iterations")
    try:
        counts = drive(dataset(ray, todo, cfg, base, actors, gpus > 0, listing=listing), recorder) if todo \
            else recorder.counts
    finally:
        recorder.close()  # drive closes it too; with nothing to do the manifest's file was left open
        progress.close()
    seconds = time.monotonic() - start
    stats = {"process": 0, "inputs": resume.total, "protected": counts.protected, "skipped": counts.skipped,
             "failed": counts.failed, "seconds": seconds, "no_face": counts.no_face, "devices": actors[1],
             "platform": "gpu" if gpus else "cpu", "engine": "ray", "actors": list(actors)}
    report_path, sheet_path = immunize.write_report(cfg, ctx, src, settings, stats, 1, warning)
    say(immunize.closing_line(counts, seconds, report_path, sheet_path))
    if loaded.stand_in:
        print("leat-jax: reminder: stand-in weights; this output protects against nothing.", file=stream, flush=True)
    return immunize.Summary(resume.total, counts.protected, counts.skipped, counts.failed, seconds, report_path,
                            sheet_path, loaded.stand_in, counts.no_face)


@contextlib.contextmanager
def shard_runner(ray, cfg: ImmunizeConfig, ctx: job.Context) -> Iterator[sharded_job.Runner]:
    """A sharded job's runner on the cluster (joined, or started and stopped at the end)."""
    started = connect(ray, cfg.ray_address)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = pool_size(cfg.ray_actors, gpus)
        stats = {"devices": actors[1], "platform": "gpu" if gpus else "cpu", "engine": "ray", "actors": list(actors)}
        yield sharded_job.Runner(f"Ray engine, {actors[0]}-{actors[1]} attack actor(s)", stats,
                                 lambda rows: streamed(dataset(ray, rows, cfg, ctx, actors, gpus > 0, sharded=True)))
    finally:
        if started:
            ray.shutdown()


def streamed(ds):
    """The dataset's rows; a failure of the Ray job itself as one line (``faults.JobFailed``).

    Raises:
      SetupError: an attack actor's, at the first row it could not take (records before it are kept).
    """
    try:
        for r in ds.iter_rows():
            if r["kind"] == SETUP_FAILED:
                raise SetupError(r["record"])
            yield r
    except (faults.JobFailed, SetupError, KeyboardInterrupt):
        raise
    except Exception as e:  # a task that failed past its retries, a lost cluster
        text = [line for line in str(e).strip().splitlines() if line.strip()]
        raise faults.JobFailed(f"the Ray job failed ({type(e).__name__}: {text[-1] if text else ''}); "
                               "committed work is kept, run the same command again to finish") from None
