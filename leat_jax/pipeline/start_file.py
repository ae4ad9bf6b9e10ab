"""A learned start on disk: the ``.npy`` array ``leat-jax learn-start`` writes, read for ``immunize --start``,
and read again by ``evaluate --baseline`` from the file an immunize report names (``reload``)."""
from __future__ import annotations

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
        raise SetupError(f"{file}: not a .npy array ({str(e).splitlines()[0]})") from None
    if not isinstance(array, np.ndarray):
        raise SetupError(f"{file}: not a .npy array (an archive of several)")
    try:
        start = LearnedStart(array, jitter, source=str(file.resolve()))
    except ValueError as e:
        raise SetupError(f"{file}: {e}") from None
    if eps is not None and start.bound > eps * (1 + 1e-6):
        raise SetupError(f"{file}: the start reaches {start.bound:.6g}, beyond eps = {eps:g}")
    return start


def record(start: LearnedStart) -> dict | None:
    """What a report keeps of a start read from a file, for ``reload``: its resolved path, digest and exact
    jitter (None for a start built in memory)."""
    if start.source is None:
        return None
    return {"path": start.source, "digest": start.digest, "jitter": start.jitter}


def reload(recorded: dict) -> LearnedStart:
    """The start ``record`` described, read again from its path.

    ``SetupError`` (one line, naming the file) when it cannot be read or its digest is no longer the one
    recorded (the file changed).
    """
    try:
        path, digest, jitter = recorded["path"], recorded["digest"], recorded["jitter"]
    except (TypeError, KeyError):
        raise SetupError(f"the recorded start file is not a path, digest and jitter: {recorded!r}") from None
    start = load_start(path, None, jitter)
    if start.digest != digest:
        raise SetupError(f"{start.source}: the start there has digest {start.digest}, not the {digest} "
                         f"recorded (the file changed)")
    return start
