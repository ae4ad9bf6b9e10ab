"""How far robust mode's targets are: victims attacked through the countermeasure itself, and cheap variants.

    python -m benchmarks.robust_bound run OUT --arms q75,q75+x [--iterations 50] [--victims e4e,simswap_id]
                                      [--together] [--faces benchmarks/faces] [--stand-in-weights]
    python -m benchmarks.robust_bound table PLAIN.json OUT
    python -m benchmarks.robust_bound shares [--transforms jpeg:quality=75] [--victims ...] [--stand-in-weights]

``run`` protects the faces with ``leat-jax immunize`` once per arm (``ARMS``) and per victim, each victim
attacked alone (``--together``: the victims as one ensemble), then measures them with ``leat-jax robustness``
(real Pillow JPEG q75 and half-size resize + q75), into ``OUT/ARM-tT-VICTIMS``. Victims are names with
``--stand-in-weights`` or ``NAME=DIR`` converted checkpoints, as for immunize. ``table`` prints, per run and
victim, the distortion untransformed, after q75 and after half + q75 as a share of plain LEAT's untransformed
distortion in ``PLAIN.json`` (a robustness report of plain LEAT on the same faces: the issue's unit),
image means. ``shares`` prints, per victim, how much of its own best sign step the ensemble's step gives it
to first order (``g_k . s / ||g_k||_1``) with L2 and with L1 normalisation, at a random start on each face.
Figures go to ``benchmarks/RESULTS.md`` by hand.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from leat_jax import cli
from leat_jax.attack import latent_mse
from leat_jax.pipeline import victimset
from leat_jax.transforms import chain as transform_chain
from leat_jax.transforms import spec as transform_spec

# Arm -> immunize flags. q75 attacks exactly the targets' JPEG (quality fixed: the loss reads Pillow's
# decoded file); "+x" adds the untransformed view; "default" is robust mode as shipped (ROBUST_DEFAULT).
ARMS = {
    "plain": [],
    "q75": ["--transforms", "jpeg:quality=75"],
    "q75+x": ["--transforms", "jpeg:quality=75", "--eot-untransformed"],
    "half+q75": ["--transforms", "resize:factor=0.5,jpeg:quality=75"],
    # the five victims only: more of the shared sign step for the two furthest from their targets
    "q75-weighted": ["--transforms", "jpeg:quality=75", "--victim-weights", "e4e=3,simswap_id=2"],
    "default": ["--robust"],
    "default+x": ["--robust", "--eot-untransformed"],
    "default-step0.005": ["--robust", "--step", "0.005"],
    "default-step0.02": ["--robust", "--step", "0.02"],
    "default-adam-cosine": ["--robust", "--update", "adam", "--step-schedule", "cosine"],
    "default-2draws": ["--robust", "--eot-samples", "2"],
    # the shipped chain with Shin and Song's cubic surrogate (the default before square; RESULTS, "The rounding's
    # surrogate")
    "default-cubic": ["--transforms", "jpeg:quality=50-95,gradient=cubic,round8"],
    "q75-95": ["--transforms", "jpeg:quality=75-95,round8"],  # the shipped chain without its lowest qualities
    # each victim's gradient over its L1 norm (the sign step's own measure) instead of its L2 norm
    "plain-l1": ["--ensemble", "normalized_l1"],
    "q75-l1": ["--transforms", "jpeg:quality=75", "--ensemble", "normalized_l1"],
    "default-l1": ["--robust", "--ensemble", "normalized_l1"],
}
COUNTERMEASURES = "jpeg75,half+jpeg75"
TARGETS = (("none", 0.8), ("jpeg75", 0.8), ("half+jpeg75", 0.6))
REPORT = "leat-jax-robustness.json"


def run_arm(arm: str, victims: str, faces: str, out: str, iterations: int, stand_in: bool) -> str:
    """Protects ``faces`` with one arm against ``victims`` (one ``--victims`` value), then measures the result.

    Returns:
        The run's folder (its robustness report inside).
    """
    label = "+".join(v.split("=")[0] for v in victims.split(","))
    dst = os.path.join(out, f"{arm}-t{iterations}-{label}")
    weights = ["--stand-in-weights"] if stand_in else []
    common = ["--victims", victims, *weights]
    for argv in (["immunize", faces, dst, *common, "--iterations", str(iterations), "--seed", "0", "--quiet",
                  *ARMS[arm]],
                 ["robustness", faces, dst, *common, "--countermeasures", COUNTERMEASURES, "--quiet"]):
        rc = cli.main(argv)
        if rc:
            raise SystemExit(f"robust_bound: {argv[0]} {dst} ended with exit code {rc}")
    return dst


def shares(report: dict, plain: dict) -> dict:
    """Per victim of ``report``: image means of its distance (untransformed, after each target countermeasure)
    over plain LEAT's untransformed distance on the same image, matched by victim name and relative path."""
    out = {}
    mine, theirs = report["victims"], plain["victims"]
    for k, entry in enumerate(mine):
        v = entry["name"]
        kp = next((i for i, e in enumerate(theirs) if e == entry), None)
        if kp is None:
            raise SystemExit(f"robust_bound: plain report lacks victim {v} with weights {entry['weights']}")
        per = {t: [] for t, _ in TARGETS}
        for rel, r in report["per_image"].items():
            unit = plain["per_image"][rel]["protected"][kp]
            for t, _ in TARGETS:
                d = r["protected"][k] if t == "none" else r["countermeasures"][t]["protected"][k]
                per[t].append(d / unit)
        out[v] = {t: float(np.mean(x)) for t, x in per.items()}
    return out


