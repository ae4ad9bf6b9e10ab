"""The evaluate job: how much do protected images disrupt the deepfake pipelines?

``leat-jax evaluate CLEAN_DIR PROTECTED_DIR OUT_DIR --pipelines NAME=DIR,...``
pairs every image under CLEAN_DIR with its protected version under
PROTECTED_DIR (same relative path, the output suffix ``immunize`` gives it),
runs every pipeline on both for every attribute (``pipeline.attributes``:
known and unknown), and writes into OUT_DIR:

* ``leat-jax-evaluation.json``: settings, definitions, per (attack,
  pipeline, split) MSE / DSR / masked DSR, Avg-DSR and E-DSR per split,
  PSNR / SSIM of the protection, per-image distances, timings;
* ``leat-jax-evaluation.md``: the same as tables;
* ``leat-jax-evaluation.png``: per image, clean input, protected input, and
  per pipeline its clean and protected output (first attribute).

With ``baseline``, the image-space attack (``attack.image_space``) runs on
the clean images over the *known* attributes only, with LEAT's settings (read
from PROTECTED_DIR's immunize report when present), its results quantised to
8 or 16 bits as ``immunize`` writes them (saved under ``OUT_DIR/baseline``),
and it is evaluated like LEAT, on known and unknown attributes. It runs over
every local device (``devices``), one image per device at a time, as
``immunize`` does on CPU: images of one size go together. Metrics:
``pipeline.metrics``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from leat_jax import __version__
from leat_jax.attack import AttackConfig
from leat_jax.errors import SetupError
from leat_jax.pipeline import attributes as attrs_mod
from leat_jax.pipeline import countermeasures, images, inputs, metrics

REPORT_JSON = "leat-jax-evaluation.json"
REPORT_MD = "leat-jax-evaluation.md"
FIGURE = "leat-jax-evaluation.png"
STAND_IN_WARNING = (
    "WARNING: stand-in weights ({names}): random networks, not the deepfake models. These numbers mean "
    "NOTHING about real protection; they only show the machinery working. For real numbers convert the "
    "official checkpoints (`leat-jax convert`) and pass --pipelines NAME=DIR,..."
)
TILE = 128


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    name: str
    folder: str | None = None  # None: stand-in weights


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Settings of an evaluation.

    Attributes:
      clean, protected, out: the three folders.
      pipelines: what to run (``--pipelines``; bare names need ``stand_in_weights``).
      sections: per pipeline, its TOML table (attributes; see ``pipeline.attributes``).
      stand_in_weights: allow bare pipeline names (random weights; numbers mean nothing).
      baseline: also run and evaluate the image-space attack.
      attack: the baseline's settings; None: LEAT's, from the immunize report
        in ``protected`` (``AttackConfig()`` defaults when there is none).
      seed: the baseline's random starts (with each image's relative path), the
        stand-in weights and sampled attributes; None: the immunize report's seed, else 0.
      threshold: the disruption threshold on MSE (0.05).
      figure_rows: images shown in the figure (0: no figure).
      max_size: largest accepted image side.
      devices: the baseline runs on the first N local devices (None: all).
      extra_pipelines: ``module:function`` entries (``LEAT_EXTRA_DEEPFAKES``).
      quiet: no progress lines.
      countermeasure: applied to every protected image as it is read (e.g.
        ``jpeg75``; ``pipeline.countermeasures``): the disruption after an upload.
    """

    clean: str
    protected: str
    out: str
    pipelines: tuple[PipelineSpec, ...] = ()
    sections: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    stand_in_weights: bool = False
    baseline: bool = False
    attack: AttackConfig | None = None
    seed: int | None = None
    threshold: float = metrics.THRESHOLD
    figure_rows: int = 4
    max_size: int = 2048
    devices: int | None = None
    extra_pipelines: tuple[str, ...] = ()
    quiet: bool = False
    countermeasure: str | None = None

    def __post_init__(self):
        if self.countermeasure is not None:
            countermeasures.check(self.countermeasure)
        if type(self.figure_rows) is not int or self.figure_rows < 0:
            raise SetupError(f"figure_rows must be a non-negative integer, got {self.figure_rows!r}")
        if not isinstance(self.threshold, (int, float)) or not self.threshold >= 0:
            raise SetupError(f"threshold must be a non-negative number, got {self.threshold!r}")
        if self.seed is not None and (type(self.seed) is not int or not 0 <= self.seed < 2**32):
            raise SetupError(f"seed must be an integer in 0..2**32-1, got {self.seed!r}")
        if self.devices is not None and (type(self.devices) is not int or self.devices < 1):
            raise SetupError(f"devices must be a positive integer, got {self.devices!r}")
        for name in ("stand_in_weights", "baseline", "quiet"):
            if type(getattr(self, name)) is not bool:
                raise SetupError(f"{name} must be true or false, got {getattr(self, name)!r}")


