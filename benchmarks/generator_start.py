"""An image-conditioned start (a small generator, image -> perturbation) against the universal start (issue 20).

    python -m benchmarks.generator_start [--victims simswap_id,simswap_G] [--steps 150] [--batch 4]
                                         [--rates 0.001,0.0003] [--width 32] [--blocks 2] [--learn 12] [--held 4]
                                         [--out out/generator_start] [--json PATH]

The faces, victims (stand-in weights), attack settings and held-out images
are ``benchmarks.warm_start``'s. The universal start is learned as there
(``learn-start``'s pipeline, sign steps, resumable); the generator
(``models.start_generator``) is learned by the same step
(``attack.universal``, ``Form`` ``generator``) with Adam at each of
``--rates`` (cosine schedule), minibatches keyed by (seed, step), its
weights kept in ``OUT/generator-rRATE-DIGEST.npz`` (``cache_name``: a rerun
of the same settings measures again without learning). Then, per held-out
image, one T = 50 run of constant sign steps from each start records the
distance before every step: from the random start, the universal start and
each generator, the learned ones with the default keyed jitter (0.25 eps)
around them. Last, the cost of one generator forward beside one attack
iteration, one image, both jitted, median of 5.
Figures go to ``benchmarks/RESULTS.md`` by hand.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import warm_start
from leat_jax import xla_cpu
from leat_jax.attack import AttackConfig, prepared, updates
from leat_jax.attack.pgd import clean_latents, ensemble_direction, image_key, latent_distances
from leat_jax.attack.start import DEFAULT_JITTER
from leat_jax.attack.step import project, resized
from leat_jax.attack.universal import LearnConfig, LearnState, generator, make_learning_step, rule_of
from leat_jax.models.base import Functional
from leat_jax.models.start_generator import GeneratorArch, StartGenerator
from leat_jax.pipeline import inputs, learn_start, victimset

T = 50


def network(arch: GeneratorArch) -> Functional:
    """The generator of ``arch`` as ``apply(weights, images)``."""
    return Functional(lambda rngs: StartGenerator(arch, rngs))


def cache_name(arch: GeneratorArch, template, learn: LearnConfig, names, faces: int) -> str:
    """The file name of a generator's learned weights, with a digest of what they depend on.

    The architecture's fields and its parameter tree's names and shapes, the
    learning settings, the victims and the number of learning faces: a change
    to any of them learns anew instead of reloading stale weights.
    """
    shapes = [(jax.tree_util.keystr(path), list(leaf.shape), str(leaf.dtype))
              for path, leaf in jax.tree_util.tree_leaves_with_path(template)]
    key = json.dumps([dataclasses.asdict(arch), shapes, dataclasses.asdict(learn), list(names), faces])
    return f"generator-r{learn.rate:g}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"


def learn_generator(loaded, params, config, learn, net, faces, ids, path: Path):
    """The generator's weights learned on ``faces`` (or read from ``path``); (weights, (steps, K) history)."""
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files if k != "history"}
            return unflatten(flat), z["history"]
    form = generator(net.apply, config.eps, learn.size)
    weights = net.init(learn.seed)
    state = LearnState(weights, rule_of(learn).init(weights))
    step = make_learning_step(loaded.victims, config, learn, form=form)
    history = np.zeros((learn.steps, len(loaded.victims)), np.float32)
    t0 = time.perf_counter()
    for i in range(learn.steps):
        idx, w = learn_start.minibatch(len(faces), learn.batch, learn.seed, i)
        state, losses = step(params, state, jnp.asarray(faces[idx]), jnp.asarray(ids[idx]), jnp.asarray(w), i)
        history[i] = np.asarray(losses)
        if i % 10 == 0 or i + 1 == learn.steps:
            print(f"  step {i + 1}/{learn.steps} {history[i]} {time.perf_counter() - t0:.0f} s", flush=True)
    flat = flatten(jax.device_get(state.u))
    np.savez(path, history=history, **flat)
    return state.u, history


def flatten(tree, prefix="") -> dict:
    """A nested dict of arrays as {"a/b/c": array}."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        out.update(flatten(v, name + "/") if isinstance(v, dict) else {name: np.asarray(v)})
    return out


def unflatten(flat: dict) -> dict:
    """``flatten``'s inverse (integer keys back to int, as NNX lists use)."""
    tree: dict = {}
    for name, a in flat.items():
        *heads, last = [int(p) if p.isdigit() else p for p in name.split("/")]
        node = tree
        for h in heads:
            node = node.setdefault(h, {})
        node[last] = jnp.asarray(a)
    return tree


def curve(victims, config, params, x, eta0):
    """(T + 1, K) distance before each of T constant sign steps from ``eta0``, and after the last."""
    clean = clean_latents(victims, config, params, x)
    rule = updates.transformation(config)

    def step(carry, _):
        eta, state = carry
        g, losses = ensemble_direction(victims, config, params, x, eta, clean)
        inc, state = rule.update(g, state, eta)
        return (project(x, eta + inc, config.eps), state), losses

    (eta, _), hist = jax.lax.scan(step, (eta0, rule.init(eta0)), jnp.arange(config.iterations))
    return jnp.concatenate([hist, latent_distances(victims, config, params, x, eta, clean)[None]])


