"""A victim and a deepfake pipeline declared OUTSIDE the package, as CONTRIBUTING.md says.

``LEAT_EXTRA_VICTIMS=tests.outside_toys:victims`` offers ``ext_enc`` to
``leat-jax immunize``; ``LEAT_EXTRA_DEEPFAKES=tests.outside_toys:pipelines``
offers ``ext_pipe`` to ``leat-jax evaluate``; ``torch_pair`` is the
benchmark's view of ``ext_enc`` (the same network in torch, same weights).

``ext_enc``: one 3x3 stride-2 convolution and a tanh on a 16x16 input, the
latent (8, 8, 4). ``ext_pipe``: ``ext_enc``, the attribute (4,) added to the
latent, a 1x1 convolution back to RGB and a tanh, at 8x8. Weights from numpy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from leat_jax.deepfakes import Attribute, Deepfake, vmap_over_attributes
from leat_jax.faces import align
from leat_jax.victims import Victim, resize

SIZE = 16
CHANNELS = 4
TEMPLATE = {"kernel": jax.ShapeDtypeStruct((3, 3, 3, CHANNELS), jnp.float32),
            "bias": jax.ShapeDtypeStruct((CHANNELS,), jnp.float32)}


def init(seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, 15])
    return {"kernel": (rng.standard_normal((3, 3, 3, CHANNELS)) / np.sqrt(27)).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(CHANNELS)).astype(np.float32)}


def preprocess(images):
    return resize(images, (SIZE, SIZE))


def apply(params, x):
    """(params, (N, 16, 16, 3)) -> (N, 8, 8, 4): conv 3x3 stride 2 (torch's padding 1), tanh."""
    y = jax.lax.conv_general_dilated(x, params["kernel"], (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(y + params["bias"])


VICTIM = Victim(name="ext_enc", input_size=(SIZE, SIZE), preprocess=preprocess, apply=apply, init_params=init,
                template=TEMPLATE, crop_rule=align.FFHQ)


def victims():
    return {"ext_enc": VICTIM}


# ---------------------------------------------------------------- the pipeline

def _fake(params, images, attribute):
    latent = VICTIM.encode(params["encoder"], images) + attribute
    return jnp.tanh(latent @ params["decoder"])


def load(folder, seed):
    rng = np.random.default_rng([seed, 16])
    return {"encoder": init(seed), "decoder": rng.standard_normal((CHANNELS, 3)).astype(np.float32)}


def attributes(section, folder, params, images, seed):
    rng = np.random.default_rng([seed, 17])
    k, u = section.get("known", 1), section.get("unknown", 1)
    values = (0.5 * rng.standard_normal((k + u, CHANNELS))).astype(np.float32)
    made = [Attribute(f"shift {i}", values[i]) for i in range(k + u)]
    return made[:k], made[k:]


PIPELINE = Deepfake(name="ext_pipe", apply=jax.jit(_fake), over_attributes=vmap_over_attributes(_fake),
                    output_size=(SIZE // 2, SIZE // 2), attribute="a shift of the latent (4,)",
                    load=load, attributes=attributes)


def pipelines():
    return {"ext_pipe": PIPELINE}


# ---------------------------------------------------------------- the benchmark's torch side

def torch_pair(seed: int = 0):
    """``benchmarks.pairs.Pair`` of ``ext_enc``: the same convolution in torch, the same weights."""
    import torch  # torch only here: the victim and the pipeline need none

    from benchmarks.pairs import Pair, resize_only

    params = init(seed)
    conv = torch.nn.Conv2d(3, CHANNELS, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(params["kernel"].transpose(3, 2, 0, 1)))  # HWIO -> OIHW
        conv.bias.copy_(torch.from_numpy(params["bias"]))
    module = torch.nn.Sequential(conv, torch.nn.Tanh())
    return Pair.of("ext_enc", VICTIM, params, module, module, resize_only((SIZE, SIZE)))


__all__ = ["PIPELINE", "VICTIM", "pipelines", "torch_pair", "victims"]