def parse_pipelines(text: str) -> tuple[PipelineSpec, ...]:
    """``name=DIR,name,...`` -> specs."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, folder = (s.strip() for s in part.partition("="))
        if sep and not folder:
            raise SetupError(f"--pipelines: {name}= names no folder")
        out.append(PipelineSpec(name, folder or None))
    return tuple(out)


_TOP = {"baseline", "seed", "threshold", "figure_rows", "max_size", "stand_in_weights", "devices", "countermeasure"}


def read_toml(path) -> dict[str, Any]:
    """The ``--config`` file -> settings for ``build``::

        threshold = 0.05
        [attack]            # the baseline's AttackConfig fields
        iterations = 50
        [pipelines]         # name = folder (relative to the file) or "stand-in"
        simswap = "ckpt/simswap"
        [simswap]           # attributes: see leat_jax.pipeline.attributes
        known = 2
        unknown = 2
    """
    from leat_jax.pipeline.config import load_toml

    path = Path(path)
    data = load_toml(path)
    out: dict[str, Any] = {"sections": {}}
    attack_keys = {f.name for f in dataclasses.fields(AttackConfig)}
    for key, value in data.items():
        if key == "attack":
            if not isinstance(value, dict) or set(value) - attack_keys:
                raise SetupError(f"{path}: [attack] takes {', '.join(sorted(attack_keys))}")
            out["attack"] = dict(value)
        elif key == "pipelines":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise SetupError(f'{path}: [pipelines] must map names to folders or "stand-in"')
            out["pipelines"] = tuple(
                PipelineSpec(n, None if d == "stand-in" else str(path.parent / d)) for n, d in value.items())
        elif isinstance(value, dict):
            out["sections"][key] = dict(value)
        elif key in _TOP:
            out[key] = value
        else:
            raise SetupError(f"{path}: unknown setting {key!r}; known: attack, pipelines, [NAME] tables, "
                             f"{', '.join(sorted(_TOP))}")
    return out


def build(clean, protected, out, toml: Mapping[str, Any] | None = None, **flags) -> EvaluateConfig:
    """Defaults < ``toml`` < ``flags`` (None: not given)."""
    values = {**dict(toml or {}), **{k: v for k, v in flags.items() if v is not None}}
    attack = values.pop("attack", None)
    if attack is not None:
        try:
            values["attack"] = AttackConfig(**attack)
        except (TypeError, ValueError) as e:
            raise SetupError(f"attack settings: {e}") from None
    return EvaluateConfig(clean=str(clean), protected=str(protected), out=str(out), **values)


# ---------------------------------------------------------------- the job


def _immunize_report(protected: Path) -> dict | None:
    try:
        return json.loads((protected / inputs.REPORT).read_text())
    except (OSError, ValueError):
        return None


def check_baseline_settings(cfg: EvaluateConfig, imm_settings: dict, attack: AttackConfig | None) -> None:
    """A one-line ``SetupError`` unless the baseline's attack settings and seed are known: given, or read
    from the immunize report in ``cfg.protected`` (a silent default would compare with another attack)."""
    missing = [what for what, known in (
        ("the attack settings ([attack] in --config)", cfg.attack is not None or ("attack" in imm_settings and attack)),
        ("the seed (--seed)", cfg.seed is not None or "seed" in imm_settings)) if not known]
    if missing:
        raise SetupError(f"--baseline: {cfg.protected} has no readable immunize report ({inputs.REPORT}) with "
                         f"{' and '.join(missing)} to match; give them explicitly")


def _leat_seconds_per_image(report: dict | None) -> float | None:
    run = (report or {}).get("run") or {}
    if run.get("seconds") and run.get("protected"):
        return float(run["seconds"]) / float(run["protected"])
    return None


def _read(path: Path, max_size: int) -> images.Decoded:
    return images.decode(path.read_bytes(), max_size)


def _pairs(cfg: EvaluateConfig):
    """[(rel, clean Decoded, protected Decoded)], [(rel, reason)] for those left out."""
    clean, protected = Path(cfg.clean), Path(cfg.protected)
    if not clean.is_dir():
        raise SetupError(f"{clean}: not a folder")
    if not protected.is_dir():
        raise SetupError(f"{protected}: not a folder")
    try:
        items = inputs.discover(clean, Path(cfg.out))
    except inputs.InputError as e:
        raise SetupError(str(e)) from None
    pairs, skipped = [], []
    for item in items:
        if item.problem:
            skipped.append((item.rel, item.problem))
            continue
        target = protected / item.output
        if not target.is_file():
            skipped.append((item.rel, f"no protected version ({item.output})"))
            continue
        try:
            a, b = _read(item.path, cfg.max_size), _read(target, cfg.max_size)
            if cfg.countermeasure:
                b = countermeasures.apply_decoded(cfg.countermeasure, b)
        except (OSError, images.ImageError) as e:
            skipped.append((item.rel, str(e).splitlines()[0]))
            continue
        if a.levels.shape[:2] != b.levels.shape[:2]:
            skipped.append((item.rel, f"sizes differ: {a.levels.shape[:2]} vs {b.levels.shape[:2]}"))
            continue
        pairs.append((item.rel, a, b))
    if not pairs:
        why = f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise SetupError(f"no image of {clean} has a protected version in {protected}{why}")
    return pairs, skipped


@dataclasses.dataclass
class _Loaded:
    name: str
    pipeline: attrs_mod.EvalPipeline
    params: Any
    known: list
    unknown: list
    apply: Any
    over: Any
    stand_in: bool

    @property
    def all_attributes(self):
        return [*self.known, *self.unknown]

    def stacked(self):
        import jax

        return jax.tree.map(lambda *v: np.stack([np.asarray(a) for a in v]), *[a.value for a in self.all_attributes])


def _load(cfg: EvaluateConfig, clean_inputs, seed: int) -> list[_Loaded]:
    if not cfg.pipelines:
        raise SetupError("no pipelines: give --pipelines NAME=DIR,... (or bare names with --stand-in-weights)")
    names = [p.name for p in cfg.pipelines]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SetupError(f"pipeline {dup[0]!r} is named twice")
    extra = attrs_mod.extra_pipelines(cfg.extra_pipelines)
    resolved = [(spec, attrs_mod.resolve(spec.name, extra)) for spec in cfg.pipelines]
    out = []
    for spec, pipe in resolved:
        if spec.folder is None and not cfg.stand_in_weights:
            raise SetupError(f"pipeline {spec.name} has no folder: give {spec.name}=DIR, or --stand-in-weights "
                             "for a demo whose numbers mean nothing")
        if spec.folder is not None and not Path(spec.folder).is_dir():
            raise SetupError(f"pipeline {spec.name}: {spec.folder}: not a folder")
        section = dict(cfg.sections.get(spec.name, {}))
        params = pipe.load(spec.folder, seed)
        known, unknown = pipe.attributes(section, spec.folder, params, clean_inputs, seed)
        if not known and not unknown:
            raise SetupError(f"pipeline {spec.name}: no attributes to evaluate")
        apply, over = pipe.functions(section)
        out.append(_Loaded(spec.name, pipe, params, list(known), list(unknown), apply, over, spec.folder is None))
    return out


def _outputs(p: _Loaded, x: np.ndarray):
    """(A, h, w, 3) outputs of one image for every attribute, clamped to [-1, 1], and the input at the output size."""
    import jax.numpy as jnp

    from leat_jax.victims.base import resize

    # Clamped as a saved image would be (StyleCLIP's G is not bounded): only what a viewer sees counts.
    y = np.clip(np.asarray(p.over(p.params, jnp.asarray(x[None]), p.stacked()))[:, 0], -1.0, 1.0)
    x_out = np.asarray(resize(jnp.asarray(x[None]), tuple(y.shape[1:3])))[0]
    return y, x_out


def _say(cfg, text):
    if not cfg.quiet:
        print(text, file=sys.stderr, flush=True)


def _baseline(cfg, attack: AttackConfig, seed: int, loaded: list[_Loaded], pairs, out: Path):
    """Run the image-space attack on every clean image: ({rel: x_adv}, timings, attribute names used)."""
    import jax
    import jax.numpy as jnp

    from leat_jax.attack.image_space import make_sharded_image_attack
    from leat_jax.parallel.mesh import data_mesh, replicate

    fns, params, used = [], [], []
    for p in loaded:
        for a in p.known:  # the baseline sees the known attributes only
            fns.append(lambda pp, x, _f=p.apply: _f(pp["net"], x, pp["attribute"]))
            params.append({"net": p.params, "attribute": jax.tree.map(jnp.asarray, a.value)})
            used.append((p.name, a.name))
    if not fns:
        raise SetupError("--baseline: no known attributes to attack (every attribute is unknown)")
    try:
        mesh = data_mesh(cfg.devices)
    except ValueError as e:
        raise SetupError(f"devices: {e}") from None
    attack_fn = make_sharded_image_attack(fns, attack, mesh)
    params = replicate(tuple(params), mesh)
    n = mesh.devices.size
    by_size: dict = {}
    for pair in pairs:  # one program per image size
        by_size.setdefault(pair[1].model_input().shape, []).append(pair)
    batches = [group[i:i + n] for group in by_size.values() for i in range(0, len(group), n)]
    advs, times, done = {}, [], 0
    for batch in batches:
        x = np.stack([clean.model_input() for _, clean, _ in batch])
        ids = np.asarray([inputs.image_id(rel) for rel, _, _ in batch], np.uint32)
        t0 = time.perf_counter()
        res = attack_fn(params, x, ids, seed)
        prot = np.asarray(jax.block_until_ready(res.protected))
        times.append((time.perf_counter() - t0, len(batch)))
        for (rel, clean, _), y in zip(batch, prot):
            if not np.isfinite(y).all():
                raise SetupError(f"baseline: {rel}: the attack produced non-finite pixels (a pipeline output or "
                                 "gradient is NaN or infinite)")
            levels = images.quantize(clean, y, attack.eps)
            advs[rel] = dataclasses.replace(clean, levels=levels).model_input()
            target = out / "baseline" / Path(rel).with_suffix(".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(images.encode(clean, levels, "png"))
            done += 1
            _say(cfg, f"baseline {done}/{len(pairs)}: {rel} ({times[-1][0] / len(batch):.1f}s)")
    seconds = float(sum(t for t, _ in times))
    later = times[1:]
    timing = {
        "images": len(pairs),
        "devices": int(n),
        "platform": mesh.devices.flat[0].platform,
        "seconds": seconds,
        "seconds_per_image": seconds / len(pairs),
        "seconds_per_image_after_first": (float(sum(t for t, _ in later) / sum(k for _, k in later))
                                          if later else None),
    }
    return advs, timing, used


def _evaluate_attack(cfg, attack: str, loaded: list[_Loaded], pairs, adv_inputs: Mapping[str, np.ndarray],
                     clean_cache: dict, keep: Mapping | None = None):
    """Per pipeline: (images, attributes) MSE and masked MSE tables; the summary by split.

    ``clean_cache``: (pipeline, rel) -> clean outputs, filled once for all attacks;
    ``keep``: (pipeline, rel) -> None, filled with the first attribute's output (the figure's).
    """
    threshold = cfg.threshold
    tables = {}
    for p in loaded:
        d_rows, m_rows = [], []
        for i, (rel, clean, _) in enumerate(pairs):
            t0 = time.perf_counter()
            key = (p.name, rel)
            if key not in clean_cache:
                clean_cache[key] = _outputs(p, clean.model_input())
            y_clean, x_out = clean_cache[key]
            y_adv, _ = _outputs(p, adv_inputs[rel])
            if keep is not None and key in keep:
                keep[key] = y_adv[0]
            _say(cfg, f"{attack} on {p.name} {i + 1}/{len(pairs)}: {rel} ({time.perf_counter() - t0:.1f}s)")
            d_rows.append(metrics.mse(y_adv, y_clean))
            m_rows.append(metrics.masked_mse(y_adv, y_clean, metrics.cmua_mask(y_clean, x_out)))
        tables[p.name] = (np.stack(d_rows), np.stack(m_rows))
    result: dict[str, Any] = {"pipelines": {}, "overall": {}}
    for split in ("known", "unknown", "all"):
        per = {}
        for p in loaded:
            k = len(p.known)
            cols = {"known": slice(0, k), "unknown": slice(k, None), "all": slice(None)}[split]
            d, m = tables[p.name]
            if d[:, cols].size:
                per[p.name] = (d[:, cols], m[:, cols])
                result["pipelines"].setdefault(p.name, {})[split] = metrics.summarize(d[:, cols], m[:, cols],
                                                                                      threshold)
        result["overall"][split] = metrics.aggregate(per, threshold) if per else None
    adv = [adv_inputs[rel] for rel, _, _ in pairs]
    result["imperceptibility"] = metrics.imperceptibility(adv, [c.model_input() for _, c, _ in pairs])
    result["per_image"] = {
        rel: {p.name: {"mse": [float(v) for v in tables[p.name][0][i]],
                       "masked_mse": [None if np.isnan(v) else float(v) for v in tables[p.name][1][i]]}
              for p in loaded}
        for i, (rel, _, _) in enumerate(pairs)
    }
    return result


def _finite(obj):
    """NaN and infinities (a pipeline gone numerically wrong) as null, so the JSON stays valid."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fmt(v, pct=False):
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.4g}"


