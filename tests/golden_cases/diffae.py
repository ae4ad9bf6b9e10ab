"""DiffAE semantic encoder: recipe weights written as ``ffhq256_autoenc/last.ckpt``.

The official file is a PyTorch Lightning 1.4 checkpoint. Besides the weights
it pickles objects whose classes the converter's environment does not have
(Lightning callbacks used as dict keys, DiffAE's config dataclasses and
enums). ``lightning_checkpoint`` rebuilds that structure around a given
encoder state_dict; the classes are registered under their original module
names only while saving, so at load time those modules do not exist.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import sys
import types
from collections import OrderedDict

import numpy as np

NAME = "diffae"
OUTPUT = "zsem"
CHECKPOINT_NAME = "last.ckpt"

ENCODER_PREFIX = "ema_model.encoder."
X_T_SHAPE = (32, 3, 256, 256)  # conf.sample_size images of fixed noise


@contextlib.contextmanager
def foreign_classes():
    """Classes as the training code defined them, importable only inside this block.

    Yields a namespace with ``ModelCheckpoint`` (pytorch_lightning),
    ``TrainMode`` (diffae ``choices``, an Enum) and ``PretrainConfig`` (diffae
    ``config``, a dataclass).
    """
    names = ["pytorch_lightning", "pytorch_lightning.callbacks",
             "pytorch_lightning.callbacks.model_checkpoint", "choices", "config"]
    clash = [n for n in names if n in sys.modules]
    if clash:
        raise RuntimeError(f"modules {clash} already imported; cannot fake them")
    mods = {n: types.ModuleType(n) for n in names}

    class ModelCheckpoint:
        pass

    class TrainMode(enum.Enum):
        diffusion = "diffusion"
        latent_diffusion = "latentdiffusion"

    @dataclasses.dataclass
    class PretrainConfig:
        name: str
        path: str

    for cls, mod in ((ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint"),
                     (TrainMode, "choices"), (PretrainConfig, "config")):
        cls.__module__ = mod
        cls.__qualname__ = cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    mods["pytorch_lightning"].callbacks = mods["pytorch_lightning.callbacks"]
    mods["pytorch_lightning.callbacks"].model_checkpoint = mods["pytorch_lightning.callbacks.model_checkpoint"]
    sys.modules.update(mods)
    try:
        yield types.SimpleNamespace(ModelCheckpoint=ModelCheckpoint, TrainMode=TrainMode, PretrainConfig=PretrainConfig)
    finally:
        for n in names:
            sys.modules.pop(n, None)


def lightning_checkpoint(ema_encoder: dict, seed: int, cls) -> dict:
    """A ``last.ckpt``-shaped dict around ``ema_encoder`` (bare encoder keys -> tensors).

    ``model.encoder.*`` gets different (negated) weights, so a converter that
    read the non-EMA copy would fail the golden check; a few decoder-UNet
    entries under ``model.``/``ema_model.`` share the encoder's relative names
    (``input_blocks.0.0.weight``), so a converter matching a bare suffix would
    too. ``cls`` is the namespace of ``foreign_classes()`` (needed to pickle).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    unet = OrderedDict(
        (k, torch.randn(shape, generator=g) * 0.02)
        for k, shape in [("time_embed.time_embed.0.weight", (512, 128)), ("time_embed.time_embed.0.bias", (512,)),
                         ("time_embed.time_embed.2.weight", (512, 512)), ("time_embed.time_embed.2.bias", (512,)),
                         ("input_blocks.0.0.weight", (128, 3, 3, 3)), ("input_blocks.0.0.bias", (128,)),
                         ("out.2.weight", (3, 128, 3, 3)), ("out.2.bias", (3,))]
    )
    enc = OrderedDict((k, torch.as_tensor(np.asarray(v))) for k, v in ema_encoder.items())
    sd = OrderedDict()
    sd["x_T"] = torch.randn(X_T_SHAPE, generator=g)
    for prefix, encoder in (("model.", OrderedDict((k, -v) for k, v in enc.items())), ("ema_model.", enc)):
        sd.update((prefix + k, v) for k, v in unet.items())
        sd.update((prefix + "encoder." + k, v) for k, v in encoder.items())
    adam_state = {i: {"step": 130000, "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)}
                  for i, v in enumerate(unet.values())}
    return {
        "epoch": 19,
        "global_step": 130000,
        "pytorch-lightning_version": "1.4.5",
        "state_dict": sd,
        "callbacks": {cls.ModelCheckpoint: {"monitor": None, "best_model_score": None, "best_model_path": "",
                                            "current_score": None, "dirpath": "checkpoints/ffhq256_autoenc"}},
        "optimizer_states": [{"state": adam_state, "param_groups": [
            {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
             "params": list(adam_state)}]}],
        "lr_schedulers": [{"base_lrs": [1e-4], "last_epoch": 130000, "_step_count": 130001, "verbose": False,
                           "_get_lr_called_within_step": False, "_last_lr": [1e-4],
                           "lr_lambdas": [{"warmup": 0}]}],
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 1234},
        "hparams_name": "kwargs",
        "hyper_parameters": {"name": "ffhq256_autoenc", "batch_size": 64, "fp16": True,
                             "train_mode": cls.TrainMode.diffusion,
                             "pretrain": cls.PretrainConfig(name="none", path="")},
    }


def save_lightning(path, ema_encoder: dict, seed: int = 0, zip_format: bool = True) -> None:
    """``lightning_checkpoint`` written with torch (zip or legacy serialisation)."""
    import torch

    with foreign_classes() as cls:
        ckpt = lightning_checkpoint(ema_encoder, seed, cls)
        torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)


def write_checkpoint(path, layout, seed, case) -> None:
    from tests.golden_harness import recipe

    encoder = recipe().make_state_dict(layout["state_dict"], seed)  # bare encoder keys
    save_lightning(path, encoder, seed)


def torch_forward(state_dict, x_nchw, case):
    from benchmarks.reference.diffae import from_state_dict

    return from_state_dict(state_dict)(x_nchw)
