"""A learned start on disk: the ``.npy`` array ``leat-jax learn-start`` writes, read for ``immunize --start``."""
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
        start = LearnedStart(array, jitter)
    except ValueError as e:
        raise SetupError(f"{file}: {e}") from None
    if eps is not None and start.bound > eps * (1 + 1e-6):
        raise SetupError(f"{file}: the start reaches {start.bound:.6g}, beyond eps = {eps:g}")
    return start