def markdown(data: dict) -> str:
    lines = ["# leat-jax evaluation", ""]
    if data.get("warning"):
        lines += [f"**{data['warning']}**", ""]
    lines += [f"{data['images']} image pairs; disrupted when the output MSE (in [-1, 1]) > {data['threshold']}. "
              "Definitions: see `definitions` in the JSON report.", ""]
    lines += ["| attack | pipeline | attributes | pairs | mean MSE | DSR | image DSR (all attributes) | "
              "masked MSE | masked DSR |", "|---|---|---|---|---|---|---|---|---|"]
    for attack, res in data["attacks"].items():
        for name, splits in res["pipelines"].items():
            for split in ("known", "unknown"):
                s = splits.get(split)
                if s:
                    lines.append(f"| {attack} | {name} | {split} | {s['pairs']} | {_fmt(s['mean_mse'])} | "
                                 f"{_fmt(s['dsr'], True)} | {_fmt(s['image_dsr'], True)} | "
                                 f"{_fmt(s['mean_masked_mse'])} | {_fmt(s['masked_dsr'], True)} |")
    lines += ["", "| attack | attributes | Avg-DSR | E-DSR | Avg masked DSR | E masked DSR |", "|---|---|---|---|---|---|"]
    for attack, res in data["attacks"].items():
        for split in ("known", "unknown", "all"):
            o = res["overall"].get(split)
            if o:
                lines.append(f"| {attack} | {split} | {_fmt(o['avg_dsr'], True)} | {_fmt(o['e_dsr'], True)} | "
                             f"{_fmt(o['avg_masked_dsr'], True)} | {_fmt(o['e_masked_dsr'], True)} |")
    lines += ["", "| attack | PSNR (dB) | SSIM | max L-inf | seconds per image |", "|---|---|---|---|---|"]
    for attack, res in data["attacks"].items():
        im = res["imperceptibility"]
        lines.append(f"| {attack} | {_fmt(im['psnr'])} | {_fmt(im['ssim'])} | {_fmt(im['linf'])} | "
                     f"{_fmt(res.get('seconds_per_image'))} |")
    lines += ["", "Attributes:", ""]
    for name, a in data["attributes"].items():
        lines.append(f"- {name}: known {', '.join(a['known']) or '-'}; unknown {', '.join(a['unknown']) or '-'}")
    return "\n".join(lines) + "\n"


