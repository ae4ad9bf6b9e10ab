"""The evaluate report's files and what is in them: names, Markdown tables, definitions, the figure.

``markdown`` turns the JSON report (``pipeline.evaluate.run``'s) into
tables; ``DEFINITIONS`` says what every number in it means; ``nan_as_null``
keeps the JSON valid when a pipeline returns NaN; ``figure`` lays out per
image its inputs and each pipeline's outputs, ``difference_tile`` the
amplified change of a stand-in pipeline's output.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from leat_jax.pipeline import identity

REPORT_JSON = "leat-jax-evaluation.json"
REPORT_MD = "leat-jax-evaluation.md"
FIGURE = "leat-jax-evaluation.png"
TILE = 128  # the figure's tile side, in pixels


def nan_as_null(obj):
    """NaN and infinities (a pipeline gone numerically wrong) as null, so the JSON stays valid."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nan_as_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_as_null(v) for v in obj]
    return obj


def _fmt(v, pct=False):
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.4g}"


def _pipeline_splits(data: dict):
    """(attack, pipeline, split, summary) for every non-empty known / unknown summary, in report order."""
    for attack, res in data["attacks"].items():
        for name, splits in res["pipelines"].items():
            for split in ("known", "unknown"):
                if splits.get(split):
                    yield attack, name, split, splits[split]


def _pipeline_table(data: dict) -> list[str]:
    lines = ["| attack | pipeline | attributes | pairs | mean MSE | DSR | image DSR (all attributes) | "
             "masked MSE | masked DSR |", "|---|---|---|---|---|---|---|---|---|"]
    for attack, name, split, s in _pipeline_splits(data):
        lines.append(f"| {attack} | {name} | {split} | {s['pairs']} | {_fmt(s['mean_mse'])} | "
                     f"{_fmt(s['dsr'], True)} | {_fmt(s['image_dsr'], True)} | "
                     f"{_fmt(s['mean_masked_mse'])} | {_fmt(s['masked_dsr'], True)} |")
    return lines


def _overall_table(data: dict) -> list[str]:
    lines = ["| attack | attributes | Avg-DSR | E-DSR | Avg masked DSR | E masked DSR |", "|---|---|---|---|---|---|"]
    for attack, res in data["attacks"].items():
        for split in ("known", "unknown", "all"):
            o = res["overall"].get(split)
            if o:
                lines.append(f"| {attack} | {split} | {_fmt(o['avg_dsr'], True)} | {_fmt(o['e_dsr'], True)} | "
                             f"{_fmt(o['avg_masked_dsr'], True)} | {_fmt(o['e_masked_dsr'], True)} |")
    return lines


def _identity_table(data: dict) -> list[str]:
    lines = ["| attack | pipeline | attributes | pairs | DSR (pixels) | mean identity cosine | identity DSR | "
             "clean outputs with a face | no face | other face | face DSR |", "|---" * 11 + "|"]
    for attack, name, split, s in _pipeline_splits(data):
        lines.append(f"| {attack} | {name} | {split} | {s['pairs']} | {_fmt(s['dsr'], True)} | "
                     f"{_fmt(s['mean_identity_cosine'])} | {_fmt(s['identity_dsr'], True)} | "
                     f"{s['clean_faces']} | {_fmt(s['no_face_rate'], True)} | "
                     f"{_fmt(s['other_face_rate'], True)} | {_fmt(s['face_dsr'], True)} |")
    weights = data.get("identity_weights")
    return lines + ["", f"Identity: SimSwap ArcFace ({weights or 'not run: no weights'}); identity-disrupted when "
                    f"the cosine of the outputs' embeddings < {data['identity_threshold']}. Face: MTCNN, largest "
                    f"box; other face when IoU < {identity.IOU_THRESHOLD}; rates over the pairs whose clean output "
                    "shows a face."]


def _cost_table(data: dict) -> list[str]:
    lines = ["| attack | PSNR (dB) | SSIM | max L-inf | attack, seconds per image | "
             "this evaluation, seconds per image |", "|---|---|---|---|---|---|"]
    for attack, res in data["attacks"].items():
        im = res["imperceptibility"]
        lines.append(f"| {attack} | {_fmt(im['psnr'])} | {_fmt(im['ssim'])} | {_fmt(im['linf'])} | "
                     f"{_fmt(res.get('attack_seconds_per_image'))} | {_fmt(res.get('evaluation_seconds_per_image'))} |")
    return lines + ["", "Attack seconds: LEAT's from the immunize report in the protected folder (- when there is "
                    "none), the baseline's measured here; evaluation seconds: every pipeline's passes on the clean "
                    "and attacked image (clean outputs computed once, on the first attack)."]


