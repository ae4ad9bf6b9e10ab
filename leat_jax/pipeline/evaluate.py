"""The evaluate job: how much do protected images disrupt the deepfake pipelines?

``leat-jax evaluate CLEAN_DIR PROTECTED_DIR OUT_DIR --pipelines NAME=DIR,...``
pairs every image under CLEAN_DIR with its protected version under
PROTECTED_DIR (same relative path, the output suffix ``immunize`` gives it),
runs every pipeline on both for every attribute (``pipeline.attributes``:
known and unknown), and writes into OUT_DIR:

* ``leat-jax-evaluation.json``: settings, definitions, per (attack,
  pipeline, split) MSE / DSR / masked DSR, the identity and face-detection
  checks (``pipeline.identity``), Avg-DSR and E-DSR per split,
  PSNR / SSIM of the protection, per-image distances, timings;
* ``leat-jax-evaluation.md``: the same as tables;
* ``leat-jax-evaluation.png``: per image, clean input, protected input, and
  per pipeline its clean and protected output (first attribute); on stand-in
  weights also their difference, amplified, with its scale.

Every check that needs no weights (folders, images, pipeline names and
folders, each pipeline's settings against the folder, devices) runs before
any network is built. The settings (and ``--samples``, the demo's output
against the bundled samples): ``pipeline.evaluate_config``; the tables, the
definitions and the figure: ``pipeline.evaluate_report``; here the job.

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

import jax
import jax.numpy as jnp
import numpy as np

from leat_jax import __version__, deepfakes
from leat_jax.attack import AttackConfig
from leat_jax.attack.image_space import make_sharded_image_attack
from leat_jax.attack.start import LearnedStart
from leat_jax.errors import SetupError
from leat_jax.parallel.mesh import data_mesh, replicate
from leat_jax.pipeline import attributes as attrs_mod
from leat_jax.pipeline import countermeasures, identity, images, inputs, metrics
from leat_jax.pipeline.evaluate_config import EvaluateConfig, PipelineSpec
from leat_jax.pipeline.evaluate_report import (
    DEFINITIONS,
    FIGURE,
    REPORT_JSON,
    REPORT_MD,
    difference_tile,
    figure,
    markdown,
    nan_as_null,
)
from leat_jax.pipeline.start_file import record, reload
from leat_jax.victims.base import resize

STAND_IN_WARNING = (
    "WARNING: stand-in weights ({names}): random networks, not the deepfake models. These numbers mean "
    "NOTHING about real protection; they only show the machinery working. For real numbers convert the "
    "official checkpoints (`leat-jax convert`) and pass --pipelines NAME=DIR,..."
)


# ---------------------------------------------------------------- checks that need no weights


@dataclasses.dataclass(frozen=True)
class _Leat:
    """What PROTECTED_DIR's immunize report says of LEAT's run (defaults when there is none)."""

    report: dict | None
    seed: int
    attack: AttackConfig
    seconds_per_image: float | None


def check_baseline_settings(cfg: EvaluateConfig, imm_settings: dict, attack: AttackConfig | None) -> None:
    """A one-line ``SetupError`` unless the baseline's attack settings and seed are known: given, or read
    from the immunize report in ``cfg.protected`` (a silent default would compare with another attack)."""
    missing = [what for what, known in (
        ("the attack settings ([attack] in --config)", cfg.attack is not None or ("attack" in imm_settings and attack)),
        ("the seed (--seed)", cfg.seed is not None or "seed" in imm_settings)) if not known]
    if missing:
        raise SetupError(f"--baseline: {cfg.protected} has no readable immunize report ({inputs.REPORT}) with "
                         f"{' and '.join(missing)} to match; give them explicitly")


def _leat_settings(cfg: EvaluateConfig) -> _Leat:
    """The seed and the baseline's attack settings: the config's, else LEAT's (the baseline refuses to guess)."""
    try:
        report = json.loads((Path(cfg.protected) / inputs.REPORT).read_text())
    except (OSError, ValueError):
        report = None
    settings = (report or {}).get("settings") or {}
    seed = cfg.seed if cfg.seed is not None else int(settings.get("seed", 0) or 0)
    attack = cfg.attack
    if attack is None:
        attack = _reported_attack(settings, cfg.start is None and cfg.baseline, cfg.protected)
    if attack is not None and cfg.start is not None:
        try:
            attack = dataclasses.replace(attack, start=cfg.start)
        except ValueError as e:
            raise SetupError(f"--start: {e}") from None
    if cfg.baseline:
        check_baseline_settings(cfg, settings, attack)
    run = (report or {}).get("run") or {}
    per_image = float(run["seconds"]) / float(run["protected"]) if run.get("seconds") and run.get("protected") else None
    return _Leat(report, seed, attack or AttackConfig(), per_image)


