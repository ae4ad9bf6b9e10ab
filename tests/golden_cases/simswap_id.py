"""SimSwap ArcFace identity net: golden-case support and official-file writers.

The official ``arcface_checkpoint.tar`` is a pickled whole module whose classes
live in SimSwap's repository. To write one without that code, the reference
network of ``benchmarks/reference/simswap.py`` (same module tree) is given, for
the duration of ``torch.save`` only, throwaway classes registered under the
official module path; afterwards the path is removed again, so a loader cannot
import them.
"""
from __future__ import annotations

import contextlib
import sys
import types

NAME = "simswap_id"
OUTPUT = "id"
CHECKPOINT_NAME = "arcface_checkpoint.tar"
X64 = True  # recipe weights push ArcFace activations to ~550: float64 check (README)


@contextlib.contextmanager
def official_classes(module_name: str, extra: tuple[str, ...] = ()):
    """Throwaway ``ResNet``/``IRBlock``/``SEBlock`` (+ ``extra`` names) under ``module_name``.

    Yields {name: class}; on exit the module path is removed (entries it
    shadowed are put back).
    """
    from torch import nn

    from benchmarks.reference import simswap as ref

    bases = {"ResNet": ref.ArcFaceResNet, "IRBlock": ref.IRBlock, "SEBlock": ref.SEBlock}
    bases.update({n: nn.Module for n in extra})
    mod = types.ModuleType(module_name)
    classes = {}
    for name, base in bases.items():
        cls = type(name, (base,), {"__module__": module_name, "__qualname__": name})
        setattr(mod, name, cls)
        classes[name] = cls
    parts = module_name.split(".")
    names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}  # e.g. an unrelated `models`
    for n in names:
        sys.modules[n] = mod if n == module_name else types.ModuleType(n)
    try:
        yield classes
    finally:
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def _retag(net, classes):
    """Give the reference modules the official class names (same state, same layout)."""
    from benchmarks.reference import simswap as ref

    table = {ref.ArcFaceResNet: classes["ResNet"], ref.IRBlock: classes["IRBlock"], ref.SEBlock: classes["SEBlock"]}
    for m in net.modules():
        if type(m) in table:
            m.__class__ = table[type(m)]
    return net


def build_reference(state_dict, layers=(3, 4, 23, 3)):
    from benchmarks.reference import simswap as ref

    return ref.load(ref.ArcFaceResNet(layers), state_dict)


def write_arcface_file(path, state_dict, *, legacy_dict: bool = False, zip_format: bool = True,
                       layers=(3, 4, 23, 3), attributes: dict | None = None):
    """Write ``state_dict`` as SimSwap's ``arcface_checkpoint.tar``.

    Current generation (default): ``torch.save(ResNet)`` with classes under
    ``models.arcface_models``. ``legacy_dict``: foamliu's training dict with
    ``model = DataParallel(ResNet)``, ``metric_fc``, an SGD ``optimizer``,
    classes under ``models``. ``zip_format=False``: PyTorch's pre-1.6 format.
    ``attributes``: plain attributes set on the ResNet before pickling (tests).
    """
    import torch
    from torch import nn

    module_name = "models" if legacy_dict else "models.arcface_models"
    extra = ("ArcMarginModel",) if legacy_dict else ()
    with official_classes(module_name, extra) as classes:
        net = _retag(build_reference(state_dict, layers), classes)
        for k, v in (attributes or {}).items():
            setattr(net, k, v)
        obj = net
        if legacy_dict:
            metric_fc = classes["ArcMarginModel"]()
            metric_fc.weight = nn.Parameter(torch.randn(10, 512))  # 93431 classes in the real file
            metric_fc.m, metric_fc.s, metric_fc.easy_margin = 0.5, 64.0, False
            optimizer = torch.optim.SGD([*net.parameters(), metric_fc.weight], lr=0.1, momentum=0.9)
            obj = {"epoch": 12, "epochs_since_improvement": 0, "acc": 0.99, "model": nn.DataParallel(net),
                   "metric_fc": metric_fc, "optimizer": optimizer}
        torch.save(obj, path, _use_new_zipfile_serialization=zip_format)


def write_checkpoint(path, layout, seed, case):
    from tests.golden_harness import recipe

    sd = recipe().make_state_dict(layout["state_dict"], seed)
    write_arcface_file(path, sd)


def torch_forward(state_dict, x_nchw, case):
    """The reference ``latent_id``, computed in float64.

    With recipe weights this network is so ill-conditioned that no float32
    code can be checked on it: float64 with the weights perturbed by float32
    rounding (relative 6e-8) already moves the output by 4e-3 and the input
    gradient by 0.4 (relative L2). The reference itself runs in float32
    (``build_reference``); only this check runs it in float64, like the port's.
    """
    from benchmarks.reference import simswap as ref

    return ref.identity_embedding(build_reference(state_dict).double(), x_nchw.double())
