"""A learned start on disk: the ``.npy`` array ``leat-jax learn-start`` writes, read for ``immunize --start``,
and read again by ``evaluate --baseline`` from the file an immunize report names (``reload``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from leat_jax.attack.start import DEFAULT_JITTER, LearnedStart
from leat_jax.errors import SetupError

# The file learn-start writes in its OUT folder; ``--start OUT`` finds it there.
START = "start.npy"


def load_start(path, eps: float | None = None, jitter: float = DEFAULT_JITTER) -> LearnedStart:
    """The learned start in ``path`` (a ``.npy`` file, or a learn-start OUT folder holding ``start.npy``).

    ``SetupError`` (one line) when it is missing, unreadable, not (H, W, 3) or beyond ``eps``.
    """
    path = Path(path)
    file = path / START if path.is_dir() else path
    try:
        array = np.load(file, allow_pickle=False)
    except OSError as e:
        raise SetupError(f"{file}: cannot read the start ({e.strerror or 'no such file'})") from None
    except ValueError as e:
        raise SetupError(f"{file}: not a .npy array ({_not_npy_reason(file, e)})") from None
    if not isinstance(array, np.ndarray):
        raise SetupError(f"{file}: not a .npy array (an archive of several)")
    try:
        start = LearnedStart(array, jitter, source=str(file.resolve()))
    except ValueError as e:
        raise SetupError(f"{file}: {e}") from None
    if eps is not None and start.bound > eps * (1 + 1e-6):
        raise SetupError(f"{file}: the start reaches {start.bound:.6g}, beyond eps = {eps:g}")
    return start


def _not_npy_reason(file: Path, error: ValueError) -> str:
    """Why ``np.load`` refused ``file``: numpy's reason for a file with the .npy header; for any other file
    numpy blames pickled data (it falls back to unpickling), which misleads about a text or image file."""
    with open(file, "rb") as f:
        head = f.read(len(np.lib.format.MAGIC_PREFIX))
    return str(error).splitlines()[0] if head == np.lib.format.MAGIC_PREFIX else "no .npy header"


def record(start: LearnedStart, folder=None) -> dict | None:
    """What a report written in ``folder`` keeps of a start read from a file, for ``reload``: its resolved path,
    that path relative to ``folder`` (so the two can move together; a local folder only), its digest and exact
    jitter (None for a start built in memory)."""
    if start.source is None:
        return None
    kept = {"path": start.source, "digest": start.digest, "jitter": start.jitter}
    if folder is not None and "://" not in str(folder):
        kept["relative"] = os.path.relpath(start.source, Path(folder).resolve())
    return kept


def reload(recorded: dict, folder=None) -> LearnedStart:
    """The start ``record`` described, read again: from its path relative to ``folder`` (the report's, when
    given and recorded) if that exists, else from its resolved path.

    ``SetupError`` (one line, naming the file, or both when neither exists) when it cannot be read or its
    digest is no longer the one recorded (the file changed).
    """
    try:
        path, digest, jitter = recorded["path"], recorded["digest"], recorded["jitter"]
    except (TypeError, KeyError):
        raise SetupError(f"the recorded start file is not a path, digest and jitter: {recorded!r}") from None
    if folder is not None and recorded.get("relative"):
        moved = (Path(folder).resolve() / recorded["relative"]).resolve()
        if moved.exists():
            path = moved
        elif not Path(path).exists() and moved != Path(path):
            raise SetupError(f"{moved}: cannot read the start (no such file, nor at {path})")
    start = load_start(path, None, jitter)
    if start.digest != digest:
        raise SetupError(f"{start.source}: the start there has digest {start.digest}, not the {digest} "
                         f"recorded (the file changed)")
    return start