def _reported_attack(settings: dict, read_start: bool, protected) -> AttackConfig | None:
    """The attack settings an immunize report in ``protected`` records (None when unreadable). A learned start
    there, known by its digest, is read again from the file the report names when ``read_start`` (else left
    out: the caller replaces it); ``SetupError`` when that file is gone or changed."""
    fields = {f.name for f in dataclasses.fields(AttackConfig)}
    given = {k: v for k, v in (settings.get("attack") or {}).items() if k in fields}
    if str(given.get("start")).startswith("learned:"):
        label = given.pop("start")
        if read_start and "start_file" in settings:
            try:
                given["start"] = reload(settings["start_file"], protected)
            except SetupError as e:
                raise SetupError(f"--baseline: {e}; give the attack settings explicitly (--start or [attack] "
                                 "in --config)") from None
            if given["start"].label() != label:
                raise SetupError(f"--baseline: the immunize report's start is {label}, its start_file "
                                 f"{given['start'].label()}; give the attack settings explicitly")
        elif read_start:  # a report from before start files were recorded
            raise SetupError(f"--baseline: the immunize report's start {label} names no file to read it from; "
                             "give the attack settings explicitly (--start or [attack] in --config)")
    try:
        return AttackConfig(**given)
    except (TypeError, ValueError):
        return None


def _read(path: Path, max_size: int) -> images.Decoded:
    return images.decode(path.read_bytes(), max_size)


def _pair(item: inputs.Item, protected: Path, max_size: int, countermeasure: str | None = None):
    """(rel, clean Decoded, protected Decoded), or the reason this image is left out (a string).

    ``countermeasure``: applied to the protected image as read (``countermeasures``), as an upload would.
    """
    if item.problem:
        return item.problem
    target = protected / item.output
    if not target.is_file():
        return f"no protected version ({item.output})"
    try:
        a, b = _read(item.path, max_size), _read(target, max_size)
        if countermeasure:
            b = countermeasures.apply_decoded(countermeasure, b)
    except (OSError, images.ImageError) as e:
        return str(e).splitlines()[0]
    if a.levels.shape[:2] != b.levels.shape[:2]:
        return f"sizes differ: {a.levels.shape[:2]} vs {b.levels.shape[:2]}"
    return item.rel, a, b


def _pairs(cfg: EvaluateConfig):
    """[(rel, clean Decoded, protected Decoded)], [(rel, reason)] for those left out."""
    clean, protected = Path(cfg.clean), Path(cfg.protected)
    for folder in (clean, protected):
        if not folder.is_dir():
            raise SetupError(f"{folder}: not a folder")
    try:
        items = inputs.discover(clean, Path(cfg.out))
    except inputs.InputError as e:
        raise SetupError(str(e)) from None
    pairs, skipped = [], []
    for item in items:
        pair = _pair(item, protected, cfg.max_size, cfg.countermeasure)
        if isinstance(pair, str):
            skipped.append((item.rel, pair))
        else:
            pairs.append(pair)
    if not pairs:
        why = f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise SetupError(f"no image of {clean} has a protected version in {protected}{why}")
    return pairs, skipped


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A pipeline whose settings passed every check that needs no weights."""

    spec: PipelineSpec
    pipe: attrs_mod.EvalPipeline
    section: dict


def _checked_pipelines(cfg: EvaluateConfig, names: list[str]) -> list[_Plan]:
    """Names, folders and each pipeline's settings against the clean images ``names``, before any loading."""
    if not cfg.pipelines:
        raise SetupError("no pipelines: give --pipelines NAME=DIR,... (or bare names with --stand-in-weights)")
    given = [p.name for p in cfg.pipelines]
    dup = sorted({n for n in given if given.count(n) > 1})
    if dup:
        raise SetupError(f"pipeline {dup[0]!r} is named twice")
    extra = attrs_mod.extra_pipelines(cfg.extra_pipelines)
    stray = sorted(set(cfg.sections) - {*deepfakes.NAMES, *extra})
    if stray:
        raise SetupError(f"the --config file's [{stray[0]}] table names no pipeline; known: "
                         f"{', '.join((*deepfakes.NAMES, *extra))}")
    plans = [_Plan(spec, attrs_mod.resolve(spec.name, extra), dict(cfg.sections.get(spec.name, {})))
             for spec in cfg.pipelines]
    for plan in plans:
        spec = plan.spec
        if spec.folder is None and not cfg.stand_in_weights:
            raise SetupError(f"pipeline {spec.name} has no folder: give {spec.name}=DIR, or --stand-in-weights "
                             "for a demo whose numbers mean nothing")
        if spec.folder is not None and not Path(spec.folder).is_dir():
            raise SetupError(f"pipeline {spec.name}: {spec.folder}: not a folder")
        note = plan.pipe.check(plan.section, spec.folder, names) if plan.pipe.check else None
        if note:
            _say(cfg, note)
    return plans


