"""A learned universal start against the random start: distortion per victim after T iterations, on held-out images.

    python -m benchmarks.warm_start [--victims simswap_id,simswap_G] [--steps 150] [--batch 4]
                                    [--learn 12] [--rule sign|adam] [--rate X] [--out out/warm_start]
                                    [--held 4] [--jitters 0.25,0,1] [--no-timing] [--json PATH]
                                    [--calibrate N [--fast-iterations T]]

Stand-in weights (``--stand-in-weights``: random networks of the real
architectures). Faces: there is one bundled portrait, so the learning set is
``--learn`` augmentations of ``astronaut_256.png`` (mirror, crop, rotation,
colour jitter, each drawn from its own seed) and the held-out set is the two
other bundled crops (``astronaut_tight.jpg``, ``astronaut_grey.png``) and
two augmentations from seeds not used for learning: the same person, never
an image learned from. The start is learned by ``leat-jax learn-start``'s
pipeline (resumable: rerun the command after a kill). Then, on the held-out
images, three attacks of T = 50 record the distance before every step (a
constant sign step: the first T steps of T = 50 are the run of T): from the
random start, and from the learned start with keyed jitter of 0.25 (the
default) and 0 and 1 eps. Images per second: T = 10 from the learned start and
T = 50 from the random start, compiled apart, timed one image at a time.
With ``--calibrate N`` the start is learned with ``learn-start --calibrate N``
(weights steered on the first N learning images) and the held-out images
also get the fast attack (T iterations of step 2 eps on a cosine schedule,
``pipeline.calibrate``) from the learned start with the calibrated weights
and with weights 1, and from the random start with both: shares of the
random start's T = 50. ``--jitters ''`` records the random start's history only.
Figures go to ``benchmarks/RESULTS.md`` by hand.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from leat_jax import xla_cpu
from leat_jax.attack import AttackConfig, make_attack, prepared
from leat_jax.attack.start import LearnedStart
from leat_jax.attack.universal import LearnConfig
from leat_jax.pipeline import calibrate, inputs, learn_start, start_file, victimset
from leat_jax.pipeline.immunize import SAMPLES

CHECKPOINTS_T = (0, 5, 10, 20, 50)
JITTERS = (0.25, 0.0, 1.0)


def augmented(seed: int, size: int = 256) -> Image.Image:
    """One augmentation of the bundled aligned face: mirror, crop of 85-100 %, rotation within 6 degrees,
    brightness, contrast and colour within 15 %, all drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    im = Image.open(SAMPLES / "astronaut_256.png").convert("RGB")
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    im = im.rotate(float(rng.uniform(-6, 6)), resample=Image.BICUBIC, fillcolor=(190, 190, 190))
    side = int(size * rng.uniform(0.85, 1.0))
    x0, y0 = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    im = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.LANCZOS)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhance(im).enhance(float(rng.uniform(0.85, 1.15)))
    return im


def held_out(learn: int, n: int = 4) -> dict[str, np.ndarray]:
    """The first ``n`` held-out faces as (256, 256, 3) float32 in [-1, 1], by name."""
    ims = {"tight": Image.open(SAMPLES / "astronaut_tight.jpg"), "grey": Image.open(SAMPLES / "astronaut_grey.png")}
    ims.update({f"aug{s}": augmented(s) for s in (1000 + learn, 1001 + learn)})
    return {k: np.asarray(v.convert("RGB").resize((256, 256), Image.LANCZOS), np.float32) / 127.5 - 1
            for k, v in list(ims.items())[:n]}


def learn(names, out: Path, n: int, learn_config: LearnConfig, calibrate_n: int = 0,
          fast_iterations: int = 10) -> LearnedStart:
    """The start learned on ``n`` augmentations (written to ``out/faces``), by the learn-start pipeline
    (calibrated on the first ``calibrate_n`` of them, if any)."""
    faces = out / "faces"
    faces.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        if not (faces / f"aug{s}.png").exists():
            augmented(s).save(faces / f"aug{s}.png")
    cfg = learn_start.LearnStartConfig(src=str(faces), out=str(out / "u"),
                                       victims=tuple(victimset.VictimSpec(v) for v in names), stand_in_weights=True,
                                       learn=learn_config, checkpoint_every=10, calibrate=calibrate_n,
                                       fast_iterations=fast_iterations)
    learn_start.run(cfg)
    return start_file.load_start(out / "u")


def compiled(victims, config, params, x):
    fn = jax.jit(make_attack(victims, config))
    ids = jnp.zeros((1,), jnp.uint32)
    return fn.lower(params, x[None], ids, 0).compile()


def histories(victims, params, start: LearnedStart, x: dict, jitters=JITTERS) -> dict:
    """Per start, (images, T + 1, K) distance before each step and after the last (T = 50)."""
    out = {}
    configs = {"random": AttackConfig(record_history=True)}
    configs.update({f"learned@{j:g}": AttackConfig(record_history=True, start=dataclasses.replace(start, jitter=j))
                    for j in jitters})
    for name, cfg in configs.items():
        fn, rows = compiled(victims, cfg, params, jnp.asarray(next(iter(x.values())))), []
        for rel, a in x.items():
            r = fn(params, jnp.asarray(a)[None], jnp.asarray([inputs.image_id(rel)], jnp.uint32), 0)
            rows.append(np.concatenate([np.asarray(r.history[0]), np.asarray(r.dist_end)], axis=0))
        out[name] = np.stack(rows)
        print(f"{name}: done", flush=True)
    return out


