"""``leat-jax learn-start``: learn a universal start from the images under SRC, and load one for ``--start``.

The math is ``attack.universal``; here are the files: the images (each
resized to the reference size), minibatches drawn by (seed, step) alone, an
orbax checkpoint every few steps (a rerun of the same command resumes from
the last one and ends where an uninterrupted run ends, bit for bit), with
``keep_latents`` the clean latents of the images the run draws computed once
and kept on the host (``CleanCache``), progress lines, and the outputs in OUT::

    OUT/start.npy      u, (size, size, 3) float32: give it (or OUT) to immunize --start (``start_file``)
    OUT/report.json    settings, victims, per-step mean latent distortion per victim
    OUT/curve.png      that distortion over the steps, per victim
    OUT/checkpoints/   orbax steps (kept, so a finished run reruns in no time)
    OUT/immunize.toml  with ``calibrate``: a fast attack from u for ``immunize --config`` (``pipeline.calibrate``)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image, ImageDraw

from leat_jax import __version__, parallel
from leat_jax.attack import AttackConfig, prepared
from leat_jax.attack.start import LearnedStart
from leat_jax.attack.universal import LearnConfig, LearnState, init_state, make_clean_latents, make_learning_step
from leat_jax.errors import SetupError
from leat_jax.parallel.mesh import replicate
from leat_jax.pipeline import calibrate as calibration
from leat_jax.pipeline import images, inputs, victimset
from leat_jax.pipeline.robustness import COLOURS
from leat_jax.pipeline.start_file import START
from leat_jax.pipeline.victimset import VictimSpec

REPORT, CURVE, CHECKPOINTS = "report.json", "curve.png", "checkpoints"
# The most host memory the clean latents of a run's images may take; beyond it each step computes its own.
CACHE_BYTES = 2 * 2**30


@dataclasses.dataclass(frozen=True)
class LearnStartConfig:
    """Everything a learn-start run needs.

    Attributes:
      src: folder, image or list of paths: the images to learn from.
      out: output folder (created); a rerun with the same settings resumes.
      victims, stand_in_weights, extra_victims: as for immunize.
      attack: the attack's settings (eps, ensemble, losses, transforms, ...) the start is learned for.
      learn: steps, minibatch, rate, rule, schedule, size, seed (``attack.universal.LearnConfig``).
      devices: local devices the minibatch is split over; None: all.
      checkpoint_every: steps between orbax checkpoints.
      max_size: largest accepted image side.
      quiet: no progress lines.
      keep_latents: compute each drawn image's clean latents once and keep them (``CleanCache``, up to
        ``CACHE_BYTES``), not at every step: about a quarter less time a step (benchmarks/RESULTS.md). Off
        by default: not always bit for bit the recomputing run's numbers, since XLA may fuse a victim's
        last clean operations into the loss (one rounding instead of two) when both are in one program.
      calibrate: N; after learning, steer a fast attack's per-victim weights on the first N images (sorted
        order) and write ``OUT/immunize.toml`` (``pipeline.calibrate``); 0 (default): none. Not part of the
        settings digest: it does not change ``u``.
      fast_iterations: T, the calibrated fast attack's iterations (default 10).
    """

    src: str
    out: str
    victims: tuple[VictimSpec, ...] = ()
    attack: AttackConfig = AttackConfig()
    learn: LearnConfig = LearnConfig()
    stand_in_weights: bool = False
    extra_victims: tuple[str, ...] = ()
    devices: int | None = None
    checkpoint_every: int = 25
    max_size: int = 2048
    quiet: bool = False
    keep_latents: bool = False
    calibrate: int = 0
    fast_iterations: int = 10

    def __post_init__(self):
        if type(self.checkpoint_every) is not int or self.checkpoint_every < 1:
            raise SetupError(f"checkpoint_every must be a positive integer, got {self.checkpoint_every!r}")
        if type(self.calibrate) is not int or self.calibrate < 0:
            raise SetupError(f"--calibrate: must be a non-negative integer (images), got {self.calibrate!r}")
        if type(self.fast_iterations) is not int or self.fast_iterations < 1:
            raise SetupError(f"--fast-iterations: must be a positive integer, got {self.fast_iterations!r}")
        if self.calibrate:
            try:
                calibration.shared_fields(self.attack)
            except ValueError as e:
                raise SetupError(f"--calibrate: {e}") from None


def load_images(src, size: int, max_size: int) -> tuple[list[str], np.ndarray]:
    """(relative paths, (N, size, size, 3) uint8) of every image under ``src``, each resized (Lanczos) to the
    reference size and held in memory as 8 bits (192 KiB at 256 px). ``SetupError`` when SRC is missing, or
    holds no readable image.
    """
    try:
        items = [i for i in inputs.discover(src, os.devnull) if i.problem is None]
    except inputs.InputError as e:
        raise SetupError(str(e)) from None
    rels, arrays = [], []
    for item in items:
        try:
            rgb = images.rgb8(images.decode(item.path.read_bytes(), max_size))
        except (OSError, images.ImageError) as e:
            print(f"leat-jax: learn-start: skipping {item.rel}: {str(e).splitlines()[0]}", file=sys.stderr)
            continue
        rels.append(item.rel)
        arrays.append(np.asarray(Image.fromarray(rgb).resize((size, size), Image.LANCZOS), np.uint8))
    if not arrays:
        raise SetupError(f"{src}: no image to learn from")
    return rels, np.stack(arrays)


def minibatch(n: int, batch: int, seed: int, step: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights) of step ``step``'s minibatch: ``min(batch, n)`` distinct images drawn by
    (seed, step) alone, padded with weight-0 copies to a multiple of ``multiple`` (the device count).
    """
    idx = np.sort(np.random.default_rng([seed, step]).choice(n, min(batch, n), replace=False))
    pad = (-len(idx)) % multiple
    weights = np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])
    return np.concatenate([idx, np.repeat(idx[-1:], pad)]), weights


