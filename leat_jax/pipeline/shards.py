"""The job's state, split into shards by a stable hash of each input's relative path.

The shard count (``SHARDS``) does not depend on the number of processes:
process p of P owns the shards s with s % P == p, so a rerun with another
process count finds the same shards. In DST/.leat-jax/:

* ``work-p<p>/<s>.jsonl``: this run's listing of shard s (one JSON list per
  input), spilled while the tree is walked, so no process holds the whole
  tree; each shard is then read back alone.
* ``shards/<s>.jsonl``: the shard's compact manifest, appended in order by
  its owner; a path's last line is its state (order, never clocks).
* ``shards/<s>.done``: written last, when every input of the shard is done:
  the settings hash and a digest of the listing (path, size, modification
  time) and of the outputs' size and time. A rerun whose listing and outputs
  give the same digest (taken during the walk) skips the shard without
  reading its listing back or opening any image.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from leat_jax.pipeline.inputs import Item

# Shards of every job; part of the state's layout, not of a result.
SHARDS = 256
# The fields of a record kept in the shard's compact manifest.
COMPACT = ("path", "status", "settings", "output", "input_sha256", "input_size", "input_mtime_ns", "output_sha256",
           "output_size", "output_mtime_ns", "distances", "linf", "error", "no_face", "size", "image")
_SPILL_LINES = 512  # listing lines held per shard before they are appended to its file
_MODULUS = 1 << 128  # shard digests: sums of 128-bit hashes


def shard_of(rel: str, shards: int = SHARDS) -> int:
    """The shard of relative path ``rel`` (bytes 4..8 of its SHA-256; the image id uses 0..4)."""
    return int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[4:8], "little") % shards


def owner(shard: int, process_count: int) -> int:
    return shard % process_count


def _item_line(item: Item) -> str:
    return json.dumps([item.rel, str(item.path), item.output, item.problem, item.size, item.mtime_ns]) + "\n"


def _item_of(line: str) -> Item:
    rel, path, output, problem, size, mtime_ns = json.loads(line)
    return Item(rel, Path(path), output, problem, size, mtime_ns)


@dataclasses.dataclass
class Spilled:
    """What ``spill`` found: inputs per shard, and each shard's digest (as ``digest`` computes it)."""

    counts: dict[int, int]
    sums: dict[int, int]

    def digest(self, shard: int) -> str:
        return f"{self.sums.get(shard, 0):032x}"


def spill(items: Iterable[Item], folder: Path, process_index: int, process_count: int, dst: Path) -> Spilled:
    """Write this process's shards' listings under ``folder`` (emptied first), digesting each shard on the way.

    The digest is taken here, in the one walk, so a fully done rerun decides
    every shard without reading any listing back.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jsonl"):
        old.unlink()
    held: dict[int, list[str]] = {}
    found = Spilled({}, {})
    out = str(dst)

    def flush(s: int) -> None:
        with open(folder / f"{s}.jsonl", "a", encoding="utf-8") as f:
            f.writelines(held.pop(s))

    for item in items:
        s = shard_of(item.rel)
        if owner(s, process_count) != process_index:
            continue
        line = _item_line(item)
        held.setdefault(s, []).append(line)
        found.counts[s] = found.counts.get(s, 0) + 1
        found.sums[s] = (found.sums.get(s, 0) + _term(line, _output_stat(out, item))) % _MODULUS
        if len(held[s]) >= _SPILL_LINES:
            flush(s)
    for s in list(held):
        flush(s)
    return found


def listing(folder: Path, shard: int) -> list[Item]:
    """Shard ``shard``'s inputs as spilled under ``folder``, sorted by relative path."""
    path = folder / f"{shard}.jsonl"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return sorted((_item_of(line) for line in f), key=lambda i: i.rel)


def _output_stat(dst: str, item: Item) -> tuple[int, int] | None:
    try:
        st = os.stat(os.path.join(dst, item.output))
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _term(line: str, output_stat) -> int:
    return int.from_bytes(hashlib.sha256((line + json.dumps(output_stat)).encode()).digest()[:16], "little")


def digest(items: Iterable[Item], dst: Path) -> str:
    """What a done marker vouches for: each input's path, size and time, and its output's size and time.

    A sum of per-input hashes, so it does not depend on the inputs' order.
    """
    total, out = 0, str(dst)
    for item in items:
        total = (total + _term(_item_line(item), _output_stat(out, item))) % _MODULUS
    return f"{total:032x}"


class Store:
    """The shards' compact manifests and done markers under ``DST/.leat-jax/shards``."""

    def __init__(self, state: Path):
        self.folder = state / "shards"
        self.folder.mkdir(parents=True, exist_ok=True)

    def records(self, shard: int) -> dict[str, dict]:
        """The state of each path of ``shard``: its last record (a line torn by a kill is skipped)."""
        out: dict[str, dict] = {}
        path = self.folder / f"{shard}.jsonl"
        if not path.exists():
            return out
        with open(path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "path" in rec:
                    out[rec["path"]] = rec
        return out

    def append(self, shard: int, records: Iterable[dict]) -> None:
        """Append compact records to the shard's manifest, synced."""
        data = "".join(json.dumps({k: r[k] for k in COMPACT if k in r}, sort_keys=True) + "\n" for r in records)
        path = self.folder / f"{shard}.jsonl"
        with open(path, "ab") as f:
            if f.tell():  # a torn last line from a killed run must not swallow this record
                with open(path, "rb") as g:
                    g.seek(-1, os.SEEK_END)
                    if g.read(1) != b"\n":
                        f.write(b"\n")
            f.write(data.encode())
            f.flush()
            os.fsync(f.fileno())

    def is_done(self, shard: int, settings_hash: str, shard_digest: str) -> bool:
        try:
            marker = json.loads((self.folder / f"{shard}.done").read_text())
        except (OSError, ValueError):
            return False
        return marker.get("settings") == settings_hash and marker.get("digest") == shard_digest

    def mark_done(self, shard: int, settings_hash: str, shard_digest: str, inputs: int) -> None:
        """Write the shard's done marker (after its records are synced).

        Written in place, not renamed from a temporary file, so a kill leaves
        no stray file: a marker torn by a kill is not JSON and reads as not done.
        """
        (self.folder / f"{shard}.done").write_text(
            json.dumps({"settings": settings_hash, "digest": shard_digest, "inputs": inputs}))

    def clear_done(self, shard: int) -> None:
        try:
            (self.folder / f"{shard}.done").unlink()
        except FileNotFoundError:
            pass
