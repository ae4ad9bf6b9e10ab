"""What the pipelines' declarations share: reading a converted part, checking parts and a TOML count.

Both fail with a one-line ``SetupError`` naming the folder or the setting.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from leat_jax import checkpoints
from leat_jax.errors import SetupError


def load_part(folder, sub: str):
    """The converted parameters in ``folder/sub`` (made by ``leat-jax convert``).

    Args:
      folder: the pipeline's folder (``--pipelines NAME=DIR``).
      sub: the part's sub-folder.
    Returns:
      the parameter pytree; ``SetupError`` when it cannot be read.
    """
    path = Path(folder) / sub
    try:
        params, _ = checkpoints.load_params(path)
    except checkpoints.CheckpointError as e:
        raise SetupError(f"{path}: {e}") from None
    except OSError as e:
        raise SetupError(f"{path}: {e.strerror or e}") from None
    return params


def require_parts(folder, parts: Mapping[str, str]) -> None:
    """Every sub-folder ``parts`` names exists under ``folder`` (None: stand-ins, nothing to check).

    Names holding ``<...>`` (one folder per attribute) are the attributes' to check.
    """
    if folder is None:
        return
    missing = [sub for sub in parts if "<" not in sub and not (Path(folder) / sub).is_dir()]
    if missing:
        raise SetupError(f"{folder}: no {', '.join(sub + '/' for sub in missing)} (each made by `leat-jax convert`)")


def count(section: Mapping, key: str, default: int, name: str) -> int:
    """``section[key]`` (``default`` when absent), a non-negative integer; else ``SetupError`` naming ``[name]``."""
    v = section.get(key, default)
    if type(v) is not int or v < 0:
        raise SetupError(f"[{name}] {key} must be a non-negative integer (a count), got {v!r}")
    return v
