"""Golden support for e4e: recipe weights written as the released ``e4e_ffhq_encode.pt``."""
from __future__ import annotations

import json

import numpy as np

NAME = "e4e"
OUTPUT = "wplus"
CHECKPOINT_NAME = "e4e_ffhq_encode.pt"

# vars() of the training Namespace as the released file stores it (the loader
# reads these four; the others are there as in a real file).
OPTS = {
    "exp_dir": "experiments/e4e_ffhq_encode",
    "dataset_type": "ffhq_encode",
    "encoder_type": "Encoder4Editing",
    "stylegan_size": 1024,
    "start_from_latent_avg": True,
    "batch_size": 8,
    "learning_rate": 0.0001,
    "optim_name": "ranger",
    "progressive_start": 20000,
    "progressive_step_every": 2000,
    "save_training_data": False,
    "checkpoint_path": None,
}


def official_checkpoint(layout: dict, seed: int, decoder_layout: list | None = None) -> dict:
    """The released file's object (numpy arrays): state_dict with encoder.* (+ decoder.*), latent_avg, opts."""
    from tests.golden_harness import recipe

    r = recipe()
    sd = {"encoder." + k: v for k, v in r.make_state_dict(layout["state_dict"], seed).items()}
    if decoder_layout is not None:  # keys already carry 'decoder.'
        sd.update(r.make_state_dict(decoder_layout, seed))
    extra = r.make_state_dict(layout["extra"], seed)
    return {"state_dict": sd, "latent_avg": extra["latent_avg"], "opts": dict(OPTS)}


def save_torch(obj, path, zip_format: bool = True) -> None:
    """torch.save with numpy arrays turned into tensors (recursively through dicts)."""
    import torch

    def to_torch(o):
        if isinstance(o, np.ndarray):
            return torch.from_numpy(o)
        if isinstance(o, dict):
            return {k: to_torch(v) for k, v in o.items()}
        return o

    torch.save(to_torch(obj), path, _use_new_zipfile_serialization=zip_format)


def write_checkpoint(path, layout, seed, case) -> None:
    decoder = json.loads((_golden_dir() / "layout_decoder.json").read_text())["state_dict"]
    save_torch(official_checkpoint(layout, seed, decoder), path)


def write_light_checkpoint(path, layout, seed) -> None:
    """The released structure without the StyleGAN2 decoder (which the converter skips): 1.2 GB less to write."""
    save_torch(official_checkpoint(layout, seed), path)


def torch_forward(state_dict, x_nchw, case):
    """W+ of the PyTorch reference (benchmarks/reference/e4e.py) on the recipe weights."""
    from benchmarks.reference.e4e import build
    from tests.golden_harness import recipe

    layout = json.loads((_golden_dir() / "layout.json").read_text())
    latent_avg = recipe().make_state_dict(layout["extra"], _seed_of(state_dict, layout))["latent_avg"]
    return build(state_dict, latent_avg)(x_nchw.float())


def _golden_dir():
    from tests.golden_harness import GOLDEN_DIR

    return GOLDEN_DIR / NAME


def _seed_of(state_dict, layout) -> int:
    """The recipe seed of ``state_dict`` (the harness hands over the weights, not the seed)."""
    from tests.golden_harness import case_seed, recipe

    key, shape, dtype = layout["state_dict"][0]
    for case in sorted(_golden_dir().glob("case_*.npz")):
        seed = case_seed(case)
        if np.array_equal(recipe().tensor_for(key, shape, dtype, seed), np.asarray(state_dict[key])):
            return seed
    raise ValueError("state_dict does not come from the recipe of any e4e golden case")
