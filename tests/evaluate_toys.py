"""A tiny deepfake pipeline for the evaluation tests (``LEAT_EXTRA_DEEPFAKES``).

``toy_pipe`` = a toy decoder on the latent of the toy encoder ``toy_enc``
(also offered as a victim through ``LEAT_EXTRA_VICTIMS=tests.evaluate_toys:victims``),
so LEAT on ``toy_enc`` attacks the pipeline's first stage, as LEAT does on
the real pipelines. The attribute is a (16,) vector added to the latent.
``toy_nan`` is the same pipeline whose *unknown* attributes are NaN: any
use of them by the baseline attack would poison its result.
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


def attributes(section, folder, params, images, seed, nan_unknown=False):
    k, u = section.get("known", 2), section.get("unknown", 2)
    rng = np.random.default_rng([seed, 7])
    vals = (0.3 * rng.standard_normal((k + u, 16))).astype(np.float32)
    if nan_unknown:
        vals[k:] = np.nan
    mk = [Attribute(f"v{i}", vals[i]) for i in range(k + u)]
    return mk[:k], mk[k:]


def pipelines():
    return {"toy_pipe": EvalPipeline(DEEPFAKE, load, attributes),
            "toy_nan": EvalPipeline(DEEPFAKE, load, functools.partial(attributes, nan_unknown=True))}
