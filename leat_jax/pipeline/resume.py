"""What a run still has to do, shard by shard, and the shards' state as records come in.

``Resume.items`` yields this process's inputs one shard at a time, skipping
whole shards whose done marker still holds (nothing opened); for the other
shards it holds their previous records (``get``, for the read stage). An
engine that lists and reads elsewhere takes the shard numbers (``to_do``)
and opens each shard as its first record comes back (``open_shard``). As
records come back (``settle``) it appends them to the shard's compact
manifest and, once every input of a shard is done, writes its done marker.
Only the shards in flight are in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from leat_jax.pipeline import shards
from leat_jax.pipeline.inputs import Item


class Resume:
    """This process's shards of one run.

    Args:
      store: the shards' manifests and markers.
      work: the folder this run's listing was spilled into.
      spilled: this process's shards, as ``shards.spill`` found them.
      dst: output folder.
      settings_hash: this run's settings hash.
      redo: ignore previous records and markers (``--force``).
      verify: ignore markers; the read stage re-hashes (``--verify``).
    """

    def __init__(self, store: shards.Store, work: Path, spilled: shards.Spilled, dst: Path, settings_hash: str,
                 redo: bool = False, verify: bool = False):
        self.store, self.work, self.spilled, self.dst = store, work, spilled, dst
        self.counts = spilled.counts
        self.settings_hash, self.redo, self.verify = settings_hash, redo, verify
        self.open: dict[int, dict] = {}
        self.shard_of_path: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_do(self, skip_shard: Callable[[int], None]) -> Iterator[int]:
        """This process's shards still to do, their done markers cleared; ``skip_shard(n)`` for each done one."""
        for s in sorted(self.counts):
            if not (self.redo or self.verify) and self.store.is_done(s, self.settings_hash, self.spilled.digest(s)):
                skip_shard(self.counts[s])
                continue
            self.store.clear_done(s)
            yield s

    def finished(self) -> bool:
        """Whether every shard of this process is done by its marker (never with redo or verify), so nothing is
        left to read or attack; changes nothing (``to_do`` clears the markers that do not hold)."""
        return not (self.redo or self.verify) and all(
            self.store.is_done(s, self.settings_hash, self.spilled.digest(s)) for s in self.counts)

    def open_shard(self, s: int, previous: bool = True) -> list[Item]:
        """Hold shard ``s``'s listing while its records come in (once); its inputs.

        ``previous``: also hold its previous records for ``get`` (the read
        stage runs here); without, the read stage reads them where it runs.
        """
        if s not in self.open:
            items = shards.listing(self.work, s)
            records = self.store.records(s) if previous and not self.redo else {}
            self.open[s] = {"items": items, "previous": records, "pending": len(items), "done": 0}
            self.shard_of_path.update((item.rel, s) for item in items)
        return self.open[s]["items"]

    def items(self, skip_shard: Callable[[int], None]) -> Iterator[Item]:
        """This process's inputs still to look at, shard by shard; ``skip_shard(n)`` for each done shard."""
        for s in self.to_do(skip_shard):
            yield from self.open_shard(s)

    def get(self, rel: str, default=None):
        """The previous record of ``rel`` (read stage), or ``default``."""
        s = self.shard_of_path.get(rel)
        return default if s is None else self.open[s]["previous"].get(rel, default)

    def settle(self, records: list[dict], skipped: list[Item] = ()) -> None:
        """Note records (appended to their shards) and skipped inputs; mark shards that are done."""
        by_shard: dict[int, list[dict]] = {}
        for r in records:
            by_shard.setdefault(self.shard_of_path[r["path"]], []).append(r)
        for s, recs in by_shard.items():
            self.store.append(s, recs)
            self._count(s, len(recs), sum(r["status"] == "done" for r in recs))
        for item in skipped:
            self._count(self.shard_of_path[item.rel], 1, 1)

    def _count(self, s: int, n: int, done: int) -> None:
        shard = self.open[s]
        shard["pending"] -= n
        shard["done"] += done
        if shard["pending"]:
            return
        if shard["done"] == len(shard["items"]):
            self.store.mark_done(s, self.settings_hash, shards.digest(shard["items"], self.dst), shard["done"])
        for item in shard["items"]:
            del self.shard_of_path[item.rel]
        del self.open[s]
