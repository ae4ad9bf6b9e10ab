"""The immunize job: protect every image under SRC, write each under DST.

``run`` sets the job up and runs its stages (``leat_jax.pipeline.job``):
list (``inputs``) -> read and decode (``reading``) -> attack (``aligned`` for
face crops, ``photos`` for photos) -> quantise, encode and write
(``writing``) -> record (``job.Recorder``, the manifest) -> report.

Results do not depend on batch size, device count, process count or
interruption: an image's random start is keyed by (seed, its relative
path), nothing in the attack spans two images, and each device maps over
steps of a fixed number of images (the microbatch, the last one padded), so
each image meets the same program. They do depend on the microbatch (part of
the settings hash; its default is the platform's) and the platform.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import sys
import time
from pathlib import Path

from leat_jax import parallel
from leat_jax.attack import prepared
from leat_jax.errors import SetupError
from leat_jax.parallel.mesh import replicate
from leat_jax.pipeline import (
    compile_cache,
    faults,
    inputs,
    job,
    manifest,
    photos,
    reading,
    report,
    shards,
    sources,
    victimset,
    writing,
)
from leat_jax.pipeline.aligned import AlignedAttack
from leat_jax.pipeline.config import ImmunizeConfig
from leat_jax.pipeline.lock import Lock, departed
from leat_jax.pipeline.progress import Progress
from leat_jax.pipeline.resume import Resume

SAMPLES = Path(__file__).resolve().parent / "samples"
STAND_IN_WARNING = (
    "WARNING: stand-in weights ({names}): random networks of the real architectures. "
    "This output protects against NOTHING; it only shows the job working. "
    "For protection, convert the official checkpoints (`leat-jax convert`) and pass --victims NAME=DIR,..."
)
JPEG_WARNING = (
    "warning: --format jpeg: JPEG compression changes the pixels after the attack and weakens the protection; "
    "the eps bound holds on the pixels before compression (the report records the change measured after it)"
)


@dataclasses.dataclass
class Summary:
    """What a run did (this process)."""

    total: int  # inputs of this process
    protected: int  # protected in this run
    skipped: int  # already done with the same input and settings
    failed: int
    seconds: float
    report: Path | None  # written by process 0
    contact_sheet: Path | None
    stand_in: tuple[str, ...]
    no_face: int = 0  # --faces detect: photos without a face, written unchanged

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def join(cfg: ImmunizeConfig) -> tuple[int, int]:
    """(this process's index, process count): joins ``jax.distributed`` when asked."""
    if cfg.distributed is None:
        return 0, 1
    try:
        return parallel.initialize(cfg.distributed)
    except Exception as e:  # jax raises several types for a bad address or count
        raise SetupError(f"--distributed: cannot join the job ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def run_identity(cfg: ImmunizeConfig, process_count: int) -> str | None:
    """What the processes of one run share in their locks (None: this process alone is the run)."""
    if cfg.distributed is None:
        return None
    return f"jax.distributed {cfg.distributed.coordinator or 'auto'} x{process_count}"


def list_inputs(src: Path, dst: Path, fmt: str):
    """The list stage: every input under ``src``, streamed; ``SetupError`` when SRC is unusable."""
    try:
        return inputs.stream(src, dst, fmt)
    except inputs.InputError as e:
        raise SetupError(str(e)) from None


def mesh_of(cfg: ImmunizeConfig):
    try:
        return parallel.data_mesh(cfg.devices)
    except ValueError as e:
        raise SetupError(f"--devices: {e}") from None


def face_detector(cfg: ImmunizeConfig, detector):
    """(the detector, its settings) for ``--faces detect``; (None, None) for aligned crops."""
    if cfg.faces != "detect":
        return None, None
    if detector is None:
        try:
            detector = photos.default_detector()
        except Exception as e:  # missing or damaged detector weights
            text = str(e).strip().splitlines()
            raise SetupError(f"--faces detect: cannot load the face detector ({type(e).__name__}: "
                             f"{text[0] if text else ''})") from None
    return detector, photos.settings(detector)


def attack_stage(cfg: ImmunizeConfig, ctx: job.Context, loaded, mesh, detector, say, warn=None):
    """The attack stage of the faces mode, with the victims' weights prepared once per run.

    Victims loaded without weights (``victimset.load(weights=False)``: nothing
    left to attack) give a stage for its batch and stats only, never to be given an image.
    """
    weighed = all(p is not None for p in loaded.params)
    # Weight-only work (kernel flips, compute-dtype cast) once per run, not once per batch.
    params = prepared(loaded.victims, cfg.attack, loaded.params) if weighed else None
    if cfg.faces == "detect":
        return photos.PhotoAttack(ctx, loaded.victims, cfg.attack, params, cfg.seed, tuple(mesh.devices.flat), detector,
                                  say)
    microbatch = parallel.mesh_microbatch(mesh, cfg.microbatch)
    per_device = cfg.batch_size or microbatch
    return AlignedAttack(ctx, loaded.victims, cfg.attack, replicate(params, mesh) if weighed else None, cfg.seed,
                         mesh, per_device, say, microbatch, warn)


def run(cfg: ImmunizeConfig, stream=None, detector=None) -> Summary:
    """Run the folder job (SRC a folder, an image or a list file) in this process; returns its summary.

    Tar or Parquet shards and the Ray engine go through ``leat_jax.engines.run``
    (which calls this for the rest): here shards are refused in one line.
    Raises ``SetupError`` (one line) if it cannot start, ``faults.JobFailed``
    (one line) if the job itself fails on the way (disk full, output folder
    gone, out of device memory at one image per device).
    ``detector``: the face detector of ``--faces detect`` (an object with
    ``detect(uint8 HWC image) -> Faces``); None: the shipped one.
    """
    stream = stream if stream is not None else sys.stderr
    start = time.monotonic()
    if cfg.src is not None and sources.is_sharded(cfg.src):  # without this, "no images": the shards are not listed
        raise SetupError(f"{cfg.src}: tar or Parquet shards; this is the folder job, run shards with "
                         "leat_jax.engines.run(cfg) (as the CLI does)")
    process_index, process_count = join(cfg)
    src = Path(cfg.src) if cfg.src is not None else SAMPLES
    dst = Path(cfg.dst)
    items = list_inputs(src, dst, cfg.format)
    tmp_dir = writing.prepare_dst(dst, process_index)
    with Lock(manifest.state_dir(dst), process_index, run_identity(cfg, process_count)):
        clear_leftovers(manifest.state_dir(dst), tmp_dir, process_index, process_count)
        # the identities and the checkpoints' structure; the weights once something is left to attack (run_stages)
        loaded = victimset.load(cfg.victim_specs(), cfg.stand_in_weights, cfg.extra_victims, weights=False)
        mesh = mesh_of(cfg)
        detector, faces = face_detector(cfg, detector)
        settings, settings_hash = job.settings(cfg, loaded, faces)
        warning = STAND_IN_WARNING.format(names=", ".join(loaded.stand_in)) if loaded.stand_in else None
        compile_cache.use(compile_cache.resolve(cfg.compile_cache))
        base = job.Context(dst, tmp_dir, settings_hash, process_index, cfg.attack.eps, cfg.format, cfg.jpeg_quality,
                           cfg.max_size, tuple(loaded.names), {}, cfg.verify)
        try:
            summary = run_stages(cfg, base, items, (src, settings, warning, process_count), loaded, mesh, detector,
                                 stream, start)
        except OSError as e:  # DST became unwritable (disk full, unmounted...) mid-run
            gone = not manifest.state_dir(dst).is_dir()
            where, why = (dst, writing.GONE) if gone else (e.filename or dst, e.strerror or e)
            raise faults.JobFailed(f"{where}: {why}; the job stopped, finished images are kept") from None
        except Exception as e:
            if not faults.is_out_of_memory(e):
                raise
            raise faults.JobFailed(f"device out of memory ({str(e).strip().splitlines()[0]})") from None
    if loaded.stand_in:
        print("leat-jax: reminder: stand-in weights; this output protects against nothing.", file=stream, flush=True)
    return summary


def clear_leftovers(state: Path, tmp_dir: Path, process_index: int, process_count: int) -> None:
    """Remove what killed processes left (call holding this identity's lock).

    This identity's temporary files; from process 0 also the report's and
    contact sheet's, and everything of the processes an earlier run had and
    this one has not (lock, temporary files, listing), so a rerun with fewer
    processes leaves no stale state.
    """
    writing.clear_temporary(tmp_dir, process_index)
    if process_index != 0:
        return
    for stale in state.parent.glob(".leat-jax-*.part"):  # the report or contact sheet of a killed process 0
        stale.unlink(missing_ok=True)
    for gone in departed(state, process_count):
        writing.clear_temporary(tmp_dir, gone)
        shutil.rmtree(state / f"work-p{gone}", ignore_errors=True)
        (state / f"lock-p{gone}").unlink(missing_ok=True)


def run_stages(cfg, base: job.Context, items, about, loaded, mesh, detector, stream, start) -> Summary:
    """List (spilled into shards), then read, attack, write and record this process's shards; the report."""
    src, settings, warning, process_count = about
    say = (lambda text: None) if cfg.quiet else (lambda text: print(text, file=stream, flush=True))
    state, index = manifest.state_dir(base.dst), base.process_index
    work = state / f"work-p{index}"
    resume = Resume(shards.Store(state), work, shards.spill(items, work, index, process_count, base.dst), base.dst,
                    base.settings_hash, cfg.force, cfg.verify)
    if not resume.finished():  # a rerun with everything done builds no weights and compiles nothing
        loaded = victimset.load(cfg.victim_specs(), cfg.stand_in_weights, cfg.extra_victims)
    for line in (warning, JPEG_WARNING if cfg.format == "jpeg" else None):
        if line:
            print(line, file=stream, flush=True)
    ctx = dataclasses.replace(base, previous=resume)
    progress = Progress(resume.total, stream=stream, quiet=cfg.quiet)
    stage = attack_stage(cfg, ctx, loaded, mesh, detector, progress.note, progress.message)
    say(opening_line(cfg, src, base.dst, resume.total, index, process_count, loaded, mesh, stage))
    write_settings(ctx, settings)
    recorder = job.Recorder(ctx, progress, resume)
    with compile_cache.Counter() as compiles:
        try:
            counts = job.drive(resume.items(recorder.skipped_shard), functools.partial(reading.read, ctx), stage,
                               recorder, functools.partial(writing.failed_record, ctx), cfg.workers)
        finally:
            progress.close()
    seconds = time.monotonic() - start
    stats = {"process": index, "inputs": resume.total, "protected": counts.protected, "skipped": counts.skipped,
             "failed": counts.failed, "seconds": seconds, "no_face": counts.no_face,
             "devices": int(mesh.devices.size), "platform": mesh.devices.flat[0].platform,
             "compile_cache": {"folder": jax_cache_folder(cfg), **compiles.stats()}, **stage.stats()}
    report_path, sheet_path = write_report(cfg, ctx, src, settings, stats, process_count, warning)
    say(closing_line(counts, seconds, report_path, sheet_path))
    return Summary(resume.total, counts.protected, counts.skipped, counts.failed, seconds, report_path, sheet_path,
                   loaded.stand_in, counts.no_face)


def jax_cache_folder(cfg: ImmunizeConfig) -> str | None:
    folder = compile_cache.resolve(cfg.compile_cache)
    return None if folder is None else str(folder)


def write_settings(ctx: job.Context, settings: dict) -> None:
    """The settings beside the state (one file per settings hash) and, from process 0, in DST."""
    text = (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode()
    state = manifest.state_dir(ctx.dst)
    writing.write_atomic(state / f"settings-{ctx.settings_hash}.json", text, ctx.tmp_dir, ctx.tag)
    if ctx.process_index == 0:
        writing.write_atomic(ctx.dst / inputs.SETTINGS, text, ctx.tmp_dir, ctx.tag)


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun`` in agreement, for the job's lines: "1 image", "2 images"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def opening_line(cfg, src, dst, total, process_index, process_count, loaded, mesh, stage) -> str:
    share = f" for process {process_index} of {process_count}" if process_count > 1 else ""
    return (
        f"leat-jax: {counted(total, 'image')}{share} from {src} -> {dst}; victims: {', '.join(loaded.names)}; "
        f"{mesh.devices.size} {mesh.devices.flat[0].platform} device(s), batch {stage.batch}; "
        f"eps {cfg.attack.eps}, {cfg.attack.iterations} iterations"
        + ("; faces: detected in each photo, photos spread over the devices" if cfg.faces == "detect" else "")
    )


def shard_rows(state: Path, process_count: int):
    """(inputs, records by path) of every shard, one at a time, from this run's listings."""
    store = shards.Store(state)
    for s in range(shards.SHARDS):
        items = shards.listing(state / f"work-p{shards.owner(s, process_count)}", s)
        if items:
            yield items, store.records(s)


def write_report(cfg, ctx: job.Context, src, settings, stats, process_count, warning):
    """This process's stats, then (process 0, once every process is done) the report; its paths."""
    state = manifest.state_dir(ctx.dst)
    writing.write_atomic(state / f"run-{ctx.process_index}.json", json.dumps(stats).encode(), ctx.tmp_dir, ctx.tag)
    if process_count > 1:
        # The report covers every share: wait until all processes have written theirs.
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("leat-jax immunize: all shares written")
    if ctx.process_index != 0:
        return None, None
    runs = [json.loads((state / f"run-{i}.json").read_text()) for i in range(process_count)]
    return report.write(ctx.dst, src, shard_rows(state, process_count), settings, runs, warning, cfg.contact_sheet,
                        cfg.attack.eps)


def closing_line(counts: job.Counts, seconds: float, report_path, sheet_path) -> str:
    rate = f" ({counts.protected / seconds:.2f} img/s overall)" if counts.protected else ""
    return (
        f"leat-jax: {counts.protected} protected"
        + (f" ({counts.no_face} without a face: written unchanged)" if counts.no_face else "")
        + f", {counts.skipped} already done, {counts.failed} failed "
        f"in {seconds:.1f}s{rate}"
        + (f"; report: {report_path}" if report_path else "")
        + (f"; contact sheet: {sheet_path}" if sheet_path else "")
    )