def starts(config, universal_u, nets: dict):
    """Per start name, ``eta0(x, key)``: random, universal and each generator (jitter as ``LearnedStart``'s)."""
    r = config.eps * DEFAULT_JITTER

    def jittered(base, x, key):
        return project(x, base + jax.random.uniform(key, x.shape, jnp.float32, -r, r), config.eps)

    out = {"random": lambda x, key: project(x, jax.random.uniform(key, x.shape, jnp.float32, -config.eps,
                                                                  config.eps), config.eps),
           "universal": lambda x, key: jittered(resized(universal_u, x.shape), x, key)}
    for name, (apply, weights) in nets.items():
        out[name] = (lambda apply, weights: lambda x, key: jittered(config.eps * apply(weights, x[None])[0], x, key)
                     )(apply, weights)
    return out


def histories(victims, config, params, x: dict, start_fns: dict) -> dict:
    """Per start, (images, T + 1, K) distances."""
    out = {}
    for name, eta0 in start_fns.items():
        fn = jax.jit(lambda p, a, key, eta0=eta0: curve(victims, config, p, a, eta0(a, key)))
        rows = [np.asarray(fn(params, jnp.asarray(a), image_key(jnp.uint32(0), jnp.uint32(inputs.image_id(rel)))))
                for rel, a in x.items()]
        out[name] = np.stack(rows)
        print(f"{name}: done", flush=True)
    return out


def timed(fn, *args, n: int = 5) -> float:
    """Median seconds of ``n`` calls after a warm-up one."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def costs(victims, config, params, x, apply, weights) -> dict:
    """Seconds of one generator forward and of one attack iteration, one image."""
    clean = clean_latents(victims, config, params, x)
    it = jax.jit(lambda p, a, e: ensemble_direction(victims, config, p, a, e, clean))
    gen = jax.jit(lambda w, a: apply(w, a[None]))
    return {"generator_forward_s": timed(gen, weights, x), "attack_iteration_s": timed(it, params, x, 0.01 * x)}


def shares(h: dict, names) -> dict:
    """Per start, per T of ``warm_start.CHECKPOINTS_T``, per victim: mean distance / random's at T = 50."""
    target = h["random"][:, -1].mean(0)
    return {s: {t: dict(zip(names, (a[:, t].mean(0) / target).round(3).tolist())) for t in warm_start.CHECKPOINTS_T}
            for s, a in h.items()}


def main(argv=None) -> int:
    xla_cpu.cpu_flags()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    warm_start.learning_arguments(ap, "out/generator_start")
    ap.add_argument("--rates", default="0.001,0.0003", help="Adam rates, one generator each")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2)
    args = ap.parse_args(argv)
    names = tuple(n for n in args.victims.split(",") if n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    universal_start = warm_start.learn(names, out, args.learn, LearnConfig(steps=args.steps, batch=args.batch))
    print(f"universal: {time.perf_counter() - t0:.0f} s", flush=True)
    loaded = victimset.load(tuple(victimset.VictimSpec(v) for v in names), True)
    config = AttackConfig()
    params = prepared(loaded.victims, config, loaded.params)
    rels, data = learn_start.load_images(out / "faces", 256, 2048)
    faces = learn_start.as_images(data)
    ids = np.asarray([inputs.image_id(r) for r in rels], np.uint32)
    arch = GeneratorArch(args.width, args.blocks)
    net = network(arch)
    n_weights = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(net.template))
    nets, learned = {}, {}
    for rate in (float(r) for r in args.rates.split(",")):
        learn = LearnConfig(steps=args.steps, batch=args.batch, rule="adam", rate=rate)
        t0 = time.perf_counter()
        path = out / cache_name(arch, net.template, learn, names, len(faces))
        weights, hist = learn_generator(loaded, params, config, learn, net, faces, ids, path)
        learned[f"generator@{rate:g}"] = {"seconds": time.perf_counter() - t0, "first_loss": hist[:10].mean(0).tolist(),
                                          "last_loss": hist[-10:].mean(0).tolist()}
        nets[f"generator@{rate:g}"] = (net.apply, weights)
    x = warm_start.held_out(args.learn, args.held)
    h = histories(loaded.victims, AttackConfig(iterations=T), params, x,
                  starts(config, jnp.asarray(universal_start.perturbation), nets))
    first = next(iter(nets.values()))
    res = {"victims": list(names), "arch": vars(arch) | {"weights": n_weights}, "learned": learned,
           "random_T50": h["random"][:, -1].mean(0).tolist(), "share_of_random_T50": shares(h, names),
           "cost": costs(loaded.victims, config, params, jnp.asarray(next(iter(x.values()))), *first),
           "per_image_history": {s: a.tolist() for s, a in h.items()}}
    print(json.dumps({k: v for k, v in res.items() if k != "per_image_history"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
