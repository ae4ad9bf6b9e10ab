"""One table of renaming rules, checked against an initialised parameter tree.

A Flax port mirrors the official module tree, so most torch keys map by
position: ``body.3.res_layer.1.weight`` is the leaf of the Flax module at
``body/3/res_layer/1``. The leaf's name and layout follow from the kind of
Flax module found there (as in transformers' PyTorch-to-Flax conversion):

=================  ============================  ==========================
torch leaf         Flax node has                 Flax leaf (transform)
=================  ============================  ==========================
weight (4-D)       kernel                        kernel, OIHW -> HWIO
weight (2-D)       kernel                        kernel, transposed
weight (1-D)       scale                         scale (Batch/GroupNorm)
weight             weight                        weight (our PReLU etc.)
bias               bias                          bias
running_mean/var   mean/var                      mean/var (batch statistics)
num_batches_...    -                             dropped
=================  ============================  ==========================

A family adds only what differs: regex ``Rule``s that rename a torch key
before this lookup (and may give their own array transform).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np

from leat_jax.checkpoints import flatten, unflatten


class ConversionError(ValueError):
    """The checkpoint does not fit the model: names the keys at fault."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """Rename torch keys matching ``pattern`` (``re.fullmatch``) to ``replace``.

    ``replace`` is a dotted Flax path (``re`` template syntax, ``\\1``). With
    ``transform``, the array is mapped by it and placed at ``replace`` as is,
    bypassing the leaf table.
    """

    pattern: str
    replace: str
    transform: Callable[[np.ndarray], np.ndarray] | None = None


def _leaf(node: Mapping, torch_leaf: str, value: np.ndarray):
    """(flax leaf name, array) for a torch leaf under a Flax module node."""
    if torch_leaf == "weight":
        if "kernel" in node:
            if value.ndim == 4:
                return "kernel", value.transpose(2, 3, 1, 0)
            if value.ndim == 2:
                return "kernel", value.T
            return "kernel", value
        if "scale" in node:
            return "scale", value
        if "embedding" in node:
            return "embedding", value
    if torch_leaf == "running_mean" and "mean" in node:
        return "mean", value
    if torch_leaf == "running_var" and "var" in node:
        return "var", value
    return torch_leaf, value


def _child(node, part: str):
    if not isinstance(node, Mapping):
        return None
    if part in node:
        return node[part]
    if part.isdigit() and int(part) in node:
        return node[int(part)]
    return None


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    template,
    *,
    rules: Iterable[Rule] = (),
    ignore: Iterable[str] = (),
    source: str = "checkpoint",
) -> dict:
    """Map a torch state_dict onto ``template`` (a Flax tree of shapes).

    Every torch key must land on a template leaf of the same shape (after
    transposition), every template leaf must be filled, and keys matching an
    ``ignore`` regex (plus ``num_batches_tracked``) are skipped. Any other
    mismatch raises ``ConversionError`` naming the keys.
    """
    rules = tuple(rules)
    ignore_re = [re.compile(p) for p in ignore]
    want = {k: tuple(v.shape) for k, v in flatten(template).items()}
    out: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    bad_shape: list[str] = []
    seen_bad: set[str] = set()
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") or any(r.fullmatch(key) for r in ignore_re):
            continue
        value = np.asarray(value)
        path, direct = key, None
        for rule in rules:
            if re.fullmatch(rule.pattern, key):
                path = re.sub(rule.pattern, rule.replace, key, count=1)
                direct = rule.transform
                break
        parts = path.split(".")
        torch_shape = tuple(value.shape)
        if direct is not None:
            flat_key = "/".join(parts)
            value = direct(value)
        else:
            node = template
            for part in parts[:-1]:
                node = _child(node, part)
                if node is None:
                    break
            if node is None:
                unexpected.append(key)
                continue
            leaf, value = _leaf(node, parts[-1], value)
            flat_key = "/".join([*parts[:-1], leaf])
        if flat_key not in want:
            unexpected.append(key)
            continue
        if tuple(value.shape) != want[flat_key]:
            bad_shape.append(f"{key} {torch_shape} -> {flat_key} {want[flat_key]}")
            seen_bad.add(flat_key)
            continue
        out[flat_key] = np.ascontiguousarray(value, dtype=np.float32)
    missing = sorted(_torch_name(k) for k in set(want) - set(out) - seen_bad)
    problems = []
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if missing:
        problems.append(f"missing parameters {_few(missing)}")
    if bad_shape:
        problems.append(f"shape mismatch {_few(bad_shape)}")
    if problems:
        raise ConversionError(f"{source}: does not fit the model: " + "; ".join(problems))
    return unflatten(out)


_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def _torch_name(flat_key: str) -> str:
    """A Flax path as the torch key it most likely comes from (for messages)."""
    *mods, leaf = flat_key.split("/")
    return ".".join([*mods, _TORCH_LEAF.get(leaf, leaf)])


def _few(items: list[str], n: int = 6) -> str:
    head = ", ".join(items[:n])
    return f"[{head}{', ... (%d in all)' % len(items) if len(items) > n else ''}]"


def is_state_dict(obj) -> bool:
    """A non-empty mapping of string keys to arrays (what ``torch_io`` reads a state_dict as)."""
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    )


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str, *, required: bool = True,
                 source: str = "checkpoint") -> dict:
    """Keys under ``prefix`` with it removed; the others are left out."""
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if required and not out:
        raise ConversionError(f"{source}: no key starts with {prefix!r} (found e.g. {_few(list(state_dict), 3)})")
    return out


MODULE_PREFIX = "module."  # what DataParallel / DistributedDataParallel put before every key


def strip_module_prefix(state_dict: Mapping[str, np.ndarray], *, source: str = "checkpoint") -> dict:
    """The state_dict with DataParallel's ``module.`` prefix removed when every key carries it.

    Raises ``ConversionError`` when only some keys carry it (no network here
    has a child named ``module``, so that file is not one we know).
    """
    prefixed = [k for k in state_dict if isinstance(k, str) and k.startswith(MODULE_PREFIX)]
    if not prefixed:
        return dict(state_dict)
    if len(prefixed) != len(state_dict):
        plain = [k for k in state_dict if not (isinstance(k, str) and k.startswith(MODULE_PREFIX))]
        raise ConversionError(f"{source}: some keys carry the {MODULE_PREFIX!r} prefix and some do not "
                              f"(e.g. {_few([str(k) for k in plain], 3)})")
    return strip_prefix(state_dict, MODULE_PREFIX, source=source)
