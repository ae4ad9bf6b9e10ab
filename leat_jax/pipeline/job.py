"""The immunize job as named stages, and the machinery they share.

    list -> read and decode -> attack -> quantise, encode and write -> record

``inputs`` lists; ``reading.read`` reads, hashes and decodes (or skips what
the manifest has as done); an attack stage (``aligned.AlignedAttack`` for
face crops, ``photos.PhotoAttack`` for photos) inspects each decoded image,
launches the attack on the devices and, on finishing, hands the result to
``writing.write_image``; ``drive`` records each result in the manifest. The
stages' inputs and outputs are plain data (paths and arrays in, dict records
out), so another engine can run them.

``drive`` keeps the devices busy: threads read and decode ahead, the main
thread launches the attack, threads then write the results while the devices
work on the next batch. The main thread alone appends to the manifest, after
a batch's files are in place: a kill loses at most the batches in flight.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

import numpy as np

from leat_jax import __version__
from leat_jax.attack import default_microbatch
from leat_jax.pipeline import faults, images, inputs, manifest, start_file
from leat_jax.pipeline.config import ImmunizeConfig
from leat_jax.pipeline.victimset import Loaded

# Bumped when the pipeline's output for the same settings changes.
PIPELINE_VERSION = "1"
# Work handed to the devices and not yet written: enough to keep them busy.
IN_FLIGHT = 2


@dataclasses.dataclass(frozen=True)
class Context:
    """What every stage of one process needs: plain values, and the lookup of previous records.

    Attributes:
      dst: output folder.
      tmp_dir: where temporary files are written before their rename.
      settings_hash: hash of the settings that change a result.
      process_index: this process (records and temporary names carry it).
      eps, format, jpeg_quality, max_size: the run's settings the host stages use.
      names: the victims' names, in the attack's order.
      previous: the previous record of a relative path (``.get(rel)``; a
        ``resume.Resume`` or a dict).
      verify: check done images by hashing input and output, not by size and time.
    """

    dst: Path
    tmp_dir: Path
    settings_hash: str
    process_index: int
    eps: float
    format: str
    jpeg_quality: int
    max_size: int
    names: tuple[str, ...]
    previous: Mapping[str, dict]
    verify: bool = False

    @property
    def tag(self) -> str:
        return f"p{self.process_index}"

    @property
    def max_bytes(self) -> int:
        # Largest file read: an uncompressed 16-bit RGBA image at the size limit, twice over.
        return max(64 << 20, self.max_size**2 * 8 * 2)


@dataclasses.dataclass
class Prepared:
    """A decoded input ready for the attack."""

    item: inputs.Item
    input_sha256: str
    image: images.Decoded
    x: np.ndarray  # (H, W, 3) float32 in [-1, 1]
    plan: object = None  # what an attack stage's ``inspect`` found (the faces of a photo)


@dataclasses.dataclass
class Failure:
    """An input that failed before the attack."""

    item: inputs.Item
    error: str  # one line naming the file


@dataclasses.dataclass
class Skipped:
    """An input done before, with the same content and settings."""

    item: inputs.Item


class AttackStage(Protocol):
    """What ``drive`` asks of an attack stage.

    ``inspect`` runs in the reader threads (per-image host work such as face
    detection); ``submit`` and ``flush`` run in the main thread and return the
    work they launched on the devices; ``finish`` runs in the writer threads,
    waits for one launched piece and returns its records (``writing.write_image``).
    """

    batch: int
    in_flight: int  # pieces launched and not yet written, at most

    def inspect(self, got: Prepared) -> Prepared | Failure: ...

    def submit(self, got: Prepared) -> list: ...

    def flush(self) -> list: ...

    def finish(self, launched) -> list[dict]: ...

    def stats(self) -> dict: ...


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def finite(value: float) -> float | None:
    """``value`` as a float, or None when it is not finite (JSON has no NaN)."""
    value = float(value)
    return value if np.isfinite(value) else None


def settings(cfg: ImmunizeConfig, loaded: Loaded, faces: dict | None = None) -> tuple[dict, str]:
    """(settings recorded next to the output, hash of those that change a result).

    Args:
      cfg: the run's settings.
      loaded: the victims, with their weights' identities.
      faces: what fixes the faces found and cropped in ``detect`` mode (rules
        and detector versions); it enters the hash only then, so aligned runs
        keep the hash they always had.
    Returns:
      (the settings as recorded, the 16-hex-digit settings hash).
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
    else:  # photos go one group at a time: the microbatch changes only aligned results
        keyed["microbatch"] = cfg.microbatch or default_microbatch()
    digest = sha256(json.dumps(keyed, sort_keys=True).encode())[:16]
    recorded = {
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
    kept = start_file.record(cfg.attack.start, cfg.dst) if cfg.attack.start is not None else None
    if kept:  # evaluate --baseline reads it again, beside the report in DST
        recorded["start_file"] = kept
    return recorded, digest


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


@dataclasses.dataclass
class Counts:
    """What one process's share came to."""

    protected: int = 0
    skipped: int = 0
    failed: int = 0
    no_face: int = 0


class Recorder:
    """The record stage: appends records to the manifest, counts them, shows failures.

    Stops the job (``faults.JobFailed``) when ``faults.SAME_FAULT_LIMIT``
    images in a row fail for the same job-level reason.
    """

    def __init__(self, ctx: Context, progress, resume=None, streak: faults.Streak | None = None):
        self.ctx = ctx
        self.progress = progress
        self.resume = resume
        self.counts = Counts()
        self.streak = streak or faults.Streak()
        self.writer = manifest.Writer(ctx.dst, ctx.process_index)

    def skipped(self, item: inputs.Item) -> None:
        """One input done before."""
        if self.resume is not None:
            self.resume.settle([], [item])
        self.skipped_shard(1)

    def skipped_shard(self, n: int) -> None:
        """``n`` inputs done before (a whole shard, not opened)."""
        self.counts.skipped += n
        self.progress.update(skipped=n)

    def add(self, records: list[dict]) -> None:
        if self.resume is not None:  # the state first: a kill between the two never redoes an image
            self.resume.settle(records)
        self.writer.append(records)
        failed = [r for r in records if r["status"] == "failed"]
        for r in failed:
            self.progress.message(f"leat-jax: error: {r['error']}")
        self.counts.failed += len(failed)
        self.counts.protected += len(records) - len(failed)
        self.counts.no_face += sum(1 for r in records if r.get("no_face") is True)
        self.progress.update(done=len(records) - len(failed), failed=len(failed))
        for r in records:
            reason = self.streak.add(r)
            if reason is not None:
                raise faults.JobFailed(
                    f"{self.ctx.dst}: {reason}; the job stopped after {self.streak.count} images in a row "
                    "failed for this reason (finished images are kept)"
                )

    def close(self) -> None:
        self.writer.close()


def drive(items: Iterable[inputs.Item], read: Callable, stage: AttackStage, recorder: Recorder, failed: Callable,
          workers: int) -> Counts:
    """Run the stages over ``items``; returns the counts.

    Args:
      items: this process's inputs (the list stage).
      read: item -> ``Prepared | Failure | Skipped`` (the read and decode stage).
      stage: the attack stage (its ``finish`` writes).
      recorder: the record stage.
      failed: (item, error) -> the record of an input that failed before the attack.
      workers: reader and writer threads.
    """
    depth = max(2 * stage.batch, 2 * workers, stage.in_flight + workers)
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="leat-io")
    in_flight: collections.deque = collections.deque()

    def launched(pieces):
        in_flight.extend(pool.submit(stage.finish, piece) for piece in pieces)
        while len(in_flight) > stage.in_flight:
            recorder.add(in_flight.popleft().result())

    def inspected(item):
        got = read(item)
        return stage.inspect(got) if isinstance(got, Prepared) else got

    try:
        for got in prefetched(pool, inspected, items, depth):
            if isinstance(got, Skipped):
                recorder.skipped(got.item)
            elif isinstance(got, Failure):
                recorder.add([failed(got.item, got.error)])
            else:
                launched(stage.submit(got))
            while in_flight and in_flight[0].done():
                recorder.add(in_flight.popleft().result())
        launched(stage.flush())
        while in_flight:
            recorder.add(in_flight.popleft().result())
    finally:
        recorder.close()
        pool.shutdown(wait=True, cancel_futures=True)
    return recorder.counts
