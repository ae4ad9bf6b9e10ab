"""leat-jax against the torch reference, side by side, on the same weights.

    python -m benchmarks.run [--quick] [--json PATH] [--victims e4e,diffae,...]

Measures, alternating the frameworks run by run (warm-up excluded, medians):
per victim, one attack iteration (forward + input gradient) per image; the
whole ensemble for T iterations in images per second; FLOPs per iteration
from XLA's cost analysis and the achieved rate against this machine's
measured matmul peak; memory; scaling with batch size and device count;
compile times apart; the bf16 mode's effect on final latent distances; and a
cross-check that both frameworks attack alike (first-step direction cosine,
final distances). Writes JSON, the measured block of ``benchmarks/RESULTS.md``
and a throughput-vs-batch plot.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import pairs as pairs_mod
from benchmarks.reference.attack import TorchAttackConfig
from benchmarks.reference.attack import attack as torch_attack
from benchmarks.reference.attack import direction as torch_direction
from benchmarks.timing import alternate, clock, matmul_peak_flops
from leat_jax import parallel, xla_cpu
from leat_jax import victims as victim_registry
from leat_jax.attack import AttackConfig, clean_latents, ensemble_direction, image_key, make_attack, prepared
from leat_jax.attack import run as jax_run

HERE = Path(__file__).resolve().parent
ALL = victim_registry.NAMES
RESULTS_BEGIN = "<!-- BEGIN measured: written by python -m benchmarks.run -->"
RESULTS_END = "<!-- END measured -->"


# ----------------------------------------------------------------------------- inputs

def sample_images(batch: int, size: int = 256) -> np.ndarray:
    """Real faces where we have them (the public-domain sample), NHWC in [-1, 1]."""
    from PIL import Image

    path = HERE.parent.parent / "shared" / "samples" / "astronaut.png"
    if path.exists():
        img = Image.open(path).convert("RGB")
        # The face sits in the upper middle of the 512 x 512 portrait.
        crops = [img.crop((120 + 4 * i, 20 + 3 * i, 376 + 4 * i, 276 + 3 * i)).resize((size, size), Image.BILINEAR)
                 for i in range(batch)]
        arr = np.stack([np.asarray(c, np.float32) / 127.5 - 1.0 for c in crops])
    else:
        arr = np.random.default_rng(0).uniform(-0.8, 0.8, (batch, size, size, 3)).astype(np.float32)
    return arr


def random_start(images: np.ndarray, ids: np.ndarray, seed: int, eps: float) -> np.ndarray:
    """The JAX attack's own random start, so the torch reference can begin there too."""
    keys = jax.vmap(image_key, in_axes=(None, 0))(jnp.uint32(seed), jnp.asarray(ids, jnp.uint32))
    eta = jax.vmap(lambda k: jax.random.uniform(k, images.shape[1:], jnp.float32, -eps, eps))(keys)
    return np.asarray(jnp.clip(images + eta, -1, 1) - images)


def nchw(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


# ----------------------------------------------------------------------------- jax side

def jax_prepare(victims, config, params):
    """The parameters as the attack's loop sees them: cast, weight-only work done once (``attack.prepared``).

    Timing one iteration on these measures what each of the T iterations
    costs inside the attack, where that work sits outside the loop.
    """
    return jax.block_until_ready(prepared(victims, config, params))


def jax_iteration(victims, config):
    """Jitted batch of per-image attack iterations: (params, x, eta, clean) -> (direction, losses)."""

    def f(params, x, eta, clean):
        return jax.vmap(lambda a, b, c: ensemble_direction(victims, config, params, a, b, c))(x, eta, clean)

    return jax.jit(f)


def jax_clean(victims, config):
    return jax.jit(lambda params, x: jax.vmap(lambda a: clean_latents(victims, config, params, a))(x))


def cost(compiled) -> dict:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    mem = compiled.memory_analysis()
    out = {"flops": float(ca.get("flops", float("nan"))) if ca else None}
    if mem is not None:
        out["xla_bytes"] = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)
    return out


def compile_timed(fn, *args):
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


