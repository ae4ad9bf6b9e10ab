"""The contact sheet of a sharded job: its first protected images, read back from the input and output shards.

The folder job's sheet (``report.contact_sheet``: original, protected,
perturbation) on the first ``--contact-sheet`` images the done markers
record as done, in shard order (earlier runs' included, as the folder job's
manifest gives them). Only the shards holding them are read again.
"""
from __future__ import annotations

import dataclasses
import io

from leat_jax.pipeline import inputs, report, sinks, sources


@dataclasses.dataclass(frozen=True)
class Picture:
    """An image file's bytes in memory, read as ``report.contact_sheet`` reads a file (``name``, ``read_bytes``)."""

    name: str
    data: bytes

    def read_bytes(self) -> bytes:
        return self.data


def pairs(found: list[sources.Shard], out: dict[str, str], markers: dict[str, dict],
          n: int) -> list[tuple[Picture, Picture]]:
    """(original, protected) of the first ``n`` images done.

    Args:
      found: the input shards, in order.
      out: an input shard's ``rel`` -> its output shard's URL.
      markers: an input shard's ``rel`` -> its done marker (records under ``records``).
      n: how many at most.
    Returns:
      The pairs, in shard order; a shard that cannot be read again gives none.
    """
    got: list[tuple[Picture, Picture]] = []
    for shard in found:
        done = [r for r in markers.get(shard.rel, {}).get("records", []) if r["status"] == "done"][:n - len(got)]
        if not done:
            continue
        originals, protected = images_of(shard.url), images_of(out[shard.rel])
        for r in done:  # tar members take the output's suffix; Parquet keeps the key
            key = r["output"] if shard.kind == "tar" else r["path"]
            if r["path"] in originals and key in protected:
                name = f"{shard.rel}/{r['path']}"
                got.append((Picture(name, originals[r["path"]]), Picture(name, protected[key])))
        if len(got) >= n:
            break
    return got


def images_of(url: str) -> dict[str, bytes]:
    """The images of the shard at ``url`` by key; none when it cannot be read (the sheet is a view, not a result)."""
    try:
        shard = sources.list_shards(url)[0]
        return {key: blob for key, blob, _ in sources.members(shard, sources.read_bytes(shard.url)) if blob}
    except (sources.SourceError, OSError, IndexError):
        return {}


def write(dst: str, shown: list[tuple[Picture, Picture]], eps: float, warning: str | None) -> str | None:
    """The sheet of ``shown`` at ``DST/leat-jax-contact-sheet.png`` (written whole); its URL, None without one."""
    sheet = report.contact_sheet(shown, eps, warning) if shown else None
    if sheet is None:
        return None
    data = io.BytesIO()
    sheet.save(data, "PNG")
    url = f"{dst.rstrip('/')}/{inputs.CONTACT_SHEET}"
    sinks.put(url, data.getvalue())
    return url