def _to8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def figure(rows, names, warning: str | None):
    """rows: [(rel, [clean in, protected in, (clean out, protected out) per pipeline])] -> PIL image."""
    from PIL import Image, ImageDraw

    pad, head, label = 6, 40, 14
    cols = 2 + 2 * len(names)
    sheet = Image.new("RGB", (pad + cols * (TILE + pad), head + len(rows) * (TILE + label + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    titles = ["clean input", "protected"] + [f"{n} {w}" for n in names for w in ("clean out", "protected out")]
    for c, t in enumerate(titles):
        draw.text((pad + c * (TILE + pad), head - 14), t[:22], fill=(0, 0, 0))
    if warning:
        draw.text((pad, 4), "STAND-IN WEIGHTS: these outputs mean nothing about real protection", fill=(200, 0, 0))
    y = head
    for rel, tiles in rows:
        for c, t in enumerate(tiles):
            im = Image.fromarray(_to8(t))
            im = im.resize((TILE, max(1, round(TILE * im.height / im.width))) if im.width >= im.height
                           else (max(1, round(TILE * im.width / im.height)), TILE), Image.BILINEAR)
            sheet.paste(im, (pad + c * (TILE + pad), y))
        draw.text((pad, y + TILE + 1), rel[:60], fill=(80, 80, 80))
        y += TILE + label + pad
    return sheet


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
    "seconds_per_image": "wall time of the attack divided by the images (first call includes compilation); "
                         "LEAT's from the immunize report (run seconds / images protected)",
}


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate; returns the report (also written to ``cfg.out``). ``SetupError`` when it cannot start."""
    out = Path(cfg.out)
    pairs, skipped = _pairs(cfg)
    imm = _immunize_report(Path(cfg.protected))
    imm_settings = (imm or {}).get("settings") or {}
    seed = cfg.seed if cfg.seed is not None else int(imm_settings.get("seed", 0) or 0)
    attack = cfg.attack
    if attack is None:
        known_fields = {f.name for f in dataclasses.fields(AttackConfig)}
        try:
            attack = AttackConfig(**{k: v for k, v in (imm_settings.get("attack") or {}).items() if k in known_fields})
        except (TypeError, ValueError):
            attack = None
    if cfg.baseline:
        check_baseline_settings(cfg, imm_settings, attack)
    attack = attack or AttackConfig()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    loaded = _load(cfg, [c.model_input() for _, c, _ in pairs], seed)
    stand_in = [p.name for p in loaded if p.stand_in]
    warning = STAND_IN_WARNING.format(names=", ".join(stand_in)) if stand_in else None
    if warning:
        print(warning, file=sys.stderr, flush=True)
    _say(cfg, f"evaluating {len(pairs)} image pair(s) on {', '.join(p.name for p in loaded)}")
    cache: dict = {}
    shown = {(p.name, rel): None for rel, _, _ in pairs[:cfg.figure_rows] for p in loaded}
    attacks = {"leat": _evaluate_attack(cfg, "leat", loaded, pairs, {rel: b.model_input() for rel, _, b in pairs},
                                        cache, shown)}
    attacks["leat"]["seconds_per_image"] = _leat_seconds_per_image(imm)
    baseline_used = None
    if cfg.baseline:
        advs, timing, baseline_used = _baseline(cfg, attack, seed, loaded, pairs, out)
        attacks["image_space"] = _evaluate_attack(cfg, "image_space", loaded, pairs, advs, cache)
        attacks["image_space"]["seconds_per_image"] = timing["seconds_per_image"]
        attacks["image_space"]["timing"] = timing
    data = {
        "warning": warning,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "leat_jax_version": __version__,
        "clean": str(cfg.clean), "protected": str(cfg.protected),
        "images": len(pairs),
        "skipped": [{"path": r, "reason": why} for r, why in skipped],
        "threshold": cfg.threshold,
        "seed": seed,
        "pipelines": {p.name: {"folder": next(s.folder for s in cfg.pipelines if s.name == p.name),
                               "stand_in": p.stand_in, "attribute": p.pipeline.deepfake.attribute}
                      for p in loaded},
        "attributes": {p.name: {"known": [a.name for a in p.known], "unknown": [a.name for a in p.unknown]}
                       for p in loaded},
        "baseline": None if not cfg.baseline else {
            "attack": attack.to_dict(), "attributes": [list(u) for u in baseline_used]},
        "leat": {"attack": imm_settings.get("attack"), "victims": imm_settings.get("victims"),
                 "immunize_report": imm is not None},
        "definitions": DEFINITIONS,
        "attacks": attacks,
    }
    (out / REPORT_JSON).write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    (out / REPORT_MD).write_text(markdown(data))
    if cfg.figure_rows:
        rows = []
        for rel, clean, prot in pairs[:cfg.figure_rows]:
            tiles = [clean.model_input(), prot.model_input()]
            for p in loaded:
                tiles += [cache[(p.name, rel)][0][0], shown[(p.name, rel)]]
            rows.append((rel, tiles))
        tmp = out / f".{FIGURE}.{os.getpid()}.part"
        figure(rows, [p.name for p in loaded], warning).save(tmp, "PNG")
        os.replace(tmp, out / FIGURE)
    _say(cfg, f"wrote {out / REPORT_JSON}, {out / REPORT_MD}" + (f", {out / FIGURE}" if cfg.figure_rows else ""))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return data
