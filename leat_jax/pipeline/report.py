"""The JSON report and the contact sheet, written at the end of a run.

Both are built from the shards' manifests (all processes' records), one
shard at a time, so they cover the whole job, including images finished by
earlier, interrupted runs, in bounded memory.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from leat_jax.pipeline import images, inputs

TILE = 192  # contact sheet: largest side of each picture, in pixels


# Per-image entries the report lists inline; all of them are in the manifests (JSON lines).
INLINE = 1000


class _Mean:
    def __init__(self):
        self.total, self.n = 0.0, 0

    def add(self, value) -> None:
        if value is not None:
            self.total += value
            self.n += 1

    def value(self):
        return self.total / self.n if self.n else None


def build(shard_rows: Iterable[tuple[Sequence[inputs.Item], Mapping[str, dict]]], settings: dict,
          runs: Sequence[dict], src, dst, warning: str | None) -> dict:
    """The report as a dict (see ``write``), streamed over the shards: (inputs, records by path) each."""
    current_hash = settings["settings_hash"]
    names = [v["name"] for v in settings["victims"]]
    means = {n: (_Mean(), _Mean()) for n in names}
    totals = {"images": 0, "done": 0, "failed": 0, "missing": 0, "done_with_other_settings": 0}
    no_face = 0
    done, failures, missing = [], [], []
    for items, records in shard_rows:
        for item in items:
            totals["images"] += 1
            rec = records.get(item.rel)
            if rec is None:
                totals["missing"] += 1
                _keep(missing, item.rel)
            elif rec.get("status") == "done":
                totals["done"] += 1
                no_face += rec.get("no_face") is True
                if rec.get("settings") != current_hash:
                    totals["done_with_other_settings"] += 1
                    continue
                for n in names:
                    d = (rec.get("distances") or {}).get(n, {})
                    means[n][0].add(d.get("start"))
                    means[n][1].add(d.get("end"))
                entry = {k: rec.get(k) for k in ("path", "output", "distances", "linf", "size", "image", "settings")}
                entry.update({k: rec[k] for k in ("no_face",) if k in rec})
                _keep(done, entry)
            else:
                totals["failed"] += 1
                _keep(failures, {"path": item.rel, "error": rec.get("error")})
    if settings.get("faces", {}).get("mode", "aligned") != "aligned":
        totals["no_face"] = no_face
    seconds = max((r["seconds"] for r in runs), default=0.0)
    protected = sum(r["protected"] for r in runs)
    return {
        "warning": warning,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "src": str(src),
        "dst": str(dst),
        "settings": settings,
        "run": {
            "processes": len(runs),
            "devices": sum(r["devices"] for r in runs),
            "platform": runs[0]["platform"] if runs else None,
            "seconds": seconds,
            "protected": protected,
            "already_done": sum(r["skipped"] for r in runs),
            "failed": sum(r["failed"] for r in runs),
            "images_per_second": protected / seconds if seconds and protected else None,
            "per_process": list(runs),
            "software": software(),
        },
        "totals": totals,
        "mean_distance": {n: {"start": a.value(), "end": b.value()} for n, (a, b) in means.items()},
        "per_image": f"{inputs.STATE_DIR}/manifest-<process>.jsonl (every record, JSON lines); "
                     f"{inputs.STATE_DIR}/shards/<shard>.jsonl (compact; a path's last line is its state)",
        "images": done,
        "failures": failures,
        "missing": missing,
    }


def software() -> dict:
    """What the samples also depend on and the settings hash leaves out: this process's jax and jaxlib
    versions and XLA flags (README, *What is identical to what*)."""
    return {"jax": importlib.metadata.version("jax"), "jaxlib": importlib.metadata.version("jaxlib"),
            "xla_flags": os.environ.get("XLA_FLAGS")}


def _keep(entries: list, entry) -> None:
    if len(entries) < INLINE:
        entries.append(entry)


def _fit(a: np.ndarray, resample) -> Image.Image:
    im = Image.fromarray(a)
    scale = TILE / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)
    return im


def contact_sheet(rows: Sequence[tuple[Path, Path]], eps: float, warning: str | None) -> Image.Image | None:
    """Originals, protected images and the perturbation (scaled so +-eps spans black to white)."""
    tiles = []
    for original, protected in rows:
        try:
            a = images.decode(original.read_bytes(), 1 << 30)
            b = images.decode(protected.read_bytes(), 1 << 30)
        except (OSError, images.ImageError):
            continue
        if a.levels.shape != b.levels.shape:
            continue
        diff = (b.levels.astype(np.float64) - a.levels.astype(np.float64)) * 2.0 / a.maxval
        if diff.shape[-1] == 1:
            diff = np.repeat(diff, 3, axis=-1)
        amplified = np.clip(127.5 + diff / eps * 127.5, 0, 255).astype(np.uint8)
        tiles.append((_fit(images.rgb8(a), Image.LANCZOS), _fit(images.rgb8(b), Image.LANCZOS),
                      _fit(amplified, Image.NEAREST), original.name))
    if not tiles:
        return None
    pad, head, label = 8, 44, 14
    width = 3 * TILE + 4 * pad
    height = head + len(tiles) * (TILE + label + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    titles = ("original", "protected", f"perturbation (+-{eps:g} = black..white)")
    for c, t in enumerate(titles):
        draw.text((pad + c * (TILE + pad), head - 16), t, fill=(0, 0, 0))
    if warning:
        draw.text((pad, 6), "STAND-IN WEIGHTS: this output protects against nothing", fill=(200, 0, 0))
    y = head
    for a, b, d, name in tiles:
        for c, im in enumerate((a, b, d)):
            sheet.paste(im, (pad + c * (TILE + pad), y))
        draw.text((pad, y + TILE + 1), name, fill=(80, 80, 80))
        y += TILE + label + pad
    return sheet


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write(dst, src, shard_rows, settings, runs, warning, sheet_images: int, eps: float):
    """Write ``leat-jax-report.json`` and the contact sheet into ``dst``; returns their paths.

    The report: ``warning`` (stand-in weights), ``settings``, ``run`` (devices,
    time, counts of this run), ``totals``, ``mean_distance`` per victim,
    ``images`` (per image: output, latent distance per victim at the random
    start and at the end, L-inf change measured on the written file),
    ``failures`` (path, error) and ``missing`` (not processed by any process),
    each listing its first ``INLINE`` entries (all are in the JSON-lines
    manifests ``per_image`` names). With ``--faces detect``, each image's
    faces (box, landmarks, region, distances per victim) are in the
    manifests, and ``totals.no_face`` counts the photos written unchanged for
    want of a face. ``shard_rows``: (inputs, records by path) per shard.
    """
    dst = Path(dst)
    paths: dict[str, Path] = {}

    def noting(rows):
        for items, records in rows:
            for item in items:
                if len(paths) < sheet_images and records.get(item.rel, {}).get("status") == "done":
                    paths[item.rel] = item.path
            yield items, records

    data = build(noting(shard_rows), settings, runs, src, dst, warning)
    report_path = dst / inputs.REPORT
    _atomic_bytes(report_path, (json.dumps(data, indent=2) + "\n").encode())
    sheet_path = None
    if sheet_images:
        rows = [(paths[d["path"]], dst / d["output"]) for d in data["images"] if d["path"] in paths][:sheet_images]
        sheet = contact_sheet(rows, eps, warning)
        if sheet is not None:
            sheet_path = dst / inputs.CONTACT_SHEET
            tmp = sheet_path.with_name(f".{sheet_path.name}.{os.getpid()}.part")
            sheet.save(tmp, "PNG")
            os.replace(tmp, sheet_path)
    return report_path, sheet_path