def table(plain: dict, folders: list[str]) -> str:
    """Markdown: one row per (run, victim), the targets' shares, with the run's wall seconds of immunize."""
    head = " | ".join(f"{t} / plain none (>= {g})" for t, g in TARGETS)
    lines = [f"| run | victim | {head} | immunize s |", "|---" * (len(TARGETS) + 3) + "|"]
    for folder in folders:
        report = json.loads(open(os.path.join(folder, REPORT)).read())
        seconds = json.loads(open(os.path.join(folder, "leat-jax-report.json")).read())["run"]["seconds"]
        for v, s in shares(report, plain).items():
            cells = " | ".join(f"{s[t]:.2f}" for t, _ in TARGETS)
            lines.append(f"| {os.path.basename(folder)} | {v} | {cells} | {seconds:.0f} |")
    return "\n".join(lines)


def first_order_shares(victims: str, stand_in: bool, faces: str, spec: str, seed: int = 0) -> dict:
    """Per victim, image means of its gradient's density and its first-order share of the ensemble's sign step.

    Returns:
        ``{"names", "density", "l2", "l1", "agreement"}``: density ``||g||_1 / (sqrt(n) ||g||_2)`` (1 for a
        gradient of equal magnitudes, small for a sparse one), each victim's ``g_k . s / ||g_k||_1`` for ``s``
        the sign of the L2- and the L1-normalised sum, and the mean agreement of the victims' gradient signs.
    """
    loaded = victimset.load(victimset.parse(victims), stand_in_weights=stand_in)
    chain = transform_spec.parse(spec) if spec else ()
    acc = {"density": [], "l2": [], "l1": [], "agreement": []}
    gradients = [victim_gradient(v, chain) for v in loaded.victims]  # compiled once, used on every face
    params = [v.prepare(p) for v, p in zip(loaded.victims, loaded.params)]
    for k, path in enumerate(sorted(glob.glob(os.path.join(faces, "*.png")))):
        x = jnp.asarray(np.asarray(Image.open(path).convert("RGB"), np.float32) / 127.5 - 1.0)[None]
        eta = jax.random.uniform(jax.random.key(seed + k), x.shape, minval=-0.05, maxval=0.05)
        grads = [np.asarray(grad(p, x, eta), np.float64).ravel() for grad, p in zip(gradients, params)]
        l1 = [np.abs(g).sum() for g in grads]
        acc["density"].append([n / np.sqrt(g.size) / np.linalg.norm(g) for g, n in zip(grads, l1)])
        for name, norms in (("l2", [np.linalg.norm(g) for g in grads]), ("l1", l1)):
            s = np.sign(sum(g / n for g, n in zip(grads, norms)))
            acc[name].append([g @ s / n for g, n in zip(grads, l1)])
        signs = np.sign(np.stack(grads))
        acc["agreement"].append(signs @ signs.T / signs.shape[1])
    return {"names": loaded.names, **{key: np.mean(v, axis=0) for key, v in acc.items()}}


def victim_gradient(victim, chain):
    """Jitted ``(params, x, eta) ->`` the input gradient of ``victim``'s latent MSE at ``x + eta``, through
    ``chain`` (drawn once, key 0)."""
    def loss(params, x, e):
        z = x + e
        if chain:
            z = transform_chain.apply_chain(chain, jax.random.key(0), z[0])[None]
        return latent_mse(victim.encode(params, z), victim.encode(params, x))

    return jax.jit(jax.grad(loss, argnums=2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="protect and measure the faces, per arm and victim")
    r.add_argument("out")
    r.add_argument("--arms", required=True, help=f"comma-separated, of: {', '.join(ARMS)}")
    r.add_argument("--iterations", type=int, default=50)
    r.add_argument("--victims", default="e4e,simswap_id", help="names (stand-in) or NAME=DIR, comma-separated")
    r.add_argument("--together", action="store_true", help="attack the victims as one ensemble, not one by one")
    r.add_argument("--faces", default="benchmarks/faces")
    r.add_argument("--stand-in-weights", action="store_true")
    t = sub.add_parser("table", help="the targets' shares of every run under OUT")
    t.add_argument("plain", help="robustness report of plain LEAT (all victims) on the same faces")
    t.add_argument("out")
    f = sub.add_parser("shares", help="first-order shares of the ensemble's sign step, L2 against L1 normalisation")
    f.add_argument("--victims", default="e4e,diffae,simswap_id,simswap_G,icface")
    f.add_argument("--transforms", default="jpeg:quality=75", help="the chain the gradients go through ('' for none)")
    f.add_argument("--faces", default="benchmarks/faces")
    f.add_argument("--stand-in-weights", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "shares":
        r = first_order_shares(args.victims, args.stand_in_weights, args.faces, args.transforms)
        print("| victim | density | share, L2 | share, L1 |\n|---|---|---|---|")
        for k, v in enumerate(r["names"]):
            print(f"| {v} | {r['density'][k]:.2f} | {r['l2'][k]:.3f} | {r['l1'][k]:.3f} |")
        print("sign agreement:\n" + np.array2string(r["agreement"], precision=2))
        return 0
    if args.command == "table":
        folders = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(args.out, "*", REPORT)))
        print(table(json.loads(open(args.plain).read()), folders))
        return 0
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm {unknown[0]!r} (known: {', '.join(ARMS)})")
    groups = [args.victims] if args.together else args.victims.split(",")
    for arm in arms:
        for victims in groups:
            print(run_arm(arm, victims, args.faces, args.out, args.iterations, args.stand_in_weights), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
