"""The write stage: quantise, encode, check and write one protected image; its record.

Input: the prepared image (plain host data) and the attack's float result;
output: the manifest record (a plain dict). Files are written atomically: a
temporary file in DST's state folder, synced, then renamed into place, so a
kill leaves nothing half-written in the output tree.
"""
from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path

import numpy as np

from leat_jax.errors import SetupError
from leat_jax.pipeline import images, inputs, manifest
from leat_jax.pipeline.job import Context, Prepared, sha256

GONE = "the output folder is gone"


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and sync it to disk."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(target: Path, data: bytes, tmp_dir: Path, tag: str) -> None:
    """Write ``data`` to ``target`` so that it is either whole or absent.

    The temporary file is written first, so a vanished state folder fails
    before any output folder is created again.
    """
    tmp = tmp_dir / f"{tag}-{uuid.uuid4().hex}.part"
    try:
        write_synced(tmp, data)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, target)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            # a mount inside DST: rename within the target's own filesystem
            local = target.with_name(f".{target.name}.{tag}.part")
            write_synced(local, data)
            os.replace(local, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def prepare_dst(dst: Path, process_index: int) -> Path:
    """Create DST and its state folder, prove it writable; returns the temp folder."""
    if dst.exists() and not dst.is_dir():
        raise SetupError(f"{dst}: the output folder is a file")
    try:
        tmp_dir = manifest.state_dir(dst) / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        probe = tmp_dir / f"p{process_index}-probe-{uuid.uuid4().hex}.part"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SetupError(f"{dst}: cannot write to the output folder ({e.strerror or e})") from None
    return tmp_dir


def clear_temporary(tmp_dir: Path, process_index: int) -> None:
    """Remove the temporary files a killed process ``process_index`` left (call holding its lock)."""
    for stale in tmp_dir.glob(f"p{process_index}-*.part"):
        stale.unlink(missing_ok=True)


def failed_record(ctx: Context, item: inputs.Item, error: str, fault: str | None = None) -> dict:
    """The record of a failed image; ``fault``: a job-level reason (disk full, folder gone), if any."""
    record = {"path": item.rel, "status": "failed", "time": time.time(), "process": ctx.process_index,
              "error": error}
    if fault is not None:
        record["fault"] = fault
    return record


def encode_checked(ctx: Context, p: Prepared, protected: np.ndarray) -> tuple[bytes, float]:
    """(encoded file, L-inf change measured on it); ``images.ImageError`` when the bound breaks."""
    image, eps = p.image, ctx.eps
    if not np.all(np.isfinite(protected)):
        raise images.ImageError("the attack produced non-finite values (a broken victim?)")
    levels = images.quantize(image, protected, eps)
    data = images.encode(image, levels, ctx.format, ctx.jpeg_quality)
    written = images.decode_written(data, image)
    measured = images.linf(image.levels, written, image.bits)
    if ctx.format == "png" and (not np.array_equal(written, levels) or measured > eps + 1e-9):
        raise images.ImageError(f"written PNG breaks the bound ({measured:.6f} > eps {eps})")
    return data, measured


def write_image(ctx: Context, p: Prepared, protected: np.ndarray, distances: dict, extra: dict | None = None) -> dict:
    """Quantise, encode, check and write one protected image.

    Args:
      ctx: the job's context.
      p: the prepared input.
      protected: (H, W, 3) float in [-1, 1], the attack's result.
      distances: {victim: {start, end}} for the record.
      extra: more fields for the record (the faces of a photo).
    Returns:
      The manifest record, ``done`` or ``failed``.
    """
    item = p.item
    target = ctx.dst / item.output
    try:
        data, measured = encode_checked(ctx, p, protected)
        write_atomic(target, data, ctx.tmp_dir, ctx.tag)
        out = target.stat()
    except images.ImageError as e:
        return failed_record(ctx, item, f"{item.path}: {e}")
    except (FileExistsError, NotADirectoryError):
        return failed_record(ctx, item, f"{target}: cannot write: a file stands where a folder should be")
    except OSError as e:
        fault = GONE if not ctx.tmp_dir.is_dir() else (e.strerror or str(e))
        return failed_record(ctx, item, f"{target}: cannot write ({e.strerror or e})", fault)
    return {
        "path": item.rel,
        "status": "done",
        "time": time.time(),
        "process": ctx.process_index,
        "input_sha256": p.input_sha256,
        "settings": ctx.settings_hash,
        "output": item.output,
        "output_sha256": sha256(data),
        "input_size": item.size,
        "input_mtime_ns": item.mtime_ns,
        "output_size": out.st_size,
        "output_mtime_ns": out.st_mtime_ns,
        "distances": distances,
        "linf": measured,
        "size": [int(p.image.size[0]), int(p.image.size[1])],
        "image": p.image.description,
        **(extra or {}),
    }
