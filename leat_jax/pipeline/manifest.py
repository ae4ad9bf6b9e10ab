"""Every per-image record, streamed as append-only JSON lines in DST/.leat-jax/.

Each process appends to its own file (``manifest-<process>.jsonl``), so the
processes of a distributed run never write the same file, and a shared
folder needs no locking. Lines are flushed and synced after every batch; a
process killed mid-line leaves a torn last line, which readers skip. These
files hold the full records (faces, distances); what a rerun resumes from is
the shards' compact manifests (``leat_jax.pipeline.shards``). ``read`` gives
a path's latest record by time, for small jobs and tests.

A record: ``path`` (relative to SRC), ``status`` (``done`` or ``failed``),
``time``, ``process``, and for ``done``: ``input_sha256``, ``settings``
(settings hash), ``output``, ``output_sha256``, ``distances`` ({victim:
{start, end}}), ``linf`` (measured on the written file), ``size``,
``image``; for ``failed``: ``error``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from leat_jax.pipeline.inputs import STATE_DIR


def state_dir(dst) -> Path:
    return Path(dst) / STATE_DIR


def read(dst) -> dict[str, dict]:
    """The latest record of every path, over all processes' files."""
    latest: dict[str, dict] = {}
    folder = state_dir(dst)
    if not folder.is_dir():
        return latest
    for path in sorted(folder.glob("manifest-*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if not isinstance(rec, dict) or "path" not in rec:
                continue
            old = latest.get(rec["path"])
            if old is None or rec.get("time", 0) >= old.get("time", 0):
                latest[rec["path"]] = rec
    return latest


class Writer:
    """Appends this process's records; one writer per process."""

    def __init__(self, dst, process_index: int = 0):
        folder = state_dir(dst)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"manifest-{process_index}.jsonl"
        self._file = open(self.path, "a+b")
        # A torn last line from a killed run must not swallow the next record.
        self._file.seek(0, os.SEEK_END)
        if self._file.tell():
            self._file.seek(-1, os.SEEK_END)
            if self._file.read(1) != b"\n":
                self._file.write(b"\n")

    def append(self, records: Iterable[Mapping]) -> None:
        data = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records)
        if not data:
            return
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
