"""The ``leat-jax`` command: argument parsing only; the work is in ``leat_jax.pipeline``.

Subcommands: ``immunize`` (protect a folder of face images), ``learn-start``
(learn a universal start for immunize's ``--start``), ``evaluate``
(measure the disruption of deepfake pipelines), ``robustness`` (how much
protection survives JPEG, resizing, blur) and ``convert`` (official
PyTorch checkpoint -> converted Flax weights). Expected failures
end with a one-line message and a non-zero exit code, never a traceback:
1 when some images failed, 2 when the job could not start, 3 when the job
itself failed on the way (disk full, output folder gone), 130 on Ctrl-C;
``convert``: 2 on bad input, 1 when its output cannot be written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from leat_jax import __version__

EXIT_FAILED_IMAGES = 1
EXIT_SETUP = 2
EXIT_JOB_FAILED = 3
EXIT_INTERRUPTED = 130
EXIT_FAILED_WRITE = 1  # convert: its output could not be written (bad input exits EXIT_SETUP)
# Why immunize's workers setting does not apply to the Ray engine (refused rather than ignored).
RAY_WORKERS = "the Ray engine reads and writes in Ray tasks, as many at once as the cluster has CPUs"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _attack_defaults():
    # Read lazily so `--help` text shows the attack core's defaults without importing JAX here.
    from leat_jax.attack import ENSEMBLES, AttackConfig
    from leat_jax.attack.config import COMPUTE_DTYPES

    return AttackConfig(), ENSEMBLES, COMPUTE_DTYPES


def _add_research(g, d) -> None:
    # Update rule, schedule, per-victim losses and weights (issue 19); names from the attack core.
    from leat_jax.attack import LOSSES, UPDATES
    from leat_jax.attack.config import SCHEDULES

    g.add_argument("--update", choices=UPDATES,
                   help=f"update rule: sign steps, MI-FGSM momentum, Adam (default {d.update})")
    g.add_argument("--momentum", type=float, metavar="MU", help=f"MI-FGSM's decay (default {d.momentum})")
    g.add_argument("--step-schedule", choices=SCHEDULES,
                   help=f"step size over the iterations (default {d.step_schedule})")
    g.add_argument("--loss", metavar="NAME=LOSS,...",
                   help=f"per-victim loss, LOSS one of {'|'.join(LOSSES)} (default mse)")
    g.add_argument("--victim-weights", metavar="NAME=W,...", help="per-victim weights in the ensemble (default 1)")


def _names() -> tuple[str, str]:
    # The registries' names, for the help texts (both registries import their members lazily).
    from leat_jax import deepfakes, victims

    return ", ".join(victims.NAMES), ", ".join(deepfakes.NAMES)


def _add_immunize(sub) -> None:
    p = sub.add_parser(
        "immunize",
        help="protect every image under SRC, writing each to the same relative path under DST",
        usage="leat-jax immunize [options] SRC DST\n       leat-jax immunize [options] --samples DST",
        description=(
            "Protect every image under SRC (a folder, walked recursively; one image; or a text file listing "
            "paths) against the victims' latent encoders, writing each result to the same relative path "
            "under DST (as PNG by default). Resumable: a manifest in DST records what is done; a rerun "
            "skips it. Exit code 0: all done; 1: some images failed; 2: the job could not start; 3: the job "
            "itself failed on the way (disk full, output folder gone; the reason in one line)."
        ),
        epilog=(
            "Victims: --victims e4e=DIR,diffae=DIR (folders made by `leat-jax convert`), or --config "
            "FILE.toml. For a demo without checkpoints: --stand-in-weights with bare names "
            "(--victims diffae,simswap_G); such output protects against nothing. "
            "LEAT_EXTRA_VICTIMS=module:function[,...] adds victims (a function returning {name: Victim}), "
            "for tests and experiments."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="SRC DST", help=argparse.SUPPRESS)
    _add_immunize_inputs(p)
    _add_immunize_attack(p)
    _add_immunize_running(p)
    _add_immunize_engine(p)
    p.set_defaults(run=_immunize)


def _add_immunize_inputs(p) -> None:
    """immunize's "what to protect" and "victims" groups."""
    victim_names, _ = _names()
    g = p.add_argument_group("what to protect")
    g.add_argument("--samples", action="store_true", help="protect the bundled sample faces (then give DST only)")
    g.add_argument("--max-size", type=_positive_int, metavar="N",
                   help="refuse images with a side longer than this (default 2048)")
    g.add_argument("--faces", choices=("aligned", "detect"),
                   help="aligned (default): every input is an aligned face crop, attacked whole; detect: inputs are "
                        "photos: faces are found and each victim attacked through its own official crop of each "
                        "face; only those pixels change, a photo without a face is written unchanged")
    g = p.add_argument_group("victims")
    g.add_argument("--victims", metavar="NAME=DIR,...",
                   help=f"victims and their converted checkpoints (NAME: {victim_names})")
    g.add_argument("--config", metavar="FILE.toml", help="settings file ([victims], [attack], run settings)")
    g.add_argument("--stand-in-weights", action="store_true", default=None,
                   help="allow bare victim names: random weights of the real architectures (no protection; "
                        "default victims diffae,simswap_G)")


