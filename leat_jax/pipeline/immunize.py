"""The immunize job: protect every image under SRC, write each under DST.

Threads read, hash and decode ahead of the devices; the main thread groups
images by size into batches of fixed shape and hands them to the sharded
attack; threads then quantise, encode, check and write each result (atomic:
a temporary file renamed into place) while the devices work on the next
batch. The main thread alone appends to the manifest, once per batch, after
the batch's files are in place: a run killed at any moment loses at most the
batches in flight, and a rerun skips what the manifest holds.

Results do not depend on batch size, device count, process count or
interruption: an image's random start is keyed by (seed, its relative
path), nothing in the attack spans two images, and each device maps over
steps of a fixed number of images (the microbatch, the last one padded), so
each image meets the same program. They do depend on the microbatch and the
platform (part of the settings hash).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import errno
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from leat_jax import __version__
from leat_jax.pipeline import images, inputs, manifest, report, victimset
from leat_jax.pipeline.config import ImmunizeConfig
from leat_jax.pipeline.progress import Progress
from leat_jax.pipeline.victimset import SetupError

SAMPLES = Path(__file__).resolve().parent / "samples"
# Bumped when the pipeline's output for the same settings changes.
PIPELINE_VERSION = "1"
# Batches handed to the devices and not yet written: enough to keep them busy.
IN_FLIGHT = 2
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


@dataclasses.dataclass
class _Prepared:
    item: inputs.Item
    input_sha256: str
    image: images.Decoded
    x: np.ndarray  # (H, W, 3) float32 in [-1, 1]


@dataclasses.dataclass
class _Failure:
    item: inputs.Item
    error: str  # one line naming the file


class _Skipped:
    pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _write_atomic(target: Path, data: bytes, tmp_dir: Path, tag: str) -> None:
    """Write ``data`` to ``target`` so that it is either whole or absent.

    The temporary file lives in DST's state folder, not beside the output, so
    a kill leaves nothing half-written in the output tree.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{tag}-{uuid.uuid4().hex}.part"
    try:
        _write_synced(tmp, data)
        try:
            os.replace(tmp, target)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            # a mount inside DST: rename within the target's own filesystem
            local = target.with_name(f".{target.name}.{tag}.part")
            _write_synced(local, data)
            os.replace(local, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _prepare_dst(dst: Path, process_index: int) -> Path:
    """Create DST and its state folder, prove it writable; returns the temp folder."""
    if dst.exists() and not dst.is_dir():
        raise SetupError(f"{dst}: the output folder is a file")
    try:
        tmp_dir = manifest.state_dir(dst) / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        for stale in tmp_dir.glob(f"p{process_index}-*.part"):  # left by a killed run of ours
            stale.unlink()
        probe = tmp_dir / f"p{process_index}-probe-{uuid.uuid4().hex}.part"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SetupError(f"{dst}: cannot write to the output folder ({e.strerror or e})") from None
    return tmp_dir


def _settings(cfg: ImmunizeConfig, loaded: victimset.Loaded, faces: dict | None = None) -> tuple[dict, str]:
    """(settings recorded next to the output, hash of those that change a result).

    ``faces``: what fixes the faces found and cropped in ``detect`` mode
    (rules and detector versions); it enters the hash only then, so aligned
    runs keep the hash they always had.
    """
    specs = cfg.victim_specs()
    victims = [
        {"name": s.name, "weights": ident, "checkpoint": s.checkpoint}
        for s, ident in zip(specs, loaded.identities)
    ]
    keyed = {
        "attack": cfg.attack.digest(),
        "seed": cfg.seed,
        "victims": [(v["name"], v["weights"]) for v in victims],
        "format": cfg.format,
        "jpeg_quality": cfg.jpeg_quality if cfg.format == "jpeg" else None,
        "pipeline": PIPELINE_VERSION,
    }
    if cfg.faces != "aligned":
        keyed["faces"] = {"mode": cfg.faces, **(faces or {})}
    else:  # photos go one at a time: a microbatch changes only aligned results
        from leat_jax.attack import default_microbatch

        keyed["microbatch"] = cfg.microbatch or default_microbatch()
    digest = _sha256(json.dumps(keyed, sort_keys=True).encode())[:16]
    settings = {
        "settings_hash": digest,
        "attack": cfg.attack.to_dict(),
        "seed": cfg.seed,
        "victims": victims,
        "stand_in_weights": list(loaded.stand_in),
        "format": cfg.format,
        "jpeg_quality": cfg.jpeg_quality if cfg.format == "jpeg" else None,
        "max_size": cfg.max_size,
        "faces": {"mode": cfg.faces, **(faces or {})},
        "microbatch": keyed.get("microbatch"),
        "pipeline_version": PIPELINE_VERSION,
        "leat_jax_version": __version__,
    }
    return settings, digest


class _Job:
    """One process's share of a run; see the module docstring."""

    def __init__(self, cfg, dst, tmp_dir, items, loaded, settings_hash, mesh, params, process_index, progress):
        self.cfg = cfg
        self.dst = dst
        self.tmp_dir = tmp_dir
        self.items = items
        self.loaded = loaded
        self.settings_hash = settings_hash
        self.mesh = mesh
        self.params = params
        self.process_index = process_index
        self.progress = progress
        self.previous = {} if cfg.force else manifest.read(dst)
        n_dev = mesh.devices.size
        from leat_jax.parallel import mesh_microbatch

        self.microbatch = mesh_microbatch(mesh, cfg.microbatch)
        per_device = cfg.batch_size or self.microbatch
        self.batch = per_device * n_dev
        # Largest file read: an uncompressed 16-bit RGBA image at the size limit, twice over.
        self.max_bytes = max(64 << 20, cfg.max_size**2 * 8 * 2)
        self.protected = self.failed = self.skipped = 0
        self._compiled_sizes: set[tuple[int, int]] = set()

    # -- worker threads -------------------------------------------------

    def prepare(self, item: inputs.Item):
        if item.problem:
            return _Failure(item, f"{item.path}: {item.problem}")
        try:
            size = item.path.stat().st_size
            if size > self.max_bytes:
                return _Failure(item, f"{item.path}: file of {size} bytes is larger than any accepted image")
            data = item.path.read_bytes()
        except IsADirectoryError:
            return _Failure(item, f"{item.path}: a directory, not an image")
        except FileNotFoundError:
            return _Failure(item, f"{item.path}: no such file (removed, or a broken link)")
        except OSError as e:
            return _Failure(item, f"{item.path}: cannot read ({e.strerror or e})")
        sha = _sha256(data)
        prev = self.previous.get(item.rel)
        if (
            prev
            and prev.get("status") == "done"
            and prev.get("input_sha256") == sha
            and prev.get("settings") == self.settings_hash
            and prev.get("output") == item.output
        ):
            try:
                if _sha256((self.dst / item.output).read_bytes()) == prev.get("output_sha256"):
                    return _Skipped()
            except OSError:
                pass  # output gone or unreadable: do it again
        try:
            image = images.decode(data, self.cfg.max_size)
        except images.ImageError as e:
            return _Failure(item, f"{item.path}: {e}")
        if self.cfg.format == "jpeg" and (image.bits == 16 or image.alpha is not None):
            what = "16-bit samples" if image.bits == 16 else "an alpha channel"
            return _Failure(item, f"{item.path}: JPEG output cannot hold {what}; use --format png")
        return _Prepared(item, sha, image, image.model_input())

    def finish(self, batch: list[_Prepared], result) -> list[dict]:
        """Quantise, encode, check and write one batch (blocks until the devices finish it)."""
        protected = np.asarray(result.protected)
        d0, d1 = np.asarray(result.dist_start), np.asarray(result.dist_end)
        names = self.loaded.names
        return [
            self.write_result(
                p, protected[i],
                {n: {"start": _finite(d0[i, k]), "end": _finite(d1[i, k])} for k, n in enumerate(names)},
            )
            for i, p in enumerate(batch)
        ]

    def write_result(self, p: _Prepared, protected: np.ndarray, distances: dict, extra: dict | None = None) -> dict:
        """Quantise, encode, check and write one protected image (H, W, 3) in [-1, 1]; its manifest record."""
        item, image = p.item, p.image
        target = self.dst / item.output
        eps = self.cfg.attack.eps
        try:
            if not np.all(np.isfinite(protected)):
                raise images.ImageError("the attack produced non-finite values (a broken victim?)")
            levels = images.quantize(image, protected, eps)
            data = images.encode(image, levels, self.cfg.format, self.cfg.jpeg_quality)
            written = images.decode_written(data, image)
            measured = images.linf(image.levels, written, image.bits)
            if self.cfg.format == "png" and (not np.array_equal(written, levels) or measured > eps + 1e-9):
                raise images.ImageError(f"written PNG breaks the bound ({measured:.6f} > eps {eps})")
            _write_atomic(target, data, self.tmp_dir, f"p{self.process_index}")
        except images.ImageError as e:
            return self._failed(item, f"{item.path}: {e}")
        except (FileExistsError, NotADirectoryError):
            return self._failed(item, f"{target}: cannot write: a file stands where a folder should be")
        except OSError as e:
            return self._failed(item, f"{target}: cannot write ({e.strerror or e})")
        return {
            "path": item.rel,
            "status": "done",
            "time": time.time(),
            "process": self.process_index,
            "input_sha256": p.input_sha256,
            "settings": self.settings_hash,
            "output": item.output,
            "output_sha256": _sha256(data),
            "distances": distances,
            "linf": measured,
            "size": [int(image.size[0]), int(image.size[1])],
            "image": image.description,
            **(extra or {}),
        }

    def _failed(self, item: inputs.Item, error: str) -> dict:
        return {"path": item.rel, "status": "failed", "time": time.time(), "process": self.process_index,
                "error": error}

    # -- main thread ----------------------------------------------------

    def _record(self, writer: manifest.Writer, records: list[dict]) -> None:
        writer.append(records)
        failed = [r for r in records if r["status"] == "failed"]
        for r in failed:
            self.progress.message(f"leat-jax: error: {r['error']}")
        self.failed += len(failed)
        self.protected += len(records) - len(failed)
        self.progress.update(done=len(records) - len(failed), failed=len(failed))

    def _dispatch(self, batch: list[_Prepared], pool, in_flight, writer) -> None:
        from leat_jax import parallel

        size = batch[0].image.size
        if size not in self._compiled_sizes and not self.cfg.quiet:
            self.progress.message(
                f"leat-jax: compiling the attack for {size[1]}x{size[0]} images (once per image size)"
            )
        self._compiled_sizes.add(size)
        x = np.stack([p.x for p in batch])
        ids = np.asarray([p.item.image_id for p in batch], np.uint32)
        pad = self.batch - len(batch)
        if pad:  # every batch of a size has one shape: one compilation, one program per image
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            ids = np.concatenate([ids, np.repeat(ids[-1:], pad)])
        result = parallel.sharded_attack(
            self.loaded.victims, self.cfg.attack, self.mesh, self.params, x, ids, self.cfg.seed, self.microbatch
        )
        in_flight.append(pool.submit(self.finish, batch, result))
        while len(in_flight) > IN_FLIGHT:
            self._record(writer, in_flight.popleft().result())

    def run(self) -> None:
        workers = self.cfg.workers
        lookahead = max(2 * self.batch, 2 * workers)
        max_waiting = 4 * self.batch  # images held in size buckets before a partial batch goes
        pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="leat-io")
        writer = manifest.Writer(self.dst, self.process_index)
        try:
            in_flight: collections.deque = collections.deque()
            buckets: dict[tuple[int, int], list[_Prepared]] = {}
            for got in prefetched(pool, self.prepare, self.items, lookahead):
                if isinstance(got, _Skipped):
                    self.skipped += 1
                    self.progress.update(skipped=1)
                elif isinstance(got, _Failure):
                    self._record(writer, [self._failed(got.item, got.error)])
                else:
                    key = got.image.size
                    buckets.setdefault(key, []).append(got)
                    if len(buckets[key]) == self.batch:
                        self._dispatch(buckets.pop(key), pool, in_flight, writer)
                    elif sum(map(len, buckets.values())) > max_waiting:
                        largest = max(buckets, key=lambda k: len(buckets[k]))
                        self._dispatch(buckets.pop(largest), pool, in_flight, writer)
                while in_flight and in_flight[0].done():
                    self._record(writer, in_flight.popleft().result())
            for key in sorted(buckets):
                self._dispatch(buckets.pop(key), pool, in_flight, writer)
            while in_flight:
                self._record(writer, in_flight.popleft().result())
        finally:
            writer.close()
            pool.shutdown(wait=True, cancel_futures=True)


