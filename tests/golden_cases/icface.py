"""Golden support for ICface's neutralizer (``latest_net_GN.pth``)."""
from __future__ import annotations

import numpy as np
import torch

from tests.golden_harness import nhwc_to_nchw, recipe

NAME = "icface"
OUTPUT = "neutral"
CHECKPOINT_NAME = "latest_net_GN.pth"


def official_file_object(layout_state_dict, seed: int, prefix: str = "module."):
    """What ICface's ``save_network`` pickles: the DataParallel net's state_dict
    and an RMSprop state (here as a fresh optimizer's, no per-parameter state)."""
    sd = recipe().make_state_dict(layout_state_dict, seed)
    state_dict = {prefix + k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    n_params = sum(1 for k in sd if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    optimizer = {
        "state": {},
        "param_groups": [{"lr": 2e-4, "momentum": 0, "alpha": 0.99, "eps": 1e-8, "centered": False,
                          "weight_decay": 0, "params": list(range(n_params))}],
    }
    return {"state_dict": state_dict, "optimizer": optimizer}


def write_checkpoint(path, layout, seed, case):
    # The released files date from 2018-19: legacy (non-zip) format, DataParallel keys.
    torch.save(official_file_object(layout["state_dict"], seed), path, _use_new_zipfile_serialization=False)


def apply(victim, params, x, case):
    # case_0's attr is the exact neutral vector, the victim's default (asserted in
    # tests/test_icface.py); pass the case's own so any other vector is honoured too.
    return victim.apply(params, x, case["attr"]) if "attr" in case else victim.apply(params, x)


def to_golden(latent):
    return nhwc_to_nchw(latent)


def torch_forward(state_dict, x_nchw, case):
    from benchmarks.reference.icface import icface_generator

    net = icface_generator()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
    net.eval()
    return net(x_nchw.float(), torch.from_numpy(case["attr"]).float())