def _add_immunize_attack(p) -> None:
    """immunize's attack group: the attack core's settings and defaults, the start, EOT."""
    d, ensembles, dtypes = _attack_defaults()
    g = p.add_argument_group("attack (defaults from the attack core)")
    g.add_argument("--eps", type=float, metavar="X", help=f"L-inf bound in the [-1, 1] convention (default {d.eps})")
    g.add_argument("--step", type=float, metavar="X", help=f"PGD step (default {d.step})")
    g.add_argument("--iterations", type=int, metavar="N", help=f"PGD steps (default {d.iterations})")
    g.add_argument("--ensemble", choices=ensembles, help=f"gradient ensemble (default {d.ensemble})")
    g.add_argument("--compute-dtype", choices=dtypes, help=f"weights and activations (default {d.compute_dtype})")
    _add_research(g, d)
    g.add_argument("--seed", type=int, metavar="N", help="seed of the random starts (default 0)")
    g.add_argument("--start", metavar="random|zero|PATH",
                   help="where each image's attack starts: uniform noise (random, default), practically zero, or "
                        "a universal start from `leat-jax learn-start` (its OUT folder or start.npy), resized to "
                        "the image, with a little keyed noise; fewer --iterations reach the same distortion")
    _add_robust(g, d)


def _add_robust(g, d) -> None:
    """--robust or --transforms (one of them) and the EOT draws, into the attack group ``g``."""
    from leat_jax.transforms.jpeg import GRADIENT, GRADIENTS  # JPEG's surrogates, named by the transforms

    m = g.add_mutually_exclusive_group()
    m.add_argument("--robust", action="store_const", const="robust", dest="transforms",
                   help="protection that survives uploads: every step attacks a random JPEG re-encoding (quality "
                        "50-95) and 8-bit rounding of the image (expectation over transformation)")
    m.add_argument("--transforms", metavar="SPEC",
                   help="the transforms of --robust, chosen: e.g. resize:factor=0.5-1.0,jpeg:quality=50-95,jitter,"
                        f"round8 (leat_jax.transforms; 'none': plain LEAT); jpeg's gradient={'|'.join(GRADIENTS)} "
                        f"picks its rounding's surrogate slope (default {GRADIENT})")
    g.add_argument("--eot-samples", type=_positive_int, metavar="N",
                   help=f"transform draws per step, gradients averaged (default {d.eot_samples})")
    g.add_argument("--eot-untransformed", action="store_true", default=None,
                   help="with --robust/--transforms: also attack the image as it is, beside the draws")