def markdown(data: dict) -> str:
    """The JSON report (``run``'s) as Markdown tables."""
    lines = ["# leat-jax evaluation", ""]
    if data.get("warning"):
        lines += [f"**{data['warning']}**", ""]
    lines += [f"{data['images']} image pairs; disrupted when the output MSE (in [-1, 1]) > {data['threshold']}. "
              "Definitions: see `definitions` in the JSON report.", ""]
    lines += [*_pipeline_table(data), "", *_overall_table(data), "", *_identity_table(data), "",
              *_cost_table(data), "", "Attributes:", ""]
    for name, a in data["attributes"].items():
        lines.append(f"- {name}: known {', '.join(a['known']) or '-'}; unknown {', '.join(a['unknown']) or '-'}")
    return "\n".join(lines) + "\n"


DEFINITIONS = {
    "mse": "mean((out(x_adv, c) - out(x, c))**2) over pixels and channels, outputs in [-1, 1]",
    "disrupted": "mse > threshold (Ruiz et al. 2020: 0.05)",
    "masked_mse": "CMUA-Watermark: mask = sum_channels |out(x, c) - resize(x)| > 0.5; "
                  "sum((adv - clean)**2 * mask) / (sum(mask) * 3); empty mask: NaN, not disrupted",
    "dsr": "per pipeline and split: fraction of (image, attribute) pairs disrupted",
    "image_dsr": "per pipeline and split: fraction of images disrupted for every attribute of the split",
    "avg_dsr": "mean over pipelines of dsr",
    "e_dsr": "fraction of images disrupted for every attribute of the split on every pipeline",
    "psnr": "of x_adv against x on [0, 1] (data range 1), mean over images with a change",
    "ssim": "Wang et al. 2004, Gaussian 11x11 window, sigma 1.5, on [0, 1], valid positions, mean over "
            "channels, positions and images",
    "attack_seconds_per_image": "the attack's cost: wall time of the attack divided by the images (first call "
                                "includes compilation); LEAT's from the immunize report (run seconds / images "
                                "protected), null without one",
    "evaluation_seconds_per_image": "this evaluation's cost for the attack: wall time of every pipeline's passes "
                                    "divided by the images; the clean outputs are computed once, on the first attack",
    **identity.DEFINITIONS,
}


# ---------------------------------------------------------------- the figure


def _to8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def difference_tile(clean_out: np.ndarray, protected_out: np.ndarray) -> tuple[np.ndarray, str]:
    """|protected - clean| (mean over channels), amplified so its largest value is white.

    Args:
      clean_out, protected_out: (h, w, 3) outputs in [-1, 1].
    Returns:
      the (h, w, 3) tile in [-1, 1] (black: no change) and its label (the scale, or "identical").
    """
    d = np.abs(np.asarray(protected_out, np.float64) - np.asarray(clean_out, np.float64)).mean(axis=-1)
    top = float(d.max())
    if not np.isfinite(top) or top == 0.0:
        return np.full(d.shape + (3,), -1.0), "identical" if top == 0.0 else "non-finite"
    scale = 1.0 / top
    return np.repeat((2.0 * d * scale - 1.0)[..., None], 3, axis=-1), f"x{scale:.3g}"


def figure(rows, titles: list[str], warning: str | None):
    """rows: [(rel, [(tile (h, w, 3) in [-1, 1], label or None)])], titles: one per column -> PIL image."""
    pad, head, label = 6, 40, 14
    cols = len(titles)
    sheet = Image.new("RGB", (pad + cols * (TILE + pad), head + len(rows) * (TILE + label + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for c, t in enumerate(titles):
        draw.text((pad + c * (TILE + pad), head - 14), t[:22], fill=(0, 0, 0))
    if warning:
        draw.text((pad, 4), "STAND-IN WEIGHTS: these outputs mean nothing about real protection", fill=(200, 0, 0))
    y = head
    for rel, tiles in rows:
        for c, (t, text) in enumerate(tiles):
            im = Image.fromarray(_to8(t))
            im = im.resize((TILE, max(1, round(TILE * im.height / im.width))) if im.width >= im.height
                           else (max(1, round(TILE * im.width / im.height)), TILE), Image.BILINEAR)
            sheet.paste(im, (pad + c * (TILE + pad), y))
            if text:  # on a black box: readable on any tile
                at = (pad + c * (TILE + pad) + 3, y + 3)
                draw.rectangle(draw.textbbox(at, text), fill=(0, 0, 0))
                draw.text(at, text, fill=(255, 255, 0))
        draw.text((pad, y + TILE + 1), rel[:60], fill=(80, 80, 80))
        y += TILE + label + pad
    return sheet
