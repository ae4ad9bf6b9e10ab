"""The robustness job: how much of the protection survives real countermeasures?

``leat-jax robustness CLEAN PROTECTED --victims ...`` pairs every image under
CLEAN with its protected version under PROTECTED (as ``immunize`` writes
them), applies every countermeasure (``pipeline.countermeasures``: Pillow
JPEG, WebP, resize, blur and their pairs) to the protected image and to the
clean one, and reports per victim and countermeasure, as means over images:

* retention ``d(E(T(x_adv)), E(x)) / d(E(x_adv), E(x))``: the share of the
  latent distortion left after the countermeasure;
* floor ``d(E(T(x)), E(x)) / d(E(x_adv), E(x))``: what the countermeasure
  alone does to a clean image, on the same scale (retention near the floor
  means the protection is gone).

Written into OUT (default PROTECTED): ``leat-jax-robustness.json`` (settings,
per-image distances, the means), ``.md`` (a table) and ``.png`` (retention
against JPEG quality, one line per victim).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from leat_jax import __version__
from leat_jax.errors import SetupError
from leat_jax.pipeline import countermeasures, images, inputs, victimset
from leat_jax.pipeline.victimset import VictimSpec

REPORT_JSON = "leat-jax-robustness.json"
REPORT_MD = "leat-jax-robustness.md"
FIGURE = "leat-jax-robustness.png"
STAND_IN_WARNING = (
    "WARNING: stand-in weights ({names}): random networks, not the deepfake encoders. These numbers say "
    "NOTHING about real protection; they only show the machinery working."
)


@dataclasses.dataclass(frozen=True)
class RobustnessConfig:
    """Settings of a robustness report.

    Attributes:
      clean, protected: the original images and their protected versions.
      out: where the report goes; None: ``protected``.
      victims: the encoders whose latent distortion is measured.
      stand_in_weights: allow bare victim names (random weights; numbers mean nothing).
      countermeasures: names (``pipeline.countermeasures``), applied one at a time.
      max_size: largest accepted image side.
      extra_victims: ``module:function`` entries adding victims (``LEAT_EXTRA_VICTIMS``).
      quiet: no progress lines.
    """

    clean: str
    protected: str
    out: str | None = None
    victims: tuple[VictimSpec, ...] = ()
    stand_in_weights: bool = False
    countermeasures: tuple[str, ...] = countermeasures.DEFAULT
    max_size: int = 2048
    extra_victims: tuple[str, ...] = ()
    quiet: bool = False

    def __post_init__(self):
        for name in self.countermeasures:
            countermeasures.check(name)


def pairs(clean, protected, max_size: int, skip=None) -> tuple[list, list]:
    """[(rel, clean 8-bit RGB, protected 8-bit RGB)], [(rel, reason)] for the images left out."""
    clean, protected = Path(clean), Path(protected)
    for folder in (clean, protected):
        if not folder.is_dir():
            raise SetupError(f"{folder}: not a folder")
    try:
        items = inputs.discover(clean, skip)
    except inputs.InputError as e:
        raise SetupError(str(e)) from None
    found, skipped = [], []
    for item in items:
        target = protected / item.output
        if item.problem or not target.is_file():
            skipped.append((item.rel, item.problem or f"no protected version ({item.output})"))
            continue
        try:
            a, b = (images.rgb8(images.decode(p.read_bytes(), max_size)) for p in (item.path, target))
        except (OSError, images.ImageError) as e:
            skipped.append((item.rel, str(e).splitlines()[0]))
            continue
        if a.shape != b.shape:
            skipped.append((item.rel, f"sizes differ: {a.shape[:2]} vs {b.shape[:2]}"))
            continue
        found.append((item.rel, a, b))
    if not found:
        why = f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise SetupError(f"no image of {clean} has a protected version in {protected}{why}")
    return found, skipped


def _to_model(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def distance_function(victims):
    """``f(params, clean_rgb8, others_rgb8) -> (N, K)`` latent distances of each other image to the clean one."""
    import jax

    from leat_jax.attack import AttackConfig, clean_latents, latent_distances

    cfg = AttackConfig()
    encode = jax.jit(lambda p, x: clean_latents(victims, cfg, p, x))
    dist = jax.jit(lambda p, x, y, c: latent_distances(victims, cfg, p, x, y - x, c))

    def f(params, clean_rgb, others):
        x = _to_model(clean_rgb)
        c = encode(params, x)
        return np.stack([np.asarray(dist(params, x, _to_model(o), c)) for o in others])

    return f


def measure(f, params, clean_rgb, protected_rgb, names) -> dict:
    """One image's distances: ``protected`` (K,) and per countermeasure ``protected`` and ``clean`` (K,)."""
    others = [protected_rgb]
    for n in names:
        others += [countermeasures.apply(n, protected_rgb), countermeasures.apply(n, clean_rgb)]
    d = f(params, clean_rgb, others)
    return {"protected": d[0].tolist(),
            "countermeasures": {n: {"protected": d[1 + 2 * i].tolist(), "clean": d[2 + 2 * i].tolist()}
                                for i, n in enumerate(names)}}


def summarize(per_image: dict, victim_names, names) -> dict:
    """Per victim: mean untransformed distance, and per countermeasure mean retention and floor over images."""
    out = {}
    for k, v in enumerate(victim_names):
        base = np.array([r["protected"][k] for r in per_image.values()])
        row = {"distance": float(base.mean()), "countermeasures": {}}
        for n in names:
            adv = np.array([r["countermeasures"][n]["protected"][k] for r in per_image.values()])
            cln = np.array([r["countermeasures"][n]["clean"][k] for r in per_image.values()])
            row["countermeasures"][n] = {"retention": float(np.mean(adv / base)), "floor": float(np.mean(cln / base)),
                                         "distance": float(adv.mean()), "floor_distance": float(cln.mean())}
        out[v] = row
    return out