def fast_shares(victims, params, start: LearnedStart, x: dict, weights: dict, iterations: int, unit) -> dict:
    """Per arm (learned or random start, calibrated weights or 1), the held-out shares of ``unit`` (K,) after the
    fast attack of ``iterations`` (``pipeline.calibrate.fast_attack``); mean distance over images / unit."""
    out = {}
    for name, w in (("calibrated", weights), ("weights 1", {})):
        fast = calibrate.fast_attack(AttackConfig(), start, iterations, w)
        for label, cfg in ((f"learned, {name}", fast), (f"random, {name}", dataclasses.replace(fast, start="random"))):
            fn, rows = compiled(victims, cfg, params, jnp.asarray(next(iter(x.values())))), []
            for rel, a in x.items():
                r = fn(params, jnp.asarray(a)[None], jnp.asarray([inputs.image_id(rel)], jnp.uint32), 0)
                rows.append(np.asarray(r.dist_end[0]))
            out[label] = (np.mean(rows, axis=0) / unit).tolist()
            print(f"{label}: " + " / ".join(f"{v:.2f}" for v in out[label]), flush=True)
    return out


def images_per_second(victims, params, start: LearnedStart, x: dict) -> dict:
    """Seconds per image (compiled apart, one image a call) of T = 10 learned and T = 50 random."""
    out = {}
    for name, cfg in (("learned T=10", AttackConfig(iterations=10, start=start)), ("random T=50", AttackConfig())):
        fn = compiled(victims, cfg, params, jnp.asarray(next(iter(x.values()))))
        t0 = time.perf_counter()
        for rel, a in x.items():
            jax.block_until_ready(fn(params, jnp.asarray(a)[None], jnp.asarray([inputs.image_id(rel)], jnp.uint32), 0))
        out[name] = len(x) / (time.perf_counter() - t0)
    return out


def summary(h: dict, names) -> dict:
    """Per start, per T in ``CHECKPOINTS_T``, per victim: mean distance over images; and per victim the smallest
    T at which the first learned start (the default jitter) reaches the random start's T = 50 mean."""
    table = {s: {t: dict(zip(names, a[:, t].mean(0).tolist())) for t in CHECKPOINTS_T} for s, a in h.items()}
    target = h["random"][:, -1].mean(0)
    reach, learned = {}, [s for s in h if s != "random"]
    for k, v in enumerate(names[:len(names) if learned else 0]):
        curve = h[learned[0]][:, :, k].mean(0)
        hit = np.nonzero(curve >= target[k])[0]
        reach[v] = int(hit[0]) if hit.size else None
    return {"mean_distance": table, "smallest_T_reaching_random_T50": reach}


def learning_arguments(ap: argparse.ArgumentParser, out: str) -> None:
    """The flags of a benchmark that learns on these faces and measures on the held-out ones (``generator_start``
    too), with ``out`` the default of ``--out``."""
    ap.add_argument("--victims", default="simswap_id,simswap_G")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--learn", type=int, default=12, help="learning faces (augmentations of the bundled one)")
    ap.add_argument("--held", type=int, default=4, help="held-out faces (of 4)")
    ap.add_argument("--out", default=out)
    ap.add_argument("--json", help="also write the result here")


def main(argv=None) -> int:
    xla_cpu.cpu_flags()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    learning_arguments(ap, "out/warm_start")
    ap.add_argument("--rule", choices=("sign", "adam"), default="sign")
    ap.add_argument("--rate", type=float, default=LearnConfig.rate)
    ap.add_argument("--jitters", default=",".join(f"{j:g}" for j in JITTERS), help="the first is the default's")
    ap.add_argument("--no-timing", action="store_true", help="skip the images-per-second runs")
    ap.add_argument("--calibrate", type=int, default=0, metavar="N",
                    help="learn-start --calibrate N, and the fast arms")
    ap.add_argument("--fast-iterations", type=int, default=10, metavar="T")
    args = ap.parse_args(argv)
    names = tuple(n for n in args.victims.split(",") if n)
    out = Path(args.out)
    t0 = time.perf_counter()
    learn_config = LearnConfig(steps=args.steps, batch=args.batch, rule=args.rule, rate=args.rate)
    start = learn(names, out, args.learn, learn_config, args.calibrate, args.fast_iterations)
    learn_s = time.perf_counter() - t0
    loaded = victimset.load(tuple(victimset.VictimSpec(v) for v in names), True)
    params = prepared(loaded.victims, AttackConfig(), loaded.params)
    x = held_out(args.learn, args.held)
    jitters = tuple(float(j) for j in args.jitters.split(",") if j)
    start = dataclasses.replace(start, jitter=jitters[0]) if jitters else start
    h = histories(loaded.victims, params, start, x, jitters)
    res = {"victims": list(names), "learn_images": args.learn, "learn": dataclasses.asdict(learn_config),
           "held_out": list(x), "learn_seconds": learn_s, "start_digest": start.digest, **summary(h, names),
           "images_per_second": None if args.no_timing else images_per_second(loaded.victims, params, start, x),
           "per_image_history": {s: a.tolist() for s, a in h.items()}}
    if args.calibrate:
        record = json.loads((out / "u" / learn_start.REPORT).read_text())["calibration"]
        res["calibration"] = record
        res["fast_shares"] = fast_shares(loaded.victims, params, start, x, record["weights"], args.fast_iterations,
                                         h["random"][:, -1].mean(0))
    text = json.dumps({k: v for k, v in res.items() if k != "per_image_history"}, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
