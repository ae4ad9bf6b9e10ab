"""Golden support for the DiffAE attribute classifier (``ffhq256_autoenc_cls/last.ckpt``).

Stand-in weights as the layout's ``stand_in_weights`` rule says: the recipe
for ``classifier.*`` / ``ema_classifier.*`` (the state_dict minus the
``conds_*`` entries), and ``conds_mean`` / ``conds_std`` from the case file.
They are written as ``ClsModel.state_dict()`` is saved (six entries, in
order) inside a Lightning checkpoint, converted with
``converters.diffae.classifier_to_params`` and compared in float32: the
logits of both heads and the official edit of z_sem.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

NAME = "diffae_cls"
CHECKPOINT_NAME = "last.ckpt"
CONDS = ("conds_mean", "conds_std")


def official_state_dict(layout, seed: int, case) -> OrderedDict:
    from tests.golden_harness import recipe

    heads = recipe().make_state_dict([e for e in layout["state_dict"] if e[0] not in CONDS], seed)
    sd = OrderedDict()
    for key, shape, _ in layout["state_dict"]:  # the file's order: buffers first
        sd[key] = np.asarray(case[key], np.float32) if key in CONDS else heads[key]
        assert sd[key].shape == tuple(shape), key
    return sd


def write_checkpoint(path, layout, seed: int, case) -> None:
    import torch

    from tests.golden_cases.diffae import foreign_classes, lightning_checkpoint

    sd = official_state_dict(layout, seed, case)
    with foreign_classes() as cls:
        ckpt = lightning_checkpoint({}, seed, cls)  # the file's other entries (optimizer, callbacks, ...)
        ckpt["state_dict"] = OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in sd.items())
        ckpt["hyper_parameters"]["name"] = "ffhq256_autoenc_cls"
        torch.save(ckpt, path)


def _rel_max(ours, golden) -> float:
    golden = np.asarray(golden, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - golden)) / np.max(np.abs(golden)))


def check(case_path, workdir) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from leat_jax.deepfakes import diffae as pipeline
    from tests.golden_harness import case_seed, convert_with_cli

    case_path = Path(case_path)
    case = dict(np.load(case_path))
    layout = json.loads((case_path.parent / "layout.json").read_text())
    src = Path(workdir) / CHECKPOINT_NAME
    write_checkpoint(src, layout, case_seed(case_path), case)
    params = jax.tree.map(jnp.asarray, convert_with_cli(NAME, src, workdir))

    z = jnp.asarray(case["z"])
    strengths = pipeline.attribute(int(case["attr_index"]), float(case["alpha"]))
    f = pipeline.classifier_functional()

    @jax.jit
    def run(p, z, s):
        with jax.default_matmul_precision("highest"):
            model = nnx.merge(f.graphdef, p)
            return model(z), model.ema_logits(z), pipeline.edit_latent(p, z, s)

    logits, ema_logits, z_edit = run(params, z, strengths)
    return [
        {"what": "logits (classifier)", "dtype": "float32", "out_err": _rel_max(logits, case["out_logits"]),
         "grad_err": None},
        {"what": "logits (ema_classifier)", "dtype": "float32",
         "out_err": _rel_max(ema_logits, case["out_logits_ema"]), "grad_err": None},
        {"what": f"edited z_sem (attribute {int(case['attr_index'])}, alpha {float(case['alpha']):g})",
         "dtype": "float32", "out_err": _rel_max(z_edit, case["out_z_edit"]), "grad_err": None},
    ]
