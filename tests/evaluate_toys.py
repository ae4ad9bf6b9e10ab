"""A tiny deepfake pipeline for the evaluation tests (``LEAT_EXTRA_DEEPFAKES``).

``toy_pipe`` = a toy decoder on the latent of the toy encoder ``toy_enc``
(also offered as a victim through ``LEAT_EXTRA_VICTIMS=tests.evaluate_toys:victims``),
so LEAT on ``toy_enc`` attacks the pipeline's first stage, as LEAT does on
the real pipelines. The attribute is a (16,) vector added to the latent.
``toy_nan`` is the same pipeline whose *unknown* attributes are NaN: any
use of them by the baseline attack would poison its result. ``diffae_small``
is the real DiffAE pipeline at 16x16 (``attributes.diffae_pipeline``) with
numpy weights. Run as a module, it is the child process of the baseline's
device test (``main``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from leat_jax.deepfakes import Deepfake, vmap_over_attributes
from leat_jax.pipeline.attributes import Attribute, EvalPipeline
from leat_jax.victims import resize
from tests.pipeline_toys import _toy

SIZE = 16
ENV = {"LEAT_EXTRA_VICTIMS": "tests.evaluate_toys:victims", "LEAT_EXTRA_DEEPFAKES": "tests.evaluate_toys:pipelines"}


def encoder():
    return _toy("toy_enc", 1.0, SIZE)


def victims():
    return {"toy_enc": encoder()}


def load(folder, seed):
    rng = np.random.default_rng([seed, 99])
    return {"encoder": encoder().init_params(seed),
            "decoder": (rng.standard_normal((16, 3)) / 4.0 * 3.0).astype(np.float32)}


def _apply(params, images, attribute):
    f = encoder().encode(params["encoder"], images)["features"]  # (N, 4, 4, 16)
    y = jnp.tanh((f + attribute) @ params["decoder"])
    return resize(y, (SIZE, SIZE))


DEEPFAKE = Deepfake("toy_pipe", jax.jit(_apply), vmap_over_attributes(_apply), (SIZE, SIZE), "toy vector (16,)")


def _bright(params, images, attribute):
    # toy_pipe's output shifted to [3, 5]: all of it saturates once clamped to [-1, 1], as a saved image would.
    return 4.0 + _apply(params, images, attribute)


BRIGHT = Deepfake("toy_bright", jax.jit(_bright), vmap_over_attributes(_bright), (SIZE, SIZE), "toy vector (16,)")


def attributes(section, folder, params, images, seed, nan_unknown=False):
    k, u = section.get("known", 2), section.get("unknown", 2)
    rng = np.random.default_rng([seed, 7])
    vals = (0.3 * rng.standard_normal((k + u, 16))).astype(np.float32)
    if nan_unknown:
        vals[k:] = np.nan
    mk = [Attribute(f"v{i}", vals[i]) for i in range(k + u)]
    return mk[:k], mk[k:]


def template_params(template, seed: int):
    """Random weights for a parameter template, from numpy (no initialiser to compile): the golden
    recipe's rules (``shared/golden/recipe.py``) applied leaf by leaf to the Flax layout."""
    import zlib

    from leat_jax.checkpoints import flatten, unflatten

    out = {}
    for key, leaf in flatten(template).items():
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        name, shape = key.rsplit("/", 1)[-1], tuple(leaf.shape)
        if name == "var":
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            value = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(np.prod(shape[:-1])))
        elif name in ("scale", "weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        out[key] = np.asarray(value, np.float32)
    return unflatten(out)


def diffae_small_config():
    """DiffAE at 16x16: one level with attention. XLA's CPU compile time grows with the block
    count, and the baseline compiles the gradient through both DDIM loops (two levels: twice
    the time; ``tests/test_deepfakes_diffae.py`` covers them)."""
    from leat_jax.deepfakes import diffae
    from leat_jax.models import diffae as model

    return diffae.DiffAEConfig(
        inversion_steps=3, render_steps=3,
        encoder=model.EncoderConfig(image_size=16, model_channels=32, out_channels=64, channel_mult=(1,),
                                    num_res_blocks=1, attention_resolutions=(16,)),
        unet=model.UNetConfig(image_size=16, model_channels=32, embed_channels=64, channel_mult=(1,),
                              num_res_blocks=1, attention_resolutions=(16,)))


def _diffae_small_load(folder, seed):
    from leat_jax.deepfakes import diffae

    cfg = diffae_small_config()
    return {"encoder": template_params(diffae.encoder_functional(cfg.encoder).template, seed),
            "unet": template_params(diffae.unet_functional(cfg.unet).template, seed + 1),
            "classifier": template_params(diffae.classifier_functional(cfg.unet.embed_channels).template, seed + 2)}


def pipelines():
    from leat_jax.pipeline.attributes import diffae_pipeline

    return {"toy_pipe": EvalPipeline(DEEPFAKE, load, attributes),
            "toy_nan": EvalPipeline(DEEPFAKE, load, functools.partial(attributes, nan_unknown=True)),
            "toy_bright": EvalPipeline(BRIGHT, load, attributes),
            # the real DiffAE edit (encoder, DDIM inversion and render, classifier edit) at 16x16
            "diffae_small": diffae_pipeline(diffae_small_config(), _diffae_small_load, "diffae_small")}


def main():
    """A child process for the baseline's device test: the image-space attack on ``toy_pipe``
    over N forced CPU devices, saved to OUT.npz.

    Usage: python -m tests.evaluate_toys OUT.npz --host-devices N
    """
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--host-devices", type=int, default=1)
    args = ap.parse_args()

    import chex

    chex.set_n_cpu_devices(args.host_devices)  # before JAX starts
    from leat_jax.attack import AttackConfig
    from leat_jax.attack.image_space import make_sharded_image_attack
    from leat_jax.parallel.mesh import data_mesh, replicate

    params = load(None, 0)
    known, _ = attributes({"known": 2, "unknown": 0}, None, params, [], 0)
    fns = [lambda p, x: DEEPFAKE.apply(p["net"], x, p["attribute"])] * len(known)
    mesh = data_mesh()
    attack = make_sharded_image_attack(fns, AttackConfig(iterations=4), mesh)
    pp = replicate(tuple({"net": params, "attribute": a.value} for a in known), mesh)
    rng = np.random.default_rng(5)
    x = rng.uniform(-0.9, 0.9, (3, SIZE, SIZE, 3)).astype(np.float32)  # 3 images: padded on 2 devices
    res = attack(pp, x, np.arange(10, 13, dtype=np.uint32), 7)
    np.savez(args.out, x=x, protected=np.asarray(res.protected), loss_start=np.asarray(res.loss_start),
             loss_end=np.asarray(res.loss_end), n_devices=mesh.devices.size)


if __name__ == "__main__":
    main()