def prefetched(pool, fn, items, depth: int):
    """``fn(item)`` for each item, in order, up to ``depth`` of them computed ahead on ``pool``.

    Decoding runs ahead of the devices; nothing past ``depth`` is held in memory.
    """
    todo = iter(items)
    ahead: collections.deque = collections.deque()

    def fill():
        while len(ahead) < depth:
            item = next(todo, None)
            if item is None:
                return
            ahead.append(pool.submit(fn, item))

    fill()
    while ahead:
        got = ahead.popleft().result()
        fill()
        yield got


def run(cfg: ImmunizeConfig, stream=None, detector=None) -> Summary:
    """Run the job; returns its summary. ``SetupError`` (one line) if it cannot start.

    ``detector``: the face detector of ``--faces detect`` (an object with
    ``detect(uint8 HWC image) -> Faces``); None: the shipped one.
    """
    stream = stream if stream is not None else sys.stderr
    start = time.monotonic()
    say = (lambda text: None) if cfg.quiet else (lambda text: print(text, file=stream, flush=True))

    from leat_jax import parallel

    process_index, process_count = 0, 1
    if cfg.distributed is not None:
        try:
            process_index, process_count = parallel.initialize(cfg.distributed)
        except Exception as e:  # jax raises several types for a bad address or count
            raise SetupError(f"--distributed: cannot join the job ({type(e).__name__}: {str(e).splitlines()[0]})") from None

    src = Path(cfg.src) if cfg.src is not None else SAMPLES
    dst = Path(cfg.dst)
    try:
        items = inputs.discover(src, dst, cfg.format)
    except inputs.InputError as e:
        raise SetupError(str(e)) from None
    tmp_dir = _prepare_dst(dst, process_index)
    loaded = victimset.load(cfg.victim_specs(), cfg.stand_in_weights, cfg.extra_victims)
    try:
        mesh = parallel.data_mesh(cfg.devices)
    except ValueError as e:
        raise SetupError(f"--devices: {e}") from None
    faces = None
    if cfg.faces == "detect":
        from leat_jax.pipeline import photos

        if detector is None:
            try:
                detector = photos.default_detector()
            except Exception as e:  # missing or damaged detector weights
                raise SetupError(f"--faces detect: cannot load the face detector ({type(e).__name__}: "
                                 f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
        faces = photos.settings(detector)
    settings, settings_hash = _settings(cfg, loaded, faces)
    warning = STAND_IN_WARNING.format(names=", ".join(loaded.stand_in)) if loaded.stand_in else None
    if warning:
        print(warning, file=stream, flush=True)
    if cfg.format == "jpeg":
        print(JPEG_WARNING, file=stream, flush=True)

    from leat_jax.attack import prepared
    from leat_jax.parallel.mesh import replicate

    mine = parallel.process_share(items, process_index, process_count)
    # Weight-only work (kernel flips, compute-dtype cast) once per run, not once per batch.
    params = prepared(loaded.victims, cfg.attack, loaded.params)
    params = replicate(params, mesh) if cfg.faces == "aligned" else params
    progress = Progress(len(mine), stream=stream, quiet=cfg.quiet)
    if cfg.faces == "detect":
        # One device per process: photos go one at a time, face groups one after another.
        job = photos.PhotoJob(cfg, dst, tmp_dir, mine, loaded, settings_hash, mesh, params, process_index,
                              progress, detector=detector)
    else:
        job = _Job(cfg, dst, tmp_dir, mine, loaded, settings_hash, mesh, params, process_index, progress)
    share = f" ({len(mine)} for process {process_index} of {process_count})" if process_count > 1 else ""
    say(
        f"leat-jax: {len(items)} images{share} from {src} -> {dst}; victims: {', '.join(loaded.names)}; "
        f"{mesh.devices.size} {mesh.devices.flat[0].platform} device(s), batch {job.batch}; "
        f"eps {cfg.attack.eps}, {cfg.attack.iterations} iterations"
        + ("; faces: detected in each photo, attacked on one device" if cfg.faces == "detect" else "")
    )
    state = manifest.state_dir(dst)
    tag = f"p{process_index}"
    report_path = sheet_path = None
    try:
        text = (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode()
        _write_atomic(state / f"settings-{settings_hash}.json", text, tmp_dir, tag)
        if process_index == 0:
            _write_atomic(dst / inputs.SETTINGS, text, tmp_dir, tag)
        try:
            job.run()
        finally:
            progress.close()
        seconds = time.monotonic() - start
        stats = {"process": process_index, "inputs": len(mine), "protected": job.protected,
                 "skipped": job.skipped, "failed": job.failed, "seconds": seconds,
                 "no_face": getattr(job, "no_face", 0),
                 "devices": int(mesh.devices.size), "platform": mesh.devices.flat[0].platform}
        _write_atomic(state / f"run-{process_index}.json", json.dumps(stats).encode(), tmp_dir, tag)
        if process_count > 1:
            # The report covers every share: wait until all processes have written theirs.
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("leat-jax immunize: all shares written")
        if process_index == 0:
            runs = [json.loads((state / f"run-{i}.json").read_text()) for i in range(process_count)]
            report_path, sheet_path = report.write(
                dst, src, items, manifest.read(dst), settings, runs, warning, cfg.contact_sheet, cfg.attack.eps
            )
    except OSError as e:  # DST became unwritable (disk full, unmounted...) mid-run
        raise SetupError(
            f"{e.filename or dst}: {e.strerror or e}; the job stopped, finished images are kept"
        ) from None
    no_face = getattr(job, "no_face", 0)
    summary = Summary(len(mine), job.protected, job.skipped, job.failed, seconds, report_path, sheet_path,
                      loaded.stand_in, no_face)
    rate = f" ({job.protected / seconds:.2f} img/s overall)" if job.protected else ""
    say(
        f"leat-jax: {job.protected} protected"
        + (f" ({no_face} without a face: written unchanged)" if no_face else "")
        + f", {job.skipped} already done, {job.failed} failed "
        f"in {seconds:.1f}s{rate}"
        + (f"; report: {report_path}" if report_path else "")
        + (f"; contact sheet: {sheet_path}" if sheet_path else "")
    )
    if loaded.stand_in:
        print("leat-jax: reminder: stand-in weights; this output protects against nothing.", file=stream, flush=True)
    return summary