# ----------------------------------------------------------------------------- measurements

def keeping(outputs: dict, runners: dict) -> dict:
    """The runners, each also leaving its latest output in ``outputs`` (no extra run to read results)."""

    def keep(name, f):
        def run():
            outputs[name] = f()
            return outputs[name]

        return run

    return {k: (None if f is None else keep(k, f)) for k, f in runners.items()}


def cosine(d_jax, d_torch) -> float:
    a = np.asarray(d_jax, np.float64).ravel()
    b = d_torch.permute(0, 2, 3, 1).numpy().astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def per_victim(pair, batch: int, repeats: int, config: AttackConfig, with_compile: bool, warmup: int = 1,
               image_size: int = 256) -> dict:
    """One attack iteration (forward + input gradient) of one victim, both frameworks, same start: timings,
    XLA's FLOP counts, compile times and the two directions' cosine, on ``batch`` sample faces of ``image_size``."""
    x = sample_images(batch, image_size)
    eta = random_start(x, np.arange(batch), 0, config.eps)
    victims = (pair.victim,)
    params = jax_prepare(victims, config, (pair.params,))
    clean_fn = jax_clean(victims, config).lower(params, jnp.asarray(x)).compile()  # once: run and counted
    clean = clean_fn(params, jnp.asarray(x))
    fwd = cost(clean_fn)["flops"]
    it = jax_iteration(victims, config)
    compiled, t_compile = compile_timed(it, params, jnp.asarray(x), jnp.asarray(eta), clean)
    xt, et = nchw(x), nchw(eta)
    tcfg = TorchAttackConfig(eps=config.eps, step=config.step, ensemble=config.ensemble)
    with torch.no_grad():
        tclean = [pair.torch_encoder(xt)]
    runners = {
        "jax": lambda: compiled(params, jnp.asarray(x), jnp.asarray(eta), clean),
        "torch_eager": lambda: torch_direction([pair.torch_encoder], tclean, xt, et, tcfg),
        "torch_compile": None,
    }
    compile_note = None
    if with_compile:
        try:
            enc = torch.compile(pair.torch_encoder)
            t0 = time.perf_counter()
            torch_direction([enc], tclean, xt, et, tcfg)
            compile_note = time.perf_counter() - t0
            runners["torch_compile"] = lambda: torch_direction([enc], tclean, xt, et, tcfg)
        except Exception as e:  # inductor needs a working C++ toolchain
            compile_note = f"unavailable: {type(e).__name__}: {str(e)[:120]}"
    out: dict = {}
    t = alternate(keeping(out, runners), repeats, warmup=warmup)
    c = cost(compiled)
    d_jax, d_torch = out["jax"][0], out["torch_eager"][0]
    return {
        "batch": batch,
        # Same start, same weights: both frameworks must point the same way.
        "direction_cosine": cosine(d_jax, d_torch),
        "jax_s_per_image": t["jax"] / batch,
        "torch_eager_s_per_image": t["torch_eager"] / batch,
        "torch_compile_s_per_image": None if t["torch_compile"] is None else t["torch_compile"] / batch,
        "jax_compile_s": t_compile,
        "torch_compile_compile_s": compile_note,
        "flops_per_image": c["flops"] / batch if c["flops"] else None,
        "forward_flops_per_image": fwd / batch if fwd else None,
        "jax_flops_per_s": c["flops"] / t["jax"] if c["flops"] else None,
        "xla_bytes": c.get("xla_bytes"),
    }


