"""Output shards committed whole, on a local disk or an object store (fsspec).

An output shard mirrors its input shard (same relative path under DST, same
kind): a tar of the protected images (``{key}.png``), or Parquet with the
key and image columns. A shard is committed in two writes: its data (on a
local disk under a temporary name, then renamed; on an object store one
put, which is whole or absent), then a small done marker written last,
which holds the shard's records. A rerun skips a shard whose marker is there
with the same settings and input version; a shard without one (half-written
by a killed worker) is written again, and ``clear_partial`` removes the
temporary files a killed run left on a local disk. ``output_lock`` keeps two
runs from writing into the same DST at once.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
import uuid
from pathlib import Path

from leat_jax.pipeline.inputs import REPORT, SETTINGS, STATE_DIR
from leat_jax.pipeline.lock import Lock, ObjectLock
from leat_jax.pipeline.sources import IMAGE_COLUMN, KEY_COLUMN, filesystem, is_local

# The done marker of output shard X is X + MARKER.
MARKER = ".leat-done.json"
# What ``put`` writes first on a local disk: X, a random hex name, .part.
PARTIAL = re.compile(r"(.+)\.[0-9a-f]{32}\.part")


def encode_shard(kind: str, files: list[tuple[str, bytes]]) -> bytes:
    """The bytes of a tar or Parquet shard of ``files`` ((name, bytes), in order)."""
    if kind == "tar":
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644  # mtime 0: the same bytes on every run
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({KEY_COLUMN: [n for n, _ in files], IMAGE_COLUMN: pa.array([d for _, d in files], pa.binary())})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def put(url: str, data: bytes) -> None:
    """Write ``data`` at ``url`` whole: locally under a temporary name then renamed; elsewhere one put."""
    fs, path = filesystem(url)
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.part"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def clear_partial(dst: str, rels: list[str]) -> None:
    """Remove what a killed run's ``put`` left on a local DST: the ``.part`` files of the shards ``rels``, their
    markers, the report and settings. Call holding the output lock; an object store has none (a put is whole).
    """
    fs, root = filesystem(dst)
    if not is_local(fs):
        return
    by_folder: dict[str, set[str]] = {}
    for rel in [*rels, *(r + MARKER for r in rels), REPORT, SETTINGS]:
        path = os.path.join(root, rel)
        by_folder.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
    for folder, names in by_folder.items():
        try:
            entries = os.listdir(folder)
        except OSError:  # not written yet
            continue
        for name in entries:
            found = PARTIAL.fullmatch(name)
            if found and found[1] in names:
                os.unlink(os.path.join(folder, name))


def commit(url: str, data: bytes, marker: dict) -> None:
    """The shard's data, then its done marker (written last)."""
    put(url, data)
    put(url + MARKER, json.dumps(marker, sort_keys=True).encode())


def committed(url: str, settings_hash: str, version: str) -> dict | None:
    """The marker of the shard at ``url`` when it was committed with these settings from this input; else None."""
    fs, path = filesystem(url + MARKER)
    try:
        marker = json.loads(fs.cat_file(path))
    except (OSError, ValueError):
        return None
    same = marker.get("settings") == settings_hash and marker.get("version") == version
    return marker if same and fs.exists(path[: -len(MARKER)]) else None


def output_lock(dst: str):
    """The lock of output ``dst`` (a folder or URL), as process 0 of a run; a context manager.

    On a local disk it is the folder job's lock file (``lock.Lock``), so a
    folder job and a sharded job into one DST exclude each other too;
    elsewhere a lock object under ``DST/.leat-jax`` (``lock.ObjectLock``,
    whose guarantee depends on the store).
    """
    fs, path = filesystem(dst)
    path = path.rstrip("/")
    if is_local(fs):
        os.makedirs(os.path.join(path, STATE_DIR), exist_ok=True)
        return Lock(Path(path) / STATE_DIR, 0)
    return ObjectLock(fs, f"{path}/{STATE_DIR}/lock-p0", f"{dst.rstrip('/')}/{STATE_DIR}/lock-p0")