def _add_immunize_running(p) -> None:
    """immunize's "running" group: batching, devices, workers, output format, resuming, caches."""
    g = p.add_argument_group("running")
    g.add_argument("--batch-size", type=_positive_int, metavar="N",
                   help="images per device handed over at once (default: the microbatch); results do not change")
    g.add_argument("--microbatch", type=_positive_int, metavar="N",
                   help="images per device per compiled step (default 1 on CPU, 8 on accelerators): results are "
                        "identical, bit for bit, for the same microbatch and platform whatever --batch-size, "
                        "--devices, process count or interruption; another microbatch or platform can move "
                        "samples by a few levels (it is part of the settings hash)")
    g.add_argument("--devices", type=_positive_int, metavar="N", help="use the first N local devices (default all)")
    g.add_argument("--workers", type=_positive_int, metavar="N",
                   help="threads decoding and writing images (default 4; not with --engine ray)")
    g.add_argument("--format", choices=("png", "jpeg"), help="output format (default png, lossless; "
                   "jpeg weakens the protection)")
    g.add_argument("--jpeg-quality", type=int, metavar="N", help="quality of --format jpeg (default 95)")
    g.add_argument("--force", action="store_true", default=None, help="redo images already done")
    g.add_argument("--verify", action="store_true", default=None,
                   help="check images already done by hashing input and output (default: size and time)")
    g.add_argument("--quiet", action="store_true", default=None,
                   help="no progress bar, no lines about compilations or retries, no summary "
                        "(errors and the stand-in and JPEG warnings still show)")
    g.add_argument("--contact-sheet", type=int, metavar="N", help="images on the contact sheet (default 4; 0: none)")
    g.add_argument("--compile-cache", metavar="DIR",
                   help="JAX's persistent compilation cache, so a restart does not compile again "
                        "(default: leat-jax/jax under the user's cache folder)")
    g.add_argument("--no-compile-cache", action="store_true", help="no persistent compilation cache")


def _add_immunize_engine(p) -> None:
    """immunize's "multi-host" and "engine" groups: who runs the job, where."""
    g = p.add_argument_group("multi-host")
    g.add_argument("--distributed", action="store_true",
                   help="join a jax.distributed job; each process takes a disjoint share of the files")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (default $LEAT_COORDINATOR)")
    g.add_argument("--num-processes", type=_positive_int, metavar="N",
                   help="processes in the job (default $LEAT_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="N", help="this process's index (default $LEAT_PROCESS_ID)")
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=("inprocess", "ray"),
                   help="who runs the job: this process on its local devices (default), or a Ray cluster "
                        "(pip install 'leat-jax[ray]')")
    g.add_argument("--ray-address", metavar="HOST:PORT",
                   help="--engine ray: the cluster to join (default: start a local one, without dashboard)")
    g.add_argument("--ray-actors", metavar="N|MIN-MAX",
                   help="--engine ray: attack actors, the pool scales between MIN and MAX (default: one per GPU)")


def _add_convert(sub) -> None:
    victim_names, pipeline_names = _names()
    p = sub.add_parser(
        "convert",
        help="convert an official PyTorch checkpoint into a leat-jax weights folder",
        description="Convert the official checkpoint SRC of network MODEL into the folder DST (replaced if present). "
                    "Exit code 0: done; 2: bad input (an unknown MODEL; SRC missing, unreadable, refused or not "
                    "fitting MODEL); 1: DST could not be written.",
    )
    p.add_argument("model", metavar="MODEL", help=f"a victim ({victim_names}), a network of an evaluation "
                   f"pipeline ({pipeline_names}: each one's PARTS in leat_jax/deepfakes/NAME.py names them, "
                   "e.g. stylegan2) or mtcnn")
    p.add_argument("src", metavar="SRC", help="the official checkpoint file (mtcnn: the facenet-pytorch 2.6.0 wheel "
                   "or a folder with its pnet.pt, rnet.pt, onet.pt)")
    p.add_argument("dst", metavar="DST", help="the folder to write")
    p.set_defaults(run=_convert)