def as_images(data: np.ndarray) -> np.ndarray:
    """8-bit images -> float32 in [-1, 1], as the learning step takes them."""
    return data.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def drawn(n: int, learn: LearnConfig, start: int, multiple: int = 1) -> np.ndarray:
    """The distinct images (sorted indices) the minibatches of steps ``start``.. draw."""
    draws = [minibatch(n, learn.batch, learn.seed, i, multiple)[0] for i in range(start, learn.steps)]
    return np.unique(np.concatenate(draws)) if draws else np.zeros(0, np.int64)


class CleanCache(NamedTuple):
    """The clean latents of some images, on the host: per latent leaf one array over those images."""

    leaves: list
    treedef: Any
    row: np.ndarray  # per image index, its row in ``leaves`` (-1: not held)

    def take(self, idx: np.ndarray):
        """The latents of images ``idx`` (a minibatch), as the learning step takes them."""
        return jax.tree.unflatten(self.treedef, [jnp.asarray(leaf[self.row[idx]]) for leaf in self.leaves])


def clean_cache(clean_fn, params, data: np.ndarray, which: np.ndarray, chunk: int) -> CleanCache | None:
    """The clean latents of images ``which``, computed ``chunk`` at a time (the step's minibatch size: the
    step's numbers, one program); None when they would take more than ``CACHE_BYTES``."""
    if len(which) == 0:
        return None
    probe = jax.eval_shape(clean_fn, params, jax.ShapeDtypeStruct((chunk, *data.shape[1:]), jnp.float32))
    if sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(probe)) // chunk * len(which) > CACHE_BYTES:
        return None
    parts, treedef = [], None
    for s in range(0, len(which), chunk):
        part = which[s:s + chunk]
        padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part))])
        leaves, treedef = jax.tree.flatten(clean_fn(params, jnp.asarray(as_images(data[padded]))))
        parts.append([np.asarray(leaf)[:len(part)] for leaf in leaves])
    row = np.full(len(data), -1)
    row[which] = np.arange(len(which))
    return CleanCache([np.concatenate(ls) for ls in zip(*parts)], treedef, row)