def ensemble(pairs, batch: int, iterations: int, repeats: int, config: AttackConfig, with_compile: bool,
             warmup: int = 1, flops_per_image_iteration: float | None = None,
             forward_flops_per_image: float | None = None) -> dict:
    """The whole attack (clean forward, T iterations, final distances), images per second.

    Parameters are prepared first, once, as ``leat-jax immunize`` does once
    per run (``attack.prepared``); that time is reported apart, like
    compilation. ``flops_per_image_iteration`` and ``forward_flops_per_image``
    skip compiling more programs for XLA's counts (the quick run passes the
    per-victim sums instead).
    """
    cfg = dataclasses.replace(config, iterations=iterations)
    victims = tuple(p.victim for p in pairs)
    t0 = time.perf_counter()
    params = jax_prepare(victims, cfg, tuple(p.params for p in pairs))
    t_prepare = time.perf_counter() - t0
    x = sample_images(batch)
    ids = np.arange(batch, dtype=np.uint32)
    eta0 = random_start(x, ids, 0, cfg.eps)
    xj, idj = jnp.asarray(x), jnp.asarray(ids)
    attack, t_compile = compile_timed(jax.jit(make_attack(victims, cfg)), params, xj, idj, jnp.uint32(0))
    tcfg = TorchAttackConfig(eps=cfg.eps, step=cfg.step, iterations=iterations, ensemble=cfg.ensemble)
    encoders = [p.torch_encoder for p in pairs]
    xt, et = nchw(x), nchw(eta0)
    runners = {
        "jax": lambda: attack(params, xj, idj, jnp.uint32(0)),
        "torch_eager": lambda: torch_attack(encoders, tcfg, xt, et),
        "torch_compile": None,
    }
    compile_info = None
    if with_compile:
        try:
            compiled_encs = [torch.compile(e) for e in encoders]
            t1 = time.perf_counter()
            torch_attack(compiled_encs, dataclasses.replace(tcfg, iterations=1), xt, et)
            compile_info = time.perf_counter() - t1
            runners["torch_compile"] = lambda: torch_attack(compiled_encs, tcfg, xt, et)
        except Exception as e:
            compile_info = f"unavailable: {type(e).__name__}: {str(e)[:120]}"
    out: dict = {}
    t = alternate(keeping(out, runners), repeats, warmup=warmup)
    # Both attacks from the same start: final distances should agree within a few percent.
    end_jax = np.asarray(out["jax"].dist_end)
    end_torch = out["torch_eager"][2].numpy()
    if flops_per_image_iteration is None or forward_flops_per_image is None:
        clean_fn = jax_clean(victims, cfg).lower(params, xj).compile()  # once: run and counted
        clean = clean_fn(params, xj)
        forward_flops_per_image = cost(clean_fn)["flops"] / batch
        it_compiled, _ = compile_timed(jax_iteration(victims, cfg), params, xj, jnp.asarray(eta0), clean)
        c = cost(it_compiled)
        flops_per_image_iteration = c["flops"] / batch if c["flops"] else None
        xla_bytes = c.get("xla_bytes")
    else:
        xla_bytes = cost(attack).get("xla_bytes")
    # What one attack executes per image: T iterations plus the clean and final forwards.
    executed = flops_per_image_iteration * iterations + 2 * forward_flops_per_image
    ips = {k: (None if v is None else batch / v) for k, v in t.items()}
    names = [p.name for p in pairs]
    return {
        "batch": batch,
        "iterations": iterations,
        "jax_images_per_s": ips["jax"],
        "torch_eager_images_per_s": ips["torch_eager"],
        "torch_compile_images_per_s": ips["torch_compile"],
        "jax_compile_s": t_compile,
        "jax_prepare_s": t_prepare,
        "torch_compile_warmup_s": compile_info,
        "flops_per_image_iteration": flops_per_image_iteration,
        "forward_flops_per_image": forward_flops_per_image,
        "flops_per_image_attack": executed,
        "jax_flops_per_s": executed * batch / t["jax"],
        "xla_bytes": xla_bytes,
        "dist_end_jax": dict(zip(names, end_jax.mean(0).tolist())),
        "dist_end_torch": dict(zip(names, end_torch.mean(0).tolist())),
        "dist_end_rel_diff": dict(zip(names, (np.abs(end_jax - end_torch) / np.abs(end_torch)).max(0).tolist())),
    }