def _baseline_mesh(cfg: EvaluateConfig):
    """The baseline's device mesh (None without ``baseline``)."""
    if not cfg.baseline:
        return None
    try:
        return data_mesh(cfg.devices)
    except ValueError as e:
        raise SetupError(f"devices: {e}") from None


def _output_folder(cfg: EvaluateConfig) -> Path:
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    return out


# ---------------------------------------------------------------- the pipelines


@dataclasses.dataclass
class _Loaded:
    name: str
    pipeline: attrs_mod.EvalPipeline
    params: Any
    known: list
    unknown: list
    apply: Any
    over: Any
    folder: str | None

    @property
    def stand_in(self) -> bool:
        return self.folder is None

    @property
    def all_attributes(self):
        return [*self.known, *self.unknown]

    def stacked(self):
        return jax.tree.map(lambda *v: np.stack([np.asarray(a) for a in v]), *[a.value for a in self.all_attributes])


def _load(cfg, plan: _Plan, clean_inputs: list[np.ndarray], seed: int) -> _Loaded:
    """A checked pipeline's weights, attributes and functions (where networks are built)."""
    spec, pipe = plan.spec, plan.pipe
    t0 = time.perf_counter()
    params = pipe.load(spec.folder, seed)
    known, unknown = pipe.attributes(plan.section, spec.folder, params, clean_inputs, seed)
    if not known and not unknown:
        raise SetupError(f"pipeline {spec.name}: no attributes to evaluate")
    apply, over = pipe.functions(plan.section)
    _say(cfg, f"{spec.name}: {'stand-in weights' if spec.folder is None else 'weights'} and "
              f"{len(known)} + {len(unknown)} attributes ready ({time.perf_counter() - t0:.1f}s)")
    return _Loaded(spec.name, pipe, params, list(known), list(unknown), apply, over, spec.folder)


def _stand_in_warning(loaded: list[_Loaded], arcface: bool = False) -> str | None:
    stand_in = [p.name for p in loaded if p.stand_in] + (["ArcFace of the identity check"] if arcface else [])
    return STAND_IN_WARNING.format(names=", ".join(stand_in)) if stand_in else None


def _outputs(p: _Loaded, x: np.ndarray):
    """(A, h, w, 3) outputs of one image for every attribute, clamped to [-1, 1], and the input at the output size."""
    # Clamped as a saved image would be (StyleCLIP's G is not bounded): only what a viewer sees counts.
    y = np.clip(np.asarray(p.over(p.params, jnp.asarray(x[None]), p.stacked()))[:, 0], -1.0, 1.0)
    x_out = np.asarray(resize(jnp.asarray(x[None]), tuple(y.shape[1:3])))[0]
    return y, x_out


def _say(cfg, text):
    if not cfg.quiet:
        print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the baseline