def settings_digest(cfg: LearnStartConfig, identities, rels) -> str:
    """What a resumed run must share with the run it resumes: attack, learning, victims' weights, images."""
    d = {"attack": cfg.attack.digest(), "learn": dataclasses.asdict(cfg.learn), "victims": list(identities),
         "images": hashlib.sha256("\n".join(rels).encode()).hexdigest()}
    if cfg.keep_latents:  # its numbers may differ in the last bit: a resumed run keeps the mode it began in
        d["keep_latents"] = True
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_manager(out: Path, digest: str) -> ocp.CheckpointManager:
    """The orbax manager of ``out/checkpoints``; ``SetupError`` when they belong to other settings."""
    marker = out / CHECKPOINTS / "settings"
    if marker.is_file() and marker.read_text().strip() != digest:
        raise SetupError(f"{out}: holds a learning run with other settings (images, victims or options); "
                         "give another OUT, or delete it to start over")
    (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    marker.write_text(digest + "\n")
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    return ocp.CheckpointManager((out / CHECKPOINTS).resolve(), options=options)


def restore(manager: ocp.CheckpointManager, state: LearnState, history: np.ndarray):
    """(steps done, state, history) from the latest checkpoint, or (0, the given ones) without one."""
    done = manager.latest_step()
    if done is None:
        return 0, state, history
    target = {"u": state.u, "opt_state": state.opt_state, "history": history}
    tree = manager.restore(done, args=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                                            target)))
    return done, LearnState(tree["u"], tree["opt_state"]), np.asarray(tree["history"])


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def plot(history: np.ndarray, names, warning: str | None, size=(640, 420)) -> Image.Image:
    """Each victim's mean latent distortion over the steps, as a share of its largest value."""
    w, h = size
    left, top, right, bottom = 60, 40, w - 150, h - 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle((left, top, right, bottom), outline="black")
    d.text((left, 10), "learn-start: minibatch latent distortion / its largest value", fill="black")
    d.text(((left + right) // 2 - 20, bottom + 20), f"step (0..{len(history)})", fill="black")
    for frac in (0.0, 0.5, 1.0):
        d.text((20, bottom - frac * (bottom - top) - 6), f"{frac:.1f}", fill="black")
    if warning:
        d.text((left, bottom + 34), "stand-in weights: numbers mean nothing", fill=(200, 0, 0))
    steps = max(len(history) - 1, 1)
    for k, name in enumerate(names):
        col, colour = history[:, k], COLOURS[k % len(COLOURS)]
        top_value = float(np.nanmax(col)) or 1.0
        points = [(left + i / steps * (right - left), bottom - v / top_value * (bottom - top))
                  for i, v in enumerate(col) if np.isfinite(v)]
        if len(points) > 1:
            d.line(points, fill=colour, width=2)
        d.line([(right + 10, top + 16 * k + 6), (right + 30, top + 16 * k + 6)], fill=colour, width=2)
        d.text((right + 34, top + 16 * k), name, fill="black")
    return img


def progress_line(step: int, total: int, losses, names, started: float) -> str:
    """``leat-jax: learn-start step S/T  name distortion ...  elapsed``."""
    parts = "  ".join(f"{n} {v:.4g}" for n, v in zip(names, losses))
    return f"leat-jax: learn-start step {step}/{total}  {parts}  {time.monotonic() - started:.0f}s"


def _mesh(cfg: LearnStartConfig):
    try:
        return parallel.data_mesh(cfg.devices)
    except ValueError as e:
        raise SetupError(f"--devices: {e}") from None


def learn(cfg: LearnStartConfig, loaded, rels, data, manager, on_step=None) -> np.ndarray:
    """The learning loop from the last checkpoint on; returns the (steps, K) history.

    ``on_step(step)`` is called after each step (tests interrupt a run there).
    """
    learn_cfg, mesh = cfg.learn, _mesh(cfg)
    params = replicate(prepared(loaded.victims, cfg.attack, loaded.params), mesh)
    history = np.full((learn_cfg.steps, len(loaded.victims)), np.nan, np.float32)
    done, state, history = restore(manager, init_state(cfg.attack, learn_cfg), history)
    ids = np.asarray([inputs.image_id(r) for r in rels], np.uint32)
    chunk = len(minibatch(len(rels), learn_cfg.batch, learn_cfg.seed, 0, mesh.devices.size)[0])
    cache = clean_cache(make_clean_latents(loaded.victims, cfg.attack, mesh), params, data,
                        drawn(len(rels), learn_cfg, done, mesh.devices.size), chunk) if cfg.keep_latents else None
    step_fn = make_learning_step(loaded.victims, cfg.attack, learn_cfg, mesh, cached=cache is not None)
    started, last = time.monotonic(), 0.0
    for i in range(done, learn_cfg.steps):
        idx, weights = minibatch(len(rels), learn_cfg.batch, learn_cfg.seed, i, mesh.devices.size)
        args = (params, state, jnp.asarray(as_images(data[idx])), jnp.asarray(ids[idx]), jnp.asarray(weights), i)
        state, losses = step_fn(*args) if cache is None else step_fn(*args, cache.take(idx))
        history[i] = np.asarray(losses)
        if (i + 1) % cfg.checkpoint_every == 0 or i + 1 == learn_cfg.steps:
            manager.save(i + 1, args=ocp.args.StandardSave({"u": state.u, "opt_state": state.opt_state,
                                                             "history": history}))
        if not cfg.quiet and (time.monotonic() - last >= 10 or i + 1 == learn_cfg.steps):
            print(progress_line(i + 1, learn_cfg.steps, history[i], loaded.names, started), file=sys.stderr)
            last = time.monotonic()
        if on_step is not None:
            on_step(i + 1)
    manager.wait_until_finished()
    np.save(Path(cfg.out) / f".{START}.{os.getpid()}.npy", np.asarray(state.u))
    os.replace(Path(cfg.out) / f".{START}.{os.getpid()}.npy", Path(cfg.out) / START)
    return history


def write_outputs(out: Path, report: dict, history: np.ndarray, names, quiet: bool) -> None:
    """``report.json`` and ``curve.png`` into ``out``, each whole or not at all."""
    _write(out / REPORT, (json.dumps(report, indent=2) + "\n").encode())
    buf = out / f".{CURVE}.{os.getpid()}.part"
    plot(history, names, report["warning"]).save(buf, "PNG")
    os.replace(buf, out / CURVE)
    if not quiet:
        print(f"leat-jax: wrote {out / START} (digest {report['start_digest']}), {out / REPORT}, {out / CURVE}",
              file=sys.stderr)


def run(cfg: LearnStartConfig, on_step=None) -> dict:
    """Learn (or resume learning) the start and write OUT; returns the report. ``SetupError`` when it
    cannot start."""
    out = Path(cfg.out)
    rels, data = load_images(cfg.src, cfg.learn.size, cfg.max_size)
    if cfg.calibrate > len(rels):
        raise SetupError(f"--calibrate {cfg.calibrate}: {cfg.src} holds only {len(rels)} image(s) to learn from")
    loaded = victimset.load(cfg.victims, cfg.stand_in_weights, cfg.extra_victims)
    try:
        cfg.attack.check_victims(loaded.names)
    except ValueError as e:
        raise SetupError(f"attack settings: {e}") from None
    warning = (f"WARNING: stand-in weights ({', '.join(loaded.stand_in)}): the start learned protects against "
               "nothing" if loaded.stand_in else None)
    if warning and not cfg.quiet:
        print(warning, file=sys.stderr)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    digest = settings_digest(cfg, loaded.identities, rels)
    with checkpoint_manager(out, digest) as manager:
        history = learn(cfg, loaded, rels, data, manager, on_step)
    u = np.load(out / START)
    calibrated = calibrate(cfg, loaded, rels, data, LearnedStart(u), digest)
    report = {
        "warning": warning, "leat_jax_version": __version__, "settings_digest": digest,
        "start_digest": LearnedStart(u).digest, "bound": float(np.abs(u).max()),
        "attack": cfg.attack.to_dict(), "learn": dataclasses.asdict(cfg.learn), "images": rels,
        "keep_latents": cfg.keep_latents,
        "victims": [{"name": n, "weights": i} for n, i in zip(loaded.names, loaded.identities)],
        "history": {n: history[:, k].tolist() for k, n in enumerate(loaded.names)},
    }
    if calibrated is not None:
        report["calibration"] = calibrated
    write_outputs(out, report, history, loaded.names, cfg.quiet)
    if cfg.calibrate and not cfg.quiet:
        print(f"leat-jax: protect with: {calibration.immunize_command(out, cfg.victims, cfg.stand_in_weights)}",
              file=sys.stderr)
    return report


def earlier_calibration(out: Path, start: LearnedStart) -> dict | None:
    """The calibration record of an earlier run in ``out`` for this start, if its ``immunize.toml`` is there."""
    try:
        record = json.loads((out / REPORT).read_text()).get("calibration")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(record, dict) and record.get("start_digest") == start.digest and (out / calibration.TOML).is_file():
        return record
    return None


def calibrate(cfg: LearnStartConfig, loaded, rels, data, start: LearnedStart, digest: str) -> dict | None:
    """With ``cfg.calibrate``: the calibration record (``pipeline.calibrate``), ``OUT/immunize.toml`` written;
    an earlier run's record of the same settings, start, N and T is kept, not computed again. Without: an
    earlier record of this start (its file stays valid), or None. ``SetupError`` when the shares cannot steer."""
    out, n = Path(cfg.out), cfg.calibrate
    record = earlier_calibration(out, start)
    if not n:
        return record
    key = calibration.calibration_digest(digest, start, n, cfg.fast_iterations)
    if record is None or record.get("digest") != key:
        params = prepared(loaded.victims, cfg.attack, loaded.params)
        ids = np.asarray([inputs.image_id(r) for r in rels[:n]], np.uint32)
        try:
            record = calibration.calibrate(loaded.victims, params, cfg.attack, start, as_images(data[:n]), ids,
                                           cfg.learn.seed, cfg.fast_iterations, cfg.quiet) | {"digest": key}
        except ValueError as e:
            raise SetupError(f"--calibrate: {e} ({out / START} is written)") from None
    _write(out / calibration.TOML, calibration.toml_text(record, cfg.attack).encode())
    return record


def build(src, out, attack: dict, learn: dict, **run) -> LearnStartConfig:
    """A ``LearnStartConfig`` from flag values (``attack``: ``AttackConfig`` fields, ``learn``: ``LearnConfig``
    fields); one-line ``SetupError`` when a value is wrong."""
    try:
        attack_config, learn_config = AttackConfig(**attack), LearnConfig(**learn)
    except (TypeError, ValueError) as e:
        raise SetupError(f"settings: {e}") from None
    return LearnStartConfig(src=str(src), out=str(out), attack=attack_config, learn=learn_config, **run)