def markdown(data: dict) -> str:
    """The report as a table: rows countermeasures, per victim ``retention (floor)``."""
    victims = list(data["summary"])
    lines = ["# leat-jax robustness", ""]
    if data.get("warning"):
        lines += [f"**{data['warning']}**", ""]
    lines += [f"{data['images']} image(s); retention d(E(T(x_adv)),E(x)) / d(E(x_adv),E(x)), "
              "floor d(E(T(x)),E(x)) / d(E(x_adv),E(x)) in parentheses; means over images.", "",
              "| countermeasure | " + " | ".join(victims) + " |", "|---" * (len(victims) + 1) + "|",
              "| none (distance) | " + " | ".join(f"{data['summary'][v]['distance']:.4g}" for v in victims) + " |"]
    for n in data["countermeasures"]:
        cells = [data["summary"][v]["countermeasures"][n] for v in victims]
        lines.append(f"| {n} | " + " | ".join(f"{c['retention']:.2f} ({c['floor']:.2f})" for c in cells) + " |")
    return "\n".join(lines) + "\n"


COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def _frame(d: ImageDraw.ImageDraw, pos, xs, top_value, box, warning) -> None:
    """Axes, tick labels, titles and the stand-in warning of the plot."""
    left, top, right, bottom = box
    d.rectangle(box, outline="black")
    for i, q in enumerate(xs):
        d.text((pos(i, 0)[0] - 10, bottom + 6), str(q), fill="black")
    for frac in (0.0, 0.5, 1.0):
        d.text((8, pos(0, frac * top_value)[1] - 6), f"{frac * top_value:.2f}", fill="black")
    d.text((left, 10), "retention after JPEG (circles: clean-image floor)", fill="black")
    d.text(((left + right) // 2 - 30, bottom + 20), "JPEG quality", fill="black")
    if warning:
        d.text((left, bottom + 34), "stand-in weights: numbers mean nothing", fill=(200, 0, 0))


def plot(summary: dict, warning: str | None, size=(640, 420)) -> Image.Image:
    """Retention against JPEG quality (none, 95, 75, 50), one line per victim; circles: the floors."""
    w, h = size
    box = (60, 40, w - 150, h - 60)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xs = ["none", *countermeasures.JPEG_QUALITIES]
    top_value = max([1.0] + [c["retention"] for v in summary.values() for c in v["countermeasures"].values()])

    def pos(i, value):
        return (box[0] + i * (box[2] - box[0]) / (len(xs) - 1),
                box[3] - min(value, top_value) / top_value * (box[3] - box[1]))

    _frame(d, pos, xs, top_value, box, warning)
    for k, (name, row) in enumerate(summary.items()):
        colour, cms = COLOURS[k % len(COLOURS)], row["countermeasures"]
        points = [pos(0, 1.0)] + [pos(i, cms[f"jpeg{q}"]["retention"]) for i, q in enumerate(xs) if f"jpeg{q}" in cms]
        d.line(points, fill=colour, width=2)
        for i, q in enumerate(xs):
            if f"jpeg{q}" in cms:
                x, y = pos(i, cms[f"jpeg{q}"]["floor"])
                d.ellipse([x - 3, y - 3, x + 3, y + 3], outline=colour)
        d.line([(box[2] + 10, box[1] + 16 * k + 6), (box[2] + 30, box[1] + 16 * k + 6)], fill=colour, width=2)
        d.text((box[2] + 34, box[1] + 16 * k), name, fill="black")
    return img


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run(cfg: RobustnessConfig) -> dict:
    """Measure and write the report; returns it. ``SetupError`` (one line) when it cannot start."""
    out = Path(cfg.out if cfg.out is not None else cfg.protected)
    found, skipped = pairs(cfg.clean, cfg.protected, cfg.max_size, out)
    loaded = victimset.load(cfg.victims, cfg.stand_in_weights, cfg.extra_victims)
    warning = STAND_IN_WARNING.format(names=", ".join(loaded.stand_in)) if loaded.stand_in else None
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    f, start = distance_function(loaded.victims), time.perf_counter()
    per_image = {}
    for rel, clean_rgb, prot_rgb in found:
        per_image[rel] = measure(f, loaded.params, clean_rgb, prot_rgb, cfg.countermeasures)
        if not cfg.quiet:
            print(f"leat-jax: robustness {rel}: done", file=sys.stderr, flush=True)
    data = {
        "warning": warning, "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "leat_jax_version": __version__,
        "clean": str(cfg.clean), "protected": str(cfg.protected), "images": len(per_image),
        "skipped": [{"path": r, "reason": why} for r, why in skipped],
        "victims": [{"name": n, "weights": i} for n, i in zip(loaded.names, loaded.identities)],
        "countermeasures": list(cfg.countermeasures), "seconds": time.perf_counter() - start,
        "summary": summarize(per_image, loaded.names, cfg.countermeasures), "per_image": per_image,
    }
    _write(out / REPORT_JSON, (json.dumps(data, indent=2) + "\n").encode())
    _write(out / REPORT_MD, markdown(data).encode())
    buf = out / f".{FIGURE}.{os.getpid()}.part"
    plot(data["summary"], warning).save(buf, "PNG")
    os.replace(buf, out / FIGURE)
    if not cfg.quiet:
        print(f"leat-jax: wrote {out / REPORT_JSON}, {out / REPORT_MD}, {out / FIGURE}", file=sys.stderr, flush=True)
    return data
