"""What the Ray engine's two test modules share: toy image sets and the damaged-checkpoint wording.

Kept apart from ``test_engine_ray.py``, which skips itself without Ray, so the stage tests run without it.
"""
from __future__ import annotations

from PIL import Image

from tests.test_pipeline_immunize import noise

# The line both engines give for a checkpoint whose parameters cannot be read (after ``<ckpt>``).
DAMAGED = "/params: cannot read the parameters, the checkpoint is damaged or incomplete ("


def mixed_set(folder, n=6):
    """``n`` images of two sizes, in two folders."""
    for i in range(n):
        path = folder / ("a" if i % 2 else "b") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise(24, 24) if i % 3 else noise(16, 20)).save(path)
    return folder


def wording(line: str) -> tuple[str, str]:
    """An error line without the parenthesised detail: what comes before it and after it."""
    return line.split(" (", 1)[0], line.rsplit(")", 1)[1]