def _baseline_attack(attack: AttackConfig, loaded: list[_Loaded], mesh):
    """The sharded image-space attack over every known attribute, its replicated params, the (pipeline,
    attribute) names used."""
    fns, params, used = [], [], []
    for p in loaded:
        for a in p.known:  # the baseline sees the known attributes only
            fns.append(lambda pp, x, _f=p.apply: _f(pp["net"], x, pp["attribute"]))
            params.append({"net": p.params, "attribute": jax.tree.map(jnp.asarray, a.value)})
            used.append((p.name, a.name))
    if not fns:
        raise SetupError("--baseline: no known attributes to attack (every attribute is unknown)")
    return make_sharded_image_attack(fns, attack, mesh), replicate(tuple(params), mesh), used


def _baseline(cfg, attack: AttackConfig, seed: int, loaded: list[_Loaded], pairs, out: Path, mesh):
    """Run the image-space attack on every clean image: ({rel: x_adv}, timings, attribute names used)."""
    attack_fn, params, used = _baseline_attack(attack, loaded, mesh)
    n = mesh.devices.size
    by_size: dict = {}
    for pair in pairs:
        by_size.setdefault(pair[1].levels.shape, []).append(pair)
    batches = [group[i:i + n] for group in by_size.values() for i in range(0, len(group), n)]
    advs, times = {}, []
    for batch in batches:
        x = np.stack([clean.model_input() for _, clean, _ in batch])
        ids = np.asarray([inputs.image_id(rel) for rel, _, _ in batch], np.uint32)
        t0 = time.perf_counter()
        prot = np.asarray(jax.block_until_ready(attack_fn(params, x, ids, seed).protected))
        times.append((time.perf_counter() - t0, len(batch)))
        for (rel, clean, _), y in zip(batch, prot):
            advs[rel] = _write_baseline_image(out, rel, clean, y, attack.eps)
            _say(cfg, f"baseline {len(advs)}/{len(pairs)}: {rel} ({times[-1][0] / len(batch):.1f}s)")
    return advs, _baseline_timing(times, len(pairs), mesh), used