def _add_evaluate(sub) -> None:
    _, pipeline_names = _names()
    p = sub.add_parser(
        "evaluate",
        help="measure how much protected images disrupt deepfake pipelines (DSR, PSNR, SSIM)",
        usage="leat-jax evaluate [options] CLEAN_DIR PROTECTED_DIR OUT_DIR\n"
              "       leat-jax evaluate [options] --samples DEMO_DIR [OUT_DIR]",
        description=(
            "Run the deepfake pipelines on every image under CLEAN_DIR and its protected version under "
            "PROTECTED_DIR (same relative path, as immunize writes it), for every known and unknown target "
            "attribute, and write a JSON report, a Markdown table and a figure into OUT_DIR. Every check that "
            "needs no weights runs before any network is built. Exit code 0: done; 2: could not start."
        ),
        epilog=(
            f"Pipelines: --pipelines NAME=DIR,... with NAME among {pipeline_names} (folders of converted "
            "networks, in the sub-folders each pipeline's PARTS in leat_jax/deepfakes/NAME.py names), or bare "
            "names with --stand-in-weights (random weights: the numbers mean nothing). --samples DEMO_DIR: the "
            "bundled sample faces against what `leat-jax immunize --samples DEMO_DIR` wrote (scripts/demo.sh: "
            "out/demo), report in DEMO_DIR/evaluation unless OUT_DIR is given; every pipeline on stand-in weights "
            "at its cheapest settings (StyleCLIP 1 + 1 mappers, DiffAE 2 + 2 DDIM steps and 1 + 1 attributes, "
            "ICface 1 + 1 driving vectors, SimSwap one face per other image): about 16 minutes measured on a "
            "shared 2-core CPU, 80% of it DiffAE and StyleCLIP at their real sizes; --pipelines simswap,icface "
            "takes about 3.5 minutes. LEAT_EXTRA_DEEPFAKES=module:function[,...] adds pipelines (a function "
            "returning {name: Deepfake}), for tests and experiments."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="CLEAN_DIR PROTECTED_DIR OUT_DIR", help=argparse.SUPPRESS)
    _add_evaluate_inputs(p)
    _add_evaluate_measures(p)
    p.set_defaults(run=_evaluate)


def _add_evaluate_inputs(p) -> None:
    """evaluate's options of what is evaluated: the pipelines, their settings, the baseline."""
    p.add_argument("--samples", action="store_true", help="evaluate the demo's output (DEMO_DIR) against the "
                   "bundled sample faces, every pipeline on stand-in weights (then give DEMO_DIR [OUT_DIR])")
    p.add_argument("--pipelines", metavar="NAME=DIR,...", help="pipelines and their converted networks")
    p.add_argument("--config", metavar="FILE.toml", help="settings file ([pipelines], per-pipeline attribute "
                   "tables with known / unknown, [attack] for the baseline, threshold, seed)")
    p.add_argument("--stand-in-weights", action="store_true", default=None,
                   help="allow bare pipeline names: random weights (numbers mean nothing)")
    p.add_argument("--baseline", action="store_true", default=None,
                   help="also run the image-space attack on the clean images over the known attributes")
    p.add_argument("--start", metavar="random|zero|PATH", help="the baseline's start (default: the immunize "
                   "report's, a learned one read again from the file it names)")
    p.add_argument("--seed", type=int, metavar="N", help="baseline random starts, stand-in weights, sampled "
                   "attributes (default: the immunize report's seed, else 0)")


def _add_evaluate_measures(p) -> None:
    """evaluate's options of how it measures and shows: thresholds, figure, devices, identity check."""
    p.add_argument("--threshold", type=float, metavar="X", help="disruption threshold on the output MSE (default 0.05)")
    p.add_argument("--figure-rows", type=int, metavar="N", help="images in the figure (default 4; 0: none)")
    p.add_argument("--devices", type=int, metavar="N", help="the baseline runs on the first N local devices "
                   "(default: all)")
    p.add_argument("--countermeasure", metavar="NAME", help="apply this countermeasure (e.g. jpeg75, half+jpeg75; "
                   "see `leat-jax robustness -h`) to the protected images first: the DSR after an upload")
    p.add_argument("--identity-threshold", type=float, metavar="X", help="a pair is identity-disrupted when the "
                   "ArcFace cosine of its clean and protected outputs is below X (default 0.3)")
    p.add_argument("--arcface", metavar="DIR", help="converted simswap_id weights for the identity check when no "
                   "SimSwap pipeline folder has them, or 'stand-in' (with --stand-in-weights)")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress lines")


def _evaluate(args, parser) -> int:
    from leat_jax.errors import SetupError
    from leat_jax.pipeline import evaluate, evaluate_config
    from leat_jax.pipeline.attributes import EXTRA_DEEPFAKES_ENV

    if args.samples and len(args.paths) not in (1, 2):
        parser.error("evaluate --samples takes DEMO_DIR [OUT_DIR]")
    if not args.samples and len(args.paths) != 3:
        parser.error("evaluate takes CLEAN_DIR PROTECTED_DIR OUT_DIR (or --samples DEMO_DIR [OUT_DIR])")
    extra = tuple(e for e in os.environ.get(EXTRA_DEEPFAKES_ENV, "").split(",") if e.strip())
    try:
        toml = evaluate_config.read_toml(args.config) if args.config else {}
        flags = dict(
            pipelines=evaluate_config.parse_pipelines(args.pipelines) if args.pipelines else None,
            stand_in_weights=args.stand_in_weights, baseline=args.baseline, seed=args.seed, start=args.start,
            threshold=args.threshold, figure_rows=args.figure_rows, quiet=args.quiet, devices=args.devices,
            countermeasure=args.countermeasure, extra_pipelines=extra or None,
            identity_threshold=args.identity_threshold, arcface=args.arcface,
        )
        if args.samples:
            cfg = evaluate_config.build_samples(*args.paths, toml=toml, **flags)
        else:
            cfg = evaluate_config.build(*args.paths, toml, **flags)
        evaluate.run(cfg)
    except SetupError as e:
        _error(str(e))
        return EXIT_SETUP
    return 0


def _add_robustness(sub) -> None:
    p = sub.add_parser(
        "robustness",
        help="measure how much protection survives real countermeasures (JPEG, WebP, resize, blur)",
        description=(
            "Apply real countermeasures (Pillow JPEG 95/75/50, WebP 80, half-size resize and back, Gaussian "
            "blur, and pairs) to every protected image under PROTECTED (paired with CLEAN by relative path, as "
            "immunize writes them) and report, per victim and countermeasure, the retained latent distortion "
            "d(E(T(x_adv)),E(x))/d(E(x_adv),E(x)) beside the floor d(E(T(x)),E(x))/d(E(x_adv),E(x)): "
            "JSON, a Markdown table and a plot. Exit code 0: done; 2: could not start."
        ),
    )
    p.add_argument("clean", metavar="CLEAN", help="the original images")
    p.add_argument("protected", metavar="PROTECTED", help="their protected versions (immunize's DST)")
    p.add_argument("--out", metavar="DIR", help="where the report goes (default PROTECTED)")
    p.add_argument("--victims", metavar="NAME=DIR,...", help="the encoders measured, as for immunize")
    p.add_argument("--stand-in-weights", action="store_true",
                   help="allow bare victim names: random weights (numbers mean nothing)")
    p.add_argument("--countermeasures", metavar="NAME,...",
                   help="jpeg95, jpeg75, jpeg50, webp80, half, blur, or pairs such as half+jpeg75 "
                        "(default: each alone, resize and blur before each re-encoding, half+blur)")
    p.add_argument("--max-size", type=_positive_int, metavar="N",
                   help="refuse images with a longer side (default 2048)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(run=_robustness)


def _robustness(args, parser) -> int:
    from leat_jax.errors import SetupError
    from leat_jax.pipeline import countermeasures, robustness
    from leat_jax.pipeline.victimset import EXTRA_VICTIMS_ENV, parse

    extra = tuple(e for e in os.environ.get(EXTRA_VICTIMS_ENV, "").split(",") if e.strip())
    try:
        cfg = robustness.RobustnessConfig(
            clean=args.clean, protected=args.protected, out=args.out,
            victims=parse(args.victims) if args.victims else (), stand_in_weights=args.stand_in_weights,
            countermeasures=countermeasures.parse_list(args.countermeasures) if args.countermeasures
            else countermeasures.DEFAULT,
            max_size=args.max_size or 2048, extra_victims=extra, quiet=args.quiet,
        )
        robustness.run(cfg)
    except SetupError as e:
        _error(str(e))
        return EXIT_SETUP
    return 0


def _add_learn_start(sub) -> None:
    d, ensembles, dtypes = _attack_defaults()
    victim_names, _ = _names()
    p = sub.add_parser(
        "learn-start",
        help="learn one universal perturbation from the images under SRC, a start for immunize --start",
        description=(
            "Learn a universal perturbation u (|u|_inf <= eps, at a reference size, resized to each image) that "
            "maximises the victims' normalised-ensemble latent distortion over the images under SRC, with optax "
            "sign steps or Adam on minibatches split over the local devices. Writes OUT/start.npy (give OUT to "
            "immunize --start), OUT/report.json and OUT/curve.png; checkpoints in OUT/checkpoints, so the same "
            "command, rerun after an interruption, resumes and ends as an uninterrupted run. With --calibrate N "
            "also OUT/immunize.toml: a fast attack from u (--fast-iterations T, step 2 * eps, cosine) with "
            "per-victim weights steered on N of the images, for immunize --config. Exit code 0: done; "
            "2: could not start."
        ),
    )
    p.add_argument("src", metavar="SRC", help="the images to learn from (folder, image or list of paths)")
    p.add_argument("out", metavar="OUT", help="the output folder")
    p.add_argument("--victims", metavar="NAME=DIR,...", help=f"victims, as for immunize (NAME: {victim_names})")
    p.add_argument("--stand-in-weights", action="store_true", help="allow bare victim names: random weights")
    p.add_argument("--eps", type=float, metavar="X", help=f"L-inf bound (default {d.eps})")
    p.add_argument("--ensemble", choices=ensembles, help=f"gradient ensemble (default {d.ensemble})")
    p.add_argument("--compute-dtype", choices=dtypes, help=f"weights and activations (default {d.compute_dtype})")
    p.add_argument("--transforms", metavar="SPEC", help="EOT transforms as for immunize ('robust', a spec, 'none')")
    p.add_argument("--eot-samples", type=_positive_int, metavar="N", help="transform draws per step (default 1)")
    p.add_argument("--steps", type=_positive_int, metavar="N", help="optimiser steps (default 300)")
    p.add_argument("--batch", type=_positive_int, metavar="N", help="images per step (default 8)")
    p.add_argument("--rate", type=float, metavar="X", help="sign step size or Adam's rate (default 0.004)")
    p.add_argument("--rule", choices=("sign", "adam"), help="optax rule (default sign)")
    p.add_argument("--schedule", choices=("constant", "cosine", "linear"), help="rate over the steps (default cosine)")
    p.add_argument("--size", type=_positive_int, metavar="N", help="side of u; images are resized to it (default 256)")
    p.add_argument("--seed", type=int, metavar="N", help="minibatches, EOT draws, first u (default 0)")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="N", help="steps between checkpoints (default 25)")
    p.add_argument("--devices", type=_positive_int, metavar="N", help="use the first N local devices (default all)")
    p.add_argument("--max-size", type=_positive_int, metavar="N", help="refuse longer image sides (default 2048)")
    p.add_argument("--keep-latents", action="store_true", help="compute each image's clean latents once and keep "
                   "them in memory (up to 2 GiB): less time a step; the last bit of the numbers may differ")
    p.add_argument("--calibrate", type=int, metavar="N", help="after learning, steer a fast attack's per-victim "
                   "weights on the first N images to the run's own attack and write OUT/immunize.toml for "
                   "immunize --config (default 0: none)")
    p.add_argument("--fast-iterations", type=int, metavar="T", help="the calibrated fast attack's iterations "
                   "(default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(run=_learn_start)


def _learn_start(args, parser) -> int:
    from leat_jax.errors import SetupError
    from leat_jax.pipeline import learn_start
    from leat_jax.pipeline.victimset import EXTRA_VICTIMS_ENV, parse

    extra = tuple(e for e in os.environ.get(EXTRA_VICTIMS_ENV, "").split(",") if e.strip())
    attack = {k: v for k, v in dict(eps=args.eps, ensemble=args.ensemble, compute_dtype=args.compute_dtype,
                                    transforms=args.transforms, eot_samples=args.eot_samples).items() if v is not None}
    learn = {k: v for k, v in dict(steps=args.steps, batch=args.batch, rate=args.rate, rule=args.rule,
                                   schedule=args.schedule, size=args.size, seed=args.seed).items() if v is not None}
    try:
        cfg = learn_start.build(args.src, args.out, attack, learn, victims=parse(args.victims) if args.victims else (),
                                stand_in_weights=args.stand_in_weights, extra_victims=extra, devices=args.devices,
                                checkpoint_every=args.checkpoint_every or 25, max_size=args.max_size or 2048,
                                quiet=args.quiet, keep_latents=args.keep_latents, calibrate=args.calibrate or 0,
                                fast_iterations=10 if args.fast_iterations is None else args.fast_iterations)
        learn_start.run(cfg)
    except SetupError as e:
        _error(str(e))
        return EXIT_SETUP
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leat-jax",
        description="LEAT (Latent Ensemble Attack) in JAX: protect face photos against several deepfake models.",
    )
    parser.add_argument("--version", action="version", version=f"leat-jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_immunize(sub)
    _add_learn_start(sub)
    _add_evaluate(sub)
    _add_robustness(sub)
    _add_convert(sub)
    return parser


def _error(message: str) -> None:
    print(f"leat-jax: error: {message}", file=sys.stderr, flush=True)


def _immunize(args, parser) -> int:
    from leat_jax import engines
    from leat_jax.errors import SetupError
    from leat_jax.pipeline.faults import JobFailed

    src, dst = _immunize_paths(args, parser)
    try:
        cfg = _immunize_config(args, src, dst)
        if cfg.engine == "ray" and args.workers is not None:  # refused rather than ignored
            raise SetupError(f"--workers: {RAY_WORKERS}; leave --workers out")
        summary = engines.run(cfg)  # the engine cfg names, on a folder or on shards
    except SetupError as e:
        _error(str(e))
        return EXIT_SETUP
    except JobFailed as e:
        _error(str(e))
        return EXIT_JOB_FAILED
    if summary.failed:
        _error(f"{summary.failed} image(s) failed (listed above and in the report); the rest are done")
        return EXIT_FAILED_IMAGES
    return 0


def _immunize_paths(args, parser) -> tuple[str | None, str]:
    """SRC (None with --samples) and DST; a usage error (exit 2) for a wrong count or clashing flags."""
    if args.samples:
        if len(args.paths) != 1:
            parser.error("immunize --samples takes DST only")
        src, dst = None, args.paths[0]
    else:
        if len(args.paths) != 2:
            parser.error("immunize takes SRC and DST (or --samples DST)")
        src, dst = args.paths
    if not args.distributed and any(v is not None for v in (args.coordinator, args.num_processes, args.process_id)):
        parser.error("--coordinator, --num-processes and --process-id need --distributed")
    if args.no_compile_cache and args.compile_cache:
        parser.error("--compile-cache and --no-compile-cache exclude each other")
    return src, dst


def _immunize_config(args, src, dst):
    """The immunize settings: defaults < --config < flags (``SetupError`` on a bad one)."""
    from leat_jax.errors import SetupError
    from leat_jax.parallel import DistributedConfig
    from leat_jax.pipeline import config as settings
    from leat_jax.pipeline.victimset import EXTRA_VICTIMS_ENV, parse

    extra = tuple(e for e in os.environ.get(EXTRA_VICTIMS_ENV, "").split(",") if e.strip())
    toml = settings.read_toml(args.config) if args.config else {}
    research = dict(update=args.update, momentum=args.momentum, step_schedule=args.step_schedule,
                    losses=settings.parse_pairs(args.loss, "--loss") if args.loss else None,
                    victim_weights=settings.parse_pairs(args.victim_weights, "--victim-weights", float)
                    if args.victim_weights else None)
    cfg = settings.build(
        src, dst, toml,
        victims=parse(args.victims) if args.victims else None,
        eps=args.eps, step=args.step, iterations=args.iterations, ensemble=args.ensemble,
        compute_dtype=args.compute_dtype, seed=args.seed, stand_in_weights=args.stand_in_weights,
        start=args.start,
        transforms=args.transforms, eot_samples=args.eot_samples, eot_untransformed=args.eot_untransformed,
        batch_size=args.batch_size, microbatch=args.microbatch, devices=args.devices, workers=args.workers,
        format=args.format,
        jpeg_quality=args.jpeg_quality, max_size=args.max_size, force=args.force, quiet=args.quiet,
        contact_sheet=args.contact_sheet, faces=args.faces,
        compile_cache=False if args.no_compile_cache else args.compile_cache, verify=args.verify,
        distributed=DistributedConfig.from_env(
            coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        ) if args.distributed else None,
        extra_victims=extra or None, **research,
        engine=args.engine, ray_address=args.ray_address, ray_actors=args.ray_actors,
    )
    if cfg.engine == "ray" and "workers" in toml:  # refused rather than ignored, as --workers is
        raise SetupError(f"{args.config}: workers: {RAY_WORKERS}; leave workers out of the file")
    return cfg


def _convert(args, parser) -> int:
    # Only this command reaches converters/ (and through it torch).
    try:
        import converters
        from converters import torch_io
        from converters.keymap import ConversionError
    except ImportError as e:
        _error(f"convert needs the converters and torch (pip install 'leat-jax[torch]'): {e}")
        return EXIT_SETUP
    from leat_jax.checkpoints import CheckpointError

    try:
        meta = converters.convert(args.model, args.src, args.dst)
    except (ConversionError, torch_io.CheckpointReadError, CheckpointError) as e:  # bad input: model, file, keys
        _error(str(e).splitlines()[0] if str(e) else type(e).__name__)
        return EXIT_SETUP
    except OSError as e:
        _error(f"{e.filename or args.src}: {e.strerror or e}")
        return EXIT_FAILED_WRITE if writing_to(e.filename, args.dst) else EXIT_SETUP
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


def writing_to(filename, dst: str) -> bool:
    """Whether an error's file is convert's output (DST, or its ``.partial`` folder beside it): the work failed,
    not the input."""
    if filename is None:
        return False
    path = os.path.abspath(os.fsdecode(filename))
    roots = (os.path.abspath(dst), os.path.abspath(dst) + ".partial")  # checkpoints.py writes DST.partial first
    return any(path == r or path.startswith(r + os.sep) for r in roots)


def main(argv=None) -> int:
    from leat_jax import xla_cpu

    xla_cpu.cpu_flags()  # before any computation: XLA reads its flags once
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args, parser)
    except KeyboardInterrupt:
        _error("interrupted; finished images are kept, run the same command again to finish the job")
        return EXIT_INTERRUPTED