def crosscheck(pairs, iterations: int, config: AttackConfig) -> dict:
    """Torch and JAX attack alike: same start, same first direction, same end distances."""
    victims = tuple(p.victim for p in pairs)
    params = tuple(p.params for p in pairs)
    x = sample_images(1)
    ids = np.zeros(1, np.uint32)
    eta0 = random_start(x, ids, 0, config.eps)
    clean = jax_clean(victims, config)(params, jnp.asarray(x))
    d_jax, _ = jax_iteration(victims, config)(params, jnp.asarray(x), jnp.asarray(eta0), clean)
    tcfg = TorchAttackConfig(eps=config.eps, step=config.step, iterations=iterations, ensemble=config.ensemble)
    encoders = [p.torch_encoder for p in pairs]
    xt, et = nchw(x), nchw(eta0)
    with torch.no_grad():
        tclean = [e(xt) for e in encoders]
    d_t, _ = torch_direction(encoders, tclean, xt, et, tcfg)
    cfg = dataclasses.replace(config, iterations=iterations)
    end_jax = np.asarray(jax_run(victims, cfg, params, jnp.asarray(x), jnp.asarray(ids), 0).dist_end)[0]
    _, _, end_t = torch_attack(encoders, tcfg, xt, et)
    end_t = end_t.numpy()[0]
    return {
        "first_direction_cosine": cosine(d_jax, d_t),
        "iterations": iterations,
        "dist_end_jax": dict(zip([p.name for p in pairs], end_jax.tolist())),
        "dist_end_torch": dict(zip([p.name for p in pairs], end_t.tolist())),
        "dist_end_rel_diff": dict(zip([p.name for p in pairs], (np.abs(end_jax - end_t) / np.abs(end_t)).tolist())),
    }


def bf16_effect(pairs, iterations: int, config: AttackConfig) -> dict:
    """Images/s and final latent distances, bf16 compute against float32, same start."""
    victims = tuple(p.victim for p in pairs)
    params = tuple(p.params for p in pairs)
    x = jnp.asarray(sample_images(2))
    ids = jnp.arange(2, dtype=jnp.uint32)
    out = {}
    for dt in ("float32", "bfloat16"):
        cfg = dataclasses.replace(config, iterations=iterations, compute_dtype=dt)
        ready = jax_prepare(victims, cfg, params)  # cast and prepared once, as a run does
        jax.block_until_ready(jax_run(victims, cfg, ready, x, ids, 0))  # compiles, warms up
        kept: dict = {}
        t = clock(keeping(kept, {"r": lambda: jax_run(victims, cfg, ready, x, ids, 0)})["r"])
        out[dt] = {"images_per_s": 2 / t, "dist_end": np.asarray(kept["r"].dist_end)}
    ratio = out["bfloat16"]["dist_end"] / out["float32"]["dist_end"]
    return {
        "iterations": iterations,
        "victims": [p.name for p in pairs],
        "float32_images_per_s": out["float32"]["images_per_s"],
        "bfloat16_images_per_s": out["bfloat16"]["images_per_s"],
        # dist_end is measured in each mode's own precision: the ratio is what bf16 costs the attack.
        "dist_end_ratio_bf16_over_f32": dict(zip([p.name for p in pairs], ratio.mean(0).tolist())),
    }


def device_sweep(names, counts, batch: int, iterations: int) -> dict:
    """Images/s of the sharded attack with N forced host devices (one child process each)."""
    out = {}
    for n in counts:
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
        env = {**os.environ, "XLA_FLAGS": flags}
        cmd = [sys.executable, "-m", "benchmarks.run", "--device-probe", str(n), "--victims", ",".join(names),
               "--probe-batch", str(batch), "--probe-iterations", str(iterations)]
        proc = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True)
        line = [text for text in proc.stdout.splitlines() if text.startswith("PROBE ")]
        out[str(n)] = json.loads(line[-1][6:]) if line else {"error": proc.stderr[-500:]}
    return out