def _write_baseline_image(out: Path, rel: str, clean: images.Decoded, y: np.ndarray, eps: float) -> np.ndarray:
    """Quantise one attacked image as ``immunize`` writes it, save it under ``out/baseline``; its model input."""
    if not np.isfinite(y).all():
        raise SetupError(f"baseline: {rel}: the attack produced non-finite pixels (a pipeline output or "
                         "gradient is NaN or infinite)")
    levels = images.quantize(clean, y, eps)
    target = out / "baseline" / Path(rel).with_suffix(".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(images.encode(clean, levels, "png"))
    return dataclasses.replace(clean, levels=levels).model_input()


def _baseline_timing(times: list[tuple[float, int]], count: int, mesh) -> dict:
    seconds = float(sum(t for t, _ in times))
    later = times[1:]
    return {
        "images": count,
        "devices": int(mesh.devices.size),
        "platform": mesh.devices.flat[0].platform,
        "seconds": seconds,
        "seconds_per_image": seconds / count,
        "seconds_per_image_after_first": (float(sum(t for t, _ in later) / sum(k for _, k in later))
                                          if later else None),
    }


# ---------------------------------------------------------------- measuring


def _output_tables(cfg, attack: str, p: _Loaded, pairs, adv_inputs, clean_cache: dict, keep: Mapping | None,
                   checks: identity.OutputChecks):
    """(images, attributes) MSE, masked MSE, identity cosine and face outcome of one pipeline, and the seconds
    its passes took."""
    d_rows, m_rows, c_rows, o_rows, seconds = [], [], [], [], 0.0
    for i, (rel, clean, _) in enumerate(pairs):
        t0 = time.perf_counter()
        key = (p.name, rel)
        if key not in clean_cache:
            clean_cache[key] = _outputs(p, clean.model_input())
        y_clean, x_out = clean_cache[key]
        y_adv, _ = _outputs(p, adv_inputs[rel])
        if keep is not None and key in keep:
            keep[key] = y_adv[0]
        seconds += time.perf_counter() - t0
        _say(cfg, f"{attack} on {p.name} {i + 1}/{len(pairs)}: {rel} ({time.perf_counter() - t0:.1f}s)")
        d_rows.append(metrics.mse(y_adv, y_clean))
        m_rows.append(metrics.masked_mse(y_adv, y_clean, metrics.cmua_mask(y_clean, x_out)))
        cos, outcomes = checks.measure(key, y_clean, y_adv)
        c_rows.append(cos)
        o_rows.append(outcomes)
    return np.stack(d_rows), np.stack(m_rows), (np.stack(c_rows), np.array(o_rows, object)), seconds


def _summaries(loaded: list[_Loaded], tables: Mapping, threshold: float, ids: Mapping, id_threshold: float) -> dict:
    """Per pipeline and split its summary; per split the aggregate over pipelines."""
    result: dict[str, Any] = {"pipelines": {}, "overall": {}}
    for split in ("known", "unknown", "all"):
        per = {}
        for p in loaded:
            k = len(p.known)
            cols = {"known": slice(0, k), "unknown": slice(k, None), "all": slice(None)}[split]
            d, m = tables[p.name]
            if d[:, cols].size:
                per[p.name] = (d[:, cols], m[:, cols])
                result["pipelines"].setdefault(p.name, {})[split] = {
                    **metrics.summarize(d[:, cols], m[:, cols], threshold),
                    **identity.summarize(ids[p.name][0][:, cols], ids[p.name][1][:, cols], id_threshold)}
        result["overall"][split] = metrics.aggregate(per, threshold) if per else None
    return result


def _evaluate_attack(cfg, attack: str, loaded: list[_Loaded], pairs, adv_inputs: Mapping[str, np.ndarray],
                     clean_cache: dict, keep: Mapping | None, checks: identity.OutputChecks):
    """Per pipeline: (images, attributes) MSE and masked MSE tables; the summary by split.

    ``clean_cache``: (pipeline, rel) -> clean outputs, filled once for all attacks;
    ``keep``: (pipeline, rel) -> None, filled with the first attribute's output (the figure's).
    """
    tables, ids, seconds = {}, {}, 0.0
    for p in loaded:
        d, m, ids[p.name], t = _output_tables(cfg, attack, p, pairs, adv_inputs, clean_cache, keep, checks)
        tables[p.name], seconds = (d, m), seconds + t
    result = _summaries(loaded, tables, cfg.threshold, ids, cfg.identity_threshold)
    adv = [adv_inputs[rel] for rel, _, _ in pairs]
    result["imperceptibility"] = metrics.imperceptibility(adv, [c.model_input() for _, c, _ in pairs])
    result["evaluation_seconds_per_image"] = seconds / len(pairs)
    result["per_image"] = {
        rel: {p.name: {"mse": [float(v) for v in tables[p.name][0][i]],
                       "masked_mse": [None if np.isnan(v) else float(v) for v in tables[p.name][1][i]],
                       "identity_cosine": [float(v) for v in ids[p.name][0][i]],
                       "face": [str(v) for v in ids[p.name][1][i]]}
              for p in loaded}
        for i, (rel, _, _) in enumerate(pairs)
    }
    return result


def _attacks(cfg, leat: _Leat, loaded: list[_Loaded], pairs, out: Path, mesh, shown: dict,
             checks: identity.OutputChecks):
    """LEAT's protected images, and with ``baseline`` the image-space attack's, measured on every pipeline.

    Returns:
      ({attack: result}, the clean outputs by (pipeline, rel), the baseline's (pipeline, attribute) names or None).
    """
    cache: dict = {}
    protected = {rel: b.model_input() for rel, _, b in pairs}
    attacks = {"leat": _evaluate_attack(cfg, "leat", loaded, pairs, protected, cache, shown, checks)}
    attacks["leat"]["attack_seconds_per_image"] = leat.seconds_per_image
    if not cfg.baseline:
        return attacks, cache, None
    advs, timing, used = _baseline(cfg, leat.attack, leat.seed, loaded, pairs, out, mesh)
    attacks["image_space"] = _evaluate_attack(cfg, "image_space", loaded, pairs, advs, cache, None, checks)
    attacks["image_space"]["attack_seconds_per_image"] = timing["seconds_per_image"]
    attacks["image_space"]["timing"] = timing
    return attacks, cache, used


# ---------------------------------------------------------------- the report and the figure


def _report(cfg, leat: _Leat, loaded: list[_Loaded], pairs, skipped, attacks, baseline_used, warning) -> dict:
    """The report as a dict (``REPORT_JSON``)."""
    settings = (leat.report or {}).get("settings") or {}
    return {
        "warning": warning,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "leat_jax_version": __version__,
        "clean": str(cfg.clean), "protected": str(cfg.protected),
        "images": len(pairs),
        "skipped": [{"path": r, "reason": why} for r, why in skipped],
        "threshold": cfg.threshold,
        "identity_threshold": cfg.identity_threshold,
        "seed": leat.seed,
        "pipelines": {p.name: {"folder": p.folder, "stand_in": p.stand_in, "attribute": p.pipeline.deepfake.attribute}
                      for p in loaded},
        "attributes": {p.name: {"known": [a.name for a in p.known], "unknown": [a.name for a in p.unknown]}
                       for p in loaded},
        "baseline": None if baseline_used is None else {
            "attack": leat.attack.to_dict(), "attributes": [list(u) for u in baseline_used],
            "start_file": record(leat.attack.start, cfg.out) if isinstance(leat.attack.start, LearnedStart)
            else None},
        "leat": {"attack": settings.get("attack"), "victims": settings.get("victims"),
                 "immunize_report": leat.report is not None},
        "definitions": DEFINITIONS,
        "attacks": attacks,
    }


def _figure_content(loaded: list[_Loaded], pairs, cache: Mapping, shown: Mapping):
    """(column titles, rows) of the figure: inputs, per pipeline its outputs (stand-in: and their difference)."""
    titles = ["clean input", "protected"]
    for p in loaded:
        titles += [f"{p.name} clean out", f"{p.name} protected out"]
        if p.stand_in:
            titles.append(f"{p.name} |difference|")
    rows = []
    for rel, clean, prot in pairs:
        if (loaded[0].name, rel) not in shown:
            continue
        tiles = [(clean.model_input(), None), (prot.model_input(), None)]
        for p in loaded:
            y_clean, y_prot = cache[(p.name, rel)][0][0], shown[(p.name, rel)]
            tiles += [(y_clean, None), (y_prot, None)]
            if p.stand_in:  # random networks: near-flat outputs, so show what changed
                tiles.append(difference_tile(y_clean, y_prot))
        rows.append((rel, tiles))
    return titles, rows


def _write(cfg, out: Path, data: dict, figure_content) -> None:
    """The JSON and Markdown reports, and the figure (``figure_content``: titles and rows, or None)."""
    (out / REPORT_JSON).write_text(json.dumps(nan_as_null(data), indent=2, allow_nan=False) + "\n")
    (out / REPORT_MD).write_text(markdown(data))
    if figure_content is not None:
        tmp = out / f".{FIGURE}.{os.getpid()}.part"
        figure(figure_content[1], figure_content[0], data["warning"]).save(tmp, "PNG")
        os.replace(tmp, out / FIGURE)
    _say(cfg, f"wrote {out / REPORT_JSON}, {out / REPORT_MD}" + (f", {out / FIGURE}" if figure_content else ""))


# ---------------------------------------------------------------- the job


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate; returns the report (also written to ``cfg.out``).

    Every check that needs no weights runs first (``SetupError`` before any network is built).
    """
    pairs, skipped = _pairs(cfg)
    leat = _leat_settings(cfg)
    plans = _checked_pipelines(cfg, [rel for rel, _, _ in pairs])
    arcface = identity.arcface_source([(p.name, p.folder) for p in cfg.pipelines], cfg.arcface, cfg.stand_in_weights)
    mesh = _baseline_mesh(cfg)
    out = _output_folder(cfg)
    loaded = [_load(cfg, plan, [c.model_input() for _, c, _ in pairs], leat.seed) for plan in plans]
    warning = _stand_in_warning(loaded, arcface == identity.STAND_IN)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    _say(cfg, f"evaluating {len(pairs)} image pair(s) on {', '.join(p.name for p in loaded)}")
    shown = {(p.name, rel): None for rel, _, _ in pairs[:cfg.figure_rows] for p in loaded}
    checks = identity.OutputChecks(identity.load_arcface(arcface, leat.seed) if arcface else None)
    attacks, cache, baseline_used = _attacks(cfg, leat, loaded, pairs, out, mesh, shown, checks)
    data = _report(cfg, leat, loaded, pairs, skipped, attacks, baseline_used, warning)
    data["identity_weights"] = arcface
    _write(cfg, out, data, _figure_content(loaded, pairs, cache, shown) if cfg.figure_rows else None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return data
