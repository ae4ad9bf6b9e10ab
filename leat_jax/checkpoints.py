"""Converted parameters on disk: an orbax-checkpoint tree plus ``meta.json``.

Layout of a converted checkpoint directory::

    DST/params/     orbax StandardCheckpointer tree, keys flattened to "a/b/0/c"
    DST/meta.json   {"model", "source_sha256", "source_name", "converter_version", ...}

Keys are flattened because NNX trees index lists with ints, which a checkpoint
format keyed by strings does not round-trip.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

META = "meta.json"
PARAMS = "params"


class CheckpointError(ValueError):
    """A converted checkpoint is missing, corrupt or of the wrong model."""


def flatten(tree: Mapping) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(tree, "")
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        parts = [int(p) if p.isdigit() else p for p in path.split("/")]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def save_params(directory, params, meta: Mapping[str, Any]) -> None:
    """Write ``params`` and ``meta`` to ``directory`` (replaced if present)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    tmp = directory.with_name(directory.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / PARAMS, flat)
    (tmp / META).write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def read_meta(directory) -> dict:
    path = Path(directory) / META
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: not a converted checkpoint (no {META}); run `leat-jax convert`") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


def unreadable(directory: Path, detail: str) -> CheckpointError:
    """The one error for parameters that cannot be read, whether a restore or the structure check finds it."""
    return CheckpointError(f"{directory / PARAMS}: cannot read the parameters, the checkpoint is damaged or "
                           f"incomplete ({detail}); run `leat-jax convert` again")


def load_params(directory) -> tuple[dict, dict]:
    """(params as numpy arrays, metadata) from a converted checkpoint directory."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = read_meta(directory)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            flat = ckptr.restore(directory / PARAMS)
    except Exception as e:  # orbax raises many types for a damaged tree
        raise unreadable(directory, f"{type(e).__name__}: {e}") from None
    return unflatten({k: np.asarray(v) for k, v in flat.items()}), meta


def read_shapes(directory) -> tuple[dict, dict]:
    """(parameter tree, metadata) of a converted checkpoint without reading a weight: each leaf has a shape.

    What a process that attacks nothing can check in milliseconds: ``meta.json``
    and orbax's tree metadata. Damage inside the arrays' data shows only when
    they are restored (``load_params``).
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = read_meta(directory)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax logs a warning before it returns no tree; the error below says it
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.metadata(directory / PARAMS).item_metadata
    except Exception as e:  # orbax raises many types for a damaged tree
        raise unreadable(directory, f"{type(e).__name__}: {e}") from None
    finally:
        absl.setLevel(level)
    if tree is None:
        raise unreadable(directory, "no parameter tree")
    return unflatten(dict(tree.tree)), meta  # leaves: orbax's ArrayMetadata (shape, dtype)


def check_against_template(params, template, where: str) -> None:
    """Every leaf of ``template`` present in ``params`` with its shape, nothing extra."""
    got = {k: np.shape(v) for k, v in flatten(params).items()}
    want = {k: tuple(v.shape) for k, v in flatten(template).items()}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"{where}: parameter tree does not fit the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    bad = [(k, got[k], want[k]) for k in want if got[k] != want[k]]
    if bad:
        k, g, w = bad[0]
        raise CheckpointError(f"{where}: {k} has shape {g}, the model wants {w} ({len(bad)} mismatched)")