def device_probe(n: int, names, batch: int, iterations: int) -> None:
    """The child of ``device_sweep``: prints one PROBE line of JSON."""
    ps = [pairs_mod.build(name) for name in names]
    victims = tuple(p.victim for p in ps)
    cfg = AttackConfig(iterations=iterations)
    params = jax_prepare(victims, cfg, tuple(p.params for p in ps))
    mesh = parallel.data_mesh(n)
    x = jnp.asarray(sample_images(batch))
    ids = jnp.arange(batch, dtype=jnp.uint32)
    jax.block_until_ready(parallel.sharded_attack(victims, cfg, mesh, params, x, ids, 0))
    t = min(clock(lambda: parallel.sharded_attack(victims, cfg, mesh, params, x, ids, 0)) for _ in range(2))
    print("PROBE " + json.dumps({"devices": n, "batch": batch, "images_per_s": batch / t}))


# ----------------------------------------------------------------------------- reporting

def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "python": platform.python_version(),
    }


def plot(batch_sweep: dict, path: Path, of: str = "ensemble") -> None:
    """Throughput against batch size (PNG, drawn with PIL: no plotting dependency)."""
    from PIL import Image, ImageDraw

    series = {k: v for k, v in batch_sweep.items() if v}
    if not series:
        return
    w, h, m = 640, 400, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = sorted({int(b) for s in series.values() for b in s})
    ymax = max(v for s in series.values() for v in s.values() if v) * 1.15
    d.line([(m, h - m), (w - m, h - m)], fill="black")
    d.line([(m, m), (m, h - m)], fill="black")
    d.text((w // 2 - 60, h - m + 30), "batch size", fill="black")
    d.text((5, m - 30), f"images / s ({of})", fill="black")

    def pos(b, v):
        i = xs.index(b)
        px = m + (w - 2 * m) * (i / max(1, len(xs) - 1))
        return px, h - m - (h - 2 * m) * v / ymax

    for b in xs:
        d.text((pos(b, 0)[0] - 4, h - m + 8), str(b), fill="black")
    for j in range(5):
        v = ymax * j / 4
        d.text((8, pos(xs[0], v)[1] - 6), f"{v:.3g}", fill="black")
    colours = {"jax": (31, 119, 180), "torch_eager": (214, 39, 40), "torch_compile": (44, 160, 44)}
    for k, (name, s) in enumerate(series.items()):
        pts = [pos(int(b), v) for b, v in sorted(s.items(), key=lambda kv: int(kv[0])) if v]
        colour = colours.get(name, (0, 0, 0))
        if len(pts) > 1:
            d.line(pts, fill=colour, width=3)
        for p in pts:
            d.ellipse([p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4], fill=colour)
        d.text((w - m - 120, m + 16 * k), name, fill=colour)
    img.save(path)


def write_results_md(res: dict, path: Path) -> None:
    mach, peak = res["machine"], res["machine"]["matmul_peak_flops"]
    ens = res["ensemble"]
    lines = [RESULTS_BEGIN, "", f"Run: `{res['command']}` on {res['date']}", "",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, JAX {mach['jax_version']} ({mach['jax_backend']}), "
             f"torch {mach['torch_version']} ({mach['torch_threads']} threads); measured float32 matmul peak "
             f"{peak / 1e9:.0f} GFLOP/s.", "",
             "Per victim, one attack iteration (forward + input gradient), seconds per image "
             f"(batch {res['per_victim_batch']}):", "",
             "| victim | GFLOP/img | leat-jax | torch eager | torch.compile | jax speed vs eager (vs compile) "
             "| jax GFLOP/s (% peak) | jax compile s | direction cosine |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["per_victim"].items():
        tc = r["torch_compile_s_per_image"]
        vs_compile = "" if tc is None else f" ({tc / r['jax_s_per_image']:.2f}x)"
        lines.append(
            f"| {name} | {r['flops_per_image'] / 1e9:.1f} | {r['jax_s_per_image']:.3f} | "
            f"{r['torch_eager_s_per_image']:.3f} | {'n/a' if tc is None else f'{tc:.3f}'} | "
            f"{r['torch_eager_s_per_image'] / r['jax_s_per_image']:.2f}x{vs_compile} | "
            f"{r['jax_flops_per_s'] / 1e9:.0f} ({100 * r['jax_flops_per_s'] / peak:.0f}%) | {r['jax_compile_s']:.1f} | "
            f"{r['direction_cosine']:.6f} |")

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines += ["", f"Whole ensemble ({', '.join(res['victims'])}), T = {ens['iterations']}, batch {ens['batch']}: "
              f"leat-jax {fmt(ens['jax_images_per_s'])} images/s, torch eager {fmt(ens['torch_eager_images_per_s'])}, "
              f"torch.compile {fmt(ens['torch_compile_images_per_s'])}; "
              f"{ens['flops_per_image_iteration'] / 1e9:.0f} GFLOP per image-iteration, "
              f"{ens['flops_per_image_attack'] / 1e9:.0f} GFLOP per image for the whole attack (the T iterations, "
              f"the clean and final forwards), leat-jax at "
              f"{ens['jax_flops_per_s'] / 1e9:.0f} GFLOP/s ({100 * ens['jax_flops_per_s'] / peak:.0f}% of peak); "
              f"leat-jax compile {ens['jax_compile_s']:.0f} s and weight preparation {ens['jax_prepare_s']:.1f} s, "
              "once per run (apart).", ""]
    if res.get("batch_sweep"):
        lines += [f"Batch sweep ({res.get('batch_sweep_of', 'ensemble')}; images/s): " + "; ".join(
            f"{fw}: " + ", ".join(f"b{b} {v:.4f}" for b, v in s.items() if v)
            for fw, s in res["batch_sweep"].items()), ""]
    if res.get("device_sweep"):
        lines += ["Forced host devices (ensemble images/s): " + ", ".join(
            f"{n}: {v.get('images_per_s', float('nan')):.4f}" for n, v in res["device_sweep"].items()), ""]
    cc = res.get("crosscheck")
    if cc:
        lines += [f"Cross-check: first-step direction cosine {cc['first_direction_cosine']:.6f}; final distances after "
                  f"T = {cc['iterations']}, |jax - torch| / torch: " + ", ".join(
                      f"{k} {v:.1%}" for k, v in cc["dist_end_rel_diff"].items()), ""]
    bf = res.get("bf16")
    if bf:
        lines += [f"bf16 compute ({', '.join(bf['victims'])}; T = {bf['iterations']}, batch 2): "
                  f"{bf['bfloat16_images_per_s']:.4f} vs {bf['float32_images_per_s']:.4f} images/s (float32); "
                  "final latent distance bf16/f32: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in bf["dist_end_ratio_bf16_over_f32"].items()), ""]
    lines += [f"Peak RSS of the run: {res['peak_rss_bytes'] / 2**30:.1f} GiB.", "", RESULTS_END]
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Benchmark results\n\n" + RESULTS_BEGIN + "\n" + RESULTS_END + "\n"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_BEGIN, 1)
        tail = rest.split(RESULTS_END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a run under ~5 minutes on 2 CPU cores")
    ap.add_argument("--json", default=str(HERE / "results.json"), help="where to write the JSON results")
    ap.add_argument("--results-md", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--plot", default=str(HERE / "throughput_vs_batch.png"))
    ap.add_argument("--victims", default=",".join(ALL), help=f"comma-separated (default all: {', '.join(ALL)})")
    ap.add_argument("--iterations", type=int, help="T for the ensemble run (default 50; --quick 1)")
    ap.add_argument("--batch", type=int, help="ensemble batch size (default 2; --quick 1)")
    ap.add_argument("--batch-sizes", help="batch sweep, e.g. 1,2,4")
    ap.add_argument("--devices", help="device sweep with forced host devices, e.g. 1,2")
    ap.add_argument("--repeats", type=int, help="timed runs per measurement (median)")
    ap.add_argument("--no-torch-compile", action="store_true")
    ap.add_argument("--device-probe", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--probe-batch", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--probe-iterations", type=int, default=1, help=argparse.SUPPRESS)
    return ap


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run measures.

    --quick (under 5 minutes on 2 cores): one warm-up and one timed run per
    measurement (a compiled program's first call is up to 2.5x slower), the
    ensemble at T = 1, batch 1; the batch sweep on SimSwap's generator encoder
    alone; the cross-check from the timed runs; bf16 on that encoder only; no
    device sweep, no torch.compile. Compilation dominates the run.
    """

    names: tuple[str, ...]
    quick: bool
    iterations: int
    batch: int
    repeats: int
    sweep: tuple[int, ...]
    devices: tuple[int, ...]
    with_compile: bool
    config: AttackConfig = AttackConfig()

    @classmethod
    def of(cls, args) -> "Plan":
        quick = args.quick
        return cls(
            names=tuple(n for n in args.victims.split(",") if n), quick=quick,
            iterations=args.iterations or (1 if quick else 50), batch=args.batch or (1 if quick else 2),
            repeats=args.repeats or (1 if quick else 3),
            sweep=tuple(int(b) for b in (args.batch_sizes or "1,2,4").split(",")),
            devices=tuple(int(n) for n in (args.devices or ("" if quick else "1,2")).split(",") if n),
            with_compile=not args.no_torch_compile and not quick)


class Log:
    """The results so far, saved as JSON after every stage (a run stopped late keeps what it measured)."""

    def __init__(self, path: Path, res: dict):
        self.path, self.res, self.started = path, res, time.perf_counter()

    def say(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')} +{time.perf_counter() - self.started:.0f}s] {msg}", flush=True)

    def save(self) -> None:
        self.path.write_text(json.dumps(self.res, indent=2, default=float) + "\n")


def setup_torch() -> None:
    torch.set_grad_enabled(True)
    # Every victim's encoder is a closure of one code object: without room
    # for more recompilations, dynamo falls back to eager after eight.
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 1024


def measure_machine(log: Log) -> None:
    log.res["machine"] = {**machine_info(), **matmul_peak_flops()}
    log.say(f"matmul peak {log.res['machine']['matmul_peak_flops'] / 1e9:.0f} GFLOP/s")


def measure_device_sweep(plan: Plan, log: Log) -> None:
    # First, while this process holds no network: each child builds every
    # network itself, and two full sets do not fit in 24 GiB (a parent
    # holding its own was killed for memory during this sweep, twice).
    log.say(f"device sweep {list(plan.devices)} (one child process each)")
    log.res["device_sweep"] = device_sweep(plan.names, plan.devices, max(plan.devices), 1)
    log.save()


def build_pairs(names, log: Log) -> list:
    out = []
    for name in names:
        log.say(f"building {name} (recipe weights -> official file -> converter; torch reference)")
        out.append(pairs_mod.build(name))
    return out


def per_victim_line(name: str, r: dict) -> str:
    """One victim's per-victim measurement (``per_victim``'s result), in words."""
    tc = r["torch_compile_s_per_image"]
    return (f"{name}: jax {r['jax_s_per_image']:.3f} s/img, torch eager {r['torch_eager_s_per_image']:.3f} s/img, "
            + (f"torch.compile {tc:.3f} s/img, " if tc else "")
            + f"{(r['flops_per_image'] or 0) / 1e9:.1f} GFLOP, direction cosine {r['direction_cosine']:.6f}")


def measure_per_victim(ps, plan: Plan, log: Log) -> None:
    log.res["per_victim"] = {}
    for p in ps:
        r = per_victim(p, 1, plan.repeats, plan.config, plan.with_compile)
        log.res["per_victim"][p.name] = r
        log.say(per_victim_line(p.name, r))
    log.save()


def measure_ensemble(ps, plan: Plan, log: Log) -> None:
    per = log.res["per_victim"].values()
    # the quick run takes XLA's counts from the per-victim programs instead of compiling more
    flops_sum = sum(r["flops_per_image"] for r in per) if plan.quick else None
    fwd_sum = sum(r["forward_flops_per_image"] for r in per) if plan.quick else None
    T = plan.iterations
    ens = ensemble(ps, plan.batch, T, max(1, plan.repeats - 1) if T > 10 else plan.repeats, plan.config,
                   plan.with_compile, flops_per_image_iteration=flops_sum, forward_flops_per_image=fwd_sum)
    log.res["ensemble"] = ens
    tc = ens["torch_compile_images_per_s"]
    log.say(f"ensemble T={T} b={plan.batch}: jax {ens['jax_images_per_s']:.4f} img/s, "
            f"torch eager {ens['torch_eager_images_per_s']:.4f} img/s"
            + (f", torch.compile {tc:.4f} img/s" if tc else ""))
    log.save()


def batch_point(ps, b: int, plan: Plan, res: dict, small) -> dict:
    """Images/s per framework at batch ``b``: ``small``'s one iteration, else the ensemble's T = 1."""
    if small:
        r = per_victim(small, b, plan.repeats, plan.config, False)
        return {"jax": 1 / r["jax_s_per_image"], "torch_eager": 1 / r["torch_eager_s_per_image"]}
    same = plan.iterations == 1 and b == plan.batch
    r = res["ensemble"] if same else ensemble(ps, b, 1, plan.repeats, plan.config, False)
    return {"jax": r["jax_images_per_s"], "torch_eager": r["torch_eager_images_per_s"]}


def measure_batch_sweep(ps, plan: Plan, log: Log) -> None:
    res = log.res
    res["batch_sweep"] = {"jax": {}, "torch_eager": {}}
    small = next((p for p in ps if p.name == "simswap_G"), None) if plan.quick else None
    res["batch_sweep_of"] = "simswap_G, one iteration" if small else "the ensemble, T = 1"
    for b in plan.sweep:
        ips = batch_point(ps, b, plan, res, small)
        for fw, v in ips.items():
            res["batch_sweep"][fw][str(b)] = v
        log.say(f"batch {b} ({res['batch_sweep_of']}): jax {ips['jax']:.4f}, "
                f"torch eager {ips['torch_eager']:.4f} img/s")
    log.save()


def quick_crosscheck(res: dict) -> dict:
    """The quick run's cross-check, from the runs already made: per-victim direction cosines (the
    ensemble's direction is their normalised sum) and the ensemble's final distances."""
    ens, per = res["ensemble"], res["per_victim"]
    return {"first_direction_cosine": min(r["direction_cosine"] for r in per.values()),
            "direction_cosine_per_victim": {k: r["direction_cosine"] for k, r in per.items()},
            "iterations": ens["iterations"], "dist_end_jax": ens["dist_end_jax"],
            "dist_end_torch": ens["dist_end_torch"], "dist_end_rel_diff": ens["dist_end_rel_diff"]}


def measure_crosscheck(ps, plan: Plan, log: Log) -> None:
    log.res["crosscheck"] = quick_crosscheck(log.res) if plan.quick else crosscheck(ps, 10, plan.config)
    log.say(f"cross-check: cosine {log.res['crosscheck']['first_direction_cosine']:.6f}")


def measure_bf16(ps, plan: Plan, log: Log) -> None:
    chosen = [p for p in ps if p.name == "simswap_G"] if plan.quick else ps
    if chosen:
        log.res["bf16"] = bf16_effect(chosen, 2 if plan.quick else min(plan.iterations, 10), plan.config)
        log.say(f"bf16: {log.res['bf16']['dist_end_ratio_bf16_over_f32']}")


def write_outputs(args, log: Log) -> None:
    log.res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    log.save()
    write_results_md(log.res, Path(args.results_md))
    plot(log.res["batch_sweep"], Path(args.plot), log.res["batch_sweep_of"])
    log.say(f"wrote {args.json}, {args.results_md}, {args.plot}")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    xla_cpu.cpu_flags()  # what the CLI runs with (before any computation)
    plan = Plan.of(args)
    if args.device_probe:
        device_probe(args.device_probe, plan.names, args.probe_batch, args.probe_iterations)
        return 0
    setup_torch()
    log = Log(Path(args.json), {
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"), "victims": list(plan.names), "per_victim_batch": 1,
        "quick": plan.quick})
    measure_machine(log)
    if plan.devices:
        measure_device_sweep(plan, log)
    ps = build_pairs(plan.names, log)
    measure_per_victim(ps, plan, log)
    measure_ensemble(ps, plan, log)
    measure_batch_sweep(ps, plan, log)
    measure_crosscheck(ps, plan, log)
    measure_bf16(ps, plan, log)
    write_outputs(args, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
